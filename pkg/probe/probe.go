// Package probe checks that a peer really serves its Nix store to us over
// SSH: it logs in with our key, pins the peer's host key, and runs the
// opening of the Nix protocol the peer's forced command speaks, ssh://
// (nix-store --serve) or ssh-ng:// (nix-daemon --stdio). A probe that
// succeeds means a Nix substituter pointing at the peer would connect.
package probe

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// Defaults applied to a Target's zero fields.
const (
	DefaultPort    = 22
	DefaultUser    = "nix-ssh"
	DefaultTimeout = 10 * time.Second
)

// Target is a peer to probe.
type Target struct {
	Address  string        // IP or DNS name
	Port     int           // sshd port, default 22
	User     string        // default "nix-ssh"
	Protocol nix.Protocol  // ssh (nix-store --serve, the default) or ssh-ng (nix-daemon --stdio)
	Signer   ssh.Signer    // our client key: required
	HostKey  ssh.PublicKey // the pinned host key, compared exactly; required unless HostCAs
	// NextHostKey, when set, is taken as well as HostKey: the key the
	// server's trusted one hands it over to.
	NextHostKey ssh.PublicKey
	// HostCAs, when set (trust: ca), replace HostKey: the server's host
	// certificate must be signed by one of them, valid now, for Address.
	HostCAs []ssh.PublicKey
	Timeout time.Duration // bounds the whole probe (dial, handshake, protocol); default 10s
	From    net.IP        // the local address to dial from; nil lets the system choose

	// after, when set, speaks on once the handshake succeeded (see
	// QueryPathInfos).
	after func(w io.Writer, r io.Reader) error
}

// Result describes a successful probe.
type Result struct {
	// ServerVersion is the protocol version the Nix server announced:
	// (major<<8)|minor, e.g. 0x207 for nix-store --serve and 0x122 (1.34)
	// for nix-daemon --stdio of Nix 2.8.
	ServerVersion uint64
	// NixVersion is the Nix release the daemon reported ("2.8.0"); ssh-ng
	// only, from worker protocol 1.33 on; empty otherwise.
	NixVersion string
	// Trusted is whether the daemon trusts the user the probe logged in
	// as (nix-ssh): ssh-ng only, from worker protocol 1.35 (Nix 2.15) on;
	// TrustUnknown otherwise. A trusted client may act as root on the
	// store.
	Trusted DaemonTrust
	// Elapsed is how long the probe took, from dialing to the answer.
	Elapsed time.Duration
}

// DaemonTrust is what nix-daemon says of its client (worker protocol
// 1.35's TrustedFlag).
type DaemonTrust uint64

// What the daemon may say.
const (
	TrustUnknown DaemonTrust = iota // not said (an older daemon, or ssh://)
	Trusted                         // in trusted-users: root-equivalent on the store
	NotTrusted
)

// Reason classifies why a probe failed.
type Reason int

// The reasons a probe fails.
const (
	// Refused: the peer could not be reached: TCP connection refused, no
	// route to it, or its name does not resolve.
	Refused Reason = iota + 1
	// Timeout: no complete answer within the Timeout (or ctx's deadline).
	Timeout
	// HostKeyMismatch: the peer presented a host key other than the pin.
	HostKeyMismatch
	// Unauthorized: sshd did not accept our key for the user.
	Unauthorized
	// WrongProtocol: the peer did not speak SSH and then the Nix protocol:
	// bad magic, a short read, EOF before the answer (for example when the
	// forced command is not a Nix server, or cannot reach its daemon).
	WrongProtocol
	// Canceled: ctx was canceled before the probe ended.
	Canceled
	// InvalidTarget: the Target lacks a required field or has a bad value;
	// nothing was sent.
	InvalidTarget
)

// reasonWords are the words of each Reason in error messages.
var reasonWords = [...]string{Refused: "refused", Timeout: "timeout", HostKeyMismatch: "host key mismatch", Unauthorized: "unauthorized",
	WrongProtocol: "wrong protocol", Canceled: "canceled", InvalidTarget: "invalid target"}

// String returns the reason as the words used in error messages.
func (r Reason) String() string {
	if r > 0 && int(r) < len(reasonWords) {
		return reasonWords[r]
	}
	return "Reason(" + strconv.Itoa(int(r)) + ")"
}

// Error is the error of every failed probe; use errors.As to get it.
type Error struct {
	Reason Reason
	// Peer is "user@host:port".
	Peer string
	// Err says what failed; it may wrap context.DeadlineExceeded,
	// context.Canceled or a network error.
	Err error
}

// Error returns e.g. "probe nix-ssh@127.0.0.2:22: host key mismatch:
// expected SHA256:..., got SHA256:...".
func (e *Error) Error() string {
	return fmt.Sprintf("probe %s: %s: %v", e.Peer, e.Reason, e.Err)
}

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// failure is an error on its way to become an *Error.
type failure struct {
	reason  Reason
	err     error
	settled bool // reason is final, see settle
}

