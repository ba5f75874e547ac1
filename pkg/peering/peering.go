// Package peering keeps a watch open to every peer the host fetches
// from, takes what its consumers tell over their own connections to the
// peer port (told.go; a consumer is watched only until that stands in),
// decides whether each peer's SSH host key is trusted (trust.go: pinned in
// the desired-state file, approved, certified, or trusted on first use and
// remembered in the state store), and holds what each peer last said. The
// reconcile loop reads it without waiting on the network; a change of what
// a peer says triggers a reconcile at once.
package peering

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"regexp"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Reasons a peer's host key is refused.
const (
	// RefusedChanged: the key differs from the one trusted on first use.
	RefusedChanged = "HostKeyChanged"
	// RefusedPinMismatch: the key differs from the pin.
	RefusedPinMismatch = "HostKeyMismatch"
	// RefusedNotPinned: trust: pinned, and the peer has no pin.
	RefusedNotPinned = "HostKeyNotPinned"
	// RefusedUnreadable: what was trusted of the peer cannot be read, so
	// it is not trusted on first use again.
	RefusedUnreadable = "TrustUnreadable"
	// RefusedNotApproved: trust: approve, and nobody vouched for the key
	// the peer offers (no pin, no approval, nothing remembered).
	RefusedNotApproved = "HostKeyNotApproved"
	// RefusedNotCertified: trust: ca, and the peer offers no host
	// certificate of a listed CA, valid now, for its name or address.
	RefusedNotCertified = "HostKeyNotCertified"
)

// Target is a peer to watch.
type Target struct {
	// Name and Address are the peer's in the desired-state file; its
	// facts must say the same.
	Name    string
	Address string
	// Addr is "host:port" of its peer port.
	Addr string
	// Pin is its pinned host key, or nil.
	Pin ssh.PublicKey
	// PinsRequired is trust: pinned: never trust a key on first use.
	PinsRequired bool
	// Approve is trust: approve: a key not pinned, remembered or stored
	// awaits an operator's approval (Approve) instead of being trusted on
	// first use.
	Approve bool
	// RequireCert is trust: ca: the peer's host key is the one a valid
	// certificate of one of CAs names for its address, shown on the
	// connection, whatever was trusted before (a rotated key needs nothing
	// from anyone); nothing else is.
	RequireCert bool
	CAs         []ssh.PublicKey
	// From is the address to dial the peer from (this host's own, when
	// it is a local IP literal), or nil for the system's choice.
	From net.IP
	// Self is this host's name in the desired-state file: of the hosts a
	// serving peer lets in, only this one's entry is kept, so that its
	// other consumers coming and going cost this host nothing.
	Self string
	// Remembered is the host key this host's own managed files pin for
	// the peer (the known_hosts block, the substituter URL), or nil.
	// Trust outlives the store: a peer offering another key is refused
	// whatever the store says, and a store that forgot the peer (new,
	// emptied, damaged) trusts this key again, never a key on first use.
	Remembered ssh.PublicKey
	// Tell: this host tells the peer its own facts over the watch's
	// connection (it fetches from the peer, or reads a cache the peer
	// publishes to), so that the peer needs no watch of it.
	Tell bool
	// Inbound: the peer only consumes from this host, and tells its facts
	// over its own connection to this host's peer port (see Told). It is
	// watched only while that cannot stand in: until its host key is
	// trusted, while it offers a key not trusted here, and until its
	// first told facts are taken.
	Inbound bool
}

// same reports whether a watch of t is one of o: the same peer, reached
// the same way, trusted the same way. Remembered may differ: it is taken
// up without a new connection.
func (t Target) same(o Target) bool {
	return t.Name == o.Name && t.Address == o.Address && t.Addr == o.Addr && t.Self == o.Self && t.Tell == o.Tell && t.Inbound == o.Inbound &&
		t.PinsRequired == o.PinsRequired && t.Approve == o.Approve && sameKey(t.Pin, o.Pin) && t.From.Equal(o.From) &&
		t.RequireCert == o.RequireCert && slices.EqualFunc(t.CAs, o.CAs, sameKey)
}

// Refusal says why a peer's host key was refused.
type Refusal struct {
	Reason  string    `json:"reason"`
	Offered string    `json:"offered"`           // fingerprint of the key the peer offered
	Trusted string    `json:"trusted,omitempty"` // fingerprint of the key trusted or pinned
	At      time.Time `json:"at"`
	// Key is the offered key ("ssh-ed25519 BASE64") when it awaits
	// approval (RefusedNotApproved).
	Key string `json:"key,omitempty"`
	// Why says what is wrong with a certificate (RefusedNotCertified).
	Why string `json:"why,omitempty"`
}

