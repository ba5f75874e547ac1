package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// demoTimeout bounds the wait for both agents.
const demoTimeout = 60 * time.Second

// The demo's hosts, on loopback addresses.
const (
	demoStageAddr = "127.0.0.2"
	demoProdAddr  = "127.0.0.3"
)

// cmdDemo starts a staging and a production agent on loopback addresses in
// a temporary directory and shows them converge. As root, with Nix and
// sshd installed, it also runs staging's nix-daemon and sshd, builds a
// path there and has production fetch it.
func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo")
	keep := fs.Bool("keep", false, "keep the demo's directory (its files and agent logs) afterwards")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	dir, err := os.MkdirTemp("", "nixpeer-demo-")
	if err != nil {
		return err
	}
	// sshd reads staging's authorized keys as nix-ssh.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	if *keep {
		defer fmt.Fprintf(stdout, "\nThe demo's files and logs stay in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	d := &demo{dir: dir, out: stdout, S: filepath.Join(dir, "stage"), P: filepath.Join(dir, "prod")}
	defer d.cleanup()
	return d.run(ctx)
}

type demo struct {
	dir, S, P string
	out       io.Writer
	mu        sync.Mutex // serializes output
	start     time.Time
	real      bool // real nix-daemon and sshd for staging
	sshPort   int
	daemonDir string
	stops     []func()
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.out, format+"\n", args...)
}

func (d *demo) cleanup() {
	for i := len(d.stops) - 1; i >= 0; i-- {
		d.stops[i]()
	}
}

func (d *demo) run(ctx context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	missing := demoMissing()
	d.real = missing == ""
	d.sshPort = freePort(demoStageAddr, 22)
	stagePeerPort, prodPeerPort := freePort(demoStageAddr, 7722), freePort(demoProdAddr, 7722)
	for _, root := range []string{d.S, d.P} {
		// The hosts' own nix.conf: no binary cache (this may run offline),
		// and builds without a sandbox (the demo's builder is /bin/sh).
		if err := os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, "etc/nix/nix.conf"), []byte("substituters =\nsandbox = false\n"), 0o644); err != nil {
			return err
		}
	}
	stageApply := `["true"]`
	if d.real {
		if stageApply, err = d.startNixDaemon(ctx); err != nil {
			return err
		}
	}
	config := filepath.Join(d.dir, "desired.yaml")
	desired := fmt.Sprintf(`apiVersion: nixpeer/v1
hosts:
  - name: stage
    address: %s
    sshPort: %d
    peerPort: %d
    platform: nix
    apply: %s
    serve: {}
  - name: prod
    address: %s
    peerPort: %d
    platform: nix
    apply: ["true"]
    substituteFrom: [stage]
`, demoStageAddr, d.sshPort, stagePeerPort, stageApply, demoProdAddr, prodPeerPort)
	if err := os.WriteFile(config, []byte(desired), 0o644); err != nil {
		return err
	}
	d.say("nixpeer demo in %s\n\nThe desired state, the same for both hosts (%s):\n\n%s", d.dir, config, desired)
	if d.real {
		d.say("Staging runs a real nix-daemon and sshd on %s:%d.", demoStageAddr, d.sshPort)
	} else {
		d.say("Skipped: staging's nix-daemon and sshd, the build and the fetch (%s).\nThe agents still exchange their keys; production stops at the probe of staging's sshd.", missing)
	}
	d.say("\nStarting both agents; nothing is copied by hand.\n")

	d.start = time.Now()
	stage, err := d.startAgent(ctx, self, config, "stage", d.S)
	if err != nil {
		return err
	}
	prod, err := d.startAgent(ctx, self, config, "prod", d.P)
	if err != nil {
		return err
	}
	if d.real {
		if err := d.startSSHD(ctx); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	var wg sync.WaitGroup
	final := make([]status.Status, 2)
	// Staging is done once it lets production in; production once it
	// uses staging, or, without staging's sshd, once it waits on its probe.
	done := []func(status.Status) bool{
		func(st status.Status) bool {
			return (st.Ready || !d.real) && st.ObservedGeneration == st.Generation && peerIn(st, status.PeerKeysKnown)
		},
		func(st status.Status) bool {
			return (st.Ready && st.ObservedGeneration == st.Generation) || (!d.real && peerIn(st, status.PeerProbeFailed))
		},
	}
	for i, a := range []*demoAgent{stage, prod} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			final[i] = d.follow(ctx, a, done[i])
		}()
	}
	wg.Wait()
	took := time.Since(d.start)
	for i, a := range []*demoAgent{stage, prod} {
		if st, err := a.client.Status(ctx); err == nil {
			final[i] = st
		}
	}
	both := final[0].Ready && final[1].Ready
	if both {
		d.say("\nBoth agents Ready %v after they started.", took.Round(time.Millisecond))
	} else {
		d.say("\nAfter %v: staging Ready %v, production Ready %v.", took.Round(time.Millisecond), final[0].Ready, final[1].Ready)
	}
	for i, a := range []*demoAgent{stage, prod} {
		d.say("\nFiles the %s agent wrote (under %s):", a.name, a.root)
		for _, f := range final[i].Files {
			d.say("  %s", strings.TrimPrefix(f.Path, a.root))
		}
	}
	for i, a := range []*demoAgent{stage, prod} {
		d.say("\n$ nixpeer status --root %s   # %s", a.root, a.name)
		var b bytes.Buffer
		printStatus(&b, final[i], time.Now())
		d.say("%s", strings.TrimRight(b.String(), "\n"))
	}
	if d.real && both {
		return d.buildAndFetch(ctx)
	}
	if !both && d.real {
		return &exitError{code: 1, msg: "nixpeer demo: the agents did not converge; see their logs with --keep"}
	}
	return nil
}

