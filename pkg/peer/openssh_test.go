package peer

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// TestOpenSSHClient checks the peer port against OpenSSH: ssh-keyscan sees
// the host key the facts name (the key production puts in known_hosts),
// and a plain `ssh HOST facts` that pins it gets the document.
func TestOpenSSHClient(t *testing.T) {
	testenv.Require(t, "ssh", "ssh-keyscan")
	key := newSigner(t)
	s := startServer(t, "127.0.0.5:0", key, ServerOptions{})
	want := validFacts(t, key.PublicKey())
	s.publish(want)
	host, port, err := net.SplitHostPort(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()

	out, err := exec.CommandContext(ctx, "ssh-keyscan", "-t", "ed25519", "-p", port, host).Output()
	if err != nil {
		t.Fatalf("ssh-keyscan: %v", err)
	}
	scanned := strings.TrimSpace(string(out))
	if wantLine := "[" + host + "]:" + port + " " + want.HostKeys[0]; scanned != wantLine {
		t.Fatalf("ssh-keyscan printed %q, want %q", scanned, wantLine)
	}

	knownHosts := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(knownHosts, []byte(scanned+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, "ssh", "-F", "/dev/null", "-p", port,
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+knownHosts,
		"-o", "GlobalKnownHostsFile=/dev/null", "-o", "HostKeyAlgorithms=ssh-ed25519",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityFile=none",
		host, "facts")
	cmd.Env = append(os.Environ(), "LANG=C.UTF-8") // sent as env, which is refused: harmless
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("ssh %s facts: %v", s.addr, err)
	}
	if diff := cmp.Diff(decodeLine(t, strings.TrimSuffix(string(out), "\n")), stranger(want)); diff != "" {
		t.Errorf("facts through OpenSSH mismatch (-got +want):\n%s", diff)
	}

	// Anything else fails.
	cmd = exec.CommandContext(ctx, "ssh", "-F", "/dev/null", "-p", port,
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "UserKnownHostsFile="+knownHosts,
		"-o", "IdentitiesOnly=yes", "-o", "IdentityFile=none", host, "id")
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("ssh %s id succeeded: %s", s.addr, out)
	}
}