func (f *failure) Error() string { return f.reason.String() + ": " + f.err.Error() }
func (f *failure) Unwrap() error { return f.err }

func fail(r Reason, format string, args ...any) error {
	return &failure{reason: r, err: fmt.Errorf(format, args...)}
}

// withDefaults fills the zero fields of t.
func (t Target) withDefaults() Target {
	t.Port = cmp.Or(t.Port, DefaultPort)
	t.User = cmp.Or(t.User, DefaultUser)
	t.Protocol = cmp.Or(t.Protocol, nix.ProtocolSSH)
	if t.Timeout <= 0 {
		t.Timeout = DefaultTimeout
	}
	return t
}

func (t Target) addr() string { return net.JoinHostPort(t.Address, strconv.Itoa(t.Port)) }

func (t Target) validate() error {
	switch {
	case t.Address == "":
		return errors.New("no address")
	case t.Port < 1 || t.Port > 65535:
		return fmt.Errorf("port %d out of range", t.Port)
	case t.Signer == nil:
		return errors.New("no client key (Signer)")
	case t.HostKey == nil && len(t.HostCAs) == 0:
		return errors.New("no pinned host key (HostKey)")
	case t.Protocol.Command() == "":
		return fmt.Errorf("unknown protocol %q (want %q or %q)", t.Protocol, nix.ProtocolSSH, nix.ProtocolSSHNG)
	}
	return nil
}

// Probe connects to the peer as t.User with t.Signer, accepts only the
// pinned t.HostKey, runs t.Protocol's Nix server command and checks its
// handshake: for ssh, the serve protocol's magic and version and an empty
// QueryValidPaths; for ssh-ng, the worker protocol's magic, version and
// start-up messages up to STDERR_LAST. Everything is bounded by t.Timeout
// and ctx. A failure is an *Error whose Reason says what went wrong.
func Probe(ctx context.Context, t Target) (Result, error) {
	t = t.withDefaults()
	start := time.Now()
	peer := t.User + "@" + t.addr()
	if err := t.validate(); err != nil {
		return Result{}, &Error{Reason: InvalidTarget, Peer: peer, Err: err}
	}
	ctx, cancel := context.WithDeadline(ctx, start.Add(t.Timeout))
	defer cancel()
	deadline, _ := ctx.Deadline() // ctx's own, when it is sooner

	res, err := probe(ctx, t, start, deadline)
	if err == nil {
		res.Elapsed = time.Since(start)
		return res, nil
	}
	f := settle(ctx, start, deadline, err)
	return Result{}, &Error{Reason: f.reason, Peer: peer, Err: f.err}
}

// settle gives err its final reason, at the moment it happened (now): a
// plain error is WrongProtocol, and anything that broke once ctx was done
// or the deadline passed broke because we gave up (closed the
// connection), so it is a Timeout or Canceled; a host key or auth verdict
// stands. Settling a settled failure returns it unchanged.
func settle(ctx context.Context, start, deadline time.Time, err error) *failure {
	var f *failure
	if !errors.As(err, &f) {
		f = &failure{reason: WrongProtocol, err: err}
	} else if f.settled {
		return f
	}
	f = &failure{reason: f.reason, err: f.err, settled: true}
	if f.reason == HostKeyMismatch || f.reason == Unauthorized {
		return f
	}
	now := time.Now()
	elapsed := now.Sub(start).Round(time.Millisecond)
	switch {
	case errors.Is(ctx.Err(), context.Canceled):
		f.reason, f.err = Canceled, fmt.Errorf("after %v (%w): %w", elapsed, context.Canceled, f.err)
	case ctx.Err() != nil || !now.Before(deadline):
		f.reason, f.err = Timeout, fmt.Errorf("no answer within %v (%w): %w", elapsed, context.DeadlineExceeded, f.err)
	}
	return f
}

