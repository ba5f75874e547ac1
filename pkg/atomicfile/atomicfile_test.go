package atomicfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestWriteFileReplacesAndLeavesNoTemp(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(p, []byte("new"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if string(got) != "new" {
		t.Fatalf("content = %q, want %q", got, "new")
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st.Mode().Perm())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want only the file", len(ents))
	}
}

func TestWriteIfChangedSkipsIdenticalContent(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	changed, err := WriteIfChanged(p, []byte("x"), 0o644)
	if err != nil || !changed {
		t.Fatalf("first write: changed=%v err=%v, want true nil", changed, err)
	}
	old := time.Unix(1000, 0)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	changed, err = WriteIfChanged(p, []byte("x"), 0o644)
	if err != nil || changed {
		t.Fatalf("same write: changed=%v err=%v, want false nil", changed, err)
	}
	st, _ := os.Stat(p)
	if !st.ModTime().Equal(old) {
		t.Fatalf("mtime changed to %v on a no-op write", st.ModTime())
	}
	changed, err = WriteIfChanged(p, []byte("x"), 0o600)
	if err != nil || !changed {
		t.Fatalf("mode change: changed=%v err=%v, want true nil", changed, err)
	}
	changed, err = WriteIfChanged(p, []byte("y"), 0o600)
	if err != nil || !changed {
		t.Fatalf("content change: changed=%v err=%v, want true nil", changed, err)
	}
}

func TestWriteFileFailsInMissingDirectory(t *testing.T) {
	if err := WriteFile(filepath.Join(t.TempDir(), "no", "f"), nil, 0o644); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}

func TestCreateExclusiveCreates(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := CreateExclusive(p, []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p); string(got) != "secret" {
		t.Fatalf("content = %q, want %q", got, "secret")
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o600 {
		t.Fatalf("mode = %v, want 0600", st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("directory holds %d entries, want only the file", len(ents))
	}
}

func TestCreateExclusiveNeverReplaces(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "key")
	if err := os.WriteFile(p, []byte("theirs"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := CreateExclusive(p, []byte("ours"), 0o600)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("CreateExclusive over an existing file: %v, want an error matching fs.ErrExist", err)
	}
	if got, _ := os.ReadFile(p); string(got) != "theirs" {
		t.Errorf("existing file replaced: %q", got)
	}
	if st, _ := os.Stat(p); st.Mode().Perm() != 0o644 {
		t.Errorf("existing file's mode changed to %v", st.Mode().Perm())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("temporary file left behind: %d entries", len(ents))
	}
}

func TestCreateExclusiveFailsInMissingDirectory(t *testing.T) {
	if err := CreateExclusive(filepath.Join(t.TempDir(), "no", "f"), nil, 0o600); err == nil {
		t.Fatal("create in a missing directory succeeded")
	}
}

func TestMkdirAllIgnoresTheUmask(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	base := t.TempDir()
	if err := os.Mkdir(filepath.Join(base, "kept"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(base, "kept/a/b"), 0o755); err != nil {
		t.Fatal(err)
	}
	for dir, want := range map[string]os.FileMode{"kept": 0o700, "kept/a": 0o755, "kept/a/b": 0o755} {
		fi, err := os.Stat(filepath.Join(base, dir))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s is %04o, want %04o", dir, fi.Mode().Perm(), want)
		}
	}
	if err := os.WriteFile(filepath.Join(base, "file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(base, "file/x"), 0o755); err == nil {
		t.Error("MkdirAll below a regular file succeeded")
	}
	if changed, err := KeepDirMode(filepath.Join(base, "kept"), 0o755); err != nil || !changed {
		t.Errorf("KeepDirMode: changed %v, %v", changed, err)
	}
	if changed, err := KeepDirMode(filepath.Join(base, "kept"), 0o755); err != nil || changed {
		t.Errorf("KeepDirMode again: changed %v, %v", changed, err)
	}
}

// TestWriteRemovesWhatAKilledWriterLeft: a writer killed between its
// temporary file and the rename leaves the temporary file; the next write
// of the same path removes it, and nothing of another path.
func TestWriteRemovesWhatAKilledWriterLeft(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "cache-priv-key.pem")
	stale := filepath.Join(dir, ".cache-priv-key.pem.tmp-123")
	other := filepath.Join(dir, ".nix.conf.tmp-456")
	for _, p := range []string{stale, other} {
		if err := os.WriteFile(p, []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := CreateExclusive(path, []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("the killed writer's temporary file stays: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Fatalf("another path's temporary file is gone: %v", err)
	}
	if err := RemoveStale(filepath.Join(dir, "nix.conf")); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*")); len(left) != 0 {
		t.Fatalf("left: %v", left)
	}
}
