package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/launch"
	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// BenchmarkFleet runs one staging host (its agent, real sshd and
// nix-daemon on 127.0.0.2) and N production agents, each on a loopback
// address of its own (127.0.1.1, ...), all started at once, and reports:
// the time from the start to each production agent Ready (median and
// max), how many never got Ready within 3 minutes, staging's RSS and CPU
// time, the memory each connected consumer costs staging, and the time a
// change on staging (a new consumer it lets in) takes to reach all N.
// With NIXPEER_FLEET_FLOOD=1 it then holds 64 anonymous watches from 8
// addresses on staging's port and reports how long one more production
// agent takes to get Ready, against one started without the flood.
//
//	sudo NIXPEER_FLEET_N=100 go test -run '^$' -bench '^BenchmarkFleet$' -benchtime 1x -timeout 30m ./cmd/agent/
//
// bench/fleet.sh runs it for N = 10, 100 and 300.
func BenchmarkFleet(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.Require(b, "nix", "nix-daemon", "sshd", "ssh-keygen")
	testenv.RequireNixSSHUser(b)
	n := 10
	if v := os.Getenv("NIXPEER_FLEET_N"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 1000 {
			b.Fatalf("NIXPEER_FLEET_N=%q: want 1 to 1000", v)
		}
	}
	for range b.N {
		runFleet(b, n)
	}
	b.ReportMetric(0, "ns/op")
}

// consumerAddr is the loopback address of production agent i (from 0).
func consumerAddr(i int) string { return fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250) }

func fleetYAML(sshPort, n int, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: nixpeer/v1\ntrust: tofu\nhosts:\n  - name: stage\n    address: 127.0.0.2\n    peerPort: %d\n    sshPort: %d\n    platform: nix\n    apply: [\"true\"]\n    serve: {}\n",
		peerPortOf("127.0.0.2"), sshPort)
	for i := range n {
		fmt.Fprintf(&b, "  - name: prod-%d\n    address: %s\n    platform: nix\n    apply: [\"true\"]\n    substituteFrom: [stage]\n", i, consumerAddr(i))
	}
	return b.String() + extra
}

