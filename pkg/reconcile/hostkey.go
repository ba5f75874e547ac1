package reconcile

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// A rotation of the host's SSH host key (nixpeer rotate host-key), so
// that its peers never refuse it (HostKeyChanged):
//
//  1. MakingKey: the next key is made beside the host key
//     (sshkeys.NextSuffix);
//  2. Accepting: the facts publish it with the current key's signature
//     handing the host over to it (sshkeys.HandoverProof); each peer that
//     trusts the current key accepts the next one beside it (its
//     known_hosts lists both, its substituter URL pins neither) and says so
//     in its facts (AcceptedHostKeys). An operator may force past a peer
//     that is away (it then refuses the new key until approved again);
//  3. Swapping: the next key takes the host key's place, the old one is
//     kept as sshkeys.RetiredSuffix, and sshd is told to read it again
//     (the host's sshdReload); the peer port and the watches use it at
//     once, and peers trust it as the old one was trusted.
const (
	PhaseAccepting = "Accepting"
	PhaseSwapping  = "Swapping"
)

// HostKeyHandoverGrace is how long after its last peer accepted the next
// host key a host swaps to it.
const HostKeyHandoverGrace = 3 * time.Second

// hostKeyRequest is an operator's request to rotate the host key (only
// the API writes it).
type hostKeyRequest struct {
	// From is the fingerprint of the host key to rotate away from: inert
	// once it is gone.
	From string `json:"from,omitempty"`
	// Force is the fingerprint of the next key whose wait for peers is
	// skipped.
	Force string `json:"force,omitempty"`
}

// hostKeyRotation is the host key rotation's part of the keys resource.
type hostKeyRotation struct {
	// next and proof are the next key and the current one's handover, for
	// the facts; "" when there is none.
	next, proof string
	status      *status.Rotation
}

// planHostKeyRotation plans, into r (the keys resource), what a rotation of
// the usable host key does in this pass.
func (pl *planner) planHostKeyRotation(r *Resource) (out hostKeyRotation) {
	o, l := pl.o, pl.o.Layout
	cur, next, req := o.HostKey, o.NextHostKey, o.HostKeyRequest
	curFP := cur.Key.Fingerprint()
	phase := func(p, to, msg string) {
		out.status = &status.Rotation{Phase: p, From: curFP, To: to, Message: msg}
	}
	switch {
	case req.From != "" && req.From != curFP && len(pl.self.SSHDReload) > 0 && o.SSHDReloaded != curFP:
		// Swapped: sshd reads the new key (again, after a failure).
		r.Reload, r.ReloadKey = pl.self.SSHDReload, cur.Key.Public
		r.Records = append(r.Records, record{recSSHDReloaded, curFP})
		phase(PhaseSwapping, curFP, "having sshd read the new host key: "+strings.Join(pl.self.SSHDReload, " "))
		out.status.From = req.From
		return out
	case req.From != curFP:
		return out
	case next.Err != nil:
		r.Reason, r.Failed = "NextHostKeyUnusable", true
		r.Message = next.Err.Error()
		return out
	case next.State.Missing:
		r.Keys = append(r.Keys, keyWant{kind: keyHost, path: l.HostKey + sshkeys.NextSuffix, name: "root@" + pl.self.Name})
		r.Requeue = soon
		phase(PhaseMakingKey, "", "making the next host key")
		return out
	}
	if next.State.NeedsWork() {
		r.Keys = append(r.Keys, keyWant{kind: keyHost, path: l.HostKey + sshkeys.NextSuffix, name: "root@" + pl.self.Name})
	}
	nextFP := next.Key.Fingerprint()
	proof, err := sshkeys.HandoverProof(cur.Key.Signer, pl.self.Name, pl.self.Address, next.Key.Public)
	if err != nil {
		r.Reason, r.Message, r.Failed = "HostKeyHandoverFailed", err.Error(), true
		return out
	}
	out.next, out.proof = next.Key.AuthorizedLine(), proof
	var waiting []string
	var accepted time.Time // when the last peer told its facts
	for _, t := range o.Watches {
		st := o.Peers[t.Name]
		if st.Facts == nil || !slices.Contains(st.Facts.AcceptedHostKeys, out.next) {
			waiting = append(waiting, t.Name)
		}
		if st.FactsAt.After(accepted) {
			accepted = st.FactsAt
		}
	}
	slices.Sort(waiting)
	if len(waiting) > 0 && req.Force != nextFP {
		phase(PhaseAccepting, nextFP, fmt.Sprintf("waiting for %s to accept the next host key (nixpeer rotate host-key --force goes on without them; they then refuse it until approved again)",
			strings.Join(waiting, ", ")))
		out.status.WaitingOn = waiting
		return out
	}
	// A process that read a peer's settings just before it accepted the
	// next key gets HostKeyHandoverGrace to connect with them.
	if due := accepted.Add(HostKeyHandoverGrace); req.Force != nextFP && o.Now.Before(due) {
		phase(PhaseAccepting, nextFP, "every peer accepted the next host key; it takes the place of the current one at "+due.UTC().Format(time.RFC3339))
		r.Requeue = due.Sub(o.Now)
		return out
	}
	r.Keys = append(r.Keys, keyWant{kind: keyHostPromote, path: l.HostKey})
	if len(pl.self.SSHDReload) > 0 {
		// At once, so that sshd and the peer port show the same key.
		r.Reload, r.ReloadKey = pl.self.SSHDReload, next.Key.Public
		r.Records = append(r.Records, record{recSSHDReloaded, nextFP})
	}
	r.Requeue = soon
	phase(PhaseSwapping, nextFP, "the next host key takes the place of the current one")
	return out
}

// acceptedHostKeys are the next host keys of peers this host accepted,
// for its facts: where ssh reads host keys (known_hosts, applied with
// substituter URLs that pin none) for the peers it fetches from.
func acceptedHostKeys(o *Observation, knownHosts, settings *Resource) []string {
	var out []string
	for _, t := range o.Watches {
		next := o.Peers[t.Name].NextHostKey
		if next == nil {
			continue
		}
		if slices.Contains(o.Self.SubstituteFrom, t.Name) && (knownHosts == nil || !knownHosts.Status || settings == nil || !settings.Status) {
			continue
		}
		out = append(out, sshkeys.Key{Public: next}.AuthorizedLine())
	}
	return out
}
