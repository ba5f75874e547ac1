package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Exit codes of `nixpeer status`.
const (
	exitReady    = 0
	exitNoDaemon = 1
	exitNotReady = 3
)

func cmdStatus(args []string, stdout io.Writer) error {
	fs := newFlagSet("status")
	var hf hostFlags
	hf.register(fs, true)
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
		return statusFleet(api.NewClient(hf.layout().Socket), stdout, *asJSON)
	}
	if *watch {
		if *asJSON {
			return &exitError{code: 2, msg: "nixpeer status: --watch draws the table; it does not go with --json"}
		}
		ctx, stop := interrupted()
		defer stop()
		return watchStatus(ctx, api.NewClient(hf.layout().Socket), stdout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := api.NewClient(hf.layout().Socket).Status(ctx)
	if err != nil {
		return &exitError{code: exitNoDaemon, msg: clientError("status", err)}
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
	st, err := c.Status(ctx)
	if err != nil {
		return &exitError{code: exitNoDaemon, msg: clientError("status --fleet", err)}
	}
	hosts, err := fleetView(ctx, st)
	if err != nil {
		return &exitError{code: 1, msg: "nixpeer status --fleet: " + err.Error()}
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
	fs := newFlagSet("reconcile")
	var hf hostFlags
	hf.register(fs, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := api.NewClient(hf.layout().Socket).Reconcile(ctx); err != nil {
		return &exitError{code: 1, msg: clientError("reconcile", err)}
	}
	fmt.Fprintln(stdout, "reconcile queued")
	return nil
}

// cmdTrust is `nixpeer trust reset PEER`: forget the host key trusted on
// first use for PEER, so that the next contact trusts the key it offers.
func cmdTrust(args []string, stdout io.Writer) error {
	if len(args) == 0 || args[0] != "reset" {
		return &exitError{code: 2, msg: "usage: nixpeer trust reset [--socket PATH] [--root DIR] PEER"}
	}
	fs := newFlagSet("trust reset")
	var hf hostFlags
	hf.register(fs, true)
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0}
		}
		return &exitError{code: 2}
	}
	if fs.NArg() != 1 {
		return &exitError{code: 2, msg: "usage: nixpeer trust reset [--socket PATH] [--root DIR] PEER"}
	}
	peer := fs.Arg(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := api.NewClient(hf.layout().Socket).TrustReset(ctx, peer); err != nil {
		return &exitError{code: 1, msg: clientError("trust reset", err)}
	}
	fmt.Fprintf(stdout, "trust in %s reset: its host key is checked anew at the next contact (against its pin, or trusted on first use where the file allows it); see nixpeer status\n", peer)
	return nil
}

// printJSON writes v as indented JSON, the form of every --json.
func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func clientError(cmd string, err error) string {
	msg := fmt.Sprintf("nixpeer %s: %v", cmd, err)
	if errors.Is(err, api.ErrNoDaemon) {
		msg += "\n(is the agent running? systemctl status nixpeer; or pass --socket/--root to reach another one)"
	}
	return msg
}

// printStatus writes the status as a table a person reads at 3 a.m.
func printStatus(w io.Writer, st status.Status, now time.Time) {
	ready := "Ready"
	if !st.Ready {
		ready = "NOT READY"
	}
	fmt.Fprintf(w, "Host:        %s  (%s)\n", orDash(st.Host), ready)
	fmt.Fprintf(w, "Config:      %s\n", orDash(st.ConfigFile))
	fmt.Fprintf(w, "Generation:  %d (observed %d)\n", st.Generation, st.ObservedGeneration)
	if !st.LastReconcile.IsZero() {
		fmt.Fprintf(w, "Reconciled:  %s ago\n", age(now, st.LastReconcile))
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
	if st.LastError != "" {
		fmt.Fprintf(w, "\nLast error:  %s\n", st.LastError)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
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
