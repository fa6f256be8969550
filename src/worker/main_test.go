package worker_test

import (
	"testing"

	"example.com/service/src/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m, testenv.NeedsBroker) }