// State is what the host knows of one peer.
type State struct {
	Name string
	// Trust is how HostKey is trusted.
	Trust status.Trust
	// HostKey is the trusted host key, nil while there is none.
	HostKey ssh.PublicKey
	// Facts are the last facts the peer gave over a trusted connection,
	// perhaps in an earlier run of the agent; nil when there are none.
	Facts   *peer.Facts
	FactsAt time.Time
	// Connected is set while a watch is open and has delivered facts.
	Connected bool
	// Since is when Connected last changed (zero before the first
	// connection or failure of this run).
	Since time.Time
	// Recovered is when the peer's facts last said that its own sshd
	// serves again after they said it did not (see peer.ServeCheck):
	// a probe from before then no longer counts.
	Recovered time.Time
	// NoAnswer is set while the watch is down because the peer stopped
	// answering (silence past the keepalive deadline, or a connect that
	// timed out), rather than refusing or closing the connection.
	NoAnswer bool
	// LastError is the last failure of the watch, "" while connected.
	LastError string
	// Refused is set while the peer offers a host key that is refused.
	Refused *Refusal
	// Rebuilt is set when the trusted key came from this host's managed
	// files because the store had no usable record of the peer.
	Rebuilt bool
	// NextHostKey is the key the peer hands its name over to, in facts
	// that came in this run over a connection of HostKey, with a proof
	// that HostKey signed (see successorLocked): trusted beside HostKey,
	// and in its place once the peer shows it.
	NextHostKey ssh.PublicKey
}

// record is what the store keeps of a peer.
type record struct {
	HostKey string       `json:"hostKey,omitempty"` // "ssh-ed25519 BASE64"
	Trust   status.Trust `json:"trust,omitempty"`
	// CA and Until are, for a certified key, the fingerprint of the CA
	// that signed its certificate and when that ends (zero: never).
	CA        string      `json:"ca,omitempty"`
	Until     time.Time   `json:"until,omitzero"`
	TrustedAt time.Time   `json:"trustedAt"`
	Facts     *peer.Facts `json:"facts,omitempty"`
	FactsAt   time.Time   `json:"factsAt"`
}

// Manager runs the watches.
type Manager struct {
	ctx    context.Context
	log    *zap.Logger
	store  *state.Store
	opts   peer.WatchOptions
	notify func(reason string)

	mu    sync.Mutex
	peers map[string]*watched
	// identity is this host's host key, which the watches authenticate
	// with.
	identity ssh.Signer
	// reset names the peers whose trust an operator reset: the key their
	// managed files remember is not held against a new key until the
	// files name the key trusted since.
	reset  map[string]bool
	closed bool
	wg     sync.WaitGroup
}

type watched struct {
	target Target
	// ctx ends when the peer is no longer watched as target; cancel ends
	// it.
	ctx    context.Context
	cancel context.CancelFunc
	// dialing ends the watch's connections to the peer, dialCtx is
	// theirs; nil while an Inbound peer is not dialled. settled: since
	// they started, they took the peer's facts or refused the key it
	// offered.
	dialing context.CancelFunc
	dialCtx context.Context
	settled bool
	// told counts the peer's open "tell" sessions whose facts were taken;
	// toldDialAt is when a refused one last started the dial, toldRefusal
	// the last refusal logged.
	told        int
	toldDialAt  time.Time
	toldRefusal string
	st          State
	// trustedAt is when st.HostKey was first trusted, as stored.
	trustedAt time.Time
	// certUntil is when the certificate of the current connection ends
	// (trust: ca); zero for none or no end. certCA is the fingerprint of
	// the CA that signed it.
	certUntil time.Time
	certCA    string
	// storedCA and storedUntil are what the store holds of them.
	storedCA    string
	storedUntil time.Time
	// connKey is the host key of the current connection, set by check
	// (on the SSH library's goroutine) and read by accept; under the
	// manager's mutex.
	connKey ssh.PublicKey
	// handingOver: check let connKey in as the trusted key's successor.
	handingOver bool
	// unusable says why what the store has of the peer cannot be read;
	// the peer is then not trusted on first use again.
	unusable string
	// pending is the key the peer offered that awaits approval.
	pending ssh.PublicKey
	// Facts that matter (see relevant) are stored and told at most
	// FlushBurst times per FlushWindow: flushes are when they last were,
	// dirty says they changed since, flush is the timer of a flush to
	// come.
	flushes []time.Time
	dirty   bool
	flush   *time.Timer
	// wake ends the watch's wait between attempts (see Poke).
	wake chan struct{}
	// client is the connection of the watch while it runs, nil between;
	// connIdentity is the key it authenticated with.
	client       *ssh.Client
	connIdentity ssh.Signer
}

