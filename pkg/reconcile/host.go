package reconcile

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Config is what a Host reconciler is given.
type Config struct {
	Log    *zap.Logger
	Layout layout.Layout
	Store  *state.Store
	// ConfigFile is the desired-state file.
	ConfigFile string
	// HostName is --host; when empty the host is found by Hostnames.
	HostName  string
	Hostnames []string
	// Watches watch the peers; Port is this agent's peer port.
	Watches Watches
	Port    Port
	// Nix runs Nix and the apply command; Prober probes peers' sshd.
	Nix    Nix
	Prober Prober
	// Trigger asks the loop for a pass (when a job ends).
	Trigger func(reason string)
	// StoreOpened says what the store was like when the agent started.
	StoreOpened state.Opened
	// SSHDCheckInterval is how often a serving host probes its own sshd
	// (DefaultSSHDCheckInterval when zero); negative turns the check off.
	SSHDCheckInterval time.Duration
	// Caches is the binary-cache tier; nil: the host uses no cache.
	Caches Caches
	// Executable is the agent's program, run by the post-build hook.
	Executable string
}

// Host reconciles one host: it owns the host's status.
type Host struct {
	cfg  Config
	log  *zap.Logger
	jobs *jobs

	// Touched only by the loop's single worker.
	desired    *desired.File // last good desired state
	generation int64
	parsed     parsedFile // the file's last content and what it parsed to
	users      userCheck

	mu     sync.Mutex
	status status.Status
	// seen is what the pass of status observed (its desired state, its
	// keys), for Desired and the operator's requests; nil before any.
	seen    *Observation
	stores  []PeerStore   // the peers' stores, as the pass of status knew them
	updated chan struct{} // closed and replaced at every reconcile
	request sync.Mutex    // one change of the key rotation request at a time
}

// NewHost prepares a reconciler, picking up the last good desired state and
// the last status from the store, so a restart starts where it left off.
// A record that cannot be read is logged and left for the first pass to
// write anew.
func NewHost(cfg Config) (*Host, error) {
	h := &Host{cfg: cfg, log: cfg.Log, updated: make(chan struct{})}
	h.jobs = &jobs{notify: cfg.Trigger, slots: map[string]jobState{}}
	if st, ok, err := cfg.Store.LoadStatus(); err != nil {
		h.log.Warn("the last status in the state store is unreadable; starting without it", zap.Error(err))
	} else if ok {
		h.status = st
	}
	h.status.ConfigFile = cfg.ConfigFile
	last, err := cfg.Store.Desired()
	if err != nil {
		h.log.Warn("the last good desired state in the state store is unreadable; starting without it", zap.Error(err))
	} else if last != nil {
		f, err := desired.Parse(last.File, last.Content)
		if err != nil {
			// It validated when it was stored: a newer agent may be
			// stricter. Say so, and go on as if there were none.
			h.log.Warn("last good desired state no longer validates; ignoring it", zap.Error(err))
		} else {
			h.desired, h.generation = f, last.Generation
		}
	}
	return h, nil
}

// Wait returns once the work the host started (apply, signing, probes)
// has ended; the context given to Reconcile must be done.
func (h *Host) Wait() { h.jobs.wg.Wait() }

// Status returns a copy of the host's status.
func (h *Host) Status() status.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status.Clone()
}

// PeerStores returns the stores of the peers this host fetches from, as
// the pass that made the status knew them: the substituter URL it wrote
// and how to ask each with this host's keys.
func (h *Host) PeerStores() []PeerStore {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.stores)
}

// Desired returns the desired state the status was made from (the last
// good one), or nil before any; it is never changed.
func (h *Host) Desired() *desired.File {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil {
		return nil
	}
	return h.seen.File
}

// WaitReconciled returns the status once a reconcile has finished after
// the time after, or the latest status when ctx ends first.
func (h *Host) WaitReconciled(ctx context.Context, after time.Time) status.Status {
	for {
		h.mu.Lock()
		st, ch := h.status.Clone(), h.updated
		h.mu.Unlock()
		if st.LastReconcile.After(after) {
			return st
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return st
		}
	}
}

// Reconcile runs one pass: observe, plan, act, report. It returns when the
// next pass is due without an event (0: at the resync), and the pass's
// failures.
func (h *Host) Reconcile(ctx context.Context) (time.Duration, error) {
	o := h.observe()
	p := plan(o)
	if p.watchesOnly {
		// The watches follow the desired state first (and the peer port
		// listens); then the pass is observed and planned again, from
		// what they know. Nothing of the first plan is reported.
		a := h.act(ctx, o, p)
		o = h.observe()
		if p = plan(o); p.watchesOnly {
			// Sync failed (the agent is stopping): retried, unreported.
			return soon, errors.Join(append(a.errs, errors.New("the watches of the peers do not follow the desired state"))...)
		}
	}
	a := h.act(ctx, o, p)
	return h.report(o, p, a)
}

