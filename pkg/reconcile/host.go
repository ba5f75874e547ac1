package reconcile

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/pkg/clock"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Config is what a Host reconciler is given.
type Config struct {
	Log    *zap.Logger
	Clock  clock.Clock
	Layout layout.Layout
	Store  *state.Store
	// ConfigFile is the desired-state file.
	ConfigFile string
	// HostName is --host; when empty the host is found by Hostnames.
	HostName  string
	Hostnames []string
	// Peers watches the peers; Port is this agent's peer port.
	Peers *peering.Manager
	Port  *peering.Port
}

// Host reconciles one host: it owns the host's status.
type Host struct {
	cfg Config
	log *zap.Logger

	// Touched only by the loop's single worker.
	desired    *desired.File // last good desired state
	generation int64

	mu      sync.Mutex
	status  status.Status
	updated chan struct{} // closed and replaced at every reconcile
}

// NewHost prepares a reconciler, picking up the last good desired state and
// the last status from the store, so a restart starts where it left off.
func NewHost(cfg Config) (*Host, error) {
	h := &Host{cfg: cfg, log: cfg.Log, updated: make(chan struct{})}
	st, ok, err := cfg.Store.LoadStatus()
	if err != nil {
		return nil, err
	}
	if ok {
		h.status = st
	}
	h.status.ConfigFile = cfg.ConfigFile
	last, err := cfg.Store.Desired()
	if err != nil {
		return nil, err
	}
	if last != nil {
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

// Status returns a copy of the host's status.
func (h *Host) Status() status.Status {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.status.Clone()
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

// Desired returns the desired state in force (the last good one), or nil.
// Only the loop's worker may call it.
func (h *Host) Desired() *desired.File { return h.desired }

// pass is one reconcile's working set.
type pass struct {
	ctx     context.Context
	file    *desired.File
	self    *desired.Host
	conds   []status.Condition
	managed []string // every file this pass manages
	files   []string // those it wrote
	peers   []status.Peer
	errs    []error

	// This host's SSH client and host keys.
	clientKey, hostKey sshkeys.Key
	// peerKeys are the trusted keys of every host in the file, by name,
	// and peerStates what the watches know of the peers.
	peerKeys   map[string]PeerKeys
	peerStates map[string]peering.State
	// configured are the substituters verified so far, by peer name.
	configured        map[string]configuredPeer
	configuredChanged bool
	// Of a serving host: its binary-cache public key and secret key file,
	// and the consumers' client keys it lets in.
	cacheKey, secretKeyFile string
	authorized              []peer.AuthorizedFact
}

// set records a condition of this pass.
func (p *pass) set(h *Host, typ string, ok bool, reason, msg string) {
	s := status.False
	if ok {
		s = status.True
	}
	p.conds = status.Set(p.conds, status.Condition{Type: typ, Status: s, Reason: reason, Message: msg}, h.cfg.Clock.Now())
}

// peer returns the status of peer name in this pass.
func (p *pass) peer(name string) *status.Peer {
	for i := range p.peers {
		if p.peers[i].Name == name {
			return &p.peers[i]
		}
	}
	p.peers = append(p.peers, status.Peer{Name: name})
	return &p.peers[len(p.peers)-1]
}

// manage records that the pass manages path, and whether it wrote it.
func (p *pass) manage(path string, written bool) {
	p.managed = append(p.managed, path)
	if written {
		p.files = append(p.files, path)
	}
}

// Reconcile compares the desired state with the host and acts.
func (h *Host) Reconcile(ctx context.Context) error {
	prev := h.Status()
	p := &pass{ctx: ctx, conds: append([]status.Condition(nil), prev.Conditions...)}
	fileOK := h.loadDesired(p)
	if h.desired == nil {
		return h.finish(p, prev, false)
	}
	p.file = h.desired
	self, err := h.desired.FindSelf(h.cfg.HostName, h.cfg.Hostnames...)
	if err != nil {
		p.set(h, status.DesiredStateValid, false, "HostNotFound", err.Error())
		return h.finish(p, prev, false)
	}
	p.self = self
	for _, s := range steps {
		if err := s(h, p); err != nil {
			p.errs = append(p.errs, err)
		}
	}
	return h.finish(p, prev, fileOK)
}

// loadDesired reads and validates the desired-state file. A file that does
// not parse or validate is not applied: the last good one stays in force.
func (h *Host) loadDesired(p *pass) bool {
	name := h.cfg.ConfigFile
	f, raw, err := desired.Load(name)
	if err != nil {
		reason := "Invalid"
		if errors.Is(err, os.ErrNotExist) {
			reason = "FileMissing"
		}
		keep := "no earlier desired state to keep: nothing is managed until it is fixed"
		if h.desired != nil {
			keep = fmt.Sprintf("keeping the last good desired state (generation %d)", h.generation)
		}
		msg := fmt.Sprintf("%s; %s", strings.TrimSpace(err.Error()), keep)
		h.log.Error("desired-state file not applied", zap.String("file", name), zap.String("reason", reason), zap.String("error", err.Error()), zap.String("action", keep))
		p.set(h, status.DesiredStateValid, false, reason, msg)
		return false
	}
	gen, err := h.cfg.Store.RecordDesired(name, raw, f.Hash())
	if err != nil {
		p.set(h, status.DesiredStateValid, false, "StateStoreError", err.Error())
		p.errs = append(p.errs, err)
		return false
	}
	if gen != h.generation {
		h.log.Info("new desired state", zap.String("file", name), zap.Int64("generation", gen))
	}
	h.desired, h.generation = f, gen
	p.set(h, status.DesiredStateValid, true, "Valid", fmt.Sprintf("%s is valid (generation %d)", name, gen))
	return true
}

// finish computes the summary, stores the status when it changed, and
// returns the pass's error.
func (h *Host) finish(p *pass, prev status.Status, fileOK bool) error {
	now := h.cfg.Clock.Now()
	next := prev.Clone()
	next.Generation = h.generation
	if p.self != nil {
		next.Host = p.self.Name
	}
	err := errors.Join(p.errs...)
	if err == nil && fileOK && p.self != nil {
		next.ObservedGeneration = h.generation
	}
	if p.self != nil {
		next.Peers = p.peers
		next.Files = managedFiles(prev.Files, p.managed, p.files, now)
	}
	next.LastError = ""
	if err != nil {
		next.LastError = err.Error()
	} else if c := firstFalse(p.conds); c != nil {
		next.LastError = c.Message
	}
	ready, why := summarize(p.conds, next)
	reason, msg := "AllReady", "every condition is True and the desired state is reconciled"
	if !ready {
		reason, msg = why.Reason, why.Type+": "+why.Message
	}
	p.set(h, status.Ready, ready, reason, msg)
	next.Conditions = p.conds
	next.Ready = ready
	if next.Peers == nil {
		next.Peers = []status.Peer{} // a JSON list, never null
	}

	changed := !sameStatus(prev, next) || len(p.files) > 0
	next.LastReconcile = now
	if changed {
		if serr := h.cfg.Store.SaveStatus(next); serr != nil {
			err = errors.Join(err, serr)
		}
		ev := state.Event{Time: now, Generation: h.generation, Reason: reason, Message: msg}
		if len(p.files) > 0 {
			ev.Message += "; wrote " + strings.Join(p.files, ", ")
		}
		if serr := h.cfg.Store.AppendEvent(ev); serr != nil {
			err = errors.Join(err, serr)
		}
		h.log.Info("reconciled", zap.Bool("ready", ready), zap.Int64("generation", next.Generation),
			zap.Int64("observedGeneration", next.ObservedGeneration), zap.Strings("wrote", p.files))
	}
	// Published only once stored: whoever sees it can rely on the disk.
	if f, ok := h.facts(p, next); ok {
		h.cfg.Port.Publish(f)
	}
	h.mu.Lock()
	h.status = next
	close(h.updated)
	h.updated = make(chan struct{})
	h.mu.Unlock()
	return err
}

// summarize says whether the host is Ready and, if not, which condition is
// the first reason why.
func summarize(conds []status.Condition, st status.Status) (bool, status.Condition) {
	if c := firstFalse(conds); c != nil {
		return false, *c
	}
	if len(conds) == 0 {
		return false, status.Condition{Type: status.DesiredStateValid, Reason: "NoDesiredState", Message: "no desired state yet"}
	}
	if st.ObservedGeneration != st.Generation {
		return false, status.Condition{Type: status.Ready, Reason: "Reconciling",
			Message: fmt.Sprintf("generation %d is not reconciled yet (observed %d)", st.Generation, st.ObservedGeneration)}
	}
	return true, status.Condition{}
}

func firstFalse(conds []status.Condition) *status.Condition {
	for i := range conds {
		if conds[i].Type != status.Ready && conds[i].Status != status.True {
			return &conds[i]
		}
	}
	return nil
}

// managedFiles lists the managed files with the time each was last written
// by the agent.
func managedFiles(prev []status.File, managed, written []string, now time.Time) []status.File {
	when := map[string]time.Time{}
	for _, f := range prev {
		when[f.Path] = f.UpdatedAt
	}
	for _, w := range written {
		when[w] = now
	}
	out := make([]status.File, 0, len(managed))
	for _, m := range managed {
		out = append(out, status.File{Path: m, UpdatedAt: when[m]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
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
