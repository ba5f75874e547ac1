package main

// The desired-state file turned into something hostile under a running
// agent: the agent stays up, small and responsive, keeps its last good
// state and says what is wrong.

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nixpeer/nixpeer/pkg/status"
	"github.com/nixpeer/nixpeer/pkg/testenv"
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
			a := startAgent(t, root, config, "stage")
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
				t.Fatal("the agent did not stop within 10s of SIGTERM")
			}
			// Back to a good file, a new agent takes it up.
			os.Remove(config)
			if err := os.WriteFile(config, []byte(good), 0o644); err != nil {
				t.Fatal(err)
			}
			a = startAgent(t, root, config, "stage")
			a.waitFor(fmt.Sprintf("Ready again after %s", c.name), ready)
		})
	}
}
