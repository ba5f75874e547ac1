package peering

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// Trust: what the store, the pin and the managed files say of a peer's
// host key, whether the key a connection offers is trusted, and taking
// the facts that came over it.

// loadLocked sets w's trusted key, and facts, from the store and the pin.
// A record that cannot be read leaves w.unusable set: the peer is then
// not trusted on first use again.
func (m *Manager) loadLocked(w *watched) {
	t := w.target
	var rec record
	found, err := m.store.GetPeer(t.Name, &rec)
	var recKey ssh.PublicKey
	w.unusable = ""
	var jsonErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &jsonErr) || errors.As(err, &typeErr):
		// A record that does not decode is dropped; the managed files,
		// or first use, stand in for it.
		m.log.Error("what was trusted of a peer does not decode; dropping it", zap.String("peer", t.Name), zap.Error(err))
		m.store.DeletePeer(t.Name)
		found, rec = false, record{}
	case err != nil:
		w.unusable = err.Error()
	case found && rec.HostKey != "":
		if recKey, err = sshkeys.ParsePublicLine(rec.HostKey); err != nil {
			m.log.Error("the host key stored for a peer does not parse; dropping it", zap.String("peer", t.Name), zap.Error(err))
			m.store.DeletePeer(t.Name)
			found, rec, recKey = false, record{}, nil
		}
	}
	if w.unusable != "" {
		m.log.Error("what was trusted of a peer cannot be read; it is not trusted on first use until the store reads again, a pin or \"nixpeer trust reset\"",
			zap.String("peer", t.Name), zap.String("error", w.unusable))
	}
	remembered := m.remembered(t)
	if remembered != nil && sameKey(remembered, recKey) {
		delete(m.reset, t.Name) // the files caught up with a reset
	}
	certified := rec.Trust == status.TrustCertified && recKey != nil && t.RequireCert &&
		slices.ContainsFunc(t.CAs, func(ca ssh.PublicKey) bool { return fingerprint(ca) == rec.CA }) &&
		(rec.Until.IsZero() || time.Now().Before(rec.Until))
	if rec.Trust == status.TrustCertified && !certified {
		recKey = nil // certified by a CA no longer listed, or expired, or not in trust: ca
	}
	switch {
	case t.RequireCert && certified:
		// Certified before by a CA still listed, until its certificate
		// ends: the peer's next connection shows it again.
		w.st.Trust, w.st.HostKey = status.TrustCertified, recKey
		w.storedCA, w.storedUntil = rec.CA, rec.Until
	case t.RequireCert:
		// Nothing else is trust with trust: ca.
	case t.Pin != nil:
		w.st.Trust, w.st.HostKey = status.TrustPinned, t.Pin
	case t.PinsRequired:
	case recKey != nil:
		w.st.Trust, w.st.HostKey = cmp.Or(rec.Trust, status.TrustTOFU), recKey
	case remembered != nil && w.unusable == "":
		w.st.Trust, w.st.HostKey, w.st.Rebuilt = status.TrustTOFU, remembered, true
		recKey, rec.TrustedAt = remembered, time.Now()
		m.log.Warn("the store had no record of a peer; its host key is trusted again from this host's managed files",
			zap.String("peer", t.Name), zap.String("hostKey", fingerprint(remembered)))
		if err := m.store.PutPeer(t.Name, record{HostKey: keyLine(remembered), Trust: status.TrustTOFU, TrustedAt: rec.TrustedAt}); err != nil {
			m.log.Error("cannot store the rebuilt trust of a peer", zap.String("peer", t.Name), zap.Error(err))
		}
	}
	if sameKey(recKey, w.st.HostKey) {
		w.trustedAt = rec.TrustedAt
	}
	// Facts are kept only when they came over a connection authenticated
	// by the key trusted now.
	if found && rec.Facts != nil && w.st.HostKey != nil && sameKey(recKey, w.st.HostKey) &&
		rec.Facts.Name == t.Name && rec.Facts.Address == t.Address {
		f := *rec.Facts
		w.st.Facts, w.st.FactsAt = &f, rec.FactsAt
	}
	// A handover is taken from live facts only (see accept): a proof
	// kept from long ago could hand the peer to a key retired since.
}