// What a peer tells is stored and triggers a reconcile at once, up to
// FlushBurst times per FlushWindow; beyond, once the window allows: a peer
// flooding the agent with documents costs a few writes and passes a
// second, not one per document.
const (
	FlushBurst  = 4
	FlushWindow = time.Second
)

// relevant reports whether a and b differ in what this host acts on: the
// peer's identity, its keys and whom it serves. Its generation and
// readiness alone are kept in memory, not stored, and trigger nothing.
func relevant(a, b peer.Facts) bool {
	a.Generation, a.ObservedGeneration, a.Ready = 0, 0, false
	b.Generation, b.ObservedGeneration, b.Ready = 0, 0, false
	return !reflect.DeepEqual(a, b)
}

// concerning keeps of f what concerns host self: of the hosts the peer
// lets in, self alone.
func concerning(f peer.Facts, self string) peer.Facts {
	if f.Serve != nil {
		s := *f.Serve
		s.Authorized = slices.DeleteFunc(slices.Clone(s.Authorized), func(a peer.AuthorizedFact) bool { return a.Host != self })
		f.Serve = &s
	}
	return f
}

// recovered reports whether f says that the peer's sshd serves again,
// where before said it did not.
func recovered(before *peer.Facts, f peer.Facts) bool {
	check := func(f *peer.Facts) *peer.ServeCheck {
		if f == nil || f.Serve == nil {
			return nil
		}
		return f.Serve.Check
	}
	was, is := check(before), check(&f)
	return was != nil && !was.Serving && is != nil && is.Serving
}

// New returns a manager whose watches live until ctx ends. notify is
// called, without locks held, whenever what is known of a peer changes.
func New(ctx context.Context, log *zap.Logger, store *state.Store, opts peer.WatchOptions, notify func(string)) *Manager {
	return &Manager{ctx: ctx, log: log, store: store, opts: opts, notify: notify, peers: map[string]*watched{}, reset: map[string]bool{}}
}

// Wait returns once every watch has ended; call it after ctx ended. No
// watch starts after it.
func (m *Manager) Wait() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.wg.Wait()
}

// Sync makes the watches those of targets: new ones start, changed ones
// restart, and those no longer wanted stop. What was trusted of a peer no
// longer watched stays in the store.
func (m *Manager) Sync(targets []Target) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[string]bool{}
	var errs []error
	for _, t := range targets {
		want[t.Name] = true
		if w, ok := m.peers[t.Name]; ok && w.target.same(t) {
			w.target.Remembered = t.Remembered
			if t.Remembered != nil && sameKey(t.Remembered, w.st.HostKey) {
				delete(m.reset, t.Name) // the files caught up with a reset or a handover
			}
			continue
		}
		if err := m.startLocked(t); err != nil {
			errs = append(errs, err)
		}
	}
	for name, w := range m.peers {
		if !want[name] {
			w.cancel()
			delete(m.peers, name)
		}
	}
	return errors.Join(errs...)
}

// Get returns what is known of the peer watched as t; false when it is
// not watched so (yet): a pass that asks with a target its last Sync did
// not have (a pin that changed, a peer new to the file) sees nothing of
// the old watch.
func (m *Manager) Get(t Target) (State, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w, ok := m.peers[t.Name]
	if !ok || !w.target.same(t) {
		return State{}, false
	}
	return w.st, true
}

// SetIdentity makes signer (this host's host key) the key the watches
// authenticate with: a peer that knows it gives them room of their own and
// tells them whom it lets in. A watch that connected with another key, or
// none, connects again with this one.
func (m *Manager) SetIdentity(signer ssh.Signer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if sameSigner(m.identity, signer) {
		return
	}
	m.identity = signer
	for _, w := range m.peers {
		if w.client != nil {
			w.client.Close() // the watch connects again at once
			w.poke()
		}
	}
}

// sameSigner reports whether a and b sign with the same key (or are both
// nil).
func sameSigner(a, b ssh.Signer) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return sameKey(a.PublicKey(), b.PublicKey())
}

