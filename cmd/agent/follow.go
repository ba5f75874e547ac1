package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/reconcile"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// exitTimeout is the exit code of `nixpeer wait` when time ran out.
const exitTimeout = 3

// interrupted is a context that ends on SIGINT or SIGTERM.
func interrupted() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

// watchStatus redraws the status table each time a reconcile changes it,
// until ctx ends: on a terminal in place, otherwise one table after the
// other, each under a line with the time.
func watchStatus(ctx context.Context, c *api.Client, stdout io.Writer) error {
	tty := isTerminal(stdout)
	var last status.Status
	var lastKey []byte
	for {
		st, err := c.Next(ctx, last)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return clientError("status --watch", err)
		}
		key := statusKey(st)
		if !bytes.Equal(key, lastKey) {
			var b bytes.Buffer
			if tty {
				b.WriteString("\x1b[H\x1b[2J")
			} else if lastKey != nil {
				fmt.Fprintf(&b, "\n--- %s\n", time.Now().UTC().Format(time.RFC3339))
			}
			printStatus(&b, st, time.Now())
			if _, err := stdout.Write(b.Bytes()); err != nil {
				return nil // the reader went away
			}
			lastKey = key
		}
		last = st
	}
}

// statusKey is what a redraw depends on: the status but for the time of
// its last reconcile.
func statusKey(st status.Status) []byte {
	st.LastReconcile = time.Time{}
	b, _ := json.Marshal(st)
	return b
}

// cmdEvents is `nixpeer events`: the history of reconciles that changed
// something, oldest first.
func cmdEvents(args []string, stdout io.Writer) error {
	fs, hf := newHostFlagSet("events", true)
	asJSON := fs.Bool("json", false, "print the events as a JSON array")
	since := fs.Duration("since", 0, "only the events of the last `DURATION` (such as 1h)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *since < 0 {
		return &exitError{code: 2, msg: "nixpeer events: --since wants a positive duration, such as 1h"}
	}
	var from time.Time
	if *since > 0 {
		from = time.Now().Add(-*since)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	evs, err := hf.client().Events(ctx, from)
	if err != nil {
		return clientError("events", err)
	}
	if *asJSON {
		return printJSON(stdout, evs)
	}
	printEvents(stdout, evs)
	return nil
}

// printEvents writes one line per event (when, the generation, Ready and
// why), then what changed and what was written, indented.
func printEvents(w io.Writer, evs []state.Event) {
	if len(evs) == 0 {
		fmt.Fprintln(w, "no events")
		return
	}
	for _, e := range evs {
		ready := "not Ready (" + e.Reason + ")"
		if e.Reason == "AllReady" {
			ready = "Ready"
		}
		fmt.Fprintf(w, "%s  generation %d  %s\n", e.Time.UTC().Format("2006-01-02 15:04:05.000"), e.Generation, ready)
		if e.Reason != "AllReady" && e.Message != "" {
			fmt.Fprintf(w, "    %s\n", e.Message)
		}
		for _, c := range e.Changes {
			fmt.Fprintf(w, "    %s\n", c)
		}
		for _, f := range e.Wrote {
			fmt.Fprintf(w, "    wrote %s\n", f)
		}
	}
}

// cmdWait is `nixpeer wait`: until the host is Ready.
func cmdWait(args []string, stdout, stderr io.Writer) error {
	fs, hf := newHostFlagSet("wait", true)
	timeout := fs.Duration("timeout", 10*time.Minute, "give up after `DURATION` (exit 3)")
	var paths []string
	fs.Func("path", "wait until store `PATH` is on a serving peer, signed by a key this host trusts (repeat for more)", func(v string) error {
		paths = append(paths, v)
		return nil
	})
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	for _, p := range paths {
		if !nix.IsStorePath(p) {
			return &exitError{code: 2, msg: fmt.Sprintf("nixpeer wait: --path %q is not a store path (/nix/store/HASH-NAME)", p)}
		}
	}
	if *timeout <= 0 {
		return &exitError{code: 2, msg: "nixpeer wait: --timeout wants a positive duration, such as 5m"}
	}
	ctx, stop := interrupted()
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	c := hf.client()
	tty := isTerminal(stderr)
	if len(paths) > 0 {
		return waitForPaths(ctx, c, paths, *timeout, tty, stderr)
	}
	var last status.Status
	for {
		st, err := c.Next(ctx, last)
		switch {
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			if tty {
				fmt.Fprintln(stderr)
			}
			return &exitError{code: exitTimeout, msg: fmt.Sprintf("nixpeer wait: not Ready after %v: %s", *timeout, notReady(last))}
		case ctx.Err() != nil:
			return &exitError{code: 1, msg: "nixpeer wait: interrupted"}
		case errors.Is(err, api.ErrNoDaemon):
			// Not up yet (a deploy script may start it just before).
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
			last.Conditions = []status.Condition{{Type: status.Ready, Reason: "NoDaemon", Message: err.Error()}}
			continue
		case err != nil:
			return clientError("wait", err)
		}
		if st.Ready {
			if tty {
				fmt.Fprintln(stderr, "\r\x1b[KReady")
			}
			return nil
		}
		if tty {
			fmt.Fprintf(stderr, "\r\x1b[Kwaiting: %s", truncate(notReady(st), 100))
		}
		last = st
	}
}

// notReady says why a status is not Ready.
func notReady(st status.Status) string {
	if c := status.Find(st.Conditions, status.Ready); c != nil {
		return c.Reason + ": " + c.Message
	}
	return "no status yet"
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

// pathPoll is how often the serving peers are asked again for the paths
// still missing.
const pathPoll = 200 * time.Millisecond

// waitForPaths waits until every path is valid on a peer this host fetches
// from and that serves it now (state Serving), with a signature made by a
// key in this host's live trusted-public-keys, checked against the path's
// fingerprint: what production's Nix would accept from it. The daemon
// asks its peers (Paths), every pathPoll, for the paths still missing.
func waitForPaths(ctx context.Context, c *api.Client, paths []string, timeout time.Duration, tty bool, stderr io.Writer) error {
	found := map[string]string{} // path: the peer that has it
	why := "no peer serves this host yet"
	for {
		missing := waitingFor(paths, found)
		if len(missing) == 0 {
			if tty {
				fmt.Fprintf(stderr, "\r\x1b[K%d of %d paths on %s\n", len(paths), len(paths), peersOf(found))
			}
			return nil
		}
		if err := ctx.Err(); err != nil {
			if tty {
				fmt.Fprintln(stderr)
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return &exitError{code: exitTimeout, msg: fmt.Sprintf("nixpeer wait: after %v, %d of %d paths are not on a serving peer (%s):\n  %s",
					timeout, len(missing), len(paths), why, strings.Join(missing, "\n  "))}
			}
			return &exitError{code: 1, msg: "nixpeer wait: interrupted"}
		}
		a, err := c.Paths(ctx, api.PathsRequest{Paths: missing})
		switch {
		case errors.Is(err, api.ErrNoDaemon):
			why = err.Error() // not up yet: waited for, as by plain wait
		case err != nil && ctx.Err() == nil:
			return clientError("wait", err)
		case err == nil:
			maps.Copy(found, a.Found)
			why = cmp.Or(a.Why, why)
		}
		if tty {
			fmt.Fprintf(stderr, "\r\x1b[K%d of %d paths on %s", len(found), len(paths), peersOf(found))
		}
		if len(waitingFor(paths, found)) > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(pathPoll):
			}
		}
	}
}

