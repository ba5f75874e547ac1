package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/net/netutil"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/backoff"
	"github.com/nixpeer/nixpeer/pkg/bincache"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/filewatch"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/metrics"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/reconcile"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// DefaultConfig is where the desired-state file lives without --config.
const DefaultConfig = "/etc/nixpeer/desired.yaml"

// hostFlags are the flags that place the agent on its host.
type hostFlags struct {
	root, stateDir, socket string
}

// newHostFlagSet is newFlagSet with the hostFlags (--socket only if
// withSocket).
func newHostFlagSet(name string, withSocket bool) (*flag.FlagSet, *hostFlags) {
	fs, f := newFlagSet(name), &hostFlags{}
	fs.StringVar(&f.root, "root", "", "put every path the agent reads or writes under `DIR` (like nixos-install --root)")
	fs.StringVar(&f.stateDir, "state-dir", "", "state `DIR` (default /var/lib/nixpeer, under --root)")
	if withSocket {
		fs.StringVar(&f.socket, "socket", "", "status socket `PATH` (default /run/nixpeer/agent.sock, under --root)")
	}
	return fs, f
}

func (f *hostFlags) layout() layout.Layout { return layout.New(f.root, f.stateDir, f.socket) }

// client is a client of the daemon whose socket f names.
func (f *hostFlags) client() *api.Client { return api.NewClient(f.layout().Socket) }

func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("nixpeer "+name, flag.ContinueOnError)
	if defining != nil {
		fs.SetOutput(io.Discard)
		defining(fs)
	}
	return fs
}

// parseFlags parses args and refuses stray arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := parseFlagsAndArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{code: 2, msg: fmt.Sprintf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))}
	}
	return nil
}

// parseFlagsAndArgs parses args for a command that takes arguments after
// its flags (fs.Args()).
func parseFlagsAndArgs(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0}
		}
		return &exitError{code: 2}
	}
	return nil
}

func cmdRun(args []string, stderr io.Writer) error {
	fs, hf := newHostFlagSet("run", true)
	var opts daemonOptions
	fs.StringVar(&opts.config, "config", DefaultConfig, "desired-state `FILE`")
	fs.StringVar(&opts.host, "host", "", "this host's `NAME` in the desired-state file (default: matched by hostname)")
	level := fs.String("log-level", "info", "log `LEVEL`: debug, info, warn, error")
	fs.StringVar(&opts.group, "socket-group", "nixpeer", "`GROUP` whose members may read the status (if it exists)")
	fs.DurationVar(&opts.resync, "resync", 5*time.Minute, "reconcile at least this often (safety net; changes are seen at once)")
	fs.StringVar(&opts.metricsListen, "metrics-listen", "", "also serve /metrics over TCP on `ADDR` (such as 127.0.0.1:9772 or :9772); the status socket always serves it")
	fs.DurationVar(&opts.sshdCheck, "sshd-check-interval", reconcile.DefaultSSHDCheckInterval,
		"on a serving host, probe its own sshd this often (0: never); its consumers withdraw it as soon as a check fails, and probe it themselves only every 10m instead of every 30s")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	log, err := newLogger(*level, stderr)
	if err != nil {
		return &exitError{code: 2, msg: "nixpeer run: " + err.Error()}
	}
	defer log.Sync()

	ctx, stop := interrupted()
	defer stop()
	switch {
	case opts.sshdCheck == 0:
		opts.sshdCheck = -1 // off
	case opts.sshdCheck < time.Second:
		return &exitError{code: 2, msg: fmt.Sprintf("nixpeer run: -sshd-check-interval %v: want 0 (no check) or at least 1s; a check costs the host a login and a Nix process", opts.sshdCheck)}
	}
	if err := runDaemon(ctx, log, hf.layout(), opts); err != nil {
		log.Error("agent stopped", zap.Error(err))
		return &exitError{code: 1, msg: "nixpeer run: " + err.Error()}
	}
	return nil
}

// daemonOptions are the flags of nixpeer run.
type daemonOptions struct {
	config, host, group string
	resync, sshdCheck   time.Duration
	// metricsListen, if set, is a TCP address that serves /metrics too.
	metricsListen string
}

// maxMetricsConns bounds the connections of --metrics-listen at once.
const maxMetricsConns = 16

// serveMetrics serves /metrics over TCP on addr; it returns the address it
// listens on and the function that stops it.
func serveMetrics(log *zap.Logger, addr string, m *metrics.Metrics) (string, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	// Open to whoever reaches addr: bounded in connections and in time.
	ln = netutil.LimitListener(ln, maxMetricsConns)
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second,
		WriteTimeout: 10 * time.Second, IdleTimeout: 30 * time.Second, MaxHeaderBytes: 8 << 10}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener", zap.Error(err))
		}
	}()
	log.Info("serving metrics", zap.String("addr", ln.Addr().String()))
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}, nil
}

