package testenv

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nixpeer/nixpeer/internal/launch"
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
	// Daemon, if set, is where the sessions' Nix programs go (see
	// launch.SSHDConfig's Daemon).
	Daemon *NixDaemon
	// ExtraConfig are more sshd_config lines, appended at the end.
	ExtraConfig []string
}

// SSHD is a running sshd started by StartSSHD: launch.SSHD's Address,
// Port, HostKey (to pin in clients) and ConfigPath, and Dir.
type SSHD struct {
	*launch.SSHD
	// Dir holds sshd_config, the host key, the pid file and
	// authorized_keys/USER, all readable by other users.
	Dir string
}

// KnownHostsLine returns a known_hosts line for this sshd, such as
// "[127.0.0.2]:40123 ssh-ed25519 AAAA...", for an OpenSSH client's
// UserKnownHostsFile.
func (s *SSHD) KnownHostsLine() string {
	return knownhosts.Line([]string{knownhosts.Normalize(s.Addr())}, s.HostKey)
}

// Logs returns what sshd logged so far.
func (s *SSHD) Logs() string { return s.Proc.Logs() }

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
// with it (see launch.StartSSHD), waits until the port answers with an SSH
// banner, and stops sshd when the test ends (its log is printed if the
// test failed). The caller should also call RequireNixSSHUser when clients
// log in as nix-ssh.
func StartSSHD(t testing.TB, cfg SSHDConfig) *SSHD {
	t.Helper()
	RequireRoot(t)
	Require(t, "sshd")
	if cfg.Address == "" {
		cfg.Address = "127.0.0.2"
	}
	if cfg.HostKey == nil && cfg.HostKeyFile == "" {
		cfg.HostKey = NewKey(t)
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "authorized_keys"), 0o755); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	for u, content := range cfg.AuthorizedKeys {
		writeAuthorizedKeys(t, dir, u, content)
	}
	hostKeyPath := cfg.HostKeyFile
	if hostKeyPath == "" {
		hostKeyPath = filepath.Join(dir, "ssh_host_ed25519_key")
		cfg.HostKey.WritePrivateKey(t, hostKeyPath)
	}
	MakeTraversable(t, filepath.Join(dir, "authorized_keys"))
	if cfg.Daemon != nil {
		// The sessions' Nix programs read nix.conf as nix-ssh.
		// Nothing is changed outside the temporary directory (/etc/nix).
		if err := makeTraversable(cfg.Daemon.ConfDir); err != nil && !errors.Is(err, errNotTemp) {
			t.Fatalf("testenv: make %s traversable: %v", cfg.Daemon.ConfDir, err)
		}
	}
	authorized := cfg.AuthorizedKeysFile
	if authorized == "" {
		authorized = filepath.Join(dir, "authorized_keys", "%u")
	}
	ls := must(launch.StartSSHD(launch.SSHDConfig{Address: cfg.Address, Port: cfg.Port, HostKeyFile: hostKeyPath,
		AuthorizedKeysFile: authorized, Dir: dir, Daemon: cfg.Daemon, ExtraConfig: cfg.ExtraConfig}))(t)
	for _, r := range ls.Retried {
		t.Logf("testenv: sshd could not bind its first port, tried another:\n%s", r)
	}
	cleanup(t, ls.Proc, ls.Proc.Stop)
	return &SSHD{SSHD: ls, Dir: dir}
}

// FreePort is launch.FreePort, failing the test on an error.
func FreePort(t testing.TB, address string) int {
	t.Helper()
	return must(launch.FreePort(address))(t)
}

// Stop stops sshd now (a staging outage), before the test ends.
func (s *SSHD) Stop(t testing.TB) {
	t.Helper()
	if err := s.Proc.Stop(); err != nil {
		t.Fatalf("testenv: stop sshd: %v", err)
	}
}
