package reconcile

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// planNixSettings writes the host's Nix settings where its platform wants
// them, and has them applied and verified live once per change: the
// substituters the verdicts use, the signing key once it is on disk, the
// consumers' keys (for the module). planned is false when it plans no
// files (they stay as they are, and nothing is withdrawn).
func (pl *planner) planNixSettings(signWith []string, verdicts map[string]verdict, consumers []nix.AuthorizedKey, cs cacheSettings) (r *Resource, planned bool) {
	o, self := pl.o, pl.self
	r = &Resource{Type: status.NixSettingsApplied, Needs: []string{status.KeysReady}}
	var s nix.Settings
	var m nix.ModuleSettings
	if self.Serve != nil {
		if len(signWith) == 0 {
			r.Reason = "WaitingForCacheKey"
			r.Message = "the Nix settings stay as they are until the signing key is usable; see CacheKeyReady"
			return r, false
		}
		s.SecretKeyFiles = signWith
		r.Needs = append(r.Needs, status.CacheKeyReady)
	}
	var withdrawn []string
	for _, name := range self.SubstituteFrom {
		v := verdicts[name]
		if v.url == "" {
			continue
		}
		if !v.Use {
			withdrawn = append(withdrawn, v.url)
			continue
		}
		h, k := pl.file.Host(name), pl.keys[name]
		s.Substituters = append(s.Substituters, v.url)
		s.TrustedPublicKeys = append(s.TrustedPublicKeys, k.trusted()...)
		hostNames := []string{hostname.WithPort(h.Address, h.SSHPort)}
		if pl.o.HostCAs == nil {
			m.KnownHosts = append(m.KnownHosts, nix.KnownHost{Name: name, HostNames: hostNames, PublicKey: k.HostKey})
		}
		for i, ca := range pl.o.HostCAs {
			m.KnownHosts = append(m.KnownHosts, nix.KnownHost{Name: fmt.Sprintf("%s-ca%d", name, i+1), HostNames: hostNames, PublicKey: ca, CertAuthority: true})
		}
	}
	if len(s.Substituters) > 0 {
		r.Needs = append(r.Needs, status.KnownHostsReady)
	}
	s.Substituters = append(s.Substituters, cs.substituters...)
	s.TrustedPublicKeys = append(s.TrustedPublicKeys, cs.trusted...)
	s.NoNegativeCache = cs.noNegativeCache
	if cs.hook != nil {
		s.PostBuildHook = cs.hook.path
	}
	s.Fallback = len(self.SubstituteFrom) > 0 || len(self.ReadCaches) > 0

	files, err := o.platform().nixFiles(o, s, m, consumers)
	if err != nil {
		r.Reason, r.Message, r.Failed = "RenderFailed", err.Error(), true
		return r, false
	}
	if cs.hook != nil {
		files = append([]fileWant{*cs.hook}, files...)
	}
	sum := sha256.New()
	// Settings count as applied only by an apply that began after they
	// were last written: a file changed behind the agent's back and
	// written back is applied again.
	var written time.Time
	for _, f := range files {
		obs := o.Files[f.path]
		if obs.Err != nil {
			r.Reason, r.Message, r.Failed = "Unreadable", obs.Err.Error(), true
			return r, false
		}
		fmt.Fprintf(sum, "%s\x00%s\x00", f.path, f.content)
		if !obs.Exists && len(f.content) > 0 || obs.Exists && !bytes.Equal(obs.Content, f.content) {
			written = o.Now // this pass writes it
		} else if obs.ModTime.After(written) {
			written = obs.ModTime
		}
	}
	r.Files, planned = files, true
	hash := hex.EncodeToString(sum.Sum(nil))
	if o.Applied.Hash == hash && !o.Applied.At.Before(written) {
		r.Status, r.Reason, r.Message = true, "Applied", "the Nix settings are live"
		return r, planned
	}
	req := &applyRequest{hash: hash, argv: self.Apply, settings: s, withdrawn: withdrawn, hint: o.platform().notLive(o)}
	a := o.Apply
	key := req.key()
	if a.done(key) && a.Started.Before(written) {
		a = jobState{Running: a.Running, RunningKey: a.RunningKey} // about older files
	}
	switch {
	case a.Running:
		r.Reason, r.Message = "Applying", "applying the Nix settings"
		if a.RunningKey != key {
			r.Message = "waiting for the apply of an earlier change to end"
		}
		return r, planned
	case a.done(key) && a.Err == "" && len(a.Missing) == 0:
		r.Records = []record{{recApplied, appliedRecord{Hash: hash, At: a.Started, SigningWith: s.SecretKeyFiles, Trusted: s.TrustedPublicKeys}}}
		r.Status, r.Reason, r.Message = true, "Applied", "the Nix settings are live"
		return r, planned
	case a.done(key) && a.Err == "":
		// Written, not live, and no apply command: the operator's deploy
		// applies them.
		r.Reason = "ApplyPending"
		r.Message = "the settings are written; they take effect when your deploy applies them (not live yet: " + strings.Join(a.Missing, "; ") + ")"
		if due := a.Ended.Add(ReverifyPending); o.Now.Before(due) {
			r.Requeue = due.Sub(o.Now)
			return r, planned
		}
	case a.failed(key):
		r.Reason, r.Message, r.Failed = a.Reason, a.Err, true
		if due := a.Ended.Add(scaled(jobRetry.Delay(a.Failures), spread(self.Name))); o.Now.Before(due) {
			r.Requeue = due.Sub(o.Now)
			return r, planned
		}
	default:
		r.Reason, r.Message = "Applying", "applying the Nix settings"
		if len(self.Apply) == 0 {
			r.Reason, r.Message = "Verifying", "checking whether the settings are live"
		}
	}
	r.Apply = req
	return r, planned
}
