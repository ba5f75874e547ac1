package testenv

import (
	"bufio"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Key is an ed25519 key pair usable from Go (Signer) and, written with
// WritePrivateKey, by OpenSSH programs (sshd's HostKey, ssh -i).
type Key struct {
	// Private is the ed25519 private key.
	Private ed25519.PrivateKey
	// Signer signs with Private, for an ssh.ClientConfig or a probe.
	Signer ssh.Signer
}

// NewKey generates an ed25519 key pair.
func NewKey(t testing.TB) *Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("testenv: generate ed25519 key: %v", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatalf("testenv: ssh signer: %v", err)
	}
	return &Key{Private: priv, Signer: signer}
}

// PublicKey returns the public half in SSH form.
func (k *Key) PublicKey() ssh.PublicKey { return k.Signer.PublicKey() }

// WritePrivateKey writes the private key to path in OpenSSH format, mode
// 0600, as sshd and ssh expect.
func (k *Key) WritePrivateKey(t testing.TB, path string) {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(k.Private, "testenv")
	if err != nil {
		t.Fatalf("testenv: marshal private key: %v", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatalf("testenv: write private key: %v", err)
	}
}

// AuthorizedKeyLine returns an authorized_keys line that lets key in only to
// run command, with every forwarding and the TTY off, as nix.sshServe
// writes them: `command="nix-store --serve",restrict ssh-ed25519 AAAA...`.
// command must not contain a double quote.
func AuthorizedKeyLine(command string, key ssh.PublicKey) string {
	return fmt.Sprintf("command=%q,restrict %s", command, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))))
}

// SSHDConfig says how StartSSHD runs sshd.
type SSHDConfig struct {
	// Address is the loopback IP sshd listens on, default 127.0.0.2. Any
	// 127.x.y.z works on Linux without setup; other addresses are refused.
	Address string
	// Port is the TCP port; 0 picks a free one.
	Port int
	// HostKey is sshd's host key; nil generates one.
	HostKey *Key
	// HostKeyFile, if set, is an existing private host key file to use
	// instead of HostKey (an agent's /etc/ssh/ssh_host_ed25519_key).
	HostKeyFile string
	// AuthorizedKeysFile, if set, is sshd's AuthorizedKeysFile pattern
	// (such as DIR/%u), replacing the files AuthorizedKeys writes.
	AuthorizedKeysFile string
	// AuthorizedKeys maps a user name to the content of its authorized_keys
	// file (see AuthorizedKeyLine). sshd reads these files, as that user,
	// on every connection.
	AuthorizedKeys map[string]string
	// Daemon, if set, is where the sessions' Nix programs go: sshd passes
	// its NIX_REMOTE, NIX_DAEMON_SOCKET_PATH and NIX_CONF_DIR to every
	// session with SetEnv, so that a forced `nix-store --serve` or
	// `nix-daemon --stdio` reaches this test's daemon and not the default
	// socket.
	Daemon *NixDaemon
	// ExtraConfig are more sshd_config lines, appended at the end.
	ExtraConfig []string
}

// SSHD is a running sshd started by StartSSHD.
type SSHD struct {
	// Address and Port are where sshd listens.
	Address string
	Port    int
	// HostKey is the public host key sshd presents, to pin in clients.
	HostKey ssh.PublicKey
	// Dir holds sshd_config, the host key, the pid file and
	// authorized_keys/USER, all readable by other users.
	Dir string
	// ConfigPath is the sshd_config file.
	ConfigPath string

	proc *process
}

// Addr returns "address:port".
func (s *SSHD) Addr() string { return net.JoinHostPort(s.Address, strconv.Itoa(s.Port)) }

// KnownHostsLine returns a known_hosts line for this sshd, such as
// "[127.0.0.2]:40123 ssh-ed25519 AAAA...", for an OpenSSH client's
// UserKnownHostsFile.
func (s *SSHD) KnownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, s.HostKey)
}

// Logs returns what sshd logged so far.
func (s *SSHD) Logs() string { return s.proc.logs.String() }

