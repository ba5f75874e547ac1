package peer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"reflect"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// Defaults of ServerOptions.
const (
	DefaultMaxConns           = 64
	DefaultMaxConnsPerIP      = 8
	DefaultMaxPeers           = 4096
	DefaultMaxConnsPerPeer    = 4
	DefaultMaxHandshakes      = 128
	DefaultMaxHandshakesPerIP = 32
	DefaultAnonymousLifetime  = time.Minute
	DefaultMaxChannels        = 4
	DefaultHandshakeTimeout   = 5 * time.Second
	DefaultIdleTimeout        = 60 * time.Second
	DefaultKeepalive          = 2 * time.Second
	DefaultTurnHold           = 30 * time.Second
)

// DefaultTurns is how many known peers may probe this host's sshd at
// once: two per CPU, at least 4 (sshd's default MaxStartups lets 10
// logins start at once).
var DefaultTurns = max(4, 2*runtime.NumCPU())

// ServerOptions bound a Server. Zero fields take the defaults.
//
// A client that authenticates with the host key of a known peer (see
// Known) takes a slot of MaxPeers, whatever its address: many hosts
// behind one NAT address are no problem. Any other client is anonymous:
// it shares MaxConns with every other anonymous client, MaxConnsPerIP with
// those of its address, and is closed after AnonymousLifetime, so that no
// number of strangers can keep a known peer out. Before it authenticates,
// every connection takes one of MaxHandshakes (MaxHandshakesPerIP from one
// address) for at most HandshakeTimeout; a connection from an address of a
// host this one peers with (Reserved) takes one of a pool of MaxHandshakes
// of its own, which no number of strangers can fill. "One address" is an
// IPv4 address, or an IPv6 /64: one host may hold a whole /64.
type ServerOptions struct {
	// MaxConns bounds the concurrent anonymous connections; one more is
	// closed at once.
	MaxConns int
	// MaxConnsPerIP bounds the concurrent anonymous connections from one
	// address, so that one client cannot take every slot.
	MaxConnsPerIP int
	// MaxPeers bounds the concurrent connections of known peers, and
	// MaxConnsPerPeer those of one of them (a peer needs one: its watch).
	MaxPeers        int
	MaxConnsPerPeer int
	// MaxHandshakes and MaxHandshakesPerIP bound the connections not
	// authenticated yet.
	MaxHandshakes      int
	MaxHandshakesPerIP int
	// AnonymousLifetime closes an anonymous connection after it: a peer
	// not known yet comes back, known by then, on a connection of its own.
	AnonymousLifetime time.Duration
	// Known tells whether a client's key is the host key of a peer this
	// host knows, and its name (an empty one counts as unknown); nil knows
	// nobody.
	Known func(key ssh.PublicKey) (string, bool)
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
	// Turns bounds the known peers probing this host's sshd at once
	// (DefaultTurns): a peer asks for a turn before it probes, so that a
	// hundred consumers starting together do not storm sshd.
	Turns int
	// TurnHold ends a turn the peer did not end itself.
	TurnHold time.Duration
	// OnConnect, when set, is told the address of every connection the
	// port takes (before its handshake): a peer that connects is back.
	OnConnect func(remote net.IP)
	// Reserved tells whether an address is one of a host this one peers
	// with: its handshakes have room of their own. nil reserves nothing.
	Reserved func(remote net.IP) bool
	// Told, when set, takes what a client tells of its own host over a
	// "tell" session: it authenticated with key, and next returns each
	// document it sends (valid, see DecodeFacts), or an error once the
	// session ends or the client sent something invalid. Told returns
	// when it wants no more; an error refuses the documents, and is what
	// the client is told. nil refuses every "tell".
	Told func(ctx context.Context, key ssh.PublicKey, next func() (Facts, error)) error
	// Certificate, when set, is a host certificate of the host key,
	// presented to clients that ask for one (trust: ca) beside the plain
	// key.
	Certificate *ssh.Certificate
}

