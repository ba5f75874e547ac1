// Package command runs the external programs the agent calls (apply, nix
// store sign, nix show-config) so that none of them outlives its reason:
// each runs in a process group of its own, and when its context ends the
// whole group is killed, children included, and Run returns within
// WaitDelay even if a grandchild holds the output pipe open.
package command

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// WaitDelay bounds how long Run waits for the output pipes to close after
// the process group was killed.
const WaitDelay = 2 * time.Second

// Result is what a finished command gave.
type Result struct {
	Stdout []byte
	Stderr []byte
}

// Run runs argv with env added to this process's environment, until it
// exits or ctx ends; then SIGKILL goes to its whole process group. A
// non-zero exit, a failure to start, or the end of ctx is an error naming
// the command; the output is returned in every case.
func Run(ctx context.Context, argv []string, env []string) (Result, error) {
	var stdout bytes.Buffer
	stderr, err := Stream(ctx, argv, env, &stdout)
	return Result{Stdout: stdout.Bytes(), Stderr: stderr}, err
}

// Stream runs argv as Run does, writing its standard output to stdout as
// it comes, and returns its standard error.
func Stream(ctx context.Context, argv []string, env []string, stdout io.Writer) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("run: empty command")
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The negative pid is the process group: the command and
		// everything it started.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	cmd.WaitDelay = WaitDelay
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = stdout, &stderr
	err := cmd.Run()
	res := stderr.Bytes()
	if err == nil {
		return res, nil
	}
	name := strings.Join(argv, " ")
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return res, fmt.Errorf("%s: timed out, killed", name)
	case ctx.Err() != nil:
		return res, fmt.Errorf("%s: stopped: %w", name, ctx.Err())
	}
	return res, fmt.Errorf("%s: %w", name, err)
}

// Tail returns the end of out, at most n bytes, trimmed, for messages.
func Tail(out []byte, n int) string {
	out = bytes.TrimSpace(out)
	if len(out) > n {
		out = append([]byte("..."), out[len(out)-n:]...)
	}
	return string(out)
}
