package outbox_test

import (
	"os"
	"testing"

	"example.com/service/src/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(childVar) != "" {
		os.Exit(killedProducer()) // a child process of TestKillBetweenCommitAndPublish
	}
	testenv.MainWithExamples(m, testenv.NeedsBroker, testenv.NeedsPostgres)
}
