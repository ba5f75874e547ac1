// Package demo is `nixpeer demo`: a staging and a production agent on
// loopback addresses in a temporary directory, converging with nothing
// copied by hand. As root, with Nix, sshd and the nix-ssh user, staging
// also runs a real nix-daemon and sshd (internal/launch), builds and signs
// a closure of about a hundred paths, and production fetches it; the
// demo measures both.
package demo

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nixpeer/nixpeer/internal/launch"
	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Timeout bounds the wait for both agents.
const Timeout = 60 * time.Second

// The demo's hosts, on loopback addresses.
const (
	StageAddr = "127.0.0.2"
	ProdAddr  = "127.0.0.3"
)

// Options of Run.
type Options struct {
	// Binary is the nixpeer binary the agents run.
	Binary string
	// Out gets the demo's story.
	Out io.Writer
	// Keep keeps the demo's directory, with the agents' logs.
	Keep bool
	// Paths is the size of the closure staging builds (default 100).
	Paths int
	// Work is how many rounds of a shell loop each derivation runs, a
	// stand-in for a compiler (default 100000: about 0.1 s here).
	Work int
	// PrintStatus prints an agent's status as `nixpeer status` does.
	PrintStatus func(io.Writer, status.Status, time.Time)
}

// Run runs the demo until both agents are Ready and, with the real parts,
// production has fetched staging's closure; ctx ends it early.
func Run(ctx context.Context, o Options) error {
	if o.Paths <= 1 {
		o.Paths = 100
	}
	if o.Work <= 0 {
		o.Work = 100000
	}
	dir, err := os.MkdirTemp("", "nixpeer-demo-")
	if err != nil {
		return err
	}
	// sshd reads staging's authorized keys as nix-ssh.
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	d := &demo{o: o, dir: dir, S: filepath.Join(dir, "stage"), P: filepath.Join(dir, "prod")}
	defer func() {
		d.stopAll()
		if o.Keep {
			d.say("\nThe demo's files and logs stay in %s", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	return d.run(ctx)
}

type demo struct {
	o         Options
	dir, S, P string
	mu        sync.Mutex // serializes output
	start     time.Time
	real      bool // real nix-daemon and sshd for staging
	sshPort   int
	daemon    *launch.NixDaemon
	procs     []*launch.Process
}

func (d *demo) say(format string, args ...any) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fmt.Fprintf(d.o.Out, format+"\n", args...)
}

// stopAll stops every child, the last started first, keeping their logs
// in the demo's directory.
func (d *demo) stopAll() {
	for _, p := range slices.Backward(d.procs) {
		p.Stop()
		os.WriteFile(filepath.Join(d.dir, p.Name+".log"), []byte(p.Logs()), 0o644)
	}
}

func (d *demo) run(ctx context.Context) error {
	missing := Missing()
	d.real = missing == ""
	d.sshPort = freePort(StageAddr, 22)
	stagePeerPort, prodPeerPort := freePort(StageAddr, 7722), freePort(ProdAddr, 7722)
	for _, root := range []string{d.S, d.P} {
		// The hosts' own nix.conf: no binary cache (this may run offline),
		// builds without a sandbox (the demo's builder is /bin/sh), as
		// many at once as there are CPUs.
		if err := os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755); err != nil {
			return err
		}
		if _, err := launch.WriteNixConf(filepath.Join(root, "etc/nix"), "max-jobs = auto"); err != nil {
			return err
		}
	}
	stageApply := `["true"]`
	if d.real {
		sock := filepath.Join(d.dir, "nixd")
		if err := os.Mkdir(sock, 0o755); err != nil {
			return err
		}
		var err error
		if d.daemon, err = launch.StartNixDaemon(filepath.Join(d.S, "etc/nix"), sock, true); err != nil {
			return fmt.Errorf("staging's nix-daemon: %w", err)
		}
		d.procs = append(d.procs, d.daemon.Proc)
		stageApply = yamlList(d.daemon.RestartCommand())
	}
	config := filepath.Join(d.dir, "desired.yaml")
	desired := fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
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
`, StageAddr, d.sshPort, stagePeerPort, stageApply, ProdAddr, prodPeerPort)
	if err := os.WriteFile(config, []byte(desired), 0o644); err != nil {
		return err
	}
	d.say("nixpeer demo in %s\n\nThe desired state, the same for both hosts (%s):\n\n%s", d.dir, config, desired)
	if d.real {
		d.say("Staging runs a real nix-daemon and sshd on %s:%d.", StageAddr, d.sshPort)
	} else {
		d.say("Skipped: staging's nix-daemon and sshd, the build and the fetch (%s).\nThe agents still exchange their keys; production stops at the probe of staging's sshd.", missing)
	}
	d.say("\nStarting both agents; nothing is copied by hand.\n")

	d.start = time.Now()
	stage, err := d.startAgent(config, "stage", d.S)
	if err != nil {
		return err
	}
	prod, err := d.startAgent(config, "prod", d.P)
	if err != nil {
		return err
	}
	if d.real {
		if err := d.startSSHD(ctx); err != nil {
			return err
		}
	}
	wctx, cancel := context.WithTimeout(ctx, Timeout)
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
	for i, a := range []*agent{stage, prod} {
		wg.Go(func() { final[i] = d.follow(wctx, a, done[i]) })
	}
	wg.Wait()
	took := time.Since(d.start)
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, a := range []*agent{stage, prod} {
		if st, err := a.client.Status(wctx); err == nil {
			final[i] = st
		}
	}
	both := final[0].Ready && final[1].Ready
	if both {
		d.say("\nBoth agents Ready %v after they started.", took.Round(time.Millisecond))
	} else {
		d.say("\nAfter %v: staging Ready %v, production Ready %v.", took.Round(time.Millisecond), final[0].Ready, final[1].Ready)
	}
	for i, a := range []*agent{stage, prod} {
		d.say("\nFiles the %s agent wrote (under %s):", a.name, a.root)
		for _, f := range final[i].Files {
			d.say("  %s", strings.TrimPrefix(f.Path, a.root))
		}
	}
	if d.o.PrintStatus != nil {
		for i, a := range []*agent{stage, prod} {
			d.say("\n$ nixpeer status --root %s   # %s", a.root, a.name)
			var b bytes.Buffer
			d.o.PrintStatus(&b, final[i], time.Now())
			d.say("%s", strings.TrimRight(b.String(), "\n"))
		}
	}
	switch {
	case d.real && both:
		return d.buildAndFetch(ctx)
	case d.real:
		return errors.New("the agents did not converge; see their logs with --keep")
	}
	return nil
}

// Missing says why staging's real parts cannot run here, or "".
func Missing() string {
	if os.Geteuid() != 0 {
		return "run as root to start sshd and nix-daemon"
	}
	var missing []string
	for _, p := range []string{"nix-daemon", "nix-store", "nix-build", "nix"} {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return "no " + strings.Join(missing, ", ") + ": apt-get install nix-bin"
	}
	if _, err := launch.LookSSHD(); err != nil {
		return err.Error()
	}
	if _, err := user.Lookup(launch.NixSSHUser); err != nil {
		return "no user nix-ssh: scripts/demo.sh creates it, as nix.sshServe does"
	}
	return ""
}

// yamlList writes argv as a YAML flow list of double-quoted strings.
func yamlList(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = fmt.Sprintf("%q", a)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

// startSSHD runs staging's sshd with the staging agent's host key and
// authorized keys, once the agent has made the host key.
func (d *demo) startSSHD(ctx context.Context) error {
	hostKey := filepath.Join(d.S, "etc/ssh/ssh_host_ed25519_key")
	err := launch.WaitFor(15*time.Second, 10*time.Millisecond, func() error {
		if ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ctx.Err(), launch.ErrStop)
		}
		_, err := os.Stat(hostKey + ".pub")
		return err
	})
	if err != nil {
		return fmt.Errorf("the staging agent made no host key: %w", err)
	}
	os.Chmod(filepath.Join(d.S, "etc/ssh"), 0o755)
	os.Chmod(d.S, 0o755)
	s, err := launch.StartSSHD(launch.SSHDConfig{Address: StageAddr, Port: d.sshPort, HostKeyFile: hostKey,
		AuthorizedKeysFile: filepath.Join(d.S, "etc/ssh/authorized_keys.d/%u"), Dir: d.dir, Daemon: d.daemon})
	if err != nil {
		return fmt.Errorf("staging's sshd: %w", err)
	}
	d.procs = append(d.procs, s.Proc)
	return nil
}

type agent struct {
	name, root string
	client     *api.Client
}

func (d *demo) startAgent(config, name, root string) (*agent, error) {
	p, err := launch.Start(name+"-agent", exec.Command(d.o.Binary, "run", "--config", config, "--host", name, "--root", root, "--log-level", "info"))
	if err != nil {
		return nil, err
	}
	d.procs = append(d.procs, p)
	return &agent{name: name, root: root, client: api.NewClient(filepath.Join(root, "run/nixpeer/agent.sock"))}, nil
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
	if p, err := launch.FreePort(address); err == nil {
		return p
	}
	return port
}

// follow prints each change of an agent's summary until done, and returns
// the last status.
func (d *demo) follow(ctx context.Context, a *agent, done func(status.Status) bool) status.Status {
	var last status.Status
	var lastLine string
	for ctx.Err() == nil {
		st, err := a.client.Next(ctx, last)
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
