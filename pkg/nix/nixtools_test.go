package nix

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// requireNix: the test runs real Nix (testenv.Require: skipped under
// -short, a failure with CI=true when missing).
func requireNix(t testing.TB, programs ...string) {
	t.Helper()
	testenv.Require(t, programs...)
}

// nixEnv returns environment entries that make Nix read only a nix.conf of
// the test's own (no network substituter, no user configuration), plus
// extra.
func nixEnv(t testing.TB, extra ...string) []string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix.conf"), []byte("substituters =\nsandbox = false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{
		"NIX_CONF_DIR=" + dir,
		"NIX_USER_CONF_FILES=" + filepath.Join(dir, "no-user-conf"),
		"NIX_CONFIG=",
	}
	return append(env, extra...)
}

// runProgram runs a program with env added to the test's environment and
// returns its standard output; it fails the test on an error.
func runProgram(t testing.TB, env []string, name string, args ...string) []byte {
	t.Helper()
	out, err := tryProgram(env, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// tryProgram runs a program and returns its standard output, or an error
// that holds its standard error.
func tryProgram(env []string, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), &programError{err: err, stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

type programError struct {
	err    error
	stderr string
}

func (e *programError) Error() string { return e.err.Error() + ": " + strings.TrimSpace(e.stderr) }
