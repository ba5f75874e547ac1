package reconcile

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

// serving is what the serving side plans.
type serving struct {
	// resource is ServeReady; on a host that no longer serves, the
	// resource (of no condition) that empties nix-ssh's keys, or nil.
	resource *Resource
	// consumers are the client keys let in, for the facts and the module.
	consumers []nix.AuthorizedKey
	// check is the last check of its own sshd, for the facts.
	check  *peer.ServeCheck
	probes []probeRequest
	// warning is what that check found wrong without failing: its
	// nix-daemon trusting nix-ssh.
	warning string
}

// planServe lets in exactly the client keys of a serving host's consumers
// (that their agents report, or the file pins), where sshd reads them for
// nix-ssh. A host that no longer serves lets nobody in.
func (pl *planner) planServe() (out serving) {
	o, self := pl.o, pl.self
	path := o.platform().authorizedKeys(o.Layout)
	if self.Serve == nil {
		if path != "" && o.Files[path].Exists {
			content, _ := nix.RenderAuthorizedKeys(nix.ProtocolSSH, nil)
			out.resource = &Resource{Files: []fileWant{authorizedKeysFile(path, content)}, Status: true}
		}
		return out
	}
	r := &Resource{Type: status.ServeReady}
	out.resource = r
	var keys []nix.AuthorizedKey
	var served, waiting []string
	for _, c := range pl.file.Consumers(self.Name) {
		k := pl.keys[c.Name]
		if r, ok := o.Consumers[c.Name]; ok && k.ClientKey == nil && sameHostKey(r.HostKey, k.HostKey) {
			// Its agent has told nothing since state.db was lost: the
			// client key let in with the host key trusted for it stays.
			k.ClientKey = r.Key
		}
		if k.ClientKey == nil || k.HostKey == nil {
			waiting = append(waiting, c.Name)
			continue
		}
		// With the host key trusted for it: remembered outside state.db.
		keys = append(keys, nix.AuthorizedKey{Key: k.ClientKey, Host: c.Name, HostKey: k.HostKey})
		served = append(served, c.Name)
	}
	out.consumers = slices.Clip(keys)
	if path != "" && o.SSHDCheckInterval >= 0 && o.ClientKey.Usable() {
		keys = append(keys, nix.AuthorizedKey{Key: o.ClientKey.Key.Public}) // for its own check
	}
	if path != "" {
		obs := o.Files[path]
		content, err := nix.RenderAuthorizedKeys(self.Serve.Protocol, keys)
		switch {
		case obs.Err != nil:
			r.Reason, r.Message, r.Failed = "Unreadable", obs.Err.Error(), true
			return out
		case err != nil:
			r.Reason, r.Message, r.Failed = "RenderFailed", err.Error(), true
			return out
		}
		r.Files = []fileWant{authorizedKeysFile(path, content)}
	}
	if o.NixSSHUser != "" {
		r.Reason, r.Message, r.Failed = "NixSSHUserMissing", o.NixSSHUser, true
		return out
	}
	r.Status, r.Reason = true, "Serving"
	r.Message = "serves " + cmp.Or(strings.Join(served, ", "), "nobody yet") + " over " + string(self.Serve.Protocol)
	if len(waiting) > 0 {
		r.Message += "; waiting for the client key of " + strings.Join(waiting, ", ")
	}
	out.check, out.probes = pl.planSSHDCheck(r, path)
	if pr := o.Probes[self.Name]; out.check != nil && out.check.Serving {
		out.warning = pr.Warning
	}
	return out
}

// nixSSHTrusted is the warning of a serving host whose nix-daemon trusts
// nix-ssh, as the daemon itself says to the host's check of its own sshd
// over ssh-ng (Nix 2.15 and later).
const nixSSHTrusted = "nix-daemon trusts nix-ssh (trusted-users names it, its group or *): every consumer can act as root on this host's Nix store over ssh-ng; nixpeer needs no trust for substituting: remove it from trusted-users (on NixOS, nix.sshServe.trusted = false)"

