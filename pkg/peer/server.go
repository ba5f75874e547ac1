package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/clock"
)

// Defaults of ServerOptions.
const (
	DefaultMaxConns         = 64
	DefaultMaxConnsPerIP    = 8
	DefaultMaxChannels      = 4
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 60 * time.Second
	DefaultKeepalive        = 2 * time.Second
)

// ServerOptions bound a Server. Zero fields take the defaults.
type ServerOptions struct {
	// MaxConns bounds concurrent connections; one more is closed at once.
	MaxConns int
	// MaxConnsPerIP bounds the concurrent connections from one address,
	// so that one client cannot take every slot.
	MaxConnsPerIP int
	// MaxChannels bounds the sessions open at once on one connection.
	MaxChannels int
	// HandshakeTimeout bounds the SSH handshake, and the time a session
	// may take to ask for its command.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that has no open channel for this
	// long. It also bounds one write to a watcher that does not read.
	IdleTimeout time.Duration
	// Keepalive is how often a watch gets the keepalive line "{}".
	Keepalive time.Duration
	// Clock times the handshake, the idle and stall timeouts, the
	// keepalives and the retries of a failing accept; default clock.Real.
	Clock clock.Clock
	// OnConnect, when set, is told the address of every connection the
	// port takes (before its handshake): a peer that connects is back.
	OnConnect func(remote net.IP)
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.MaxConns <= 0 {
		o.MaxConns = DefaultMaxConns
	}
	if o.MaxConnsPerIP <= 0 {
		o.MaxConnsPerIP = DefaultMaxConnsPerIP
	}
	if o.MaxChannels <= 0 {
		o.MaxChannels = DefaultMaxChannels
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.Keepalive <= 0 {
		o.Keepalive = DefaultKeepalive
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	return o
}

// Server serves this host's facts on the peer port.
type Server struct {
	log    *zap.Logger
	opts   ServerOptions
	config *ssh.ServerConfig
	conns  chan struct{} // a token per open connection, MaxConns deep

	mu       sync.Mutex
	doc      []byte // the current document and its newline; nil before Publish
	watchers map[*slot]struct{}
	perIP    map[string]int // open connections by remote address
}

// NewServer returns a server that authenticates with hostKey, the host's
// own ed25519 SSH host key, and lets every client in without credentials.
// It serves nothing until Publish is called.
func NewServer(log *zap.Logger, hostKey ssh.Signer, opts ServerOptions) *Server {
	config := &ssh.ServerConfig{NoClientAuth: true, ServerVersion: "SSH-2.0-nixpeer"}
	config.AddHostKey(hostKey)
	if t := hostKey.PublicKey().Type(); t != ssh.KeyAlgoED25519 {
		log.Warn("peer port host key is not ed25519; peers will refuse it", zap.String("type", t))
	}
	opts = opts.withDefaults()
	return &Server{
		log:      log,
		opts:     opts,
		config:   config,
		conns:    make(chan struct{}, opts.MaxConns),
		watchers: map[*slot]struct{}{},
		perIP:    map[string]int{},
	}
}

// Publish makes f the document the server gives, and hands it at once to
// every open watch when it differs from the previous one. It never waits
// for a watcher. A document that Validate refuses is logged and dropped:
// the server keeps giving the previous one, so a peer never gets a
// document it would have to reject.
func (s *Server) Publish(f Facts) {
	doc, err := encodeFacts(f)
	if err != nil {
		s.log.Error("refusing to publish invalid facts; the peer port keeps the previous document", zap.Error(err))
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if bytes.Equal(doc, s.doc) {
		return
	}
	s.doc = doc
	for w := range s.watchers {
		w.set(doc)
	}
	s.log.Debug("published facts", zap.Int64("generation", f.Generation), zap.Bool("ready", f.Ready), zap.Int("watchers", len(s.watchers)))
}

// current returns the current document, nil before the first Publish.
func (s *Server) current() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.doc
}

// watch registers a watcher whose slot already holds the current
// document, if any, and returns it with the function that unregisters it.
func (s *Server) watch() (*slot, func()) {
	w := newSlot()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.doc != nil {
		w.set(s.doc)
	}
	s.watchers[w] = struct{}{}
	return w, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers, w)
	}
}

// Serve accepts connections on ln until ctx ends, then closes ln and every
// connection and returns nil once they are all done. It returns an error
// only when ln fails for another reason. Serve may run on several
// listeners at once; MaxConns counts them together.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// Closing ln ends Accept. An Accept that returned does not mean that
	// the socket is closed yet: Serve waits for Close itself, so that the
	// address is free when Serve returns (a Port listening there again).
	lnClosed := make(chan struct{})
	context.AfterFunc(ctx, func() {
		ln.Close()
		close(lnClosed)
	})
	defer func() { <-lnClosed }() // runs after the cancel below
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs before wg.Wait: ends every connection

	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on peer port %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors and the like: wait, as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("accept on peer port failed; retrying", zap.Error(err), zap.Duration("in", delay))
			t := clock.NewTimer(s.opts.Clock, delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return nil
			}
			continue
		}
		delay = 0
		select {
		case s.conns <- struct{}{}:
		default:
			s.log.Debug("refused peer connection: too many open", zap.Stringer("remote", c.RemoteAddr()), zap.Int("maxConns", s.opts.MaxConns))
			c.Close()
			continue
		}
		ip := remoteIP(c)
		if !s.takeIP(ip) {
			<-s.conns
			s.log.Debug("refused peer connection: too many open from its address", zap.String("remote", ip), zap.Int("maxConnsPerIP", s.opts.MaxConnsPerIP))
			c.Close()
			continue
		}
		if s.opts.OnConnect != nil {
			if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				s.opts.OnConnect(a.IP)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-s.conns }()
			defer s.releaseIP(ip)
			s.serveConn(ctx, c)
		}()
	}
}

// takeIP counts a connection from ip, unless ip has MaxConnsPerIP open.
func (s *Server) takeIP(ip string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[ip] >= s.opts.MaxConnsPerIP {
		return false
	}
	s.perIP[ip]++
	return true
}

func (s *Server) releaseIP(ip string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.perIP[ip]--; s.perIP[ip] <= 0 {
		delete(s.perIP, ip)
	}
}

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return c.RemoteAddr().String()
}