// ErrNoConnection is returned by Turn while no watch of the peer runs.
var ErrNoConnection = errors.New("no connection to its agent")

// Turn waits for a turn to probe the sshd of peer name over the
// connection of its watch (see peer.Turn), and returns the function that
// ends it.
func (m *Manager) Turn(ctx context.Context, name string) (func(), error) {
	m.mu.Lock()
	var client *ssh.Client
	if w := m.peers[name]; w != nil {
		client = w.client
	}
	m.mu.Unlock()
	if client == nil {
		return nil, ErrNoConnection
	}
	return peer.Turn(ctx, client)
}

// Known reports whether key is the trusted host key of a watched peer (or
// the next one it hands over to), and its name: the peer port gives such a client room of its own.
func (m *Manager) Known(key ssh.PublicKey) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, w := range m.peers {
		if w.st.HostKey != nil && sameKey(w.st.HostKey, key) || w.st.NextHostKey != nil && sameKey(w.st.NextHostKey, key) {
			return name, true
		}
	}
	return "", false
}

// Reserved reports whether ip is the address of a watched peer (one
// written as an IP literal in the desired state): the peer port keeps room
// for its handshakes that strangers cannot take.
func (m *Manager) Reserved(ip net.IP) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.peers {
		if w.at(ip) {
			return true
		}
	}
	return false
}

// Poke tells that a connection came in from ip: a watch of a peer at that
// address that waits to try again tries at once.
func (m *Manager) Poke(ip net.IP) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.peers {
		if w.at(ip) {
			w.poke()
		}
	}
}

// at reports whether w's peer is at ip (its address an IP literal).
func (w *watched) at(ip net.IP) bool {
	peerIP := net.ParseIP(w.target.Address)
	return peerIP != nil && peerIP.Equal(ip)
}

// poke ends the wait of w's watch between attempts, if it waits.
func (w *watched) poke() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// ResetTrust forgets what was trusted of peer name, so that its key is
// trusted again on next contact (or checked against a new pin), and
// reconnects to it at once.
func (m *Manager) ResetTrust(name string) error {
	m.mu.Lock()
	w, ok := m.peers[name]
	var rec record
	found, err := m.store.GetPeer(name, &rec)
	if !ok && !found && err == nil {
		m.mu.Unlock()
		return fmt.Errorf("no peer %q is watched or trusted by this host", name)
	}
	if err := m.store.DeletePeer(name); err != nil {
		m.mu.Unlock()
		return err
	}
	m.reset[name] = true
	if ok {
		m.log.Warn("trust in peer reset by an operator", zap.String("peer", name),
			zap.String("forgotten", fingerprint(w.st.HostKey)))
		err = m.startLocked(w.target)
	}
	m.mu.Unlock()
	m.notify("trust in " + name + " reset")
	return err
}

// Approve trusts the host key with fingerprint fp of peer name, which
// must be the key the peer offers now awaiting approval: it is stored as
// approved, and the watch connects again at once.
func (m *Manager) Approve(name, fp string) error {
	m.mu.Lock()
	w, ok := m.peers[name]
	switch {
	case !ok:
		m.mu.Unlock()
		return fmt.Errorf("no peer %q is watched by this host", name)
	case w.st.HostKey != nil:
		m.mu.Unlock()
		return fmt.Errorf("%s's host key %s is trusted already (%s); to trust another, pin it as hostKey or run \"nixpeer trust reset %s\" first", name, fingerprint(w.st.HostKey), w.st.Trust, name)
	case w.pending == nil:
		m.mu.Unlock()
		return fmt.Errorf("no host key of %s awaits approval: it has not offered one yet (see nixpeer status)", name)
	case fingerprint(w.pending) != fp:
		m.mu.Unlock()
		return fmt.Errorf("%s offers host key %s, not %s: nothing approved", name, fingerprint(w.pending), fp)
	}
	st := &w.st
	st.Trust, st.HostKey, st.Refused, w.trustedAt = status.TrustApproved, w.pending, nil, time.Now()
	if err := m.storeLocked(w); err != nil {
		st.Trust, st.HostKey, w.trustedAt = status.TrustNone, nil, time.Time{}
		m.mu.Unlock()
		return fmt.Errorf("remember the approved host key of %s: %w", name, err)
	}
	m.log.Warn("peer host key approved by an operator", zap.String("peer", name), zap.String("fingerprint", fp))
	w.pending = nil
	w.poke()
	m.mu.Unlock()
	m.notify("host key of " + name + " approved")
	return nil
}

