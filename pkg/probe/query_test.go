package probe_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/probe"
)

// TestQueryPathInfos: a real nix-store --serve answers, in one query, the
// infos of the paths it holds and leaves out the one it lacks.
func TestQueryPathInfos(t *testing.T) {
	t.Parallel()
	p := startPeer(t, "127.0.0.4", "nix-store --serve", true)
	n := time.Now().UnixNano()
	a := testenv.BuildPath(t, p.daemon, fmt.Sprintf("query-a-%d", n), "a")
	b := testenv.BuildPath(t, p.daemon, fmt.Sprintf("query-b-%d", n), "b")
	missing := "/nix/store/" + strings.Repeat("0", 32) + "-never-built"
	infos, err := probe.QueryPathInfos(context.Background(), p.target(nix.ProtocolSSH), []string{a, missing, b})
	if err != nil {
		t.Fatalf("QueryPathInfos: %v\nsshd log:\n%s", err, p.sshd.Logs())
	}
	if len(infos) != 2 {
		t.Fatalf("%d infos, want 2 (a and b): %+v", len(infos), infos)
	}
	for _, path := range []string{a, b} {
		i, ok := infos[path]
		if !ok || i.NarSize == 0 || !strings.HasPrefix(i.NarHash, "sha256:") || !strings.HasSuffix(i.Deriver, ".drv") {
			t.Fatalf("info of %s: %+v (found %v)", path, i, ok)
		}
	}
	if _, err := probe.QueryPathInfos(context.Background(), p.target(nix.ProtocolSSHNG), []string{a}); err == nil {
		t.Fatal("QueryPathInfos over ssh-ng: want a refusal")
	}
}
