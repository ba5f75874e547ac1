package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

// Exit codes of `nixpeer status`.
const (
	exitReady    = 0
	exitNoDaemon = 1
	exitNotReady = 3
)

func cmdStatus(args []string, stdout io.Writer) error {
	fs, hf := newHostFlagSet("status", true)
	asJSON := fs.Bool("json", false, "print the status as a JSON object")
	watch := fs.Bool("watch", false, "redraw the table on every change, until interrupted")
	fleet := fs.Bool("fleet", false, "every host of the desired-state file: role, Ready, generation, trust, last heard (others are asked over their peer port)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *fleet {
		if *watch {
			return &exitError{code: 2, msg: "nixpeer status: --fleet does not go with --watch"}
		}
		return statusFleet(hf.client(), stdout, *asJSON)
	}
	if *watch {
		if *asJSON {
			return &exitError{code: 2, msg: "nixpeer status: --watch draws the table; it does not go with --json"}
		}
		ctx, stop := interrupted()
		defer stop()
		return watchStatus(ctx, hf.client(), stdout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := hf.client().Status(ctx)
	if err != nil {
		return clientError("status", err)
	}
	if *asJSON {
		if err := printJSON(stdout, st); err != nil {
			return err
		}
	} else {
		printStatus(stdout, st, time.Now())
	}
	if !st.Ready {
		return &exitError{code: exitNotReady}
	}
	return nil
}

// statusFleet prints the fleet view; exit 0 when every host says it is
// Ready over a key this agent trusts or the file pins, 3 otherwise.
func statusFleet(c *api.Client, stdout io.Writer, asJSON bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	hosts, err := c.Fleet(ctx)
	if err != nil {
		return clientError("status --fleet", err)
	}
	if err := printFleet(stdout, hosts, asJSON); err != nil {
		return err
	}
	for _, h := range hosts {
		// An answer over a key nobody checked is shown, not relied on.
		if h.Ready == nil || !*h.Ready || h.Trust == "unverified" || strings.HasPrefix(h.Trust, "refused") {
			return &exitError{code: exitNotReady}
		}
	}
	return nil
}

func cmdReconcile(args []string, stdout io.Writer) error {
	fs, hf := newHostFlagSet("reconcile", true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hf.client().Reconcile(ctx); err != nil {
		return clientError("reconcile", err)
	}
	fmt.Fprintln(stdout, "reconcile queued")
	return nil
}

// cmdTrust is `nixpeer trust pending|approve|reset`.
func cmdTrust(args []string, stdout io.Writer) error {
	if len(args) == 0 {
		return &exitError{code: 2, msg: usageOfGroup("trust")}
	}
	fs, hf := newHostFlagSet("trust "+args[0], true)
	var asJSON, asYAML, fleet *bool
	nargs := map[string]int{"pending": 0, "approve": 2, "reset": 1}
	n, ok := nargs[args[0]]
	if !ok {
		return &exitError{code: 2, msg: usageOfGroup("trust")}
	}
	if args[0] == "pending" {
		asJSON = fs.Bool("json", false, "print the keys awaiting approval as JSON")
		asYAML = fs.Bool("yaml", false, "print them as hostKey pins for the desired-state file")
		fleet = fs.Bool("fleet", false, "every host of the desired-state file that is not pinned there: the key its agent shows (asked over its peer port), whether this host trusts it or not")
	}
	if err := parseFlagsAndArgs(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != n {
		return &exitError{code: 2, msg: usageOfGroup("trust")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := hf.client()
	switch args[0] {
	case "pending":
		if *fleet {
			hosts, err := c.Fleet(ctx)
			if err != nil {
				return clientError("trust pending --fleet", err)
			}
			return printPending(stdout, unpinned(hosts), *asJSON, *asYAML)
		}
		st, err := c.Status(ctx)
		if err != nil {
			return clientError("trust pending", err)
		}
		return printPending(stdout, pendingPeers(st), *asJSON, *asYAML)
	case "approve":
		peer, fp := fs.Arg(0), fs.Arg(1)
		if !strings.HasPrefix(fp, "SHA256:") {
			return &exitError{code: 2, msg: "nixpeer trust approve: the fingerprint is SHA256:..., as nixpeer trust pending and nixpeer facts print it"}
		}
		if err := c.TrustApprove(ctx, peer, fp); err != nil {
			return clientError("trust approve", err)
		}
		fmt.Fprintf(stdout, "host key %s of %s approved on this host; see nixpeer status\n", fp, peer)
	case "reset":
		peer := fs.Arg(0)
		if err := c.TrustReset(ctx, peer); err != nil {
			return clientError("trust reset", err)
		}
		fmt.Fprintf(stdout, "trust in %s reset: its host key is checked anew at the next contact (against its pin, trusted on first use with trust: tofu, else awaiting approval); see nixpeer status\n", peer)
	}
	return nil
}

// pendingKey is a peer's host key awaiting approval.
type pendingKey struct {
	Peer        string `json:"peer"`
	Address     string `json:"address"`
	Role        string `json:"role"`
	Fingerprint string `json:"fingerprint"`
	HostKey     string `json:"hostKey"`
	// Trust is how this host trusts the key (--fleet only).
	Trust string `json:"trust,omitempty"`
}

func pendingPeers(st status.Status) []pendingKey {
	out := []pendingKey{}
	for _, p := range st.Peers {
		if p.PendingHostKey != "" {
			out = append(out, pendingKey{Peer: p.Name, Address: p.Address, Role: p.Role, Fingerprint: p.RefusedHostKeyFingerprint, HostKey: p.PendingHostKey})
		}
	}
	return out
}

// unpinned are the hosts of the fleet whose host key the desired-state
// file does not pin, with the key each agent shows (checked against the
// key this host trusts for it, if any): pinned in the file (--yaml), they
// are trusted on every host with nothing to approve.
func unpinned(hosts []api.FleetHost) []pendingKey {
	out := []pendingKey{}
	for _, h := range hosts {
		if h.Pinned || h.HostKey == "" {
			continue
		}
		fp := ""
		if k, err := sshkeys.ParsePublicLine(h.HostKey); err == nil {
			fp = ssh.FingerprintSHA256(k)
		}
		out = append(out, pendingKey{Peer: h.Name, Address: h.Address, Role: h.Role, Fingerprint: fp, HostKey: h.HostKey, Trust: h.Trust})
	}
	return out
}

// printPending prints the keys awaiting approval: a table, JSON, or the
// hostKey lines to put in the desired-state file (reviewed once, trusted
// on every host).
func printPending(w io.Writer, keys []pendingKey, asJSON, asYAML bool) error {
	switch {
	case asJSON:
		return printJSON(w, keys)
	case asYAML:
		for _, k := range keys {
			fmt.Fprintf(w, "# %s (%s, %s): compare %s with what \"nixpeer facts\" prints on %s\n", k.Peer, k.Address, k.Role, k.Fingerprint, k.Peer)
			fmt.Fprintf(w, "- name: %s\n  hostKey: %s\n", k.Peer, k.HostKey)
		}
	case len(keys) == 0:
		fmt.Fprintln(w, "no host key awaits approval")
	default:
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tADDRESS\tROLE\tHOST KEY\tTRUST HERE")
		for _, k := range keys {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Peer, k.Address, k.Role, k.Fingerprint, cmp.Or(k.Trust, "pending"))
		}
		tw.Flush()
		fmt.Fprintln(w, "compare each with what \"nixpeer facts\" prints on that host, then: nixpeer trust approve PEER SHA256:...")
	}
	return nil
}

// printJSON writes v as indented JSON, the form of every --json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// clientError is the exit of cmd when its call to the daemon failed.
func clientError(cmd string, err error) *exitError {
	msg := fmt.Sprintf("nixpeer %s: %v", cmd, err)
	if errors.Is(err, api.ErrNoDaemon) {
		msg += "\n(is the agent running? systemctl status nixpeer; or pass --socket/--root to reach another one)"
	}
	return &exitError{code: exitNoDaemon, msg: msg}
}

// printStatus writes the status as a table a person reads at 3 a.m.
func printStatus(w io.Writer, st status.Status, now time.Time) {
	ready := "Ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	fmt.Fprintf(w, "Host:        %s  (%s)\n", cmp.Or(st.Host, "-"), ready)
	fmt.Fprintf(w, "Config:      %s\n", cmp.Or(st.ConfigFile, "-"))
	fmt.Fprintf(w, "Generation:  %d (observed %d)\n", st.Generation, st.ObservedGeneration)
	if !st.LastReconcile.IsZero() {
		fmt.Fprintf(w, "Reconciled:  %s ago\n", age(now, st.LastReconcile))
	}
	if r := st.Rotation; r != nil {
		fmt.Fprintf(w, "Rotation:    %s -> %s: %s: %s\n", r.From, r.To, r.Phase, oneLine(r.Message))
	}
	if r := st.HostKeyRotation; r != nil {
		fmt.Fprintf(w, "Host key:    %s -> %s: %s: %s\n", r.From, cmp.Or(r.To, "(being made)"), r.Phase, oneLine(r.Message))
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONDITION\tSTATUS\tREASON\tAGE\tMESSAGE")
	for _, c := range st.Conditions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, age(now, c.LastTransitionTime), oneLine(c.Message))
	}
	tw.Flush()
	if len(st.Peers) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PEER\tROLE\tADDRESS\tTRUST\tSTATE\tMESSAGE")
		for _, p := range st.Peers {
			trust := p.Trust
			if trust == status.TrustTOFU {
				trust = "tofu (first use, not pinned)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", p.Name, p.Role, p.Address, trust, p.State, oneLine(p.Message))
		}
		tw.Flush()
	}
	if len(st.Caches) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CACHE\tROLE\tCREDENTIALS\tSTATE")
		for _, c := range st.Caches {
			var roles, states []string
			if c.Read {
				roles = append(roles, "read "+c.URL)
				states = append(states, map[bool]string{true: "reachable", false: "unreachable"}[c.Reachable])
			}
			if c.Publish {
				roles = append(roles, "publish")
			}
			if c.Error != "" {
				states = append(states, "error: "+oneLine(c.Error))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", c.Name, strings.Join(roles, ", "), c.Credentials, cmp.Or(strings.Join(states, "; "), "-"))
		}
		tw.Flush()
	}
	for i, warning := range st.Warnings {
		if i == 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "WARNING:     %s\n", warning)
	}
	if st.LastError != "" {
		fmt.Fprintf(w, "\nLast error:  %s\n", st.LastError)
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

// age prints how long ago t was, in the largest fitting unit.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	default:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
}