func (o ServerOptions) withDefaults() ServerOptions {
	orDefault(&o.MaxConns, DefaultMaxConns)
	orDefault(&o.MaxConnsPerIP, DefaultMaxConnsPerIP)
	orDefault(&o.MaxPeers, DefaultMaxPeers)
	orDefault(&o.MaxConnsPerPeer, DefaultMaxConnsPerPeer)
	orDefault(&o.MaxHandshakes, DefaultMaxHandshakes)
	orDefault(&o.MaxHandshakesPerIP, DefaultMaxHandshakesPerIP)
	orDefault(&o.AnonymousLifetime, DefaultAnonymousLifetime)
	orDefault(&o.MaxChannels, DefaultMaxChannels)
	orDefault(&o.HandshakeTimeout, DefaultHandshakeTimeout)
	orDefault(&o.IdleTimeout, DefaultIdleTimeout)
	orDefault(&o.Keepalive, DefaultKeepalive)
	orDefault(&o.Turns, DefaultTurns)
	orDefault(&o.TurnHold, DefaultTurnHold)
	return o
}

// orDefault sets *v to d when it is not positive.
func orDefault[T int | time.Duration](v *T, d T) {
	if *v <= 0 {
		*v = d
	}
}

// Server serves this host's facts on the peer port.
type Server struct {
	log    *zap.Logger
	opts   ServerOptions
	config *ssh.ServerConfig

	// publishing serializes Publish and the first document of a watch, so
	// that no watcher gets an older document after a newer one.
	publishing sync.Mutex
	mu         sync.Mutex
	facts      *Facts // the current document; nil before Publish
	// watchers are the open watches, each with the key its client
	// authenticated with (nil: anonymous).
	watchers map[slot]ssh.PublicKey
	// Open connections: not authenticated yet, anonymous, of known peers;
	// by remote address for the first two.
	handshakes, reservedHandshakes, anonymous, peers int
	// By source (see sourceOf).
	handshakesByIP, anonymousByIP map[string]int
	// By known peer: its connections, oldest first, and what ends the
	// turn it asked for or holds.
	peerConns map[string][]io.Closer
	turnHeld  map[string]*context.CancelFunc
	// turns holds a token for each turn given (see ServerOptions.Turns).
	turns chan struct{}
}

// permPeer is the Permissions extension that names the known peer a
// connection authenticated as.
const permPeer = "nixpeer-peer"

// permKey is the Permissions extension that holds the key a connection
// authenticated with (wire form): a peer not known when it connected may
// be known by the time it asks for a turn.
const permKey = "nixpeer-key"

// ClientVersion is what nixpeer's clients announce; they authenticate
// with a key, always.
const ClientVersion = "SSH-2.0-nixpeer"

// NewServer returns a server that authenticates with hostKey, the host's
// own ed25519 SSH host key. A client that shows the host key of a known
// peer is that peer; any other client, with another key or none, is
// anonymous (see ServerOptions). It serves nothing until Publish is
// called.
func NewServer(log *zap.Logger, hostKey ssh.Signer, opts ServerOptions) *Server {
	opts = opts.withDefaults()
	config := &ssh.ServerConfig{
		ServerVersion: ClientVersion,
		NoClientAuth:  true,
		NoClientAuthCallback: func(meta ssh.ConnMetadata) (*ssh.Permissions, error) {
			if string(meta.ClientVersion()) == ClientVersion {
				// An agent has a key to show: let it.
				return nil, errors.New("nixpeer agents authenticate with their host key")
			}
			return &ssh.Permissions{}, nil
		},
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			ext := map[string]string{permKey: string(key.Marshal())}
			if name := opts.known(key); name != "" {
				ext[permPeer] = name
			}
			return &ssh.Permissions{Extensions: ext}, nil
		},
	}
	config.AddHostKey(hostKey)
	if opts.Certificate != nil {
		if cs, err := ssh.NewCertSigner(opts.Certificate, hostKey); err != nil {
			log.Warn("the host certificate is not presented", zap.Error(err))
		} else {
			config.AddHostKey(cs)
		}
	}
	if t := hostKey.PublicKey().Type(); t != ssh.KeyAlgoED25519 {
		log.Warn("peer port host key is not ed25519; peers will refuse it", zap.String("type", t))
	}
	return &Server{
		log:            log,
		opts:           opts,
		config:         config,
		watchers:       map[slot]ssh.PublicKey{},
		handshakesByIP: map[string]int{},
		anonymousByIP:  map[string]int{},
		peerConns:      map[string][]io.Closer{},
		turnHeld:       map[string]*context.CancelFunc{},
		turns:          make(chan struct{}, opts.Turns),
	}
}

