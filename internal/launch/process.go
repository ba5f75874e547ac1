// Package launch runs the real programs nixpeer works with, a nix-daemon
// and an OpenSSH sshd, as child processes on loopback addresses, private
// sockets and directories: for the tests (through internal/testenv) and
// for `nixpeer demo`. Every wait has a deadline; every child runs in a
// process group of its own and is killed if this process dies.
package launch

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
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
	room := max(maxLog-b.buf.Len(), 0)
	b.truncated = b.truncated || len(p) > room
	b.buf.Write(p[:min(len(p), room)])
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

// Process is a child process started by Start.
type Process struct {
	Name string
	cmd  *exec.Cmd
	logs *logBuffer
	done chan struct{} // closed once cmd.Wait returned
	err  error         // cmd.Wait's result, valid after done
}

// Pid is the process's id.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Start starts cmd in a process group of its own, its output kept (see
// Logs). The child gets SIGKILL if this process dies first (a demo killed
// by a signal leaves no sshd or nix-daemon behind).
func Start(name string, cmd *exec.Cmd) (*Process, error) {
	p := &Process{Name: name, cmd: cmd, logs: &logBuffer{}, done: make(chan struct{})}
	cmd.Stdout = p.logs
	cmd.Stderr = p.logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// Logs returns what the process printed so far.
func (p *Process) Logs() string { return p.logs.String() }

// String names the process and its command line.
func (p *Process) String() string { return p.Name + " (" + p.cmd.String() + ")" }

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL if the process has
// not ended after a grace period.
func (p *Process) Stop() error {
	if ended, _ := p.Exited(); ended {
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
		return errors.New(p.Name + " ignored SIGTERM for 10s and was killed")
	case <-time.After(5 * time.Second):
		return errors.New(p.Name + " survived SIGKILL for 5s")
	}
}

// WaitFor polls cond every interval until it returns nil or timeout
// passes; a cond that returns an error wrapping ErrStop ends the wait at
// once.
func WaitFor(timeout, interval time.Duration, cond func() error) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrStop) {
			return err
		}
		select {
		case <-deadline.C:
			return fmt.Errorf("not done after %v: %w", timeout, err)
		case <-tick.C:
		}
	}
}

// ErrStop, wrapped in a condition's error, ends WaitFor at once.
var ErrStop = errors.New("giving up")