// report builds the status from this pass alone, stores it with the
// pass's records in one commit when anything changed, and tells the
// peers.
func (h *Host) report(o *Observation, p *Plan, a *acted) (time.Duration, error) {
	prev := h.Status()
	out := outcome(prev, h.cfg.ConfigFile, o, p, a)
	next, passErr := out.status, out.err
	if _, ok := out.pass.Records[recTrips]; ok {
		for _, name := range p.Trips {
			h.log.Warn("peer withdrawn for its health; builds go on locally", zap.String("peer", name))
		}
	}
	if out.changed || len(out.pass.Records) > 0 {
		if err := h.cfg.Store.Commit(out.pass); err != nil {
			passErr = errors.Join(passErr, err)
			next.Ready, next.LastError = false, err.Error()
			next.Conditions[0] = status.Carry(prev.Conditions, status.Condition{Type: status.Ready, Status: status.False,
				Reason: "StateStoreError", Message: err.Error()}, o.Now)
		} else if o.NewDesired != nil {
			h.log.Info("new desired state", zap.String("file", o.NewDesired.File), zap.Int64("generation", o.NewDesired.Generation))
		}
	}
	if out.changed {
		h.log.Info("reconciled", zap.Bool("ready", next.Ready), zap.Int64("generation", next.Generation),
			zap.Int64("observedGeneration", next.ObservedGeneration), zap.Strings("wrote", a.wrote))
	}
	// Published only once stored: whoever sees it can rely on the disk.
	if f, ok := factsOf(o, p, next, authorizedApplied(o, p, a)); ok {
		h.cfg.Port.Publish(f)
	}
	h.desired, h.generation = o.File, o.Generation
	h.mu.Lock()
	h.status, h.seen, h.stores = next, o, p.Stores
	close(h.updated)
	h.updated = make(chan struct{})
	h.mu.Unlock()

	requeue := p.Requeue
	if a.again {
		requeue = soon
	}
	return requeue, passErr
}

// passOutcome is what a pass reports and stores.
type passOutcome struct {
	status status.Status
	// pass is what the store gets: the records of the resources that
	// acted (the breaker's trips with the Nix settings) and, when
	// changed, the status, its event and a new desired state.
	pass    state.Pass
	changed bool
	err     error
}

// outcome is the status of this pass, built from it alone (only the time
// of each condition's last transition is carried over from prev), and
// what to store. It does no I/O.
func outcome(prev status.Status, configFile string, o *Observation, p *Plan, a *acted) passOutcome {
	now := o.Now
	next := status.Status{Host: prev.Host, ConfigFile: configFile, Generation: o.Generation,
		ObservedGeneration: prev.ObservedGeneration, Peers: p.PeerStatus, Warnings: p.Warnings, Rotation: p.CacheKeyRotation.status, HostKeyRotation: p.HostKeyRotation.status, Caches: p.Caches}
	if next.Peers == nil {
		next.Peers = []status.Peer{} // a JSON list, never null
	}
	errs := slices.Clone(a.errs)
	var conds []status.Condition
	for _, r := range p.Resources {
		if _, failed := a.failed[r]; failed && r.Type == status.KnownHostsReady {
			// A peer verified in this pass is not written as a
			// substituter without its known_hosts entry.
			for i := range next.Peers {
				if ps := &next.Peers[i]; ps.Role == status.RoleSubstituter && ps.State == status.PeerServing {
					ps.State, ps.Message = status.PeerWaitingForKnownHosts, "root's known_hosts cannot be written; see KnownHostsReady"
				}
			}
		}
		if r.Type == "" {
			if f, failed := a.failed[r]; failed && f.Reason == "Waiting" {
				errs = append(errs, errors.New(f.Message))
			}
			continue
		}
		c := status.Condition{Type: r.Type, Status: status.False, Reason: r.Reason, Message: r.Message}
		if r.Status {
			c.Status = status.True
		}
		if f, failed := a.failed[r]; failed {
			c.Status, c.Reason, c.Message = status.False, f.Reason, f.Message
		}
		conds = append(conds, status.Carry(prev.Conditions, c, now))
	}
	if o.Self != nil {
		next.Host = o.Self.Name
		next.Files = managedFiles(prev.Files, o, p, a, now)
		if len(errs) == 0 {
			next.ObservedGeneration = o.Generation
		}
	}
	passErr := errors.Join(errs...)

	ready := status.Condition{Type: status.Ready, Status: status.True, Reason: "AllReady",
		Message: "every condition is True and the desired state is reconciled"}
	first := firstFalse(conds)
	switch {
	case first != nil:
		ready.Status, ready.Reason, ready.Message = status.False, first.Reason, first.Type+": "+first.Message
	case passErr != nil:
		ready.Status, ready.Reason, ready.Message = status.False, "PassFailed", passErr.Error()
	case next.ObservedGeneration != next.Generation:
		ready.Status, ready.Reason = status.False, "Reconciling"
		ready.Message = fmt.Sprintf("generation %d is not reconciled yet (observed %d)", next.Generation, next.ObservedGeneration)
	}
	next.Conditions = append([]status.Condition{status.Carry(prev.Conditions, ready, now)}, conds...)
	slices.SortStableFunc(next.Conditions[1:], func(a, b status.Condition) int { return cmp.Compare(a.Type, b.Type) })
	next.Ready = ready.Status == status.True
	if passErr != nil {
		next.LastError = passErr.Error()
	} else if first != nil {
		next.LastError = first.Message
	}

	out := passOutcome{changed: !sameStatus(prev, next) || len(a.wrote) > 0 || o.NewDesired != nil, err: passErr}
	next.LastReconcile = now
	out.status = next
	out.pass.Records = a.records
	if out.changed {
		out.pass.Status = &out.status
		out.pass.Event = &state.Event{Time: now, Generation: o.Generation, Reason: next.Conditions[0].Reason, Message: next.Conditions[0].Message,
			Changes: status.Changes(prev, next), Wrote: a.wrote}
		out.pass.Desired = o.NewDesired
	}
	return out
}

