package reconcile

import (
	"fmt"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/knownhosts"
	"github.com/nixpeer/nixpeer/pkg/sshconfig"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// planKnownHosts keeps the managed blocks of root's known_hosts (the
// trusted host key of every peer this host fetches from) and of root's
// ssh config (each peer's port, and bounds on connecting to it).
func (pl *planner) planKnownHosts() *Resource {
	o, l := pl.o, pl.o.Layout
	r := &Resource{Type: status.KnownHostsReady}
	var entries []knownhosts.Entry
	var peers []sshconfig.Peer
	var unknown []string
	for _, name := range pl.self.SubstituteFrom {
		h := pl.file.Host(name)
		peers = append(peers, sshconfig.Peer{Address: h.Address, Port: h.SSHPort, ConnectTimeout: SSHConnectTimeout})
		switch key := pl.keys[name].HostKey; {
		case pl.file.Trust == desired.TrustCA:
			// ssh trusts the CAs' certificates for the peer: a rotated
			// host key needs no new line.
			for _, ca := range pl.o.HostCAs {
				entries = append(entries, knownhosts.Entry{Host: h.Address, Port: h.SSHPort, Key: ca, CA: true})
			}
		case key != nil:
			entries = append(entries, knownhosts.Entry{Host: h.Address, Port: h.SSHPort, Key: key})
			if next := pl.keys[name].NextHostKey; next != nil {
				// Handed over: ssh takes either until the peer shows it.
				entries = append(entries, knownhosts.Entry{Host: h.Address, Port: h.SSHPort, Key: next, Next: true})
			}
		default:
			unknown = append(unknown, name)
		}
	}
	for _, f := range []struct {
		path   string
		render func([]byte) ([]byte, error)
	}{
		{l.KnownHosts, func(b []byte) ([]byte, error) { return knownhosts.Render(b, entries) }},
		{l.SSHConfig, func(b []byte) ([]byte, error) { return sshconfig.Render(b, peers) }},
	} {
		obs := o.Files[f.path]
		if obs.Err != nil {
			r.Reason, r.Message, r.Failed = "Unreadable", obs.Err.Error(), true
			r.Files = nil
			return r
		}
		content, err := f.render(obs.Content)
		if err != nil {
			r.Reason, r.Message, r.Failed = "MalformedFile", fmt.Sprintf("%s: %v; fix or remove the nixpeer managed block by hand", f.path, err), true
			r.Files = nil
			return r
		}
		r.Files = append(r.Files, fileWant{path: f.path, content: content, dirMode: 0o700})
	}
	r.Status, r.Reason = true, "UpToDate"
	r.Message = fmt.Sprintf("%d peer entries in %s", len(entries), l.KnownHosts)
	if len(unknown) > 0 {
		r.Message += "; host key not known yet: " + strings.Join(unknown, ", ")
	}
	return r
}
