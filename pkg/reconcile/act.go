package reconcile

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// acted is what acting on a plan did.
type acted struct {
	// done are the resources that acted in full; failed says why the
	// others did not (a failure, or a resource they need that failed).
	done   map[*Resource]bool
	failed map[*Resource]Problem
	// wrote lists the files written.
	wrote []string
	// records are the store records of the resources that acted, by
	// key: report stores them with the status, in one commit.
	records map[string]any
	// errs are the failures of the pass.
	errs []error
	// again: the pass changed something it could not observe (a key it
	// created, a file changed under it); the next pass is due at once.
	again bool
}

// errChangedMeanwhile: a file changed between the pass's observation and
// its write; the write is left to the next pass, which sees the change.
var errChangedMeanwhile = errors.New("changed since this pass read it; the next pass takes the change into account")

// act does what p says, resource by resource, and starts the work it asks
// for. A resource whose needed resources failed leaves its files as they
// are.
func (h *Host) act(ctx context.Context, o *Observation, p *Plan) *acted {
	a := &acted{done: map[*Resource]bool{}, failed: map[*Resource]Problem{}, records: map[string]any{}}
	if o.Self != nil {
		h.jobs.forget(func(slot string) bool {
			name, isProbe := strings.CutPrefix(slot, "probe/")
			_, wanted := o.Probes[name]
			return !isProbe || wanted
		})
	}
	for _, r := range p.Resources {
		if need := a.blocker(r, p.Resources); need != nil {
			a.failed[r] = Problem{Reason: "Waiting", Message: fmt.Sprintf("waits for %s: %s", need.Type, a.failed[need].Message)}
			continue
		}
		if err := h.actOn(ctx, o, r, a); err != nil {
			reason := "WriteFailed"
			if errors.Is(err, errChangedMeanwhile) {
				reason, a.again = "ChangedMeanwhile", true
			} else {
				a.errs = append(a.errs, err)
			}
			a.failed[r] = Problem{Reason: reason, Message: err.Error()}
			continue
		}
		a.done[r] = true
		if r.Failed {
			a.errs = append(a.errs, fmt.Errorf("%s: %s", r.Type, r.Message))
		}
	}
	for _, pr := range p.Probes {
		h.jobs.start(ctx, probeSlot(pr.peer), pr.tuple, h.probeJob(pr))
	}
	return a
}

// blocker returns the first needed resource of r (among all, whose
// types differ) whose action failed, or nil.
func (a *acted) blocker(r *Resource, all []*Resource) *Resource {
	for _, t := range r.Needs {
		for _, need := range all {
			if _, failed := a.failed[need]; failed && need.Type == t {
				return need
			}
		}
	}
	return nil
}

// actOn makes one resource as planned: directories, keys, files (only
// those that differ), the peer port, store records, then its work.
func (h *Host) actOn(ctx context.Context, o *Observation, r *Resource, a *acted) error {
	for _, d := range r.Dirs {
		if err := checkDir(d.path); err != nil {
			return err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("set mode of %s to %o: %w", d.path, d.mode, err)
		}
	}
	for _, k := range r.Keys {
		created, err := ensureKey(k)
		if err != nil {
			return err
		}
		a.again = a.again || created
	}
	if len(r.Reload) > 0 {
		rctx, cancel := context.WithTimeout(ctx, ReloadTimeout)
		out, err := h.cfg.Nix.Apply(rctx, r.Reload)
		cancel()
		if err != nil {
			return fmt.Errorf("have sshd read the host key again (%s): %w: %s", strings.Join(r.Reload, " "), err, out)
		}
		// sshd closes its port while it starts again (SIGHUP), and may
		// answer with the old key before it does: the pass ends once it
		// shows the new one, so that the check of it that follows does
		// not tell the consumers it stopped serving.
		wctx, wcancel := context.WithTimeout(ctx, ReloadListenWait)
		if err := waitShowsKey(wctx, hostname.WithPort(o.Self.Address, o.Self.SSHPort), r.ReloadKey); err != nil {
			h.log.Warn("sshd does not show the new host key after its reload", zap.Error(err))
		}
		wcancel()
		h.log.Info("sshd reads the new host key", zap.Strings("command", r.Reload))
	}
	for _, f := range r.Files {
		obs, observed := o.Files[f.path]
		if !observed {
			// A bug: without this, every pass would find the file
			// "changed meanwhile" and run again at once, forever.
			return fmt.Errorf("the plan writes %s, which this pass did not observe (add it to its platform's managed files)", f.path)
		}
		wrote, err := writeWanted(f, obs)
		if err != nil {
			return err
		}
		if wrote {
			a.wrote = append(a.wrote, f.path)
		}
	}
	if r.Watch != nil {
		if r.Watch.identity != nil {
			h.cfg.Watches.SetIdentity(r.Watch.identity)
		}
		if err := h.cfg.Watches.Sync(r.Watch.targets); err != nil {
			return fmt.Errorf("watch peers: %w", err)
		}
	}
	if r.Listen != "" {
		if err := h.cfg.Port.Ensure(r.Listen, o.HostKey.Key.Signer, o.HostCert); err != nil {
			return fmt.Errorf("%w; is another agent or program on that port?", err)
		}
	}
	if r.Tier != nil && h.cfg.Caches != nil {
		if err := h.cfg.Caches.Ensure(*r.Tier); err != nil {
			return err
		}
	}
	for _, rec := range r.Records {
		a.records[rec.key] = rec.value
	}
	if r.Apply != nil {
		h.jobs.start(ctx, slotApply, r.Apply.key(), h.applyJob(r.Apply))
	}
	if r.Sign != nil {
		h.jobs.start(ctx, slotSign, r.Sign.key, h.signJob(r.Sign))
	}
	if r.Resign != nil {
		h.jobs.start(ctx, slotResign, r.Resign.key, h.resignJob(r.Resign))
	}
	return nil
}

