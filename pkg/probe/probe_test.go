package probe_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/probe"
)

// peer is a real sshd that lets client in as nix-ssh to run command,
// serving the store of daemon (when there is one).
type peer struct {
	sshd   *testenv.SSHD
	daemon *testenv.NixDaemon
	client *testenv.Key
}

func startPeer(t *testing.T, address, command string, withDaemon bool) *peer {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.Require(t, "sshd")
	testenv.RequireNixSSHUser(t)
	p := &peer{client: testenv.NewKey(t)}
	cfg := testenv.SSHDConfig{
		Address:        address,
		AuthorizedKeys: map[string]string{testenv.NixSSHUser: testenv.AuthorizedKeyLine(command, p.client.PublicKey())},
	}
	if withDaemon {
		testenv.Require(t, "nix-daemon", "nix-store")
		p.daemon = testenv.StartNixDaemon(t, "")
		cfg.Daemon = p.daemon
	}
	p.sshd = testenv.StartSSHD(t, cfg)
	return p
}

func (p *peer) target(protocol nix.Protocol) probe.Target {
	return probe.Target{
		Address:  p.sshd.Address,
		Port:     p.sshd.Port,
		Protocol: protocol,
		Signer:   p.client.Signer,
		HostKey:  p.sshd.HostKey,
		Timeout:  20 * time.Second,
	}
}

// probeError runs Probe, expects it to fail with reason, and returns the
// *probe.Error.
func probeError(t *testing.T, target probe.Target, reason probe.Reason) *probe.Error {
	t.Helper()
	res, err := probe.Probe(context.Background(), target)
	if err == nil {
		t.Fatalf("Probe succeeded (%+v), want %v", res, reason)
	}
	var e *probe.Error
	if !errors.As(err, &e) {
		t.Fatalf("Probe error %T %v is not a *probe.Error", err, err)
	}
	if e.Reason != reason {
		t.Fatalf("Probe error reason %v, want %v: %v", e.Reason, reason, err)
	}
	t.Logf("as expected: %v", err)
	return e
}

func TestProbeServes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		protocol         nix.Protocol
		command, address string
		major            uint64
	}{
		{nix.ProtocolSSH, "nix-store --serve", "127.0.0.2", 0x2},
		{nix.ProtocolSSHNG, "nix-daemon --stdio", "127.0.0.3", 0x1},
	} {
		t.Run(string(tc.protocol), func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, tc.address, tc.command, true)
			res, err := probe.Probe(context.Background(), p.target(tc.protocol))
			if err != nil {
				t.Fatalf("Probe: %v\nsshd log:\n%s", err, p.sshd.Logs())
			}
			t.Logf("%s: server version %#x, Nix %q, %v", tc.protocol, res.ServerVersion, res.NixVersion, res.Elapsed)
			if res.ServerVersion>>8 != tc.major {
				t.Errorf("server version %#x, want major %#x", res.ServerVersion, tc.major)
			}
			if tc.protocol == nix.ProtocolSSHNG && res.NixVersion == "" {
				t.Errorf("no Nix version from the daemon (version %#x)", res.ServerVersion)
			}
			if res.Elapsed <= 0 {
				t.Errorf("elapsed %v", res.Elapsed)
			}
			// The probe reached this test's daemon, as nix-ssh.
			testenv.WaitFor(t, 5*time.Second, 10*time.Millisecond, "a connection of nix-ssh in the daemon log", func() error {
				if !strings.Contains(p.daemon.Proc.Logs(), "user "+testenv.NixSSHUser) {
					return fmt.Errorf("daemon log:\n%s", p.daemon.Proc.Logs())
				}
				return nil
			})
		})
	}
}

func TestProbeHostKeyMismatch(t *testing.T) {
	t.Parallel()
	p := startPeer(t, "127.0.0.2", "nix-store --serve", false)
	target := p.target(nix.ProtocolSSH)
	target.HostKey = testenv.NewKey(t).PublicKey()
	e := probeError(t, target, probe.HostKeyMismatch)
	want := fmt.Sprintf("probe nix-ssh@%s: host key mismatch: expected %s, got %s",
		p.sshd.Addr(), ssh.FingerprintSHA256(target.HostKey), ssh.FingerprintSHA256(p.sshd.HostKey))
	if e.Error() != want {
		t.Errorf("message %q\nwant    %q", e.Error(), want)
	}
}