// probe does the work of Probe; its errors are *failure or plain (then
// WrongProtocol, see settle).
func probe(ctx context.Context, t Target, start, deadline time.Time) (Result, error) {
	var d net.Dialer
	if t.From != nil {
		d.LocalAddr = &net.TCPAddr{IP: t.From}
	}
	raw, err := d.DialContext(ctx, "tcp", t.addr())
	if err != nil {
		return Result{}, dialFailure(err)
	}
	conn := quickAckConn{raw.(*net.TCPConn)}
	defer conn.Close()
	// Every read and write below goes through conn: closing it when ctx
	// ends unblocks them all; the deadline is a second guard.
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	if err := conn.SetDeadline(deadline); err != nil {
		return Result{}, fmt.Errorf("set deadline: %w", err)
	}

	config := &ssh.ClientConfig{
		User: t.User,
		Auth: []ssh.AuthMethod{ssh.PublicKeys(t.Signer)},
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if len(t.HostCAs) > 0 {
				if _, err := sshkeys.CertifiedKey(key, t.HostCAs, t.Address); err != nil {
					return fail(HostKeyMismatch, "got %s, not a host certificate of hostCAs valid now for the peer", ssh.FingerprintSHA256(key))
				}
				return nil
			}
			if bytes.Equal(key.Marshal(), t.HostKey.Marshal()) || t.NextHostKey != nil && bytes.Equal(key.Marshal(), t.NextHostKey.Marshal()) {
				return nil
			}
			return fail(HostKeyMismatch, "expected %s, got %s", ssh.FingerprintSHA256(t.HostKey), ssh.FingerprintSHA256(key))
		},
		// Ask for the pinned key's type, so that a server with several host
		// keys shows the one we know; with CAs, its certificate.
		HostKeyAlgorithms: hostKeyAlgorithms(t.HostKey, len(t.HostCAs) > 0),
	}
	c, chans, reqs, err := ssh.NewClientConn(conn, t.addr(), config)
	if err != nil {
		var mismatch *failure // the host key callback's
		switch {
		case errors.As(err, &mismatch):
			return Result{}, mismatch
		case strings.Contains(err.Error(), "ssh: unable to authenticate"):
			// x/crypto/ssh has no typed error for this.
			return Result{}, fail(Unauthorized, "key %s not accepted: %w", ssh.FingerprintSHA256(t.Signer.PublicKey()), err)
		}
		return Result{}, fmt.Errorf("ssh handshake: %w", err)
	}
	client := ssh.NewClient(c, chans, reqs)
	defer client.Close()

	session, err := client.NewSession()
	if err != nil {
		return Result{}, fmt.Errorf("open ssh session: %w", err)
	}
	defer session.Close()
	stdin, err := session.StdinPipe()
	if err != nil {
		return Result{}, fmt.Errorf("session stdin: %w", err)
	}
	stdout, err := session.StdoutPipe()
	if err != nil {
		return Result{}, fmt.Errorf("session stdout: %w", err)
	}
	stderr := &tailBuffer{max: 2048}
	session.Stderr = stderr
	// What we ask the peer to run; its forced command wins.
	command := t.Protocol.Command()
	if err := session.Start(command); err != nil {
		return Result{}, fmt.Errorf("run %q: %w", command, err)
	}

	handshake := workerHandshake
	if t.Protocol == nix.ProtocolSSH {
		handshake = serveHandshake
	}
	res, err := handshake(stdin, stdout)
	if err == nil && t.after != nil {
		err = t.after(stdin, stdout)
	}
	if err != nil {
		f := settle(ctx, start, deadline, err)
		if f.reason == WrongProtocol {
			// The remote side's stderr may say why ("command not found",
			// "protocol mismatch"): give it a moment to arrive.
			waitBounded(session, deadline, 300*time.Millisecond)
			if s := stderr.String(); s != "" {
				f.err = fmt.Errorf("%w; remote stderr: %q", f.err, s)
			}
		}
		return Result{}, f
	}
	stdin.Close()
	return res, nil
}

// dialFailure classifies an error of dialing TCP.
func dialFailure(err error) error {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return fail(Timeout, "connect: %w", err)
	}
	return fail(Refused, "connect: %w", err)
}

// waitBounded waits for the remote command to end, at most limit and never
// past deadline.
func waitBounded(session *ssh.Session, deadline time.Time, limit time.Duration) {
	done := make(chan struct{})
	go func() {
		session.Wait()
		close(done)
	}()
	limit = min(limit, time.Until(deadline))
	if limit <= 0 {
		return
	}
	select {
	case <-done:
	case <-time.After(limit):
	}
}

// hostKeyAlgorithms returns the SSH host key algorithms that present key.
func hostKeyAlgorithms(key ssh.PublicKey, certs bool) []string {
	if certs {
		return []string{ssh.CertAlgoED25519v01}
	}
	if key.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256, ssh.KeyAlgoRSA}
	}
	return []string{key.Type()}
}

// tailBuffer keeps the last max bytes written to it; safe for concurrent
// use.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if len(b.buf) > b.max {
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.max:]...)
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.TrimSpace(string(b.buf))
}

// quickAckConn acknowledges every segment at once (TCP_QUICKACK, which
// Linux turns off again by itself, hence before every read). sshd writes
// the replies of a session start in several small segments without
// TCP_NODELAY: with delayed acknowledgements each one waits up to 40 ms
// for ours.
type quickAckConn struct{ *net.TCPConn }

func (c quickAckConn) Read(b []byte) (int, error) {
	if rc, err := c.TCPConn.SyscallConn(); err == nil {
		rc.Control(func(fd uintptr) {
			syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
	return c.TCPConn.Read(b)
}
