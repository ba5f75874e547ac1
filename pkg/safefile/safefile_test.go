package safefile

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestReadRegularBounded(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	data, st, err := Read(p, 4, Options{})
	if err != nil || string(data) != "01234" || st.Size() != 10 {
		t.Fatalf("Read with limit 4: %q, %v; want 5 bytes, so the caller sees it is over", data, err)
	}
	if data, _, err := Read(p, 100, Options{}); err != nil || string(data) != "0123456789" {
		t.Fatalf("Read: %q %v", data, err)
	}
	// A sparse file of 50 GB costs a bounded read.
	big := filepath.Join(dir, "big")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(50 << 30); err != nil {
		t.Skipf("no sparse file here: %v", err)
	}
	f.Close()
	if data, _, err := Read(big, 1<<20, Options{}); err != nil || len(data) != 1<<20+1 {
		t.Fatalf("sparse file: %d bytes, %v", len(data), err)
	}
}

func TestReadRefusesWhatIsNotRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	os.WriteFile(filepath.Join(dir, "target"), []byte("x"), 0o644)
	os.Symlink("target", link)
	for _, c := range []struct {
		path string
		opts Options
		want string
	}{
		{fifo, Options{}, "named pipe"},
		{"/dev/zero", Options{}, "device"},
		{dir, Options{}, "directory"},
		{link, Options{NoFollow: true}, "symbolic link"},
	} {
		_, _, err := Read(c.path, 100, c.opts)
		if !errors.Is(err, ErrNotRegular) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
			t.Errorf("Read(%s): %v; want ErrNotRegular naming the path and %q", c.path, err, c.want)
		}
	}
	if data, _, err := Read(link, 100, Options{}); err != nil || string(data) != "x" {
		t.Errorf("Read follows a symlink by default: %q %v", data, err)
	}
}
