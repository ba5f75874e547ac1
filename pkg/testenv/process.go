package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"
)

// maxLog bounds the output kept of one child process.
const maxLog = 1 << 20

// logBuffer keeps the first maxLog bytes written to it; safe for
// concurrent use.
type logBuffer struct {
	mu        sync.Mutex
	buf       bytes.Buffer
	truncated bool
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := maxLog - b.buf.Len()
	if len(p) > room {
		b.buf.Write(p[:max(room, 0)])
		b.truncated = true
		return len(p), nil
	}
	b.buf.Write(p)
	return len(p), nil
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.truncated {
		return b.buf.String() + "\n[log truncated]"
	}
	return b.buf.String()
}

// process is a child process that lives until the end of a test.
type process struct {
	name string
	cmd  *exec.Cmd
	logs *logBuffer
	done chan struct{} // closed once cmd.Wait returned
	err  error         // cmd.Wait's result, valid after done
}

// startProcess starts cmd in its own process group, output captured.
func startProcess(name string, cmd *exec.Cmd) (*process, error) {
	p := &process{name: name, cmd: cmd, logs: &logBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has ended, and how.
func (p *process) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// stop sends SIGTERM to the process group, then SIGKILL if the process has
// not ended after a grace period.
func (p *process) stop() error {
	if ended, _ := p.exited(); ended {
		return nil
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		// Children of the group (e.g. nix-daemon's per-connection workers)
		// may outlive the leader; end them too.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return nil
	case <-time.After(10 * time.Second):
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
		return errors.New(p.name + " ignored SIGTERM for 10s and was killed")
	case <-time.After(5 * time.Second):
		return errors.New(p.name + " survived SIGKILL for 5s")
	}
}

// cleanup registers the end of p with t.Cleanup: stop it and, if the test
// failed, log its output.
func (p *process) cleanup(t testing.TB) {
	t.Cleanup(func() {
		if err := p.stop(); err != nil {
			t.Errorf("testenv: stop %s: %v", p.name, err)
		}
		if t.Failed() {
			t.Logf("testenv: output of %s (%s):\n%s", p.name, p.cmd, p.logs)
		}
	})
}
