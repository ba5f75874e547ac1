package filewatch

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
)

// start watches path and returns a channel that receives once per change.
func start(t *testing.T, path string) <-chan struct{} {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan struct{}, 100)
	done := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		close(ready)
		done <- File(ctx, zap.NewNop(), path, 1<<20, func() { changes <- struct{}{} })
	}()
	<-ready
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch ended with %v", err)
		}
	})
	return changes
}

// expectChange waits for a change; the watch may need a moment to be set up,
// so the action is repeated with new content until a change arrives or the
// deadline passes.
func expectChange(t *testing.T, changes <-chan struct{}, what string, act func(i int)) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for i := 0; ; i++ {
		act(i)
		select {
		case <-changes:
			return
		case <-time.After(200 * time.Millisecond):
		case <-deadline:
			t.Fatalf("%s: no change seen within 10s", what)
		}
	}
}

// quiet takes the changes of writes made while the watch was being set
// up, until none came for 300 ms: each step after it then sees its own
// change, not one left over from before.
func quiet(changes <-chan struct{}) {
	for {
		select {
		case <-changes:
		case <-time.After(300 * time.Millisecond):
			return
		}
	}
}

func write(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSeesRenameSedAndSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "desired.yaml")
	write(t, path, "a")
	changes := start(t, path)

	expectChange(t, changes, "rename-save", func(i int) {
		tmp := filepath.Join(dir, ".desired.yaml.swp")
		write(t, tmp, "rename "+string(rune('a'+i)))
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	})
	if _, err := exec.LookPath("sed"); err == nil {
		expectChange(t, changes, "sed -i", func(i int) {
			if out, err := exec.Command("sed", "-i", "s/rename/sed"+string(rune('a'+i))+"/", path).CombinedOutput(); err != nil {
				t.Fatalf("sed: %v %s", err, out)
			}
		})
	}
	expectChange(t, changes, "delete", func(int) { os.Remove(path) })
	expectChange(t, changes, "recreate", func(i int) { write(t, path, "back "+string(rune('a'+i))) })
}

func TestSeesConfigMapStyleSymlinkSwap(t *testing.T) {
	dir := t.TempDir()
	for _, v := range []string{"v1", "v2"} {
		os.Mkdir(filepath.Join(dir, v), 0o755)
		write(t, filepath.Join(dir, v, "desired.yaml"), "content "+v)
	}
	if err := os.Symlink("v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "desired.yaml")
	if err := os.Symlink("..data/desired.yaml", path); err != nil {
		t.Fatal(err)
	}
	changes := start(t, path)
	expectChange(t, changes, "symlink swap", func(i int) {
		target := "v2"
		if i%2 == 1 {
			target = "v1"
		}
		tmp := filepath.Join(dir, "..data_tmp")
		os.Remove(tmp)
		if err := os.Symlink(target, tmp); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
			t.Fatal(err)
		}
	})
}

func TestSameContentIsNoChange(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "desired.yaml")
	write(t, path, "same")
	changes := start(t, path)
	// A marker file proves events are flowing: once its change to the
	// watched file is seen, the earlier same-content rewrite must not have
	// produced one.
	// Every write here is a rename-save: an in-place write shows a
	// truncated file for a moment, which is a change of its own.
	save := func(content string) {
		tmp := filepath.Join(dir, ".tmp")
		write(t, tmp, content)
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	expectChange(t, changes, "first real change", func(i int) { save("warm " + string(rune('a'+i))) })
	for len(changes) > 0 {
		<-changes
	}
	cur, _ := os.ReadFile(path)
	save(string(cur)) // the same bytes
	expectChange(t, changes, "real change", func(i int) { save("new " + string(rune('a'+i))) })
	if n := len(changes); n != 0 {
		t.Fatalf("%d extra changes reported for a same-content write", n)
	}
}

// TestSwapToAFIFOOrDevice: the file swapped for a FIFO or /dev/zero is a
// change (it is no longer readable), seen without blocking or reading
// without bound; swapped back, it is a change again.
func TestSwapToAFIFOOrDevice(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "desired.yaml")
	if err := os.WriteFile(filepath.Join(dir, "real.yaml"), []byte("a: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("real.yaml", path); err != nil {
		t.Fatal(err)
	}
	changes := start(t, path)
	expectChange(t, changes, "the watch is live", func(i int) { write(t, filepath.Join(dir, "real.yaml"), fmt.Sprintf("a: %d\n", i+2)) })
	quiet(changes)
	for _, target := range []string{fifo, "real.yaml", "/dev/zero", "real.yaml"} {
		expectChange(t, changes, "swap to "+target, func(i int) {
			if i > 0 {
				return // seen once or never
			}
			tmp := filepath.Join(dir, "tmp-link")
			if err := os.Symlink(target, tmp); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMissingThenDirectory: a file removed, then a directory made in its
// place, are two changes: both unreadable, but not the same way.
func TestMissingThenDirectory(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "desired.yaml")
	write(t, path, "a: 1\n")
	changes := start(t, path)
	expectChange(t, changes, "the watch is live", func(i int) { write(t, path, fmt.Sprintf("a: %d\n", i+2)) })
	quiet(changes)
	expectChange(t, changes, "the file removed", func(i int) {
		if i == 0 {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}
	})
	expectChange(t, changes, "a directory in its place", func(i int) {
		if i == 0 {
			if err := os.Mkdir(path, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// TestDir: the entries of a directory that does not exist yet are seen
// once it does, each by name: created, written, made 0600, removed.
func TestDir(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "caches")
	ctx, cancel := context.WithCancel(context.Background())
	names := make(chan string, 100)
	done := make(chan error, 1)
	go func() { done <- Dir(ctx, zap.NewNop(), dir, func(name string) { names <- name }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("watch ended with %v", err)
		}
	})
	// want waits until act made the watch see name (act is repeated: the
	// watch may need a moment to be set up).
	want := func(what, name string, act func()) {
		t.Helper()
		// What the step before did is not this step's change.
		for quiet := false; !quiet; {
			select {
			case <-names:
			case <-time.After(300 * time.Millisecond):
				quiet = true
			}
		}
		deadline := time.After(10 * time.Second)
		for {
			act()
			retry := time.After(200 * time.Millisecond)
			for again := false; !again; {
				select {
				case got := <-names:
					if got == name {
						return
					}
				case <-retry:
					again = true
				case <-deadline:
					t.Fatalf("%s: %q not seen within 10s", what, name)
				}
			}
		}
	}
	want("the directory made", "", func() {
		os.Remove(dir)
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	})
	file := filepath.Join(dir, "fleet.credentials")
	want("a file written", "fleet.credentials", func() {
		if err := os.WriteFile(file, []byte("[default]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	want("a file made 0600", "fleet.credentials", func() {
		if err := os.Chmod(file, 0o600); err != nil {
			t.Fatal(err)
		}
	})
	want("a file removed", "fleet.credentials", func() {
		os.Remove(file)
		os.WriteFile(file, nil, 0o600) // for the next try, if this one is missed
		os.Remove(file)
	})
}