func writeAuthorizedKeys(t testing.TB, dir, userName, content string) {
	t.Helper()
	if userName == "" || strings.ContainsAny(userName, "/.") {
		t.Fatalf("testenv: bad user name %q", userName)
	}
	if content != "" && !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	path := filepath.Join(dir, "authorized_keys", userName)
	if err := os.WriteFile(path+".tmp", []byte(content), 0o644); err != nil {
		t.Fatalf("testenv: write authorized keys: %v", err)
	}
	if err := os.Chmod(path+".tmp", 0o644); err != nil { // whatever the umask
		t.Fatalf("testenv: chmod authorized keys: %v", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		t.Fatalf("testenv: rename authorized keys: %v", err)
	}
}

// StartSSHD writes an sshd_config from cfg and runs /usr/sbin/sshd -D -e
// with it, waits until the port answers with an SSH banner, and stops sshd
// when the test ends (its log is printed if the test failed). Key-only
// logins, no PAM, no StrictModes. The caller should also call
// RequireNixSSHUser when clients log in as nix-ssh.
func StartSSHD(t testing.TB, cfg SSHDConfig) *SSHD {
	t.Helper()
	RequireRoot(t)
	Require(t, "sshd")
	prog, err := LookPath("sshd")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if cfg.Address == "" {
		cfg.Address = "127.0.0.2"
	}
	if ip := net.ParseIP(cfg.Address); ip == nil || !ip.IsLoopback() {
		t.Fatalf("testenv: sshd address %q is not a loopback IP", cfg.Address)
	}
	if cfg.HostKey == nil && cfg.HostKeyFile == "" {
		cfg.HostKey = NewKey(t)
	}
	// sshd privilege separation needs this directory (systemd makes it
	// otherwise).
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatalf("testenv: mkdir /run/sshd: %v", err)
	}

	s := &SSHD{Address: cfg.Address, Dir: t.TempDir()}
	if err := os.Mkdir(filepath.Join(s.Dir, "authorized_keys"), 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for u, content := range cfg.AuthorizedKeys {
		writeAuthorizedKeys(t, s.Dir, u, content)
	}
	hostKeyPath := cfg.HostKeyFile
	if hostKeyPath == "" {
		hostKeyPath = filepath.Join(s.Dir, "ssh_host_ed25519_key")
		cfg.HostKey.WritePrivateKey(t, hostKeyPath)
		s.HostKey = cfg.HostKey.PublicKey()
	} else {
		raw, err := os.ReadFile(hostKeyPath)
		if err != nil {
			t.Fatalf("testenv: read host key: %v", err)
		}
		signer, err := ssh.ParsePrivateKey(raw)
		if err != nil {
			t.Fatalf("testenv: parse host key %s: %v", hostKeyPath, err)
		}
		s.HostKey = signer.PublicKey()
	}
	MakeTraversable(t, filepath.Join(s.Dir, "authorized_keys"))
	if cfg.Daemon != nil {
		// The sessions' Nix programs read nix.conf as nix-ssh.
		makeTraversableIfTemp(t, cfg.Daemon.ConfDir)
	}
	s.ConfigPath = filepath.Join(s.Dir, "sshd_config")

	// A port picked free may be taken before sshd binds it: then try another.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		s.Port = cfg.Port
		if s.Port == 0 {
			s.Port = freePort(t, cfg.Address)
		}
		writeSSHDConfig(t, prog, s, cfg, hostKeyPath)
		err := s.start(prog)
		if err == nil {
			break
		}
		if s.proc == nil {
			t.Fatalf("testenv: %v", err)
		}
		ended, _ := s.proc.exited()
		if cfg.Port != 0 || attempt == attempts || !ended || !strings.Contains(s.proc.logs.String(), "Address already in use") {
			t.Fatalf("testenv: sshd on %s: %v\nsshd log:\n%s", s.Addr(), err, s.proc.logs)
		}
		t.Logf("testenv: sshd could not bind %s, trying another port:\n%s", s.Addr(), s.proc.logs)
	}
	s.proc.cleanup(t)
	return s
}