func runDaemon(ctx context.Context, log *zap.Logger, l layout.Layout, opts daemonOptions) error {
	store, opened, err := state.Open(l.Database, time.Second)
	if err != nil {
		return err
	}
	if opened.Damaged != "" {
		log.Error("the state database was damaged; it was moved aside and a new one started, trust is rebuilt from the managed files",
			zap.String("why", opened.Damaged), zap.String("movedTo", opened.MovedTo))
		ev := state.Event{Time: time.Now(), Reason: "StateStoreRecovered",
			Message: fmt.Sprintf("%s was damaged (%s); moved to %s, a new one started", l.Database, opened.Damaged, opened.MovedTo)}
		if err := store.SaveStatus(status.Status{}, ev, nil); err != nil {
			log.Error("cannot record the recovery of the state database", zap.Error(err))
		}
	}
	defer store.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Peer events only enqueue a reconcile, like every other trigger.
	var loop *reconcile.Loop
	loopReady := make(chan struct{})
	notify := func(reason string) {
		<-loopReady
		loop.Trigger(reason)
	}
	// The port gives this host's facts to its peers, and the watches
	// tell them to the peers this host fetches from.
	var port *peering.Port
	peers := peering.New(ctx, log.Named("peering"), store,
		peer.WatchOptions{Backoff: backoff.Policy{Base: peerReconnectBase, Cap: peerReconnectCap},
			Tell: func() (<-chan []byte, func()) { return port.Own.Subscribe() }}, notify)
	defer func() {
		cancel()
		peers.Wait()
	}()
	port = peering.NewPort(ctx, log.Named("peerport"), peer.ServerOptions{OnConnect: peers.Poke, Known: peers.Known, Reserved: peers.Reserved, Told: peers.Told}, notify)
	defer port.Close()

	hostnames := machineHostnames()
	var nixEnv []string
	if l.Root != "" && l.Root != "/" {
		nixEnv = []string{"NIX_CONF_DIR=" + l.NixConfDir}
	}
	var statusOf func() status.Status // the host's, once it is made
	m := metrics.New(func() status.Status { return statusOf() })
	// The binary-cache tier: idle until the desired state names caches.
	nixCLI := &nix.CLI{Env: nixEnv}
	reader := bincache.NewReader(log.Named("cache-reader"), func() { notify("cache store reachability changed") })
	defer reader.Close()
	publisher := bincache.NewPublisher(nixCLI, store, filepath.Join(l.StateDir, "publish-tmp"), log.Named("publisher"), func() { notify("publishing progressed") })
	go publisher.Run(ctx)
	tier := bincache.NewTier(reader, publisher)
	m.WatchCaches(tier)
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find the agent's own program: %w", err)
	}
	host, err := reconcile.NewHost(reconcile.Config{
		Log: log, Layout: l, Store: store,
		ConfigFile: opts.config, HostName: opts.host, Hostnames: hostnames,
		Watches: peers, Port: port, Nix: reconcile.SystemNix(nixEnv), Prober: metrics.Prober{Inner: reconcile.SSHProber{}, M: m},
		Trigger: notify, StoreOpened: opened, SSHDCheckInterval: opts.sshdCheck,
		Caches: tier, Executable: exe,
	})
	if err != nil {
		return err
	}
	// The host's work (apply, signing, probes) ends with ctx: its
	// process groups are killed.
	defer func() {
		cancel()
		host.Wait()
	}()
	statusOf = host.Status
	loop = reconcile.NewLoop(log, metrics.Reconciler{Inner: host, M: m}, opts.resync)
	close(loopReady)
	backend := &backend{host: host, loop: loop, peers: peers, store: store, layout: l, publisher: publisher}

	ln, err := api.Listen(l.Socket, opts.group)
	if err != nil {
		return err
	}
	srv := api.NewServer(log, backend, opts.group)
	srv.HandleRead("GET /metrics", m.Handler())
	if opts.metricsListen != "" {
		_, stopMetrics, err := serveMetrics(log, opts.metricsListen, m)
		if err != nil {
			ln.Close()
			return err
		}
		defer stopMetrics()
	}
	go func() {
		if err := srv.Serve(ln); err != nil {
			log.Error("status socket", zap.Error(err))
		}
	}()
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()

	var wg sync.WaitGroup // the watches and the loop, waited for on the way out
	wg.Go(func() {
		if err := filewatch.File(ctx, log, opts.config, desired.MaxSize, func() { loop.Trigger("desired-state file changed") }); err != nil {
			log.Error("cannot watch the desired-state file; changes are picked up at the resync", zap.Error(err))
		}
	})
	// A cache's credentials, written or fixed (made 0600) by an
	// operator, are taken at once.
	wg.Go(func() {
		err := filewatch.Dir(ctx, log, l.CachesDir, func(name string) {
			if name == "" || strings.HasSuffix(name, ".credentials") {
				loop.Trigger("cache credentials changed")
			}
		})
		if err != nil {
			log.Error("cannot watch the caches' credentials; changes are picked up at the resync", zap.Error(err))
		}
	})
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				loop.Trigger("SIGHUP")
			}
		}
	}()

	wg.Go(func() { loop.Run(ctx) })
	log.Info("nixpeer agent started", zap.String("config", opts.config), zap.String("socket", l.Socket),
		zap.String("stateDir", l.StateDir), zap.String("root", l.Root), zap.Strings("hostnames", hostnames))

	select {
	case <-loop.FirstDone():
		if _, err := daemon.SdNotify(false, daemon.SdNotifyReady); err != nil {
			log.Warn("sd_notify READY failed", zap.Error(err))
		}
	case <-ctx.Done():
	}
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		go watchdog(ctx, loop, interval)
	}
	<-ctx.Done()
	daemon.SdNotify(false, daemon.SdNotifyStopping)
	log.Info("stopping")
	wg.Wait()
	return nil
}