func firstFalse(conds []status.Condition) *status.Condition {
	for i := range conds {
		if conds[i].Type != status.Ready && conds[i].Status != status.True {
			return &conds[i]
		}
	}
	return nil
}

// authorizedApplied reports, for a consumer's key, whether it is in the
// file sshd reads for nix-ssh as it is after this pass: sshd reads it at
// every login, so a key there is in effect.
func authorizedApplied(o *Observation, p *Plan, a *acted) func(ssh.PublicKey) bool {
	if o.Self == nil || o.Self.Serve == nil {
		return func(ssh.PublicKey) bool { return false }
	}
	path := o.platform().authorizedKeys(o.Layout)
	if path == "" {
		path = filepath.Join(o.Layout.AuthorizedKeysDir, nixSSHUser) // the deploy writes it (nix.sshServe.keys)
	}
	content := o.Files[path].Content
	for _, r := range p.Resources {
		for _, f := range r.Files {
			if f.path == path && a.done[r] {
				content = f.content // as this pass wrote it
			}
		}
	}
	present := keysIn(content)
	return func(k ssh.PublicKey) bool { return present[string(k.Marshal())] }
}

// managedFiles lists the files the pass manages, with when the agent
// last wrote each (as the last status says, now for those it wrote; a
// file it never wrote has its modification time).
func managedFiles(prev []status.File, o *Observation, p *Plan, a *acted, now time.Time) []status.File {
	when := map[string]time.Time{}
	for _, f := range prev {
		when[f.Path] = f.UpdatedAt
	}
	for _, w := range a.wrote {
		when[w] = now
	}
	var out []status.File
	add := func(path string, mtime time.Time) {
		at, wrote := when[path]
		if mtime.IsZero() && !wrote || slices.ContainsFunc(out, func(f status.File) bool { return f.Path == path }) {
			return // not there, or listed already
		}
		if !wrote {
			at = mtime
		}
		out = append(out, status.File{Path: path, UpdatedAt: at})
	}
	for _, r := range p.Resources {
		for _, f := range r.Files {
			add(f.path, o.Files[f.path].ModTime)
		}
	}
	add(o.Layout.ClientKey, o.ClientKey.ModTime)
	add(o.Layout.HostKey, o.HostKey.ModTime)
	if o.Self.Serve != nil {
		add(filepath.Join(o.Layout.KeysDir, nix.SecretKeyFileName), o.CacheKey.ModTime)
	}
	slices.SortFunc(out, func(a, b status.File) int { return cmp.Compare(a.Path, b.Path) })
	return out
}

// sameStatus compares what a person would call the status: everything but
// the time of the last reconcile. It compares the JSON encodings, as stored,
// so that times read back from the store compare equal to those in memory.
func sameStatus(a, b status.Status) bool {
	a.LastReconcile, b.LastReconcile = time.Time{}, time.Time{}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}

// modTime is the modification time of path, zero when it cannot be read.
func modTime(path string) time.Time {
	st, err := os.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}
