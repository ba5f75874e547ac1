package launch

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NixSSHUser is the system user a Nix store is served to over SSH, as
// NixOS's nix.sshServe creates it.
const NixSSHUser = "nix-ssh"

// NixUsersGroup is the group, created by Debian's nix-bin, whose members may
// connect to the nix-daemon socket.
const NixUsersGroup = "nix-users"

// NixDaemon is a nix-daemon started by StartNixDaemon. It serves the
// machine's /nix/store through its own socket; clients reach it with Env.
type NixDaemon struct {
	// Socket is the path of the daemon's unix socket. Its directory is
	// group nix-users, mode 0750, so nix-ssh can reach it.
	Socket string
	// ConfDir is the NIX_CONF_DIR the daemon reads nix.conf from.
	ConfDir string
	// Proc is the daemon, or the shell that restarts it.
	Proc *Process
	// pidFile, of a restartable daemon, holds the current daemon's pid.
	pidFile string
}

// Env returns the environment variables that send a Nix client (nix-build,
// nix-store, nix) to this daemon with its configuration. Append them to
// os.Environ(): for exec.Cmd the last value of a variable wins.
func (d *NixDaemon) Env() []string {
	return []string{
		"NIX_REMOTE=daemon",
		"NIX_DAEMON_SOCKET_PATH=" + d.Socket,
		"NIX_CONF_DIR=" + d.ConfDir,
	}
}

// RestartCommand is the argv that makes a restartable daemon start anew
// and read nix.conf again, as systemctl restart nix-daemon would on a
// host; nil for a daemon that is not restartable. Like systemctl, it
// returns once the new daemon runs (its pid is in the pid file), or after
// 10 s. The socket stays open meanwhile (see StartNixDaemon), so a client
// that connects then waits for the new daemon, as with systemd's
// nix-daemon.socket.
func (d *NixDaemon) RestartCommand() []string {
	if d.pidFile == "" {
		return nil
	}
	return []string{"/bin/sh", "-c", `old=$(cat "$0"); kill "$old" || exit; i=0; while [ $i -lt 1000 ]; do n=$(cat "$0" 2>/dev/null); [ -n "$n" ] && [ "$n" != "$old" ] && kill -0 "$n" 2>/dev/null && exit 0; sleep 0.01; i=$((i+1)); done`,
		d.pidFile}
}

// WriteNixConf writes dir/nix.conf for a machine without internet: no
// substituters, no sandbox (bare derivations call /bin/sh), the nix-command
// feature, then extraLines, one per line. It returns the file's path.
func WriteNixConf(dir string, extraLines ...string) (string, error) {
	lines := append([]string{
		"substituters =",
		"sandbox = false",
		"experimental-features = nix-command",
	}, extraLines...)
	path := filepath.Join(dir, "nix.conf")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("write nix.conf: %w", err)
	}
	return path, nil
}

// StartNixDaemon starts a nix-daemon with NIX_CONF_DIR=confDir on a
// socket in sockDir (which it makes reachable to nix-users; keep its path
// short, a unix socket path stays below 108 bytes), and waits until the
// socket accepts connections. A restartable daemon is kept running by a
// shell, and RestartCommand ends the current one so that a new one starts.
// Several may run at once: they share /nix/store, which Nix locks.
func StartNixDaemon(confDir, sockDir string, restartable bool) (*NixDaemon, error) {
	prog, err := exec.LookPath("nix-daemon")
	if err != nil {
		return nil, fmt.Errorf("no nix-daemon: %w (apt-get install nix-bin)", err)
	}
	if err := ShareWithNixUsers(sockDir); err != nil {
		return nil, fmt.Errorf("socket directory %s: %w", sockDir, err)
	}
	d := &NixDaemon{Socket: filepath.Join(sockDir, "socket"), ConfDir: confDir}
	cmd := exec.Command(prog)
	cmd.Env = append(CleanNixEnv(os.Environ()),
		"NIX_CONF_DIR="+confDir,
		"NIX_DAEMON_SOCKET_PATH="+d.Socket,
	)
	if restartable {
		d.pidFile = filepath.Join(sockDir, "pid")
		// As systemd's nix-daemon.socket: the socket is made here and
		// handed to each daemon the loop starts (LISTEN_FDS, fd 3), so
		// it accepts connections while the daemon restarts. The loop
		// ends with its process group. Each daemon dies with the loop
		// (setpriv, where there is one), and a daemon that cannot start
		// is not restarted in a tight loop.
		ln, err := net.Listen("unix", d.Socket)
		if err != nil {
			return nil, fmt.Errorf("nix-daemon socket: %w", err)
		}
		if err := os.Chmod(d.Socket, 0o666); err != nil { // as nix-daemon makes it
			ln.Close()
			return nil, err
		}
		ul := ln.(*net.UnixListener)
		ul.SetUnlinkOnClose(false)
		f, err := ul.File()
		ul.Close() // f is the socket now
		if err != nil {
			return nil, err
		}
		defer f.Close() // the loop has its copy
		cmd = exec.Command("/bin/sh", "-c", `pd=; command -v setpriv >/dev/null 2>&1 && pd="setpriv --pdeathsig KILL --"
while :; do $pd /bin/sh -c 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0"' "$0" & echo $! > "$1"; wait $!; sleep 0.2; done`, prog, d.pidFile)
		cmd.Env = append(CleanNixEnv(os.Environ()), "NIX_CONF_DIR="+confDir)
		cmd.ExtraFiles = []*os.File{f}
	}
	if d.Proc, err = Start("nix-daemon", cmd); err != nil {
		return nil, err
	}
	err = WaitFor(15*time.Second, 20*time.Millisecond, func() error {
		if ended, err := d.Proc.Exited(); ended {
			return fmt.Errorf("nix-daemon exited (%v): %s: %w", err, d.Proc.Logs(), ErrStop)
		}
		c, err := net.DialTimeout("unix", d.Socket, time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		d.Proc.Stop()
		return nil, fmt.Errorf("wait for nix-daemon to accept on %s: %w\nits output:\n%s", d.Socket, err, d.Proc.Logs())
	}
	return d, nil
}

// ShareWithNixUsers makes dir group nix-users, mode 0750, like
// /nix/var/nix/daemon-socket; without that group (or as non-root) the
// directory is made 0755 instead.
func ShareWithNixUsers(dir string) error {
	if g, err := user.LookupGroup(NixUsersGroup); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil && os.Chown(dir, -1, gid) == nil {
			return os.Chmod(dir, 0o750)
		}
	}
	return os.Chmod(dir, 0o755)
}

// CleanNixEnv drops the variables that would point a Nix program at
// another daemon or configuration.
func CleanNixEnv(env []string) []string {
	var out []string
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "NIX_REMOTE", "NIX_DAEMON_SOCKET_PATH", "NIX_CONF_DIR", "NIX_USER_CONF_FILES", "NIX_CONFIG", "NIX_SSHOPTS":
			continue
		}
		out = append(out, kv)
	}
	return out
}