func TestProbeUnauthorized(t *testing.T) {
	t.Parallel()
	p := startPeer(t, "127.0.0.2", "nix-store --serve", false)
	target := p.target(nix.ProtocolSSH)
	target.Signer = testenv.NewKey(t).Signer
	probeError(t, target, probe.Unauthorized)
}

func TestProbeWrongProtocol(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, command string
		protocol      nix.Protocol
	}{
		{"echo/ssh", "/bin/echo hello", nix.ProtocolSSH},
		{"echo/ssh-ng", "/bin/echo hello", nix.ProtocolSSHNG},
		{"ssh against nix-daemon", "nix-daemon --stdio", nix.ProtocolSSH},
		{"ssh-ng against nix-store", "nix-store --serve", nix.ProtocolSSHNG},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := startPeer(t, "127.0.0.4", tc.command, strings.HasPrefix(tc.command, "nix"))
			probeError(t, p.target(tc.protocol), probe.WrongProtocol)
		})
	}
}

func TestProbeRefused(t *testing.T) {
	t.Parallel()
	target := probe.Target{
		Address: "127.0.0.3",
		Port:    testenv.FreePort(t, "127.0.0.3"),
		Signer:  testenv.NewKey(t).Signer,
		HostKey: testenv.NewKey(t).PublicKey(),
		Timeout: 5 * time.Second,
	}
	e := probeError(t, target, probe.Refused)
	if !strings.HasPrefix(e.Error(), "probe nix-ssh@127.0.0.3:"+strconv.Itoa(target.Port)+": refused: ") {
		t.Errorf("message %q", e.Error())
	}
}

// silentListener accepts TCP connections on a loopback address and never
// writes to them. accepted gets a value for each connection.
func silentListener(t *testing.T, address string) (port int, accepted <-chan struct{}) {
	t.Helper()
	l, err := net.Listen("tcp", net.JoinHostPort(address, "0"))
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan struct{}, 16)
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l.Addr().(*net.TCPAddr).Port, ch
}

func TestProbeTimeout(t *testing.T) {
	t.Parallel()
	port, _ := silentListener(t, "127.0.0.5")
	target := probe.Target{
		Address: "127.0.0.5",
		Port:    port,
		Signer:  testenv.NewKey(t).Signer,
		HostKey: testenv.NewKey(t).PublicKey(),
		Timeout: 300 * time.Millisecond,
	}
	t.Run("Timeout", func(t *testing.T) {
		t.Parallel()
		start := time.Now()
		e := probeError(t, target, probe.Timeout)
		if d := time.Since(start); d < target.Timeout || d > 5*time.Second {
			t.Errorf("took %v with Timeout %v", d, target.Timeout)
		}
		if !errors.Is(e, context.DeadlineExceeded) {
			t.Errorf("%v does not wrap context.DeadlineExceeded", e)
		}
	})
	t.Run("ctx deadline", func(t *testing.T) {
		t.Parallel()
		target := target
		target.Timeout = time.Minute
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := probe.Probe(ctx, target)
		var e *probe.Error
		if !errors.As(err, &e) || e.Reason != probe.Timeout {
			t.Fatalf("Probe = %v, want a Timeout", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("took %v with a 200ms context", d)
		}
	})
}

func TestProbeCanceled(t *testing.T) {
	t.Parallel()
	port, accepted := silentListener(t, "127.0.0.5")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		<-accepted // the probe is waiting for the SSH banner
		cancel()
	}()
	_, err := probe.Probe(ctx, probe.Target{
		Address: "127.0.0.5",
		Port:    port,
		Signer:  testenv.NewKey(t).Signer,
		HostKey: testenv.NewKey(t).PublicKey(),
		Timeout: time.Minute,
	})
	var e *probe.Error
	if !errors.As(err, &e) || e.Reason != probe.Canceled || !errors.Is(err, context.Canceled) {
		t.Fatalf("Probe = %v, want Canceled", err)
	}
}

