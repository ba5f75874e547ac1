package testenv

import (
	"testing"

	"github.com/nixpeer/nixpeer/internal/launch"
)

// StartWeed runs a SeaweedFS server with its S3 gateway on address (a
// loopback IP; "" is 127.0.0.1) in a temporary directory (see
// launch.StartWeed), and stops it when the test ends (its log is printed
// if the test failed). Without the weed program (scripts/prepare.sh
// seaweedfs installs it) the test is skipped, or fails when CI=true.
func StartWeed(t testing.TB, address string) *launch.Weed {
	t.Helper()
	integration(t)
	if _, err := launch.LookWeed(); err != nil {
		unavailable(t, "%v", err)
		return nil
	}
	if address == "" {
		address = "127.0.0.1"
	}
	w := must(launch.StartWeed(t.TempDir(), address))(t)
	for _, r := range w.Retried {
		t.Logf("testenv: weed could not bind its first ports, tried others:\n%s", r)
	}
	cleanup(t, w.Proc, w.Stop)
	return w
}