// watchdog pings systemd at half the interval while the loop makes progress:
// a worker stuck longer than the interval stops the pings, and systemd
// restarts the agent.
func watchdog(ctx context.Context, loop *reconcile.Loop, interval time.Duration) {
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if loop.Healthy(interval) {
				daemon.SdNotify(false, daemon.SdNotifyWatchdog)
			}
		}
	}
}

// machineHostnames are the names the host is matched by without --host.
func machineHostnames() []string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		return nil
	}
	names := []string{h}
	if short, _, ok := strings.Cut(h, "."); ok {
		names = append(names, short)
	}
	return names
}

// newLogger logs JSON when stderr is not a terminal (systemd, files) and
// readable console lines on a terminal.
func newLogger(level string, w io.Writer) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	if isTerminal(w) {
		encCfg.EncodeLevel = zapcore.CapitalColorLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	} else {
		enc = zapcore.NewJSONEncoder(encCfg)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), lvl)), nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// peerReconnectBase and peerReconnectCap bound the wait between two
// attempts to reach a peer's agent: the first retry comes within 50 ms (a
// fleet starting at once finds its peers quickly), and a peer that comes
// back is seen within the cap.
const (
	peerReconnectBase = 50 * time.Millisecond
	peerReconnectCap  = 10 * time.Second
)

// backend is what the socket exposes of the daemon.
type backend struct {
	host   *reconcile.Host
	loop   *reconcile.Loop
	peers  *peering.Manager
	store  *state.Store
	layout layout.Layout
	// publisher queues what the host publishes to caches.
	publisher *bincache.Publisher

	mu sync.Mutex // guards live and liveAt
	// live is Nix's live configuration as of the reconcile at liveAt.
	live   map[string]string
	liveAt time.Time
}

func (b *backend) Status() status.Status { return b.host.Status() }
func (b *backend) Reconcile()            { b.loop.Trigger("nixpeer reconcile") }
func (b *backend) WaitReconciled(ctx context.Context, after time.Time) status.Status {
	return b.host.WaitReconciled(ctx, after)
}
func (b *backend) Events(since time.Time) ([]state.Event, error) {
	all, err := b.store.Events(state.MaxEvents)
	if err != nil {
		return nil, fmt.Errorf("read the history: %w", err)
	}
	i := 0
	for i < len(all) && all[i].Time.Before(since) {
		i++
	}
	return all[i:], nil
}

func (b *backend) Key(_ context.Context, req api.KeyRequest) (api.KeyAnswer, error) {
	var msg string
	var err error
	switch {
	case req.Key == "cache-key":
		msg, err = b.host.RequestCacheKey(req.Action, req.Force)
	case req.Key == "host-key" && req.Action == "rotate":
		msg, err = b.host.RequestHostKeyRotation(req.Force)
	default:
		err = fmt.Errorf("cannot %s %q; want rotate or revoke cache-key, or rotate host-key", req.Action, req.Key)
	}
	if err != nil {
		return api.KeyAnswer{}, err
	}
	b.loop.Trigger("nixpeer " + req.Action + " " + req.Key)
	return api.KeyAnswer{Result: msg}, nil
}

func (b *backend) Publish(_ context.Context, req api.PublishRequest) (api.PublishAnswer, error) {
	if err := b.publisher.Enqueue(req.Paths); err != nil {
		return api.PublishAnswer{}, fmt.Errorf("publish: %w", err)
	}
	return api.PublishAnswer{Queued: len(req.Paths)}, nil
}

func (b *backend) TrustApprove(name, fp string) error {
	if err := b.peers.Approve(name, fp); err != nil {
		return fmt.Errorf("trust approve of %q: %w", name, err)
	}
	return nil
}

func (b *backend) TrustReset(name string) error {
	if err := b.peers.ResetTrust(name); err != nil {
		return fmt.Errorf("trust reset of %q: %w", name, err)
	}
	return nil
}
