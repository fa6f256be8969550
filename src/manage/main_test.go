package main

import (
	"testing"

	"example.com/service/src/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.NeedsPostgres) }
