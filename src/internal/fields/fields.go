// Package fields walks the fields of a struct type as a struct tag names
// them, promoting the fields of embedded structs the way encoding/json and
// sqlx do. The db package reads a model's columns with it (tag "db"), the
// worker a payload's JSON fields (tag "json").
package fields

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
)

// MaxDepth is how many levels of embedded structs Walk descends; it is what
// stops a walk through a type that embeds a pointer to itself.
const MaxDepth = 8

// Field is one field a walk visits.
type Field struct {
	reflect.StructField
	// TagName is the name part of the field's tag, "" when the tag gives
	// none.
	TagName string
	// TagOpts is what follows the name in the tag: comma-separated options.
	TagOpts string
	// Path is the field's index sequence from the walked type, for
	// reflect.Value.FieldByIndex.
	Path []int
}

// Has reports whether the field's tag lists option o.
func (f Field) Has(o string) bool {
	return slices.Contains(strings.Split(f.TagOpts, ","), o)
}

// Walk calls visit for the fields of struct type t in declaration order,
// reading each one's name from the tag key:
//   - a field tagged "-" is left out, and so is an unexported field;
//   - an embedded struct without a tag name is not visited itself: its
//     fields are, in its place, exported or not;
//   - an embedded pointer to a struct without a tag name is followed the
//     same way when follow is set (as encoding/json does); otherwise visit
//     gets it, exported or not, to accept or refuse.
//
// Walk returns the first error visit returns, or an error naming the field
// where embedding goes deeper than MaxDepth.
func Walk(t reflect.Type, key string, follow bool, visit func(Field) error) error {
	return walk(t, key, follow, nil, visit)
}

func walk(t reflect.Type, key string, follow bool, path []int, visit func(Field) error) error {
	for i := range t.NumField() {
		sf := t.Field(i)
		tag := sf.Tag.Get(key)
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		f := Field{StructField: sf, TagName: name, TagOpts: opts, Path: append(slices.Clone(path), i)}
		if sf.Anonymous && name == "" {
			ft, ptr := sf.Type, sf.Type.Kind() == reflect.Pointer
			if ptr {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && (!ptr || follow) {
				if len(f.Path) > MaxDepth {
					return fmt.Errorf("field %s: structs embedded more than %d deep", sf.Name, MaxDepth)
				}
				if err := walk(ft, key, follow, f.Path, visit); err != nil {
					return err
				}
				continue
			}
			if ft.Kind() == reflect.Struct { // a pointer not followed
				if err := visit(f); err != nil {
					return err
				}
				continue
			}
		}
		if !sf.IsExported() {
			continue
		}
		if err := visit(f); err != nil {
			return err
		}
	}
	return nil
}
