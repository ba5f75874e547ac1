package peer

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// Defaults of the client.
const (
	// DefaultDialTimeout bounds the TCP connect, and then the SSH handshake.
	DefaultDialTimeout = 5 * time.Second
	// DefaultFetchTimeout bounds a whole Fetch.
	DefaultFetchTimeout = 30 * time.Second
)

// maxStderr bounds what a client keeps of a peer's stderr for a message.
const maxStderr = 512

// HostKeyCheck decides whether key is the peer's trusted host key; the
// caller does the pinning or trust-on-first-use. An error refuses the
// connection before anything is read from it.
type HostKeyCheck func(key ssh.PublicKey) error

// Fetch asks the peer at addr ("host:port") for its facts once. Errors
// name the peer, and a refused host key by its fingerprint. Fetch takes at
// most DefaultFetchTimeout, on the wall clock.
func Fetch(ctx context.Context, addr string, check HostKeyCheck) (Facts, error) {
	ctx, cancel := context.WithTimeout(ctx, DefaultFetchTimeout)
	defer cancel()
	f, err := fetch(ctx, addr, check)
	if err != nil {
		return Facts{}, fmt.Errorf("peer %s: fetch facts: %w", addr, err)
	}
	return f, nil
}

func fetch(ctx context.Context, addr string, check HostKeyCheck) (Facts, error) {
	client, err := dial(ctx, addr, nil, nil, check, DefaultDialTimeout, false)
	if err != nil {
		return Facts{}, err
	}
	defer client.Close()
	stop := context.AfterFunc(ctx, func() { client.Close() })
	defer stop()
	sess, lines, stderr, err := start(client, cmdFacts)
	if err != nil {
		return Facts{}, ctxOr(ctx, err)
	}
	line, err := lines.next()
	switch {
	case errors.Is(err, io.EOF):
		return Facts{}, ctxOr(ctx, fmt.Errorf("no document: %v%s", sess.Wait(), stderr.suffix()))
	case err != nil:
		return Facts{}, ctxOr(ctx, err)
	case isKeepalive(line):
		return Facts{}, fmt.Errorf("%w: a keepalive instead of a document", ErrInvalidFacts)
	}
	return DecodeFacts(line)
}

// errConnect marks a failure to connect at all (no TCP connection).
var errConnect = errors.New("connect")

// dial connects to addr and does the SSH handshake, accepting only an
// ed25519 host key that check accepts. timeout bounds the connect and the
// handshake each.
//
// With certs, the server is asked for its host certificate first (trust:
// ca): check then gets the certificate.
func dial(ctx context.Context, addr string, local net.IP, identity ssh.Signer, check HostKeyCheck, timeout time.Duration, certs bool) (*ssh.Client, error) {
	if check == nil {
		return nil, errors.New("no host key check given")
	}
	d := net.Dialer{Timeout: timeout}
	if local != nil {
		d.LocalAddr = &net.TCPAddr{IP: local}
	}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errConnect, err)
	}
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		c.Close()
		return nil, fmt.Errorf("connect: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	var refused error
	// With certs, a plain key too, for a message that says what is missing.
	algos := []string{ssh.KeyAlgoED25519}
	if certs {
		algos = []string{ssh.CertAlgoED25519v01, ssh.KeyAlgoED25519}
	}
	config := &ssh.ClientConfig{
		User: "nixpeer",
		HostKeyCallback: func(_ string, _ net.Addr, key ssh.PublicKey) error {
			if err := check(key); err != nil {
				refused = fmt.Errorf("host key %s refused: %w", ssh.FingerprintSHA256(key), err)
				return refused
			}
			return nil
		},
		HostKeyAlgorithms: algos,
		ClientVersion:     ClientVersion,
		Auth: []ssh.AuthMethod{ssh.PublicKeysCallback(func() ([]ssh.Signer, error) {
			if identity != nil {
				return []ssh.Signer{identity}, nil
			}
			return []ssh.Signer{ephemeral()}, nil
		})},
	}
	sc, chans, reqs, err := ssh.NewClientConn(c, addr, config)
	stopped := stop()
	switch {
	case refused != nil:
		c.Close()
		return nil, refused
	case !stopped:
		c.Close()
		return nil, ctx.Err()
	case err != nil:
		c.Close()
		return nil, fmt.Errorf("ssh handshake: %w", err)
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		sc.Close()
		return nil, fmt.Errorf("ssh handshake: %w", err)
	}
	return ssh.NewClient(sc, chans, reqs), nil
}

// start opens a session running cmd and returns it with a reader of its
// output lines and what it writes to stderr.
func start(client *ssh.Client, cmd string) (*ssh.Session, *lineReader, *stderrTail, error) {
	sess, err := client.NewSession()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open session: %w", err)
	}
	stdout, err := sess.StdoutPipe()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open session: %w", err)
	}
	stderr := &stderrTail{}
	sess.Stderr = stderr
	if err := sess.Start(cmd); err != nil {
		return nil, nil, nil, fmt.Errorf("run %q: %w", cmd, err)
	}
	return sess, newLineReader(stdout, MaxDocumentSize), stderr, nil
}

// ephemeral is a key of no one: a client without an identity shows it and
// is anonymous to the server.
func ephemeral() ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(fmt.Sprintf("generate an ephemeral ed25519 key: %v", err))
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		panic(fmt.Sprintf("ephemeral ed25519 key: %v", err))
	}
	return s
}

// isKeepalive tells a watch's keepalive line from a document.
func isKeepalive(line []byte) bool {
	return string(line) == "{}"
}

// ctxOr returns ctx's error when ctx ended (the cause of a closed
// connection), else err.
func ctxOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// stderrTail keeps the first maxStderr bytes a peer writes to stderr and
// drops the rest.
type stderrTail struct {
	mu  sync.Mutex
	buf []byte
}

func (s *stderrTail) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if room := maxStderr - len(s.buf); room > 0 {
		s.buf = append(s.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// suffix returns ": stderr \"...\"" for a message, or "" when there was
// nothing.
func (s *stderrTail) suffix() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) == 0 {
		return ""
	}
	return fmt.Sprintf(" (stderr %q)", s.buf)
}