// successorLocked is the next host key w's peer hands its name over to,
// in facts that came over a connection of the key trusted now, with a
// proof that key signed; nil when there is none, or its proof does not
// hold. A pin is the desired state's word and a CA certifies any key, so
// neither is handed over.
func successorLocked(w *watched) ssh.PublicKey {
	st, t := &w.st, w.target
	f := st.Facts
	if f == nil || f.NextHostKey == "" || st.HostKey == nil || st.Trust == status.TrustPinned || t.RequireCert {
		return nil
	}
	next, err := sshkeys.ParsePublicLine(f.NextHostKey)
	if err != nil || sshkeys.VerifyHandover(st.HostKey, t.Name, t.Address, next, f.NextHostKeyProof) != nil {
		return nil
	}
	return next
}

// remembered is the key t's managed files pin, unless an operator reset
// the trust in t since.
func (m *Manager) remembered(t Target) ssh.PublicKey {
	if m.reset[t.Name] {
		return nil
	}
	return t.Remembered
}

// check decides whether offered may be w's host key. A key that is not
// trusted yet passes only where trust on first use is allowed, and is
// trusted only once the facts that come over the connection say they are
// the peer's (see accept).
func (m *Manager) check(ctx context.Context, log *zap.Logger, w *watched, offered ssh.PublicKey) error {
	m.mu.Lock()
	if ctx.Err() != nil {
		m.mu.Unlock()
		return ctx.Err()
	}
	if w.unusable != "" && w.st.HostKey == nil {
		m.loadLocked(w) // the store may be readable again
	}
	t, st := w.target, &w.st
	refuse := func(reason, msg string, trusted ssh.PublicKey) error {
		r := &Refusal{Reason: reason, Offered: fingerprint(offered), Trusted: fingerprint(trusted), At: time.Now()}
		switch reason {
		case RefusedNotApproved:
			r.Key, w.pending = keyLine(offered), offered
		case RefusedNotCertified:
			r.Why = msg
		}
		changed := st.Refused == nil || st.Refused.Reason != r.Reason || st.Refused.Offered != r.Offered || st.Refused.Why != r.Why
		if !changed {
			r.At = st.Refused.At
		}
		st.Refused = r
		if w.dialCtx == ctx {
			w.settled = true
		}
		m.mu.Unlock()
		if changed {
			log.Error("peer host key refused", zap.String("reason", reason), zap.String("offered", r.Offered), zap.String("trusted", r.Trusted))
			m.notify("host key of " + t.Name + " refused")
		}
		return errors.New(msg)
	}
	if t.RequireCert {
		cert, err := sshkeys.CertifiedKey(offered, t.CAs, t.Address)
		if err != nil {
			// Nothing certified stands: what the peer said before is
			// not acted on.
			st.Trust, st.HostKey, st.Facts = status.TrustNone, nil, nil
			return refuse(RefusedNotCertified, err.Error(), nil)
		}
		w.connKey, w.certUntil, w.certCA = cert.Key, time.Time{}, fingerprint(cert.SignatureKey)
		if cert.ValidBefore != ssh.CertTimeInfinity {
			w.certUntil = time.Unix(int64(cert.ValidBefore), 0)
		}
		m.mu.Unlock()
		return nil
	}
	if next := st.NextHostKey; next != nil && sameKey(next, offered) {
		w.connKey, w.handingOver = offered, true
		m.mu.Unlock()
		return nil
	}
	w.handingOver = false
	remembered := m.remembered(t)
	switch {
	case st.HostKey != nil && !sameKey(st.HostKey, offered) && st.Trust == status.TrustPinned:
		return refuse(RefusedPinMismatch, fmt.Sprintf("it is not the hostKey pinned for %s (%s)", t.Name, fingerprint(st.HostKey)), st.HostKey)
	case remembered != nil && !sameKey(remembered, offered) && st.Trust != status.TrustPinned:
		return refuse(RefusedChanged, fmt.Sprintf("the host key of %s changed: this host's known_hosts and Nix settings pin %s; pin the new key as hostKey if the change is expected, or run \"nixpeer trust reset %s\"",
			t.Name, fingerprint(remembered), t.Name), remembered)
	case st.HostKey != nil && !sameKey(st.HostKey, offered):
		return refuse(RefusedChanged, fmt.Sprintf("the host key of %s changed: %s was trusted on first use; pin the new key as hostKey if the change is expected, or run \"nixpeer trust reset %s\"",
			t.Name, fingerprint(st.HostKey), t.Name), st.HostKey)
	case st.HostKey == nil && t.PinsRequired:
		return refuse(RefusedNotPinned, fmt.Sprintf("trust: pinned, and %s has no hostKey", t.Name), nil)
	case st.HostKey == nil && w.unusable != "":
		return refuse(RefusedUnreadable, fmt.Sprintf("what was trusted of %s cannot be read (%s); pin its hostKey or run \"nixpeer trust reset %s\"", t.Name, w.unusable, t.Name), nil)
	case st.HostKey == nil && t.Approve:
		return refuse(RefusedNotApproved, fmt.Sprintf("nobody vouched for the host key %s that %s offers: compare it with what \"nixpeer facts\" prints on %s, then run \"nixpeer trust approve %s %s\", or pin it as hostKey",
			fingerprint(offered), t.Name, t.Name, t.Name, fingerprint(offered)), nil)
	}
	w.connKey = offered
	m.mu.Unlock()
	return nil
}

