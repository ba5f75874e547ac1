package atomicfile

import (
	"os"
	"path/filepath"
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