// Paths asks each serving peer for the paths of req and answers those it
// holds signed by a key in this host's live trusted-public-keys, and why
// the others are still missing, when it can tell.
func (b *backend) Paths(ctx context.Context, req api.PathsRequest) (api.PathsAnswer, error) {
	if err := checkPaths("paths", req.Paths); err != nil {
		return api.PathsAnswer{}, err
	}
	st := b.host.Status()
	cli := &nix.CLI{Env: nixCLIEnv(b.layout)}
	stores := b.host.PeerStores()
	found := map[string]string{}
	var serving []status.Peer
	var names []string
	for _, p := range st.Peers {
		if p.Role == "substituter" && p.State == status.PeerServing {
			serving = append(serving, p)
			names = append(names, p.Name)
		}
	}
	if len(serving) == 0 {
		return api.PathsAnswer{Found: found, Why: "no peer serves this host now"}, nil
	}
	live, err := b.liveSettings(ctx, cli, st.LastReconcile)
	if err != nil {
		return api.PathsAnswer{}, err
	}
	trusted := nix.ParsePublicKeys(live["trusted-public-keys"])
	why := "not built on " + strings.Join(names, ", ") + " yet"
	for _, p := range serving {
		i := slices.IndexFunc(stores, func(s reconcile.PeerStore) bool { return s.Name == p.Name })
		if i < 0 || !slices.ContainsFunc(strings.Fields(live["substituters"]), func(u string) bool { return nix.SameStoreURL(u, stores[i].URL) }) {
			continue // not live (yet, or any more)
		}
		infos, err := pathInfos(ctx, cli, stores[i], req.Paths)
		if err != nil {
			why = err.Error() // the other peers are asked still
			continue
		}
		for path, info := range infos {
			if _, done := found[path]; done {
				continue
			}
			if info.SignedBy(trusted) != "" {
				found[path] = p.Name
			} else {
				why = fmt.Sprintf("%s holds %s, but not signed by a key this host trusts", p.Name, path)
			}
		}
	}
	return api.PathsAnswer{Found: found, Why: why}, nil
}

// liveSettings returns Nix's live configuration, read again only after
// the agent reconciled at (which is when it changes it). The lock is not
// held while the peers are asked: calls of several waits overlap.
func (b *backend) liveSettings(ctx context.Context, cli *nix.CLI, at time.Time) (map[string]string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.live == nil || !b.liveAt.Equal(at) {
		settings, err := cli.ShowConfig(ctx)
		if err != nil {
			return nil, err
		}
		b.live, b.liveAt = settings, at
	}
	return b.live, nil
}

// waitingFor are the paths not found yet.
func waitingFor(paths []string, found map[string]string) []string {
	return slices.DeleteFunc(slices.Clone(paths), func(p string) bool {
		_, ok := found[p]
		return ok
	})
}

func peersOf(found map[string]string) string {
	names := slices.Compact(slices.Sorted(maps.Values(found)))
	if len(names) == 0 {
		return "no peer yet"
	}
	return strings.Join(names, ", ")
}