// connection is how facts came: over a connection authenticated by key,
// the trusted key's successor when handingOver, with a certificate of the
// key checked just now when certified; told by the peer over its own
// connection (Told), first: that session's first document.
type connection struct {
	key                                 ssh.PublicKey
	handingOver, certified, told, first bool
}

// accept takes facts that came over a connection (a watch's, whose host
// key check passed, or the peer's own, see Told). A key not trusted yet
// is trusted on first use here, once the facts say they are the peer's:
// the name and address the file gives it, and the key among its host
// keys.
func (m *Manager) accept(ctx context.Context, log *zap.Logger, w *watched, via connection, f peer.Facts) error {
	m.mu.Lock()
	t := w.target // Sync updates the target under the lock
	m.mu.Unlock()
	key := via.key
	switch {
	case f.Name != t.Name || f.Address != t.Address:
		return fmt.Errorf("it says it is %s at %s, but the desired state has %s at %s", f.Name, f.Address, t.Name, t.Address)
	case key == nil || !slices.Contains(f.HostKeys, keyLine(key)):
		return errors.New("it does not list the host key it authenticated with among its host keys")
	}
	m.mu.Lock()
	if ctx.Err() != nil {
		m.mu.Unlock()
		if via.told {
			return watchedAnotherWay(t.Name)
		}
		return nil
	}
	st := &w.st
	now := time.Now()
	certified := via.certified
	firstUse := st.HostKey == nil && !t.RequireCert
	handedOver := false
	switch {
	case certified:
		// check verified the certificate: the key it names is the
		// peer's, whatever was trusted before. A renewed certificate of
		// the same key is stored too: its end is what a restart checks.
		if st.Trust != status.TrustCertified || !sameKey(st.HostKey, key) || w.storedCA != w.certCA || !w.storedUntil.Equal(w.certUntil) {
			st.Trust, st.HostKey, w.trustedAt = status.TrustCertified, key, now
			if err := m.storeLocked(w); err != nil {
				st.Trust, st.HostKey = status.TrustNone, nil
				m.mu.Unlock()
				return fmt.Errorf("remember the host key of %s: %w", t.Name, err)
			}
		}
	case firstUse:
		st.Trust, st.HostKey = status.TrustTOFU, key
	case via.handingOver && sameKey(key, st.NextHostKey):
		// The key the trusted one handed over to: trusted as it was,
		// whatever the files remember until they catch up.
		st.HostKey, w.trustedAt, handedOver = key, now, true
		m.reset[t.Name] = true
	case !sameKey(st.HostKey, key):
		m.mu.Unlock()
		return errors.New("its connection changed host key")
	}
	if w.trustedAt.IsZero() {
		w.trustedAt = now // first use, or a pin never stored before
	}
	if !via.told && w.told > 0 && st.Facts != nil {
		// What the peer tells over its own connection stands: the
		// document a dial read may be older.
		f = *st.Facts
	}
	f = concerning(f, t.Self)
	newFacts := st.Facts == nil || relevant(*st.Facts, f)
	if recovered(st.Facts, f) {
		st.Recovered = now
	}
	changed := newFacts || !st.Connected || st.Refused != nil
	if !st.Connected {
		st.Since = now
	}
	ff := f
	st.Facts = &ff
	if newFacts {
		st.FactsAt = now // when it last told something that matters
	}
	st.Connected, st.NoAnswer, st.LastError, st.Refused = true, false, "", nil
	st.NextHostKey = successorLocked(w)
	if firstUse || handedOver {
		// Trust is stored before anything else is done with it.
		if err := m.storeLocked(w); err != nil {
			st.Trust, st.HostKey, st.Facts, w.trustedAt = status.TrustNone, nil, nil, time.Time{}
			m.mu.Unlock()
			return fmt.Errorf("remember the host key of %s: %w", t.Name, err)
		}
		w.flushes = append(w.flushes, now)
	}
	if via.told && via.first {
		// From now on it tells: a dial that fails does not make it
		// unreachable, and a dial's facts do not replace what it tells.
		w.told++
	}
	notifyNow := firstUse || handedOver
	if changed {
		w.dirty = true
		notifyNow = m.flushLocked(log, w)
	}
	m.mu.Unlock()
	if firstUse {
		log.Warn("trusted a peer's host key on first use; pin it as hostKey to be sure", zap.String("fingerprint", fingerprint(key)))
	}
	if handedOver {
		log.Info("the peer's host key was handed over to its next key", zap.String("fingerprint", fingerprint(key)))
	}
	if newFacts {
		log.Debug("peer facts changed", zap.Int64("generation", f.Generation), zap.Bool("ready", f.Ready))
	}
	if notifyNow {
		m.notify("facts of " + t.Name)
	}
	return nil
}