// Publish makes f the document the server gives, and hands it at once to
// every open watch when it differs from the previous one. It never waits
// for a watcher. A document that Validate refuses is logged and dropped:
// the server keeps giving the previous one, so a peer never gets a
// document it would have to reject.
//
// The consumers f's host lets in are told to known peers only, each its
// own entry: to an anonymous client, who fetches from this host, and with
// which key, is none of its business, and a consumer needs only to know
// that it is let in (with hundreds of consumers, the whole list to each
// of them would be a document of O(N) bytes to each of N).
func (s *Server) Publish(f Facts) {
	if _, err := encodeFacts(f); err != nil {
		s.log.Error("refusing to publish invalid facts; the peer port keeps the previous document", zap.Error(err))
		return
	}
	s.publishing.Lock()
	defer s.publishing.Unlock()
	s.mu.Lock()
	if s.facts != nil && reflect.DeepEqual(*s.facts, f) {
		s.mu.Unlock()
		return
	}
	s.facts = &f
	watchers := maps.Clone(s.watchers)
	s.mu.Unlock()
	views := map[string][]byte{}
	for w, key := range watchers {
		w.set(s.view(f, key, views))
	}
	s.log.Debug("published facts", zap.Int64("generation", f.Generation), zap.Bool("ready", f.Ready), zap.Int("watchers", len(watchers)))
}

// view is the document f as the client with key (nil: anonymous) sees it,
// memoized in views by the known peer it is ("" for none).
func (s *Server) view(f Facts, key ssh.PublicKey, views map[string][]byte) []byte {
	who := s.opts.known(key)
	if doc, ok := views[who]; ok {
		return doc
	}
	doc, err := encodeFacts(seenBy(f, who)) // valid: Publish checked the whole
	if err != nil {
		s.log.Error("encode facts for a peer", zap.Error(err))
	}
	views[who] = doc
	return doc
}

// seenBy is f as the known peer who sees it: of the hosts f's host lets
// in, who alone ("" for an anonymous client: none).
func seenBy(f Facts, who string) Facts {
	if f.Serve != nil {
		serve := *f.Serve
		serve.Authorized = nil
		for _, a := range f.Serve.Authorized {
			if who != "" && a.Host == who {
				serve.Authorized = append(serve.Authorized, a)
			}
		}
		f.Serve = &serve
	}
	return f
}

// current returns the current document as the client with key sees it,
// nil before the first Publish.
func (s *Server) current(key ssh.PublicKey) []byte {
	s.mu.Lock()
	f := s.facts
	s.mu.Unlock()
	if f == nil {
		return nil
	}
	return s.view(*f, key, map[string][]byte{})
}

// watch registers a watcher of the client with key (nil: anonymous) whose
// slot already holds the current document, if any, and returns it with
// the function that unregisters it.
func (s *Server) watch(key ssh.PublicKey) (slot, func()) {
	w := make(slot, 1)
	s.publishing.Lock()
	defer s.publishing.Unlock()
	s.mu.Lock()
	s.watchers[w] = key
	s.mu.Unlock()
	if doc := s.current(key); doc != nil { // no Publish in between: s.publishing
		w.set(doc)
	}
	return w, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.watchers, w)
	}
}

// peerOf is the known peer the client of sconn is: as it connected, or by
// its key now; "" for none.
func (s *Server) peerOf(sconn *ssh.ServerConn) string {
	if sconn.Permissions != nil && sconn.Permissions.Extensions[permPeer] != "" {
		return sconn.Permissions.Extensions[permPeer]
	}
	return s.opts.known(clientKey(sconn))
}

// known is the name of the known peer whose host key is key (see Known),
// "" for none or a nil key.
func (o ServerOptions) known(key ssh.PublicKey) string {
	if key != nil && o.Known != nil {
		if name, ok := o.Known(key); ok {
			return name
		}
	}
	return ""
}

// clientKey is the key the client of sconn authenticated with, nil for
// an anonymous one.
func clientKey(sconn *ssh.ServerConn) ssh.PublicKey {
	if sconn.Permissions == nil {
		return nil
	}
	raw, ok := sconn.Permissions.Extensions[permKey]
	if !ok {
		return nil
	}
	key, err := ssh.ParsePublicKey([]byte(raw))
	if err != nil {
		return nil
	}
	return key
}

// acceptRetry is the wait after a failing accept (out of file
// descriptors and the like), as net/http waits.
var acceptRetry = backoff.Policy{Base: 5 * time.Millisecond, Cap: time.Second}