// demoMissing says why staging's real parts cannot run here, or "".
func demoMissing() string {
	var missing []string
	if os.Geteuid() != 0 {
		return "run as root to start sshd and nix-daemon"
	}
	for _, p := range []string{"nix-daemon", "nix-store", "nix-build", "nix"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return "no " + strings.Join(missing, ", ") + ": apt-get install nix-bin"
	}
	if _, err := os.Stat("/usr/sbin/sshd"); err != nil {
		return "no /usr/sbin/sshd: apt-get install openssh-server"
	}
	if _, err := user.Lookup("nix-ssh"); err != nil {
		return "no user nix-ssh: useradd --system --gid nix-users --shell /bin/bash --home-dir /var/empty --password '*' nix-ssh"
	}
	return ""
}

// startNixDaemon runs staging's nix-daemon on a socket of its own,
// restarting it whenever it exits, and returns the apply command (as YAML)
// that restarts it, as systemctl restart nix-daemon would.
func (d *demo) startNixDaemon(ctx context.Context) (string, error) {
	d.daemonDir = filepath.Join(d.dir, "nixd")
	if err := os.MkdirAll(d.daemonDir, 0o755); err != nil {
		return "", err
	}
	if g, err := user.LookupGroup("nix-users"); err == nil {
		if gid, err := strconv.Atoi(g.Gid); err == nil {
			os.Chown(d.daemonDir, -1, gid)
			os.Chmod(d.daemonDir, 0o750)
		}
	}
	pidFile := filepath.Join(d.daemonDir, "pid")
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", `while :; do nix-daemon & echo $! > "$0"; wait $!; done`, pidFile)
	// The daemon itself gets no NIX_REMOTE: it would talk to itself.
	cmd.Env = append(os.Environ(), d.daemonEnv()[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := d.startProcess("nix-daemon", cmd); err != nil {
		return "", err
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("unix", filepath.Join(d.daemonDir, "socket"))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("staging's nix-daemon does not answer: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Sprintf(`["/bin/sh", "-c", "kill $(cat %s)"]`, pidFile), nil
}

// daemonEnv sends Nix programs to staging's daemon and configuration;
// NIX_REMOTE comes first.
func (d *demo) daemonEnv() []string {
	return []string{"NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH=" + filepath.Join(d.daemonDir, "socket"),
		"NIX_CONF_DIR=" + filepath.Join(d.S, "etc/nix")}
}

// startSSHD runs staging's sshd with the staging agent's host key and
// authorized keys, once the agent has made the host key.
func (d *demo) startSSHD(ctx context.Context) error {
	hostKey := filepath.Join(d.S, "etc/ssh/ssh_host_ed25519_key")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(hostKey + ".pub"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return errors.New("the staging agent made no host key")
		}
		time.Sleep(10 * time.Millisecond)
	}
	os.Chmod(filepath.Join(d.S, "etc/ssh"), 0o755)
	os.Chmod(d.S, 0o755)
	os.MkdirAll("/run/sshd", 0o755)
	conf := filepath.Join(d.dir, "sshd_config")
	lines := []string{
		"ListenAddress " + demoStageAddr, "Port " + strconv.Itoa(d.sshPort), "HostKey " + hostKey,
		"AuthorizedKeysFile " + filepath.Join(d.S, "etc/ssh/authorized_keys.d/%u"),
		"PidFile " + filepath.Join(d.dir, "sshd.pid"), "StrictModes no", "UsePAM no",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "PermitRootLogin no",
		"SetEnv " + strings.Join(d.daemonEnv(), " "),
	}
	if err := os.WriteFile(conf, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	return d.startProcess("sshd", exec.CommandContext(ctx, "/usr/sbin/sshd", "-D", "-e", "-f", conf))
}

func (d *demo) startProcess(name string, cmd *exec.Cmd) error {
	log, err := os.Create(filepath.Join(d.dir, name+".log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	d.stops = append(d.stops, func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		cmd.Wait()
		log.Close()
	})
	return nil
}

type demoAgent struct {
	name, root string
	client     *api.Client
}

func (d *demo) startAgent(ctx context.Context, self, config, name, root string) (*demoAgent, error) {
	cmd := exec.CommandContext(ctx, self, "run", "--config", config, "--host", name, "--root", root, "--log-level", "info")
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	if err := d.startProcess(name+"-agent", cmd); err != nil {
		return nil, err
	}
	return &demoAgent{name: name, root: root, client: api.NewClient(filepath.Join(root, "run/nixpeer/agent.sock"))}, nil
}

// peerIn reports whether the agent's (only) peer is in state.
func peerIn(st status.Status, state status.PeerState) bool {
	return len(st.Peers) > 0 && st.Peers[0].State == state
}

// freePort returns port if it is free on address, else a free one.
func freePort(address string, port int) int {
	if ln, err := net.Listen("tcp", net.JoinHostPort(address, strconv.Itoa(port))); err == nil {
		ln.Close()
		return port
	}
	if ln, err := net.Listen("tcp", net.JoinHostPort(address, "0")); err == nil {
		defer ln.Close()
		return ln.Addr().(*net.TCPAddr).Port
	}
	return port
}

// follow prints each change of an agent's summary until done, and returns
// the last status.
func (d *demo) follow(ctx context.Context, a *demoAgent, done func(status.Status) bool) status.Status {
	var last status.Status
	var lastLine string
	for ctx.Err() == nil {
		var st status.Status
		var err error
		if last.LastReconcile.IsZero() {
			st, err = a.client.Status(ctx)
		} else {
			st, err = a.client.WaitReconciled(ctx, last.LastReconcile, 5*time.Second)
		}
		if err != nil {
			select { // not listening yet
			case <-ctx.Done():
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		last = st
		line := summary(st)
		if line != lastLine {
			d.say("[%6.0fms] %-5s %s", float64(time.Since(d.start).Microseconds())/1000, a.name, line)
			lastLine = line
		}
		if done(st) {
			return st
		}
	}
	return last
}

// summary is one line of an agent's state: Ready or what it waits on, and
// where each peer stands.
func summary(st status.Status) string {
	line := "Ready"
	if c := status.Find(st.Conditions, status.Ready); c == nil || c.Status != status.True {
		reason := "starting"
		if c != nil {
			reason = c.Reason
		}
		line = "not Ready (" + reason + ")"
	}
	for _, p := range st.Peers {
		line += fmt.Sprintf("; %s %s: %s", p.Role, p.Name, p.State)
	}
	return line
}

// buildAndFetch builds a path on staging's daemon, shows its signature,
// and has production fetch it with only its agent's files.
func (d *demo) buildAndFetch(ctx context.Context) error {
	expr := fmt.Sprintf(`derivation { name = "nixpeer-demo"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built on staging at %d > $out" ]; }`, time.Now().UnixNano())
	build := exec.CommandContext(ctx, "nix-build", "--no-out-link", "-E", expr)
	build.Env = append(os.Environ(), d.daemonEnv()...)
	out, err := build.Output()
	if err != nil {
		return fmt.Errorf("build on staging: %w", err)
	}
	path := strings.TrimSpace(string(out))
	d.say("\n$ nix-build -E '...'   # on staging, through its nix-daemon\n%s", path)
	sigs, _ := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command", "path-info", "--sigs", path).CombinedOutput()
	d.say("$ nix path-info --sigs %s\n%s", path, strings.TrimSpace(string(sigs)))

	store := filepath.Join(d.dir, "prod-store")
	fetch := exec.CommandContext(ctx, "nix-store", "--store", store, "-r", path)
	fetch.Env = append(os.Environ(), "NIX_CONF_DIR="+filepath.Join(d.P, "etc/nix"))
	prefix := ""
	if d.sshPort != 22 {
		// Nix before 2.31 takes no port from the URL: root's ssh config has it.
		fetch.Env = append(fetch.Env, "NIX_SSHOPTS=-F "+filepath.Join(d.P, "root/.ssh/config"))
		prefix = "NIX_SSHOPTS='-F " + filepath.Join(d.P, "root/.ssh/config") + "' "
	}
	got, err := fetch.CombinedOutput()
	d.say("\n$ %sNIX_CONF_DIR=%s nix-store --store %s -r %s   # on production\n%s", prefix, filepath.Join(d.P, "etc/nix"), store, path, strings.TrimSpace(string(got)))
	if err != nil {
		return &exitError{code: 1, msg: fmt.Sprintf("nixpeer demo: production could not fetch %s: %v", path, err)}
	}
	d.say("\nProduction fetched the path from staging, signature checked, with no key copied by hand.")
	return nil
}
