package launch

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// SSHDConfig says how StartSSHD runs sshd.
type SSHDConfig struct {
	// Address is the loopback IP sshd listens on.
	Address string
	// Port is the TCP port; 0 picks a free one.
	Port int
	// HostKeyFile is the private host key (an agent's
	// /etc/ssh/ssh_host_ed25519_key).
	HostKeyFile string
	// AuthorizedKeysFile is sshd's AuthorizedKeysFile pattern (DIR/%u).
	AuthorizedKeysFile string
	// Dir gets sshd_config and the pid file.
	Dir string
	// Daemon, if set, is where the sessions' Nix programs go: sshd passes
	// its NIX_REMOTE, NIX_DAEMON_SOCKET_PATH and NIX_CONF_DIR to every
	// session with SetEnv, so that a forced `nix-store --serve` or
	// `nix-daemon --stdio` reaches this daemon and not the default socket.
	Daemon *NixDaemon
	// ExtraConfig are more sshd_config lines, appended at the end.
	ExtraConfig []string
}

// SSHD is a running sshd started by StartSSHD.
type SSHD struct {
	// Address and Port are where sshd listens.
	Address string
	Port    int
	// HostKey is the public host key sshd presents.
	HostKey ssh.PublicKey
	// ConfigPath is the sshd_config file.
	ConfigPath string
	// Proc is sshd.
	Proc *Process
	// Retried says why a first port picked was not the one used.
	Retried []string
}

// Addr returns "address:port".
func (s *SSHD) Addr() string { return net.JoinHostPort(s.Address, strconv.Itoa(s.Port)) }

// StartSSHD writes an sshd_config from cfg and runs /usr/sbin/sshd -D -e
// with it, and waits until the port answers with an SSH banner. Key-only
// logins, no PAM, no StrictModes. Needs root.
func StartSSHD(cfg SSHDConfig) (*SSHD, error) {
	prog, err := LookSSHD()
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(cfg.Address); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("sshd address %q is not a loopback IP", cfg.Address)
	}
	raw, err := os.ReadFile(cfg.HostKeyFile)
	if err != nil {
		return nil, fmt.Errorf("read host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("parse host key %s: %w", cfg.HostKeyFile, err)
	}
	// sshd privilege separation needs this directory (systemd makes it
	// otherwise).
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return nil, fmt.Errorf("mkdir /run/sshd: %w", err)
	}
	s := &SSHD{Address: cfg.Address, HostKey: signer.PublicKey(), ConfigPath: filepath.Join(cfg.Dir, "sshd_config")}
	// A port picked free may be taken before sshd binds it: then try another.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		s.Port = cfg.Port
		if s.Port == 0 {
			if s.Port, err = FreePort(cfg.Address); err != nil {
				return nil, err
			}
		}
		if err := writeSSHDConfig(prog, s, cfg); err != nil {
			return nil, err
		}
		err := s.start(prog)
		if err == nil {
			return s, nil
		}
		if s.Proc == nil {
			return nil, err
		}
		ended, _ := s.Proc.Exited()
		if cfg.Port != 0 || attempt == attempts || !ended || !strings.Contains(s.Proc.Logs(), "Address already in use") {
			return nil, fmt.Errorf("sshd on %s: %w\nsshd log:\n%s", s.Addr(), err, s.Proc.Logs())
		}
		s.Retried = append(s.Retried, s.Proc.Logs())
	}
}

// LookSSHD finds sshd.
func LookSSHD() (string, error) {
	for _, p := range []string{"/usr/sbin/sshd", "/usr/bin/sshd"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath("sshd"); err == nil {
		return p, nil
	}
	return "", errors.New("no sshd (apt-get install openssh-server)")
}

// start runs sshd and waits for its banner; on failure sshd is stopped.
func (s *SSHD) start(prog string) error {
	var err error
	s.Proc, err = Start("sshd", exec.Command(prog, "-D", "-e", "-f", s.ConfigPath))
	if err != nil {
		return err
	}
	err = WaitFor(15*time.Second, 20*time.Millisecond, func() error {
		if ended, err := s.Proc.Exited(); ended {
			return fmt.Errorf("sshd exited (%v): %w", err, ErrStop)
		}
		return sshHostKey(s.Addr(), s.HostKey)
	})
	if err != nil {
		s.Proc.Stop()
		return fmt.Errorf("wait for the SSH banner: %w", err)
	}
	return nil
}

// sshHostKey connects to addr and checks, with an SSH handshake, that
// the server there shows key: that it is this sshd, not another server
// that held the port first. The handshake stops at authentication.
func sshHostKey(addr string, key ssh.PublicKey) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
		return err
	}
	config := &ssh.ClientConfig{User: "launch-check", HostKeyCallback: ssh.FixedHostKey(key),
		HostKeyAlgorithms: []string{key.Type()}}
	conn, _, _, err := ssh.NewClientConn(c, addr, config)
	if err == nil {
		conn.Close()
		return nil
	}
	if strings.Contains(err.Error(), "unable to authenticate") {
		return nil // the host key was accepted; no login was meant
	}
	return fmt.Errorf("SSH handshake: %w", err)
}

// writeSSHDConfig writes s.ConfigPath. PerSourcePenalties (OpenSSH 9.8+)
// would refuse a test's connections after a few failed logins: it is turned
// off where sshd knows it.
func writeSSHDConfig(prog string, s *SSHD, cfg SSHDConfig) error {
	lines := []string{
		"ListenAddress " + cfg.Address,
		"Port " + strconv.Itoa(s.Port),
		"HostKey " + cfg.HostKeyFile,
		"AuthorizedKeysFile " + cfg.AuthorizedKeysFile,
		"PidFile " + filepath.Join(cfg.Dir, "sshd.pid"),
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
				return fmt.Errorf("path %q cannot go into sshd_config SetEnv", v)
			}
		}
		lines = append(lines, "SetEnv "+strings.Join(d.Env(), " "))
	}
	lines = append(lines, cfg.ExtraConfig...)
	write := func(lines []string) error {
		if err := os.WriteFile(s.ConfigPath, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
			return fmt.Errorf("write sshd_config: %w", err)
		}
		return nil
	}
	if err := write(append(lines, "PerSourcePenalties no")); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if exec.CommandContext(ctx, prog, "-t", "-f", s.ConfigPath).Run() == nil {
		return nil
	}
	if err := write(lines); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, prog, "-t", "-f", s.ConfigPath).CombinedOutput(); err != nil {
		return fmt.Errorf("sshd -t rejects %s: %w\n%s", s.ConfigPath, err, out)
	}
	return nil
}

// FreePort returns a TCP port on the loopback address that was free a
// moment ago (nothing listens on it: connecting is refused).
func FreePort(address string) (int, error) {
	if ip := net.ParseIP(address); ip == nil || !ip.IsLoopback() {
		return 0, fmt.Errorf("%q is not a loopback IP", address)
	}
	l, err := net.Listen("tcp", net.JoinHostPort(address, "0"))
	if err != nil {
		return 0, fmt.Errorf("find a free port on %s: %w", address, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