func TestProbeInvalidTarget(t *testing.T) {
	t.Parallel()
	key := testenv.NewKey(t)
	good := probe.Target{Address: "127.0.0.2", Signer: key.Signer, HostKey: key.PublicKey()}
	for name, mutate := range map[string]func(*probe.Target){
		"no address":   func(t *probe.Target) { t.Address = "" },
		"no signer":    func(t *probe.Target) { t.Signer = nil },
		"no host key":  func(t *probe.Target) { t.HostKey = nil },
		"bad protocol": func(t *probe.Target) { t.Protocol = "http" },
		"bad port":     func(t *probe.Target) { t.Port = 70000 },
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			target := good
			mutate(&target)
			probeError(t, target, probe.InvalidTarget)
		})
	}
}

// TestProbeDialsFromItsAddress: a probe with From set connects from that
// address, as an agent on a loopback address of its own does.
func TestProbeDialsFromItsAddress(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.5:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	remote := make(chan net.Addr, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			remote <- c.RemoteAddr()
			c.Close()
		}
	}()
	_, err = probe.Probe(context.Background(), probe.Target{
		Address: "127.0.0.5",
		Port:    l.Addr().(*net.TCPAddr).Port,
		Signer:  testenv.NewKey(t).Signer,
		HostKey: testenv.NewKey(t).PublicKey(),
		Timeout: 5 * time.Second,
		From:    net.ParseIP("127.0.0.9"),
	})
	if err == nil {
		t.Fatal("a listener that closes at once passed the probe")
	}
	if got := (<-remote).(*net.TCPAddr).IP.String(); got != "127.0.0.9" {
		t.Errorf("the probe came from %s, want 127.0.0.9", got)
	}
}

// TestProbeSaysWhetherTheDaemonTrustsNixSSH: over ssh-ng, a daemon of Nix
// 2.15 or later (worker protocol 1.35) says whether it trusts nix-ssh,
// as its trusted-users says; an older one (this machine's 2.8) says
// nothing. The Nix version matrix runs it on newer Nix.
func TestProbeSaysWhetherTheDaemonTrustsNixSSH(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "sshd", "nix-daemon", "nix-store")
	testenv.RequireNixSSHUser(t)
	for _, trusted := range []bool{false, true} {
		t.Run(fmt.Sprintf("trusted=%v", trusted), func(t *testing.T) {
			users := "trusted-users = root"
			if trusted {
				users += " " + testenv.NixSSHUser
			}
			dir := t.TempDir()
			testenv.WriteNixConf(t, dir, users)
			client := testenv.NewKey(t)
			sshd := testenv.StartSSHD(t, testenv.SSHDConfig{
				Address:        "127.0.0.4",
				AuthorizedKeys: map[string]string{testenv.NixSSHUser: testenv.AuthorizedKeyLine("nix-daemon --stdio", client.PublicKey())},
				Daemon:         testenv.StartNixDaemon(t, dir),
			})
			res, err := probe.Probe(context.Background(), probe.Target{Address: sshd.Address, Port: sshd.Port,
				Protocol: nix.ProtocolSSHNG, Signer: client.Signer, HostKey: sshd.HostKey, Timeout: 20 * time.Second})
			if err != nil {
				t.Fatalf("Probe: %v\nsshd log:\n%s", err, sshd.Logs())
			}
			want := probe.NotTrusted
			switch {
			case res.ServerVersion&0xff < 35:
				want = probe.TrustUnknown
			case trusted:
				want = probe.Trusted
			}
			t.Logf("daemon of Nix %q, protocol %#x: trust %d", res.NixVersion, res.ServerVersion, res.Trusted)
			if res.Trusted != want {
				t.Errorf("trust %d, want %d (protocol %#x)", res.Trusted, want, res.ServerVersion)
			}
		})
	}
}