// start runs sshd and waits for its banner; on failure sshd is stopped.
func (s *SSHD) start(prog string) error {
	var err error
	s.proc, err = startProcess("sshd", exec.Command(prog, "-D", "-e", "-f", s.ConfigPath))
	if err != nil {
		return err
	}
	err = waitFor(15*time.Second, 20*time.Millisecond, func() error {
		if ended, err := s.proc.exited(); ended {
			return fmt.Errorf("sshd exited (%v): %w", err, errStop)
		}
		return sshBanner(s.Addr())
	})
	if err != nil {
		s.proc.stop()
		return fmt.Errorf("wait for the SSH banner: %w", err)
	}
	return nil
}

// sshBanner connects to addr and reads the server's identification line.
func sshBanner(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return fmt.Errorf("read banner: %w", err)
	}
	if !strings.HasPrefix(line, "SSH-2.0-") {
		return fmt.Errorf("not an SSH banner: %q", line)
	}
	return nil
}

// writeSSHDConfig writes s.ConfigPath. PerSourcePenalties (OpenSSH 9.8+)
// would refuse a test's connections after a few failed logins: it is turned
// off where sshd knows it.
func writeSSHDConfig(t testing.TB, prog string, s *SSHD, cfg SSHDConfig, hostKeyPath string) {
	t.Helper()
	lines := []string{
		"ListenAddress " + cfg.Address,
		"Port " + strconv.Itoa(s.Port),
		"HostKey " + hostKeyPath,
		"AuthorizedKeysFile " + authorizedKeysFile(s, cfg),
		"PidFile " + filepath.Join(s.Dir, "sshd.pid"),
		"StrictModes no",
		"UsePAM no",
		"PasswordAuthentication no",
		"KbdInteractiveAuthentication no",
		"PubkeyAuthentication yes",
		"PermitRootLogin no",
	}
	if d := cfg.Daemon; d != nil {
		for _, v := range []string{d.Socket, d.ConfDir} {
			if strings.ContainsAny(v, " \t\"'\\") {
				t.Fatalf("testenv: path %q cannot go into sshd_config SetEnv", v)
			}
		}
		lines = append(lines, "SetEnv "+strings.Join(d.Env(), " "))
	}
	lines = append(lines, cfg.ExtraConfig...)
	write := func(lines []string) {
		if err := os.WriteFile(s.ConfigPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			t.Fatalf("testenv: write sshd_config: %v", err)
		}
	}
	write(append(lines, "PerSourcePenalties no"))
	if exec.Command(prog, "-t", "-f", s.ConfigPath).Run() == nil {
		return
	}
	write(lines)
	if out, err := exec.Command(prog, "-t", "-f", s.ConfigPath).CombinedOutput(); err != nil {
		t.Fatalf("testenv: sshd -t rejects %s: %v\n%s", s.ConfigPath, err, out)
	}
}

func authorizedKeysFile(s *SSHD, cfg SSHDConfig) string {
	if cfg.AuthorizedKeysFile != "" {
		return cfg.AuthorizedKeysFile
	}
	return filepath.Join(s.Dir, "authorized_keys", "%u")
}

// freePort returns a TCP port that was free on address a moment ago.
func freePort(t testing.TB, address string) int {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(address, "0"))
	if err != nil {
		t.Fatalf("testenv: find a free port on %s: %v", address, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreePort returns a TCP port on the loopback address that was free a
// moment ago (nothing listens on it: connecting is refused).
func FreePort(t testing.TB, address string) int {
	t.Helper()
	if ip := net.ParseIP(address); ip == nil || !ip.IsLoopback() {
		t.Fatalf("testenv: %q is not a loopback IP", address)
	}
	return freePort(t, address)
}

// makeTraversableIfTemp is MakeTraversable for a path below the temporary
// directory and does nothing for any other path (such as /etc/nix).
func makeTraversableIfTemp(t testing.TB, path string) {
	t.Helper()
	err := makeTraversable(path)
	if err != nil && !errors.Is(err, errNotTemp) {
		t.Fatalf("testenv: make %s traversable: %v", path, err)
	}
}

// Stop stops sshd now (a staging outage), before the test ends.
func (s *SSHD) Stop(t testing.TB) {
	t.Helper()
	if err := s.proc.stop(); err != nil {
		t.Fatalf("testenv: stop sshd: %v", err)
	}
}