// startLocked (re)starts the watch of t, beginning from what the store
// has of it.
func (m *Manager) startLocked(t Target) error {
	if old, ok := m.peers[t.Name]; ok {
		old.cancel()
		delete(m.peers, t.Name)
	}
	if m.closed || m.ctx.Err() != nil {
		return fmt.Errorf("watch %s: the agent is stopping", t.Name)
	}
	w := &watched{target: t, st: State{Name: t.Name, Trust: status.TrustNone}, wake: make(chan struct{}, 1)}
	m.loadLocked(w)
	w.ctx, w.cancel = context.WithCancel(m.ctx)
	m.peers[t.Name] = w
	if !t.Inbound || w.st.HostKey == nil {
		m.dialLocked(w)
	} else {
		w.st.LastError = "waiting for its agent to connect to this host and tell its facts"
	}
	return nil
}

// run watches one peer until ctx ends.
func (m *Manager) run(ctx context.Context, w *watched) {
	log := m.log.With(zap.String("peer", w.target.Name), zap.String("addr", w.target.Addr))
	check := func(offered ssh.PublicKey) error { return m.check(ctx, log, w, offered) }
	onFacts := func(f peer.Facts) error {
		m.mu.Lock()
		via := connection{key: w.connKey, handingOver: w.handingOver, certified: w.target.RequireCert}
		m.mu.Unlock()
		if err := m.accept(ctx, log, w, via, f); err != nil {
			return fmt.Errorf("the agent at %s: %w", w.target.Addr, err)
		}
		m.settle(ctx, log, w)
		return nil
	}
	onError := func(err error) { m.failed(ctx, log, w, err) }
	opts := m.opts
	opts.LocalIP, opts.Wake, opts.Certificates = w.target.From, w.wake, w.target.RequireCert
	if !w.target.Tell {
		opts.Tell = nil
	}
	opts.Identity = func() ssh.Signer {
		m.mu.Lock()
		defer m.mu.Unlock()
		w.connIdentity = m.identity
		return m.identity
	}
	opts.Conn = func(c *ssh.Client) {
		m.mu.Lock()
		defer m.mu.Unlock()
		w.client = c
		if c != nil && !sameSigner(w.connIdentity, m.identity) {
			c.Close() // the identity changed while it connected: again, with it
		}
		if c != nil && !w.certUntil.IsZero() {
			// The certificate ends: the connection with it, and the next
			// one is checked again.
			time.AfterFunc(time.Until(w.certUntil), func() { c.Close() })
		}
	}
	peer.Watch(ctx, w.target.Addr, check, opts, onFacts, onError)
}

// localAddrRE matches the local end of a connection in an error message,
// whose port changes at every attempt.
var localAddrRE = regexp.MustCompile(`[0-9a-fA-F.:\[\]]+:[0-9]+->`)

// failed records a failure of w's watch. A refusal of the peer's host key
// stays until facts come over a trusted connection.
func (m *Manager) failed(ctx context.Context, log *zap.Logger, w *watched, err error) {
	msg := localAddrRE.ReplaceAllString(err.Error(), "")
	m.mu.Lock()
	if ctx.Err() != nil {
		m.mu.Unlock()
		return
	}
	if w.told > 0 {
		// It tells over its own connection: what the dial finds does
		// not make it unreachable.
		m.mu.Unlock()
		log.Debug("dialling a peer that tells over its own connection failed", zap.Error(err))
		return
	}
	st := &w.st
	noAnswer := peer.NoAnswer(err)
	changed := st.Connected || st.LastError != msg || st.NoAnswer != noAnswer || st.Since.IsZero()
	if st.Connected || st.Since.IsZero() {
		st.Since = time.Now()
	}
	st.Connected, st.NoAnswer, st.LastError = false, noAnswer, msg
	m.mu.Unlock()
	if changed {
		log.Info("peer unreachable", zap.Error(err))
		m.notify("peer " + w.target.Name + " unreachable")
	}
}

func sameKey(a, b ssh.PublicKey) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	return bytes.Equal(a.Marshal(), b.Marshal())
}

func fingerprint(k ssh.PublicKey) string { return sshkeys.Key{Public: k}.Fingerprint() }

// keyLine is k as "TYPE BASE64", as facts list host keys.
func keyLine(k ssh.PublicKey) string { return sshkeys.Key{Public: k}.AuthorizedLine() }