// planSSHDCheck has a serving host probe its own sshd as its consumers
// do, with its own client key (which planServe lets in), every
// SSHDCheckInterval. ServeReady and the host's facts say what it found:
// consumers withdraw a host whose sshd stopped at once, and need not
// probe it often. Where the operator's deploy writes nix-ssh's keys the
// host cannot let itself in, and its consumers probe it as often as
// before. It returns what it found, for the facts, and the check to run.
func (pl *planner) planSSHDCheck(r *Resource, path string) (found *peer.ServeCheck, probes []probeRequest) {
	o, self := pl.o, pl.self
	if path == "" || o.SSHDCheckInterval < 0 || !o.ClientKey.Usable() || !o.HostKey.Usable() {
		return nil, nil
	}
	if !keysIn(o.Files[path].Content)[string(o.ClientKey.Key.Public.Marshal())] {
		// Written by this pass: checked from the next.
		r.Status, r.Reason = false, "CheckingSSHD"
		r.Message += "; its own sshd is checked once its key is let in"
		return nil, nil
	}
	tuple := strings.Join([]string{"self", string(self.Serve.Protocol), hostname.Bracket(self.Address), strconv.Itoa(self.SSHPort),
		o.ClientKey.Key.Fingerprint(), o.HostKey.Key.Fingerprint()}, " ")
	pr := o.Probes[self.Name]
	check := func() {
		if o.Apply.Running {
			// The apply may restart nix-daemon: checked once it ends
			// (its end starts a pass).
			return
		}
		target := pl.probeTarget(self, o.HostKey.Key.Public)
		if o.NextHostKey.Usable() {
			target.NextHostKey = o.NextHostKey.Key.Public // sshd may show it from any moment on
		}
		probes = append(probes, probeRequest{peer: self.Name, tuple: tuple, self: true, target: target})
	}
	if !pr.done(tuple) {
		if !pr.Running {
			check()
		}
		// Not Ready before its own sshd has been seen to serve.
		r.Status, r.Reason = false, "CheckingSSHD"
		r.Message += "; checking its own sshd"
		return nil, probes
	}
	every := o.SSHDCheckInterval
	if pr.Err != "" {
		every = min(every, jobRetry.Delay(pr.Failures))
	}
	next := pr.Ended.Add(scaled(every, spread(self.Name+" sshd")))
	if now, after := due(o.Now, next); now {
		check()
	} else {
		r.Requeue = after
	}
	if pr.Err == "" {
		r.Message += fmt.Sprintf("; its own sshd serves (checked every %v)", o.SSHDCheckInterval)
		return &peer.ServeCheck{Serving: true}, probes
	}
	if !pr.Passed.IsZero() {
		// Consumers are told once it served: until then, an sshd still
		// starting (or one never set up) is for their own probes to find.
		found = &peer.ServeCheck{Reason: pr.Reason}
	}
	r.Status, r.Reason = false, "SSHDNotServing"
	r.Message = fmt.Sprintf("its own sshd does not serve nix-ssh (%s); its consumers withdraw it until it does; checked again from %s",
		pr.Err, next.UTC().Format(time.RFC3339))
	return found, probes
}

// keysIn returns the keys of an authorized_keys file, by their wire
// form, up to the first line that does not parse.
func keysIn(content []byte) map[string]bool {
	present := map[string]bool{}
	for rest := content; len(rest) > 0; {
		k, _, _, next, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			break
		}
		present[string(k.Marshal())] = true
		rest = next
	}
	return present
}

// authorizedKeysFile is nix-ssh's authorized keys file, which sshd reads
// as nix-ssh: the file 0644 in a directory of the agent's that is 0755,
// whatever the agent's umask.
func authorizedKeysFile(path string, content []byte) fileWant {
	return fileWant{path: path, content: content, mode: 0o644, dirMode: 0o755, ownDir: true}
}
