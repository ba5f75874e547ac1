package main

// The desired-state file turned into something hostile under a running
// agent: the agent stays up, small and responsive, keeps its last good
// state and says what is wrong.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

func TestHostileDesiredStateFile(t *testing.T) {
	port := testenv.FreePort(t, "127.0.0.2")
	good := fleet(port, "")
	for _, c := range []struct {
		name, reason, want string
		make               func(t *testing.T, path string)
	}{
		{"fifo", "NotARegularFile", "named pipe", func(t *testing.T, path string) {
			if err := syscall.Mkfifo(path, 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"dev-zero", "NotARegularFile", "device", func(t *testing.T, path string) {
			if err := os.Symlink("/dev/zero", path); err != nil {
				t.Fatal(err)
			}
		}},
		{"directory", "NotARegularFile", "directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}},
		{"sparse-50G", "Invalid", "limit", func(t *testing.T, path string) {
			f, err := os.Create(path)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := f.Truncate(50 << 30); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			root, config := newRoot(t, good)
			a := startAgent(t, root, config, "stage", noSSHDCheck)
			a.waitFor("Ready", ready)
			// Swapped in by rename, as a person or a tool would.
			tmp := filepath.Join(filepath.Dir(config), ".hostile")
			c.make(t, tmp)
			if c.name == "directory" {
				os.Remove(config) // a directory cannot be renamed over a file
			}
			if err := os.Rename(tmp, config); err != nil {
				t.Fatal(err)
			}
			st := a.waitFor("the file refused", hasCondition(status.DesiredStateValid, status.False, c.reason))
			msg := condition(t, st, status.DesiredStateValid).Message
			if !strings.Contains(msg, c.want) || !strings.Contains(msg, "keeping the last good desired state (generation 1)") {
				t.Fatalf("DesiredStateValid message %q: want %q and the last good state kept", msg, c.want)
			}
			if st.Generation != 1 || st.ObservedGeneration != 1 {
				t.Fatalf("generation %d/%d after a hostile file, want 1/1", st.Generation, st.ObservedGeneration)
			}
			if rss := vmRSS(t, a.cmd.Process.Pid); rss > 100<<10 {
				t.Fatalf("RSS %d KiB after the hostile file, want under 100 MiB", rss)
			}
			code, _, stderr := runCLI(t, "validate", "--config", config)
			if code != 1 || !strings.Contains(stderr, c.want) {
				t.Fatalf("validate: exit %d, stderr %q; want 1 and %q", code, stderr, c.want)
			}
			if !a.sigterm() {
				t.Fatal("the agent did not stop within 5s of SIGTERM")
			}
			// Back to a good file, a new agent takes it up.
			os.Remove(config)
			if err := os.WriteFile(config, []byte(good), 0o644); err != nil {
				t.Fatal(err)
			}
			a = startAgent(t, root, config, "stage", noSSHDCheck)
			a.waitFor(fmt.Sprintf("Ready again after %s", c.name), ready)
		})
	}
}

// TestManagedDirectorySymlinksAreRefused: a directory the agent writes
// into that points elsewhere, or one above it, is refused, named, and
// nothing is written where it points; a key directory made 0755 is put back to 0700 on a
// host that only fetches.
func TestManagedDirectorySymlinksAreRefused(t *testing.T) {
	testenv.RequireRoot(t) // it asks the daemon to reconcile
	key := hostKeyLine(t)
	for _, c := range []struct {
		dir, host, condition string
	}{
		{"root/.ssh", "prod", status.KnownHostsReady},
		{"var/lib/nixpeer/keys", "prod", status.KeysReady},
		{"etc/ssh/authorized_keys.d", "stage", status.ServeReady},
		// A link above the managed directory ("etc -> /etc" under --root).
		{"root", "prod", status.KnownHostsReady},
		{"etc/ssh", "stage", status.ServeReady},
	} {
		t.Run(strings.ReplaceAll(c.dir, "/", "_"), func(t *testing.T) {
			root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), key))
			writeNixConf(t, root)
			elsewhere := t.TempDir()
			if err := os.MkdirAll(filepath.Dir(filepath.Join(root, c.dir)), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(elsewhere, filepath.Join(root, c.dir)); err != nil {
				t.Fatal(err)
			}
			a := startAgent(t, root, config, c.host)
			st := a.waitFor(c.condition+" refuses the symlink", func(s status.Status) bool {
				cond := status.Find(s.Conditions, c.condition)
				return cond != nil && cond.Status == status.False && strings.Contains(cond.Message, "symbolic link")
			})
			if st.Ready {
				t.Fatal("Ready with a managed directory pointing elsewhere")
			}
			if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
				t.Fatalf("the agent wrote where the symlink points: %v", entries)
			}
		})
	}
	t.Run("keys directory mode", func(t *testing.T) {
		root, config := newRoot(t, fleet(testenv.FreePort(t, "127.0.0.2"), key))
		writeNixConf(t, root)
		a := startAgent(t, root, config, "prod")
		a.waitFor("reconciled", reconciled)
		keys := filepath.Join(root, "var/lib/nixpeer/keys")
		if err := os.Chmod(keys, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(filepath.Join(keys, "ssh_client_ed25519"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := a.client.Reconcile(t.Context()); err != nil {
			t.Fatal(err)
		}
		testenv.WaitFor(t, 20*time.Second, 20*time.Millisecond, "modes restored", func() error {
			d, err := os.Stat(keys)
			if err != nil {
				return err
			}
			k, err := os.Stat(filepath.Join(keys, "ssh_client_ed25519"))
			if err != nil {
				return err
			}
			if d.Mode().Perm() != 0o700 || k.Mode().Perm() != 0o600 {
				return fmt.Errorf("keys directory %v, client key %v", d.Mode().Perm(), k.Mode().Perm())
			}
			return nil
		})
	})
}

// floodPeerPort is a peer port at addr that answers a watch with n valid
// facts documents of name at address, one generation after the other, as
// fast as it can, and then keepalives.
func floodPeerPort(t *testing.T, addr, name, address string, n int) ssh.PublicKey {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	var docs bytes.Buffer
	for i := 1; i <= n; i++ {
		doc, err := json.Marshal(peer.Facts{Version: peer.FactsVersion, Name: name, Address: address, Generation: int64(i),
			ObservedGeneration: int64(i), HostKeys: []string{line},
			Serve: &peer.ServeFacts{Protocol: "ssh", CacheKey: testCacheKey, Authorized: []peer.AuthorizedFact{}}})
		if err != nil {
			t.Fatal(err)
		}
		docs.Write(append(doc, '\n'))
	}
	fakePeerPortWith(t, addr, signer, docs.Bytes())
	return signer.PublicKey()
}

// TestFactsFloodIsCoalesced: a trusted peer sends 20,000 valid documents,
// each with a new generation. Production keeps what it acts on, stores
// and reconciles a handful of times, not once per document.
func TestFactsFloodIsCoalesced(t *testing.T) {
	addr := fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2"))
	key := floodPeerPort(t, addr, "stage", "127.0.0.2", 20000)
	keyLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	root, config := newRoot(t, strings.Replace(peeringFleet(22, "ssh", []string{"true"}),
		"    serve:\n", "    hostKey: "+keyLine+"\n    serve:\n", 1))
	writeNixConf(t, root)
	a := startAgent(t, root, config, "prod", "--log-level", "info")
	a.waitFor("the peer's facts taken", func(s status.Status) bool {
		return len(s.Peers) == 1 && s.Peers[0].Connected
	})
	// The whole flood is read: the watch stays connected after it, on
	// keepalives... which this fake never sends: the silence ends it.
	a.waitWithin(30*time.Second, "the flood read", func(s status.Status) bool {
		return len(s.Peers) == 1 && !s.Peers[0].Connected && strings.Contains(s.Peers[0].Message, "no document or keepalive")
	})
	a.stop()
	passes := strings.Count(a.logs.String(), `"msg":"reconciled"`)
	if passes == 0 {
		t.Fatal("no \"reconciled\" line in the log, although the agent wrote its files: was the message reworded?")
	}
	if passes > 40 {
		t.Fatalf("%d reconciles that changed something for one flood of 20,000 documents; want a handful", passes)
	}
	t.Logf("%d reconciles that changed something during the flood", passes)
}
