package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
	"github.com/nixpeer/nixpeer/pkg/command"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/reconcile"
)

// exitWouldBuild is the exit code of `nixpeer plan` when this host would
// build something itself.
const exitWouldBuild = 4

// dryRun is what realising the targets would do on this host: the answer
// to `nixpeer plan`.
type dryRun struct {
	// Build are the derivations this host would build itself.
	Build []string `json:"build"`
	// Fetch are the paths it would substitute, each with where from.
	Fetch []fetch `json:"fetch"`
	// Unknown are paths Nix does not know how to build or fetch.
	Unknown []string `json:"unknown,omitempty"`
	// Download is what Nix says of the download, such as "1.20 MiB
	// download, 4.52 MiB unpacked".
	Download string `json:"download,omitempty"`
	// Warnings say which peers could not be asked.
	Warnings []string `json:"warnings,omitempty"`
}

type fetch struct {
	Path string `json:"path"`
	// Peer is the nixpeer peer that has it (first in priority order), or
	// "" for another substituter.
	Peer        string `json:"peer,omitempty"`
	Substituter string `json:"substituter"`
	NarSize     uint64 `json:"narSize,omitempty"`
}

// cmdPlan is `nixpeer plan TARGET...`: with this host's live Nix
// settings, what realising the targets would fetch, from which peer, and
// what it would build here (Nix's own dry run). Exit 0 when nothing would
// be built here, 4 when something would.
func cmdPlan(args []string, stdout io.Writer) error {
	fs, hf := newHostFlagSet("plan", true)
	asJSON := fs.Bool("json", false, "print the plan as a JSON object")
	store := fs.String("store", "", "plan for the Nix store at `URL` (default: this host's)")
	if err := parseFlagsAndArgs(fs, args); err != nil {
		return err
	}
	targets := fs.Args()
	if len(targets) == 0 {
		return &exitError{code: 2, msg: usageOf("plan") + " (store paths or .drv files)"}
	}
	for _, t := range targets {
		if !nix.IsStorePath(t) {
			return &exitError{code: 2, msg: fmt.Sprintf("nixpeer plan: %q is not a store path or a .drv (/nix/store/HASH-NAME)", t)}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var p dryRun
	if err := hf.client().Plan(ctx, api.PlanRequest{Targets: targets, Store: *store}, &p); err != nil {
		return clientError("plan", err)
	}
	if *asJSON {
		if err := printJSON(stdout, p); err != nil {
			return err
		}
	} else {
		p.print(stdout)
	}
	switch {
	case len(p.Unknown) > 0:
		return &exitError{code: 1, msg: "nixpeer plan: Nix does not know how to build or fetch " + strings.Join(p.Unknown, ", ")}
	case len(p.Build) > 0:
		return &exitError{code: exitWouldBuild}
	}
	return nil
}

// Plan is the daemon's answer to `nixpeer plan`: Nix's dry run with this
// host's live settings, each fetched path attributed to the peer that has
// it.
func (b *backend) Plan(ctx context.Context, req api.PlanRequest) (any, error) {
	stores := b.host.PeerStores()
	if err := checkPaths("targets", req.Targets); err != nil {
		return nil, err
	}
	if err := checkStoreURL(req.Store); err != nil {
		return nil, err
	}
	env := nixCLIEnv(b.layout)
	argv := []string{"nix-store"}
	if req.Store != "" {
		argv = append(argv, "--store", req.Store)
	}
	res, err := command.Run(ctx, append(append(argv, "--realise", "--dry-run"), req.Targets...), env)
	if err != nil {
		return nil, fmt.Errorf("nix-store --realise --dry-run: %v: %s", err, command.Tail(res.Stderr, 2048))
	}
	p := parseDryRun(string(res.Stderr))
	if len(p.Build)+len(p.Fetch)+len(p.Unknown) == 0 {
		// Nothing to do, or words this parse does not know: nothing to
		// do means every target's outputs are valid already.
		if err := allValid(ctx, argv, env, req.Targets); err != nil {
			return nil, fmt.Errorf("the dry run listed nothing, yet %v; it printed:\n%s", err, command.Tail(res.Stderr, 2048))
		}
	}
	if err := p.attribute(ctx, &nix.CLI{Env: env}, stores); err != nil {
		return nil, err
	}
	return p, nil
}

// checkPaths checks the store paths of a request to the daemon: 1 to
// maxQueryPaths of them (what names them in the error), each a store path.
func checkPaths(what string, paths []string) error {
	if len(paths) == 0 || len(paths) > maxQueryPaths {
		return fmt.Errorf("%d %s: want 1 to %d", len(paths), what, maxQueryPaths)
	}
	for _, p := range paths {
		if !nix.IsStorePath(p) {
			return fmt.Errorf("%q is not a store path (/nix/store/HASH-NAME)", p)
		}
	}
	return nil
}

// maxQueryPaths bounds the paths of one plan or wait --path.
const maxQueryPaths = 10000

// checkStoreURL checks plan's --store: a store URL or path for nix-store,
// never an option.
func checkStoreURL(u string) error {
	if len(u) > 4096 || strings.HasPrefix(u, "-") || strings.ContainsFunc(u, func(r rune) bool { return r < 0x21 || r == 0x7f }) {
		return fmt.Errorf("store %q is not a store URL", u)
	}
	return nil
}

// nixCLIEnv is the environment of the nix programs the daemon runs for
// the operator's commands: this host's settings, and under --root the ssh
// config the agent wrote (Nix before 2.31 takes no port from a
// substituter URL).
func nixCLIEnv(l layout.Layout) []string {
	env := []string{"NIX_CONF_DIR=" + l.NixConfDir}
	if l.Root != "" {
		env = append(env, "NIX_SSHOPTS=-F "+l.SSHConfig)
	}
	return env
}

// allValid checks that the outputs of every target (the target itself
// for a path that is not a .drv) are valid in the store nix-store (argv)
// uses.
func allValid(ctx context.Context, argv, env, targets []string) error {
	var paths []string
	for _, t := range targets {
		if !strings.HasSuffix(t, ".drv") {
			paths = append(paths, t)
			continue
		}
		res, err := command.Run(ctx, append(append(argv, "--query", "--outputs"), t), env)
		if err != nil {
			return fmt.Errorf("the outputs of %s are not known (%v: %s)", t, err, command.Tail(res.Stderr, 512))
		}
		paths = append(paths, strings.Fields(string(res.Stdout))...)
	}
	res, err := command.Run(ctx, append(append(argv, "--check-validity", "--print-invalid"), paths...), env)
	if err != nil {
		return fmt.Errorf("checking them failed (%v: %s)", err, command.Tail(res.Stderr, 512))
	}
	if invalid := strings.Fields(string(res.Stdout)); len(invalid) > 0 {
		return fmt.Errorf("%s is not valid here", strings.Join(invalid, ", "))
	}
	return nil
}

// parseDryRun reads what `nix-store --realise --dry-run` printed: "these
// N derivations will be built:", "these N paths will be fetched (...):",
// "don't know how to build these paths:", each followed by indented
// store paths (singular forms too).
func parseDryRun(out string) *dryRun {
	p := &dryRun{Build: []string{}, Fetch: []fetch{}}
	var into *[]string
	var fetched []string
	for _, line := range strings.Split(out, "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
		case strings.HasPrefix(line, " ") && strings.HasPrefix(trimmed, "/nix/store/") && !strings.ContainsAny(trimmed, " \t\r\v\f"):
			if into != nil {
				*into = append(*into, trimmed)
			}
		case strings.Contains(trimmed, "will be built"):
			into = &p.Build
		case strings.Contains(trimmed, "will be fetched"):
			into = &fetched
			if i, j := strings.Index(trimmed, "("), strings.LastIndex(trimmed, ")"); i >= 0 && j > i {
				p.Download = trimmed[i+1 : j]
			}
		case strings.HasPrefix(trimmed, "don't know how to build"):
			into = &p.Unknown
		default:
			into = nil
		}
	}
	for _, f := range fetched {
		p.Fetch = append(p.Fetch, fetch{Path: f})
	}
	return p
}

// attribute says where each fetched path would come from: the nixpeer
// peers that serve this host are asked, in the order of the live
// substituters (Nix's priority order), once each for all the paths still
// unattributed; the rest is left to the other substituters.
func (p *dryRun) attribute(ctx context.Context, cli *nix.CLI, stores []reconcile.PeerStore) error {
	if len(p.Fetch) == 0 {
		return nil
	}
	live, err := cli.ShowConfig(ctx)
	if err != nil {
		return err
	}
	rest := map[string]*fetch{}
	for i := range p.Fetch {
		rest[p.Fetch[i].Path] = &p.Fetch[i]
	}
	for _, url := range strings.Fields(live["substituters"]) {
		if !strings.HasPrefix(url, "ssh://nix-ssh@") && !strings.HasPrefix(url, "ssh-ng://nix-ssh@") {
			continue
		}
		if len(rest) == 0 {
			break
		}
		paths := slices.Collect(maps.Keys(rest))
		s := storeAt(stores, url)
		infos, err := pathInfos(ctx, cli, s, paths)
		peer, base := s.Name, strings.SplitN(url, "?", 2)[0]
		if err != nil {
			// Nix's dry run found the paths somewhere: the plan stands,
			// without this peer's part.
			p.Warnings = append(p.Warnings, fmt.Sprintf("could not ask %s: %v", cmp.Or(peer, base), err))
			continue
		}
		for path, info := range infos {
			f, ok := rest[path]
			if !ok {
				continue // not asked, or claimed by a peer before
			}
			f.Peer, f.Substituter, f.NarSize = peer, base, info.NarSize
			delete(rest, path)
		}
	}
	for _, f := range rest {
		f.Substituter = "another substituter"
	}
	return nil
}

func (p *dryRun) print(w io.Writer) {
	if len(p.Fetch) == 0 {
		fmt.Fprintln(w, "Nothing to fetch.")
	} else {
		fmt.Fprintf(w, "Would fetch %d paths (%s):\n", len(p.Fetch), p.Download)
		for _, f := range p.Fetch {
			from := f.Substituter
			if f.Peer != "" {
				from = f.Peer + " (" + f.Substituter + ")"
			}
			size := ""
			if f.NarSize > 0 {
				size = fmt.Sprintf("  %.1f KiB", float64(f.NarSize)/1024)
			}
			fmt.Fprintf(w, "  %s  from %s%s\n", f.Path, from, size)
		}
	}
	if len(p.Build) == 0 {
		fmt.Fprintln(w, "Nothing would be built here.")
	} else {
		fmt.Fprintf(w, "Would build %d derivations here:\n", len(p.Build))
		for _, d := range p.Build {
			fmt.Fprintf(w, "  %s\n", d)
		}
	}
	for _, u := range p.Unknown {
		fmt.Fprintf(w, "Does not know how to build or fetch %s\n", u)
	}
	for _, warn := range p.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
}