func runFleet(b *testing.B, n int) {
	S := b.TempDir()
	os.MkdirAll(filepath.Join(S, "etc/nix"), 0o755)
	testenv.WriteNixConf(b, filepath.Join(S, "etc/nix"))
	daemon := testenv.StartNixDaemon(b, filepath.Join(S, "etc/nix"))
	key := filepath.Join(S, "etc/ssh/ssh_host_ed25519_key")
	os.MkdirAll(filepath.Dir(key), 0o755)
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		b.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	sshPort := testenv.FreePort(b, "127.0.0.2")
	testenv.MakeTraversable(b, filepath.Join(S, "etc/ssh"))
	// A serving host with many consumers lets many logins start at once
	// (sshd's default MaxStartups, 10:30:100, drops most of a burst).
	sshd := testenv.StartSSHD(b, testenv.SSHDConfig{Address: "127.0.0.2", Port: sshPort, HostKeyFile: key,
		AuthorizedKeysFile: filepath.Join(S, "etc/ssh/authorized_keys.d/%u"), Daemon: daemon,
		ExtraConfig: []string{"MaxStartups 100:30:300"}})
	config := writeConfig(b, fleetYAML(sshPort, n, ""))
	roots := make([]string, n)
	for i := range roots {
		roots[i] = b.TempDir()
		os.MkdirAll(filepath.Join(roots[i], "etc/nix"), 0o755)
		testenv.WriteNixConf(b, filepath.Join(roots[i], "etc/nix"))
	}

	binary(b) // built before the clock starts
	// The serving side's CPU: sshd and nix-daemon and every process they
	// start (a login's sshd, nix-store --serve, a daemon worker), in a
	// cpuacct cgroup of their own, and staging's agent.
	serving := servingCPU(b, sshd.Proc.Pid(), daemon.Proc.Pid())
	serving0 := serving()
	start, cpu0 := time.Now(), machineCPU(b)
	stageLevel := "warn"
	if os.Getenv("NIXPEER_FLEET_DEBUG") == "1" {
		stageLevel = "debug"
	}
	stage := startAgent(b, S, config, "stage", "--log-level", stageLevel)
	prods := make([]*agent, n)
	startProds(b, prods, roots, config)
	var wg sync.WaitGroup
	readyAt := make([]time.Duration, n)
	never := 0
	var mu sync.Mutex
	for i, a := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, ok := waitQuietly(a, 3*time.Minute, ready)
			mu.Lock()
			defer mu.Unlock()
			if !ok {
				never++
				readyAt[i] = -1
				return
			}
			readyAt[i] = status.Find(st.Conditions, status.Ready).LastTransitionTime.Sub(start)
		}()
	}
	wg.Wait()
	var got []time.Duration
	for _, d := range readyAt {
		if d >= 0 {
			got = append(got, d)
		}
	}
	slices.Sort(got)
	b.ReportMetric(float64(n), "consumers")
	b.ReportMetric(float64(never), "never-ready")
	if len(got) > 0 {
		b.ReportMetric(got[len(got)/2].Seconds(), "s-p50/ready")
		b.ReportMetric(got[len(got)-1].Seconds(), "s-max/ready")
	}
	machine := machineCPU(b) - cpu0
	var prodCPU float64
	for _, a := range prods {
		prodCPU += cpuSeconds(b, a.cmd.Process.Pid)
	}
	b.ReportMetric(machine, "s-machine-cpu")
	b.ReportMetric(prodCPU, "s-consumers-cpu")
	rss := float64(vmRSS(b, stage.cmd.Process.Pid)) / 1024
	b.ReportMetric(rss, "MiB-staging-rss")
	b.ReportMetric(cpuSeconds(b, stage.cmd.Process.Pid), "s-staging-cpu")
	servingCPU := serving() - serving0 + cpuSeconds(b, stage.cmd.Process.Pid)
	b.ReportMetric(servingCPU/float64(n), "s-serving-cpu/consumer-start")

	// A change on staging that every consumer acts on: it serves over
	// ssh-ng from now on. Its facts reach every production agent, which
	// probes it again over ssh-ng and switches its substituter.
	changed := time.Now()
	renameSave(b, config, strings.Replace(fleetYAML(sshPort, n, ""), "serve: {}", "serve: {protocol: ssh-ng}", 1))
	var reach, switched []time.Duration
	for i, a := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, ok := waitQuietly(a, time.Minute, func(s status.Status) bool {
				return len(s.Peers) == 1 && s.Peers[0].FactsAt != nil && s.Peers[0].FactsAt.After(changed)
			})
			if !ok {
				return
			}
			mu.Lock()
			reach = append(reach, st.Peers[0].FactsAt.Sub(changed))
			mu.Unlock()
			conf := filepath.Join(roots[i], "etc/nix/nixpeer.conf")
			_, ok = waitQuietly(a, 3*time.Minute, func(s status.Status) bool {
				raw, _ := os.ReadFile(conf)
				return s.Ready && s.Peers[0].State == status.PeerServing && strings.Contains(string(raw), "ssh-ng://")
			})
			if ok {
				mu.Lock()
				switched = append(switched, time.Since(changed))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(reach)
	slices.Sort(switched)
	if len(reach) > 0 {
		b.ReportMetric(ms(reach[len(reach)/2]), "ms-p50/change-reaches")
		b.ReportMetric(ms(reach[len(reach)-1]), "ms-max/change-reaches")
	}
	if len(switched) > 0 {
		b.ReportMetric(switched[len(switched)/2].Seconds(), "s-p50/change-applied")
		b.ReportMetric(switched[len(switched)-1].Seconds(), "s-max/change-applied")
	}
	b.ReportMetric(float64(n-len(switched)), "change-not-applied")

	// A fleet-wide restart: every consumer stopped, then started again
	// at once; what it costs the serving side per consumer.
	stopAll(prods)
	stageCPU := cpuSeconds(b, stage.cmd.Process.Pid)
	servingBefore := serving()
	restart := time.Now()
	startProds(b, prods, roots, config)
	var again []time.Duration
	for _, a := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, ok := waitQuietly(a, 3*time.Minute, ready); ok {
				mu.Lock()
				again = append(again, time.Since(restart))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	slices.Sort(again)
	if len(again) > 0 {
		b.ReportMetric(again[len(again)/2].Seconds(), "s-p50/ready-after-restart")
	}
	b.ReportMetric(float64(n-len(again)), "never-ready-after-restart")
	b.ReportMetric((serving()-servingBefore+cpuSeconds(b, stage.cmd.Process.Pid)-stageCPU)/float64(n), "s-serving-cpu/consumer-restart")

	if os.Getenv("NIXPEER_FLEET_FLOOD") == "1" {
		quiet := latecomer(b, config, S, "late-quiet")
		flood(b, fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2")), 64, 8)
		loud := latecomer(b, config, S, "late-flood")
		b.ReportMetric(ms(quiet), "ms/latecomer-ready")
		b.ReportMetric(ms(loud), "ms/latecomer-ready-during-flood")
	}
	if os.Getenv("NIXPEER_FLEET_DEBUG") == "1" {
		slowest := 0
		for i, d := range readyAt {
			if d < 0 || d > readyAt[slowest] && readyAt[slowest] >= 0 {
				slowest = i
			}
		}
		os.WriteFile("/tmp/prod0.log", []byte(prods[slowest].logs.String()), 0o644)
		os.WriteFile("/tmp/stage.log", []byte(stage.logs.String()), 0o644)
	}
	stopAll(prods)
	stage.stop()
}

// startProds starts production agent i in roots[i] into prods[i], all at
// once, and returns once all are started.
func startProds(b *testing.B, prods []*agent, roots []string, config string) {
	var wg sync.WaitGroup
	for i := range prods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prods[i] = startAgentNoWait(b, roots[i], config, fmt.Sprintf("prod-%d", i))
		}()
	}
	wg.Wait()
}

// stopAll stops agents at once, and returns once all stopped.
func stopAll(agents []*agent) {
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.stop()
		}()
	}
	wg.Wait()
}

