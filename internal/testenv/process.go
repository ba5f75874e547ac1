package testenv

import (
	"testing"

	"github.com/nixpeer/nixpeer/internal/launch"
)

// cleanup registers the end of p with t.Cleanup: stop it with stop (p.Stop,
// or what wraps it) and, if the test failed, log its output.
func cleanup(t testing.TB, p *launch.Process, stop func() error) {
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("testenv: stop %s: %v", p.Name, err)
		}
		if t.Failed() {
			t.Logf("testenv: output of %s:\n%s", p, p.Logs())
		}
	})
}