// Serve accepts connections on ln until ctx ends, then closes ln and every
// connection and returns nil once they are all done. It returns an error
// only when ln fails for another reason. Serve may run on several
// listeners at once; MaxConns counts them together.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
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

	failures := 0
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on peer port %s: %w", ln.Addr(), err)
			}
			failures++
			delay := acceptRetry.Delay(failures)
			s.log.Warn("accept on peer port failed; retrying", zap.Error(err), zap.Duration("in", delay))
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		failures = 0
		src := s.sourceOf(c)
		if why := s.takeHandshake(src); why != "" {
			s.log.Debug("refused peer connection", zap.Stringer("remote", c.RemoteAddr()), zap.String("why", why))
			c.Close()
			continue
		}
		if s.opts.OnConnect != nil {
			if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
				s.opts.OnConnect(a.IP)
			}
		}
		wg.Go(func() { s.serveConn(ctx, c, src) })
	}
}

// source is where a connection comes from as the limits count it: key is
// its address, or for IPv6 its /64; reserved marks an address of a host
// this one peers with.
type source struct {
	key      string
	reserved bool
}

func (s *Server) sourceOf(c net.Conn) source {
	a, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return source{key: c.RemoteAddr().String()}
	}
	src := source{key: a.IP.String()}
	if a.IP.To4() == nil && len(a.IP) == net.IPv6len {
		src.key = a.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
	}
	if s.opts.Reserved != nil {
		src.reserved = s.opts.Reserved(a.IP)
	}
	return src
}

// pool is the count of handshakes under way that src takes from.
func (s *Server) pool(src source) *int {
	if src.reserved {
		return &s.reservedHandshakes
	}
	return &s.handshakes
}

// takeHandshake counts a connection from src that is not authenticated
// yet; it says why not when there is no room for it.
func (s *Server) takeHandshake(src source) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	pool := s.pool(src)
	switch {
	case *pool >= s.opts.MaxHandshakes:
		return fmt.Sprintf("%d handshakes under way", *pool)
	case s.handshakesByIP[src.key] >= s.opts.MaxHandshakesPerIP:
		return fmt.Sprintf("%d handshakes under way from its address", s.handshakesByIP[src.key])
	}
	*pool++
	s.handshakesByIP[src.key]++
	return ""
}

// endHandshake gives back the handshake slot of src; under s.mu.
func (s *Server) endHandshake(src source) {
	*s.pool(src)--
	if s.handshakesByIP[src.key]--; s.handshakesByIP[src.key] <= 0 {
		delete(s.handshakesByIP, src.key)
	}
}

// admit turns a connection from ip that authenticated (as peer, or
// anonymous when peer is "") from a handshake into a slot of its pool; it
// says why not when there is no room for it. A known peer at its
// MaxConnsPerPeer has its oldest connection closed (dead, perhaps, without
// this host knowing) to make room. The returned function gives the slot
// back.
func (s *Server) admit(src source, peer string, conn io.Closer) (func(), string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endHandshake(src)
	ip := src.key
	if peer != "" {
		if s.peers >= s.opts.MaxPeers {
			return nil, fmt.Sprintf("%d peers connected", s.peers)
		}
		if conns := s.peerConns[peer]; len(conns) >= s.opts.MaxConnsPerPeer {
			conns[0].Close() // its release takes it out of the list
			s.peerConns[peer] = conns[1:]
		}
		s.peers++
		s.peerConns[peer] = append(s.peerConns[peer], conn)
		return func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.peers--
			if conns := slices.DeleteFunc(s.peerConns[peer], func(c io.Closer) bool { return c == conn }); len(conns) > 0 {
				s.peerConns[peer] = conns
			} else {
				delete(s.peerConns, peer)
			}
		}, ""
	}
	switch {
	case s.anonymous >= s.opts.MaxConns:
		return nil, fmt.Sprintf("too many open: %d anonymous connections", s.anonymous)
	case s.anonymousByIP[ip] >= s.opts.MaxConnsPerIP:
		return nil, fmt.Sprintf("too many open from its address: %d anonymous connections", s.anonymousByIP[ip])
	}
	s.anonymous++
	s.anonymousByIP[ip]++
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.anonymous--
		if s.anonymousByIP[ip]--; s.anonymousByIP[ip] <= 0 {
			delete(s.anonymousByIP, ip)
		}
	}, ""
}

// abandon gives back the handshake slot of a connection that did not
// authenticate.
func (s *Server) abandon(src source) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.endHandshake(src)
}