// latecomer adds one more production agent to the file, starts it, and
// returns the time it takes to get Ready.
func latecomer(b *testing.B, config, S, name string) time.Duration {
	b.Helper()
	raw := readFile(b, config)
	addr := "127.0.3.1"
	if name == "late-flood" {
		addr = "127.0.3.2"
	}
	renameSave(b, config, string(raw)+fmt.Sprintf("  - name: %s\n    address: %s\n    platform: nix\n    apply: [\"true\"]\n    substituteFrom: [stage]\n", name, addr))
	root := b.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
	testenv.WriteNixConf(b, filepath.Join(root, "etc/nix"))
	start := time.Now()
	a := startAgent(b, root, config, name, "--log-level", "warn")
	st, ok := waitQuietly(a, 2*time.Minute, ready)
	if !ok {
		b.Fatalf("%s never got Ready: %+v", name, st)
	}
	d := status.Find(st.Conditions, status.Ready).LastTransitionTime.Sub(start)
	a.stop()
	return d
}

// flood holds n anonymous watches on addr from `from` loopback addresses
// until the benchmark ends.
func flood(b *testing.B, addr string, n, from int) {
	for i := range n {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(fmt.Sprintf("127.0.4.%d", 1+i%from))}, Timeout: 5 * time.Second}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			continue
		}
		sc, chans, reqs, err := ssh.NewClientConn(c, addr, &ssh.ClientConfig{User: "flood", HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second})
		if err != nil {
			c.Close()
			continue
		}
		cl := ssh.NewClient(sc, chans, reqs)
		b.Cleanup(func() { cl.Close() })
		if sess, err := cl.NewSession(); err == nil {
			sess.Start("watch") // held open, never read
		}
	}
}

// startAgentNoWait starts an agent without waiting for its socket.
func startAgentNoWait(t testing.TB, root, config, host string) *agent {
	a := &agent{t: t, root: root, config: config, socket: filepath.Join(root, "run/nixpeer/agent.sock"),
		logs: &syncWriter{}, done: make(chan error, 1)}
	level := "warn"
	if os.Getenv("NIXPEER_FLEET_DEBUG") == "1" {
		level = "debug"
	}
	a.cmd = asInstalled(t, "run", "--config", config, "--host", host, "--root", root, "--log-level", level)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.done <- a.cmd.Wait() }()
	a.client = api.NewClient(a.socket)
	t.Cleanup(a.stop)
	return a
}

// waitQuietly waits for cond like waitFor, without failing: it reports
// whether cond held within d.
func waitQuietly(a *agent, d time.Duration, cond func(status.Status) bool) (status.Status, bool) {
	deadline := time.Now().Add(d)
	var last status.Status
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := a.client.WaitReconciled(ctx, last.LastReconcile, 2*time.Second)
		cancel()
		if err != nil {
			time.Sleep(20 * time.Millisecond) // its socket is not up yet
			continue
		}
		if cond(st) {
			return st, true
		}
		last = st
	}
	return last, false
}

// cpuSeconds is the CPU time process pid used so far.
func cpuSeconds(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	var ticks float64
	for _, i := range []int{11, 12, 13, 14} { // utime, stime, cutime, cstime
		v, _ := strconv.ParseFloat(f[i], 64)
		ticks += v
	}
	return ticks / 100 // clock ticks of 10 ms
}

// servingCPU moves pids into a cpuacct cgroup of their own (cgroup v1,
// as on this machine; their children follow them) and returns what its
// processes used so far, in seconds. The cgroup is removed at the end.
func servingCPU(b *testing.B, pids ...int) func() float64 {
	dir, err := os.MkdirTemp("/sys/fs/cgroup/cpuacct", "nixpeer-serving-")
	if err != nil {
		b.Fatalf("a cpuacct cgroup for the serving side: %v", err)
	}
	b.Cleanup(func() {
		// Its processes go back to the root cgroup (they end later, with
		// the cleanups registered before this one); an empty cgroup's
		// directory goes with rmdir.
		err := launch.WaitFor(10*time.Second, 10*time.Millisecond, func() error {
			procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
			for _, pid := range strings.Fields(string(procs)) {
				os.WriteFile("/sys/fs/cgroup/cpuacct/cgroup.procs", []byte(pid), 0o644)
			}
			return os.Remove(dir)
		})
		if err != nil {
			b.Errorf("remove the cgroup %s: %v", dir, err)
		}
	})
	for _, pid := range pids {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			b.Fatalf("move %d into %s: %v", pid, dir, err)
		}
	}
	return func() float64 {
		raw, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage"))
		if err != nil {
			b.Fatal(err)
		}
		ns, err := strconv.ParseFloat(strings.TrimSpace(string(raw)), 64)
		if err != nil {
			b.Fatal(err)
		}
		return ns / 1e9
	}
}

// machineCPU is the CPU time all processes used so far, from /proc/stat.
func machineCPU(b *testing.B) float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	line, _, _ := strings.Cut(string(raw), "\n")
	var ticks float64
	for i, f := range strings.Fields(line)[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		v, _ := strconv.ParseFloat(f, 64)
		ticks += v
	}
	return ticks / 100
}