// waitShowsKey returns once the SSH server at addr shows key, or ctx
// ends.
func waitShowsKey(ctx context.Context, addr string, key ssh.PublicKey) error {
	var d net.Dialer
	shown := errors.New("host key seen")
	for {
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			var got ssh.PublicKey
			_, _, _, herr := ssh.NewClientConn(c, addr, &ssh.ClientConfig{User: "nixpeer-reload-check", Timeout: time.Second,
				HostKeyAlgorithms: []string{key.Type()},
				HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
					got = k
					return shown
				}})
			c.Close()
			if sameHostKey(got, key) {
				return nil
			}
			if got != nil {
				err = fmt.Errorf("it shows %s", ssh.FingerprintSHA256(got))
			} else {
				err = herr
			}
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// ensureKey creates a missing key or repairs an existing one; it reports
// whether it created one.
func ensureKey(k keyWant) (bool, error) {
	dir := filepath.Dir(k.path)
	if k.kind == keyCache || k.kind == keyPromote || k.kind == keyRemoveNext {
		dir = k.path
	}
	if k.kind == keyHostPromote {
		// Like a new key, a promoted one is observed by the next pass.
		return true, sshkeys.PromoteNext(k.path)
	}
	if err := checkDir(dir); err != nil {
		return false, err
	}
	switch k.kind {
	case keyClient:
		_, res, err := sshkeys.EnsureClientKey(k.path, k.name)
		return res.Created, err
	case keyHost:
		_, res, err := sshkeys.EnsureHostKey(k.path, k.name)
		return res.Created, err
	case keyPromote:
		// Like a new key, a promoted one is observed by the next pass.
		return true, nix.PromoteNextKey(k.path, k.revoked)
	case keyRemoveNext:
		return true, nix.RemoveNextKey(k.path, k.revoked)
	default:
		_, res, err := nix.EnsureCacheKey(k.path, k.name)
		if err != nil {
			return false, fmt.Errorf("binary-cache key: %w", err)
		}
		return res.Created, nil
	}
}

// writeWanted gives the file f's content, atomically, when it differs from
// what the pass observed. It writes nothing when the file changed since it
// was observed (errChangedMeanwhile), and never creates an empty file.
func writeWanted(f fileWant, obs FileObs) (bool, error) {
	if obs.Err != nil {
		return false, obs.Err
	}
	dirFixed := false
	if f.ownDir && f.dirMode != 0 {
		fixed, err := atomicfile.KeepDirMode(filepath.Dir(f.path), f.dirMode)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("directory of %s: %w", f.path, err)
		}
		dirFixed = fixed
	}
	mode := f.mode
	if mode == 0 {
		mode = 0o644
		if obs.Exists {
			mode = obs.Mode // a file people share keeps its mode
		}
	}
	if obs.Exists && bytes.Equal(obs.Content, f.content) && obs.Mode == mode {
		return dirFixed, nil
	}
	if !obs.Exists && len(f.content) == 0 {
		return dirFixed, nil
	}
	if now := readObserved(f.path); now.Err != nil || now.Exists != obs.Exists || !bytes.Equal(now.Content, obs.Content) {
		return false, fmt.Errorf("%s %w", f.path, errChangedMeanwhile)
	}
	if err := atomicfile.MkdirAll(filepath.Dir(f.path), cmp.Or(f.dirMode, 0o755)); err != nil {
		return false, fmt.Errorf("create directory of %s: %w", f.path, err)
	}
	if err := atomicfile.WriteFile(f.path, f.content, mode); err != nil {
		return false, err
	}
	return true, nil
}

