package peering

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// ToldDialEvery bounds how often what is told with a key not trusted
// starts the dial of the peer it names: whoever can reach the peer port
// may tell, and must not make this host dial at its pace.
const ToldDialEvery = 10 * time.Second

// dialLocked starts the watch's connections to w's peer, unless they run.
func (m *Manager) dialLocked(w *watched) {
	if w.dialing != nil || w.ctx.Err() != nil {
		return
	}
	ctx, cancel := context.WithCancel(w.ctx)
	w.dialing, w.dialCtx, w.settled = cancel, ctx, false
	m.wg.Go(func() { m.run(ctx, w) })
}

// stopDial ends the dial of w's peer when it settled (took facts or
// refused a key) and the peer tells over its own connection.
func (m *Manager) stopDial(log *zap.Logger, w *watched) {
	m.mu.Lock()
	stop := w.dialing != nil && w.settled && w.told > 0 && w.target.Inbound
	if stop {
		w.dialing()
		w.dialing, w.dialCtx = nil, nil
	}
	m.mu.Unlock()
	if stop {
		log.Debug("the peer tells its facts over its own connection; no longer dialled")
		m.notify(w.target.Name + " tells its facts over its own connection")
	}
}

// settle notes that the dial of ctx took w's peer's facts: an Inbound peer
// that tells over its own connection is dialled no more.
func (m *Manager) settle(ctx context.Context, log *zap.Logger, w *watched) {
	m.mu.Lock()
	settled := w.dialCtx == ctx
	if settled {
		w.settled = true
	}
	m.mu.Unlock()
	if settled {
		m.stopDial(log, w)
	}
}

// Told takes the facts an Inbound peer tells over its own connection to
// this host's peer port, authenticated by key (see peer.ServerOptions.Told):
// they stand in for a watch of it while key is the peer's trusted host key
// (or the successor it handed over to), and the dial of the peer stops once
// it settled. A key not trusted here is refused, and the peer is dialled:
// the watch checks the key its address offers, and says why it is
// refused, or trusts it.
func (m *Manager) Told(_ context.Context, key ssh.PublicKey, next func() (peer.Facts, error)) error {
	f, err := next()
	if err != nil {
		return toldError(err)
	}
	m.mu.Lock()
	w := m.peers[f.Name]
	switch {
	case w == nil || !w.target.Inbound:
		m.mu.Unlock()
		return fmt.Errorf("this host takes no facts of %s over its connections", f.Name)
	case !m.vouchedLocked(w, key):
		err := fmt.Errorf("the host key %s is not trusted here for %s (yet)", fingerprint(key), f.Name)
		m.refusedLocked(w, err)
		m.mu.Unlock()
		return err
	}
	var certEnds <-chan time.Time
	if until := w.storedUntil; w.target.RequireCert && !until.IsZero() {
		t := time.NewTimer(time.Until(until))
		defer t.Stop()
		certEnds = t.C
	}
	m.mu.Unlock()
	log := m.log.With(zap.String("peer", f.Name), zap.String("via", "its connection"))

	// The session ends when the peer is watched another way (Sync), or
	// its certificate ends, whatever it tells.
	type told struct {
		f   peer.Facts
		err error
	}
	docs, stop := make(chan told), make(chan struct{})
	defer close(stop)
	go func() {
		for {
			f, err := next()
			select {
			case docs <- told{f, err}:
			case <-stop:
				return
			}
			if err != nil {
				return
			}
		}
	}()
	for first := true; ; first = false {
		m.mu.Lock()
		via := connection{key: key, handingOver: w.st.NextHostKey != nil && sameKey(w.st.NextHostKey, key), told: true, first: first}
		m.mu.Unlock()
		if err := m.accept(w.ctx, log, w, via, f); err != nil {
			return err
		}
		if first {
			defer m.untold(log, w) // accept counted the session
		}
		m.stopDial(log, w)
		select {
		case d := <-docs:
			if d.err != nil {
				return toldError(d.err)
			}
			f = d.f
		case <-w.ctx.Done():
			return watchedAnotherWay(w.target.Name)
		case <-certEnds:
			err := fmt.Errorf("the certificate of %s's host key ended", w.target.Name)
			m.mu.Lock()
			w.toldDialAt = time.Time{} // the watch checks the one it shows now
			m.refusedLocked(w, err)
			m.mu.Unlock()
			return err
		}
		m.mu.Lock()
		if !m.vouchedLocked(w, key) {
			err := fmt.Errorf("the host key %s is no longer trusted here for %s", fingerprint(key), w.target.Name)
			m.refusedLocked(w, err)
			m.mu.Unlock()
			return err
		}
		m.mu.Unlock()
	}
}

// watchedAnotherWay ends a tell session whose peer is watched another way
// now (Sync changed its target).
func watchedAnotherWay(name string) error {
	return fmt.Errorf("%s is watched another way now: tell again", name)
}

// toldError is what ends a tell session whose next document failed: the
// peer sent one that is not valid (it is told why), or the session ended.
func toldError(err error) error {
	if errors.Is(err, peer.ErrInvalidFacts) || errors.Is(err, peer.ErrDocumentTooLarge) {
		return fmt.Errorf("what was told is refused: %w", err)
	}
	return nil
}

// refusedLocked notes that what w's peer was told to be was refused for
// err: logged when the reason is new, and the peer is dialled (at most
// every ToldDialEvery), so that the watch checks what its address offers.
func (m *Manager) refusedLocked(w *watched, err error) {
	if msg := err.Error(); msg != w.toldRefusal {
		w.toldRefusal = msg
		m.log.Info("refused what a peer told over its own connection", zap.String("peer", w.target.Name), zap.Error(err))
	}
	if w.dialing == nil && time.Since(w.toldDialAt) >= ToldDialEvery {
		w.toldDialAt = time.Now()
		m.dialLocked(w)
	}
}

// untold ends a tell session of w's peer whose facts were taken: once
// none is left and the peer is not dialled, it is disconnected.
func (m *Manager) untold(log *zap.Logger, w *watched) {
	m.mu.Lock()
	w.told--
	st := &w.st
	gone := w.told == 0 && w.dialing == nil && w.ctx.Err() == nil && st.Connected
	if gone {
		st.Connected, st.NoAnswer, st.Since, st.LastError = false, false, time.Now(), "its agent's connection to this host ended"
	}
	m.mu.Unlock()
	if gone {
		log.Info("peer left")
		m.notify("peer " + w.target.Name + " left")
	}
}

// vouchedLocked reports whether key is trusted as w's peer's host key
// without a look at what it offers on a connection of this host's: the
// trusted key (certified: until its certificate ends) or the successor it
// handed over to.
func (m *Manager) vouchedLocked(w *watched, key ssh.PublicKey) bool {
	st, t := &w.st, w.target
	switch {
	case st.HostKey == nil:
		return false
	case st.NextHostKey != nil && sameKey(st.NextHostKey, key):
		return true
	case !sameKey(st.HostKey, key):
		return false
	case t.RequireCert:
		return st.Trust == status.TrustCertified && (w.storedUntil.IsZero() || time.Now().Before(w.storedUntil))
	}
	remembered := m.remembered(t)
	return remembered == nil || sameKey(remembered, key) || st.Trust == status.TrustPinned
}