// storeLocked stores what is trusted and known of w's peer.
func (m *Manager) storeLocked(w *watched) error {
	st := w.st
	err := m.store.PutPeer(w.target.Name, record{HostKey: keyLine(st.HostKey), Trust: st.Trust, TrustedAt: w.trustedAt,
		Facts: st.Facts, FactsAt: st.FactsAt, CA: w.certCA, Until: w.certUntil})
	if err == nil {
		w.storedCA, w.storedUntil = w.certCA, w.certUntil
	}
	return err
}

// flushLocked stores w's facts and reports that a reconcile is due, at
// most FlushBurst times per FlushWindow; beyond, it arms a timer that
// flushes and notifies once the window allows.
func (m *Manager) flushLocked(log *zap.Logger, w *watched) bool {
	if !w.dirty {
		return false
	}
	now := time.Now()
	if len(w.flushes) > FlushBurst {
		w.flushes = w.flushes[len(w.flushes)-FlushBurst:]
	}
	if len(w.flushes) == FlushBurst && now.Sub(w.flushes[0]) < FlushWindow {
		wait := FlushWindow - now.Sub(w.flushes[0])
		if w.flush == nil {
			w.flush = time.AfterFunc(wait, func() {
				m.mu.Lock()
				w.flush = nil
				notify := m.peers[w.target.Name] == w && m.flushLocked(log, w)
				m.mu.Unlock()
				if notify {
					m.notify("facts of " + w.target.Name)
				}
			})
		}
		return false
	}
	w.dirty, w.flushes = false, append(w.flushes, now)
	if err := m.storeLocked(w); err != nil {
		log.Error("cannot store a peer's facts; keeping them in memory", zap.Error(err))
	}
	return true
}
