package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Fleet is the view of every host of the desired state the status was
// made from: this host from its status, every other host asked for its
// facts over its peer port (all at once, each within the fetch timeout),
// checked against the key this agent trusts for it, or the file's pin.
func (b *backend) Fleet(ctx context.Context, _ api.FleetRequest) ([]api.FleetHost, error) {
	st, f := b.host.Status(), b.host.Desired()
	if f == nil {
		return nil, errors.New("no valid desired state yet (see nixpeer status)")
	}
	peers := map[string]status.Peer{}
	for _, p := range st.Peers {
		peers[p.Name] = p
	}
	out := make([]api.FleetHost, len(f.Hosts))
	var wg sync.WaitGroup
	for i, h := range f.Hosts {
		fh := &out[i]
		fh.Name, fh.Address, fh.Role, fh.Pinned = h.Name, h.Address, roleOf(h), h.HostKey != ""
		if h.Name == st.Host {
			ready := st.Ready
			fh.Self, fh.Ready, fh.Generation, fh.ObservedGeneration, fh.Trust = true, &ready, st.Generation, st.ObservedGeneration, "self"
			fh.HostKey = readKey(b.layout.HostKey).PublicKey
			continue
		}
		p, peered := peers[h.Name]
		switch {
		case peered && p.RefusedHostKeyFingerprint != "":
			fh.Trust = "refused " + p.RefusedHostKeyFingerprint
		case peered && p.Trust != status.TrustNone:
			fh.Trust = string(p.Trust)
		case h.HostKey != "":
			fh.Trust = "pinned"
		default:
			fh.Trust = "unverified"
		}
		switch { // p is the zero Peer when not peered
		case p.Connected:
			fh.LastHeard = "now"
		case p.Since != nil:
			fh.LastHeard = p.Since.UTC().Format(time.RFC3339)
		}
		wg.Go(func() {
			addr := net.JoinHostPort(h.Address, strconv.Itoa(h.PeerPort))
			want := wantKey(p, h.HostKey)
			facts, err := peer.Fetch(ctx, addr, func(k ssh.PublicKey) error {
				if got := ssh.FingerprintSHA256(k); want != "" && got != want {
					return fmt.Errorf("it offers host key %s, not %s", got, want)
				}
				fh.HostKey = sshkeys.Key{Public: k}.AuthorizedLine()
				return nil
			})
			if err != nil {
				fh.Error = err.Error()
				return
			}
			ready := facts.Ready
			fh.Ready, fh.Generation, fh.ObservedGeneration = &ready, facts.Generation, facts.ObservedGeneration
		})
	}
	wg.Wait()
	return out, nil
}

// wantKey is the fingerprint of the host key to accept from a peer (p,
// the zero Peer when not peered): the key this agent trusts for it, else
// the file's pin, else "" for any key (the view then says "unverified",
// and its answer does not count as Ready for the exit code).
func wantKey(p status.Peer, pin string) string {
	switch {
	case p.HostKeyFingerprint != "":
		return p.HostKeyFingerprint // the trusted key, also while another is refused
	case pin != "":
		if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pin)); err == nil {
			return ssh.FingerprintSHA256(k)
		}
	}
	return ""
}

// roleOf says what a host does in the fleet.
func roleOf(h *desired.Host) string {
	var parts []string
	if h.Serve != nil {
		parts = append(parts, "serves")
	}
	if len(h.SubstituteFrom) > 0 {
		parts = append(parts, "fetches from "+strings.Join(h.SubstituteFrom, ", "))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, "; ")
}

// printFleet writes the fleet as a table.
func printFleet(w io.Writer, hosts []api.FleetHost, asJSON bool) error {
	if asJSON {
		return printJSON(w, hosts)
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tROLE\tADDRESS\tREADY\tGENERATION\tTRUST\tLAST HEARD")
	for _, h := range hosts {
		name := h.Name
		if h.Self {
			name += " (this host)"
		}
		ready, gen := "?", "?"
		if h.Ready != nil {
			ready = map[bool]string{true: "Ready", false: "not Ready"}[*h.Ready]
			gen = fmt.Sprintf("%d (observed %d)", h.Generation, h.ObservedGeneration)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, h.Role, h.Address, ready, gen, h.Trust, cmp.Or(h.LastHeard, "-"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, h := range hosts {
		if h.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", h.Name, h.Error)
		}
	}
	return nil
}
