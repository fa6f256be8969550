package db_test

import (
	"testing"

	"example.com/service/src/testenv"
)

func TestMain(m *testing.M) { testenv.MainWithExamples(m, testenv.NeedsPostgres) }