// applyJob runs the apply command (if any) and checks, with Nix itself,
// that the settings are live and a withdrawn substituter is not.
func (h *Host) applyJob(req *applyRequest) func(context.Context) jobResult {
	return func(ctx context.Context) jobResult {
		if len(req.argv) > 0 {
			actx, cancel := context.WithTimeout(ctx, ApplyTimeout)
			start := time.Now()
			out, err := h.cfg.Nix.Apply(actx, req.argv)
			cancel()
			h.log.Info("ran apply", zap.Strings("command", req.argv), zap.Duration("took", time.Since(start)),
				zap.Error(err), zap.String("output", out))
			if err != nil {
				return jobResult{Reason: "ApplyFailed", Err: err, Output: out}
			}
		}
		vctx, cancel := context.WithTimeout(ctx, VerifyTimeout)
		eff, err := h.cfg.Nix.ShowConfig(vctx)
		cancel()
		if err != nil {
			return jobResult{Reason: "CannotVerify", Err: fmt.Errorf("read the effective Nix configuration: %w", err)}
		}
		missing := append(nix.Live(req.settings, eff), nix.StillLive(req.withdrawn, eff)...)
		if len(missing) > 0 && len(req.argv) > 0 {
			msg := strings.Join(missing, "; ")
			if req.hint != "" {
				msg += "; " + req.hint
			}
			return jobResult{Reason: "NotLive", Err: errors.New("the Nix settings are not live after the apply: " + msg)}
		}
		if len(missing) == 0 {
			h.log.Info("nix settings applied and live")
		}
		return jobResult{Missing: missing}
	}
}

// signJob signs a closure with a new key.
func (h *Host) signJob(req *signRequest) func(context.Context) jobResult {
	return func(ctx context.Context) jobResult {
		sctx, cancel := context.WithTimeout(ctx, SignTimeout)
		defer cancel()
		start := time.Now()
		if err := h.cfg.Nix.SignClosure(sctx, req.keyFile, req.target); err != nil {
			return jobResult{Reason: "SigningFailed", Err: err}
		}
		h.log.Info("signed the system closure with the binary-cache key", zap.String("path", req.target),
			zap.Duration("took", time.Since(start)))
		return jobResult{}
	}
}

// resignJob adds signatures of a rotation's next key (or, after a
// revoke, the current one) to what the old key signed.
func (h *Host) resignJob(req *resignRequest) func(context.Context) jobResult {
	return func(ctx context.Context) jobResult {
		sctx, cancel := context.WithTimeout(ctx, SignTimeout)
		defer cancel()
		start := time.Now()
		n, err := h.cfg.Nix.Resign(sctx, req.keyFile, req.from, req.ultimateOnly)
		if err != nil {
			return jobResult{Reason: "ResigningFailed", Err: err}
		}
		h.log.Info("re-signed the paths of the old binary-cache key", zap.String("from", req.from), zap.Int("paths", n),
			zap.Duration("took", time.Since(start)))
		if h.cfg.Caches != nil {
			n, err := h.cfg.Caches.Resign(sctx, req.keyFile, req.from, req.ultimateOnly)
			if err != nil {
				return jobResult{Reason: "ResigningFailed", Err: err}
			}
			h.log.Info("re-signed the narinfos of the old binary-cache key in the caches published to", zap.Int("narinfos", n))
		}
		return jobResult{}
	}
}

// probeJob checks that a peer serves its store to this host's client key.
func (h *Host) probeJob(req probeRequest) func(context.Context) jobResult {
	return func(ctx context.Context) jobResult {
		// A serving host's agent lets its consumers probe a few at a
		// time; without its agent (or a turn in TurnWait), probe anyway.
		if !req.self {
			tctx, cancel := context.WithTimeout(ctx, TurnWait)
			end, err := h.cfg.Watches.Turn(tctx, req.peer)
			cancel()
			if err != nil {
				h.log.Debug("probing without a turn", zap.String("peer", req.peer), zap.Error(err))
			} else {
				defer end()
			}
		}
		res, err := h.cfg.Prober.Probe(ctx, req.target)
		if err != nil {
			reason := "probe failed"
			if pe := (*probe.Error)(nil); errors.As(err, &pe) {
				reason = pe.Reason.String()
			}
			if req.self {
				h.log.Warn("this host's own sshd does not serve nix-ssh", zap.String("reason", reason), zap.Error(err))
			} else {
				h.log.Info("peer probe failed", zap.String("peer", req.peer), zap.Error(err))
			}
			return jobResult{Reason: reason, Err: err}
		}
		if req.self {
			h.log.Debug("this host's own sshd serves", zap.Duration("probe", res.Elapsed))
			if res.Trusted == probe.Trusted {
				return jobResult{Warning: nixSSHTrusted}
			}
			return jobResult{}
		}
		h.log.Info("peer serves this host", zap.String("peer", req.peer),
			zap.Duration("probe", res.Elapsed), zap.Uint64("protocolVersion", res.ServerVersion))
		return jobResult{}
	}
}
