package command

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

func TestRunReturnsOutputAndExitStatus(t *testing.T) {
	res, err := Run(context.Background(), []string{"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}, []string{"X=1"})
	if err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("err %v, want exit status 3", err)
	}
	if string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("stdout %q stderr %q", res.Stdout, res.Stderr)
	}
	if _, err := Run(context.Background(), nil, nil); err == nil {
		t.Fatal("an empty command ran")
	}
}

// TestCancelKillsTheProcessGroup: a command that started a child which
// keeps the output pipe open is stopped, child and all, when its context
// ends, and Run returns without waiting for the child.
func TestCancelKillsTheProcessGroup(t *testing.T) {
	dir := t.TempDir()
	child := filepath.Join(dir, "child")
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, []string{"/bin/sh", "-c", fmt.Sprintf("sleep 600 & echo $! > %s; wait", child)}, nil)
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("err %v, want a timeout", err)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("Run returned after %v: it waited for the child", took)
	}
	raw, err := os.ReadFile(child)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(raw)))
	testenv.WaitFor(t, 5*time.Second, 10*time.Millisecond, "the command's child to end", func() error {
		if alive(pid) {
			return fmt.Errorf("process %d is alive", pid)
		}
		return nil
	})
}

// alive reports whether pid runs (a zombie does not).
func alive(pid int) bool {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	i := strings.LastIndexByte(string(raw), ')')
	return syscall.Kill(pid, 0) == nil && (i < 0 || i+2 >= len(raw) || raw[i+2] != 'Z')
}
