//go:build debtest

// Run by ./scripts/test.sh on its own, after every other test: while the
// package is installed its nixpeer group exists, which changes the mode
// of the status sockets other tests make.

package debpkg

import (
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// TestDebInstallsVerifiesAndRemoves builds the .deb, installs it with
// dpkg, checks the installed unit with systemd-analyze and the binary
// with "nixpeer version", then removes it (keys and state stay) and
// purges it (they go). It changes this machine: it needs root, and
// refuses to run where nixpeer is installed or /var/lib/nixpeer exists.
func TestDebInstallsVerifiesAndRemoves(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "dpkg", "dpkg-deb", "systemd-analyze", "git", "go", "lintian", "man")
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "nixpeer").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("the nixpeer package is installed on this machine (%s); this test installs and purges it: remove it first", out)
	}
	const state = "/var/lib/nixpeer"
	if _, err := os.Lstat(state); err == nil {
		t.Fatalf("%s exists on this machine; this test would purge it", state)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	out := run("../../scripts/deb.sh", t.TempDir())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	deb := lines[len(lines)-1]
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("scripts/deb.sh printed %q, want the path of a .deb last", out)
	}
	t.Cleanup(func() { exec.Command("dpkg", "-P", "nixpeer").Run() })

	// Debian's own checker: no error and no warning (overrides carry
	// their reason).
	lint, err := exec.Command("lintian", "--fail-on", "error,warning", deb).CombinedOutput()
	for _, l := range strings.Split(string(lint), "\n") {
		if strings.HasPrefix(l, "E: ") || strings.HasPrefix(l, "W: ") {
			t.Errorf("lintian: %s", l)
		}
	}
	if err != nil {
		t.Errorf("lintian --fail-on error,warning: %v\n%s", err, lint)
	}

	t.Log(run("dpkg", "-i", deb))
	for _, f := range []string{"/usr/bin/nixpeer", "/lib/systemd/system/nixpeer.service", "/etc/nixpeer/desired.yaml",
		"/usr/share/doc/nixpeer/copyright", "/usr/share/doc/nixpeer/changelog.gz",
		"/usr/share/bash-completion/completions/nixpeer", "/usr/share/zsh/vendor-completions/_nixpeer",
		"/usr/share/fish/vendor_completions.d/nixpeer.fish"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("installed: %v", err)
		}
	}
	if conffiles := run("dpkg-query", "-W", "-f", "${Conffiles}", "nixpeer"); !strings.Contains(conffiles, "/etc/nixpeer/desired.yaml") {
		t.Fatalf("desired.yaml is not a conffile: %q", conffiles)
	}
	if _, err := user.LookupGroup("nixpeer"); err != nil {
		t.Fatalf("the nixpeer group was not made: %v", err)
	}
	if unit := run("cat", "/lib/systemd/system/nixpeer.service"); !strings.Contains(unit, "ExecStart=/usr/bin/nixpeer run ") {
		t.Fatalf("the installed unit does not run /usr/bin/nixpeer:\n%s", unit)
	}
	run("systemd-analyze", "verify", "/lib/systemd/system/nixpeer.service")
	if v := run("/usr/bin/nixpeer", "version"); !strings.HasPrefix(v, "nixpeer 0.") {
		t.Fatalf("nixpeer version printed %q", v)
	}
	run("/usr/bin/nixpeer", "validate", "--config", "/etc/nixpeer/desired.yaml")
	// man finds both pages where the package put them.
	for _, page := range [][]string{{"nixpeer"}, {"5", "nixpeer-desired.yaml"}} {
		cmd := exec.Command("man", page...)
		cmd.Env = append(os.Environ(), "MANPAGER=cat", "LC_ALL=C.UTF-8")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "SEE ALSO") {
			t.Errorf("man %s: %v\n%s", strings.Join(page, " "), err, out)
		}
	}

	// Keys and state are kept on remove, and so is the changed conffile.
	key := filepath.Join(state, "keys/cache-priv-key.pem")
	if err := os.MkdirAll(filepath.Dir(key), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, []byte("a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run("dpkg", "-r", "nixpeer")
	if _, err := os.Stat("/usr/bin/nixpeer"); !os.IsNotExist(err) {
		t.Fatalf("/usr/bin/nixpeer after dpkg -r: %v", err)
	}
	if _, err := os.Stat(key); err != nil {
		t.Fatalf("the key after dpkg -r: %v", err)
	}
	if _, err := os.Stat("/etc/nixpeer/desired.yaml"); err != nil {
		t.Fatalf("the desired-state file after dpkg -r: %v", err)
	}

	// The agent's own Nix settings name the signing key purge deletes.
	const nixpeerConf = "/etc/nix/nixpeer.conf"
	if _, err := os.Lstat(nixpeerConf); err == nil {
		t.Fatalf("%s exists on this machine; this test would purge it", nixpeerConf)
	}
	if err := os.MkdirAll("/etc/nix", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(nixpeerConf, []byte("extra-secret-key-files = "+key+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	run("dpkg", "-P", "nixpeer")
	for _, gone := range []string{state, "/etc/nixpeer/desired.yaml", "/lib/systemd/system/nixpeer.service", nixpeerConf} {
		if _, err := os.Lstat(gone); !os.IsNotExist(err) {
			t.Errorf("%s after dpkg -P: %v", gone, err)
		}
	}
	if _, err := user.LookupGroup("nixpeer"); err == nil {
		t.Error("the nixpeer group is still there after dpkg -P")
	}
}
