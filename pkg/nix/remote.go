package nix

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/command"
)

// PathInfo is what a store says of one of its paths.
type PathInfo struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	Signatures []string `json:"signatures"`
	// Ultimate is set for a path built on this store's host.
	Ultimate bool `json:"ultimate"`
	// Deriver is filled by pkg/probe's serve-protocol query only; the
	// JSON of nix path-info is not read for it.
	Deriver string `json:"-"`
}

// SignedBy returns the name of the first key of trusted that signed the
// path, verified against its fingerprint, or "".
func (p PathInfo) SignedBy(trusted []PublicKey) string {
	fp := Fingerprint(p.Path, p.NarHash, p.NarSize, p.References)
	for _, sig := range p.Signatures {
		for _, k := range trusted {
			if k.Verify(fp, sig) {
				return k.Name()
			}
		}
	}
	return ""
}

// ParsePublicKeys parses a trusted-public-keys value (keys separated by
// white space); keys that do not parse are skipped.
func ParsePublicKeys(value string) []PublicKey {
	var keys []PublicKey
	for _, f := range strings.Fields(value) {
		if k, err := ParsePublicKey(f); err == nil {
			keys = append(keys, k)
		}
	}
	return keys
}

// RemotePathInfos asks the store at storeURL which of paths it holds, and
// returns what it says of those: one `nix-store --check-validity` for
// all of them, then one `nix path-info` for the valid ones (asking about
// a path it lacks would make Nix try to build it). Paths must be store
// paths.
func (c *CLI) RemotePathInfos(ctx context.Context, storeURL string, paths []string) (map[string]PathInfo, error) {
	for _, p := range paths {
		if !strings.HasPrefix(p, "/nix/store/") || strings.ContainsAny(p, " \t\n") {
			return nil, fmt.Errorf("%q is not a store path", p)
		}
	}
	res, err := command.Run(ctx, append([]string{"nix-store", "--store", storeURL, "--check-validity", "--print-invalid"}, paths...), c.Env)
	if err != nil {
		return nil, fmt.Errorf("ask %s which paths it holds: %w: %s", redactURL(storeURL), err, command.Tail(res.Stderr, 1024))
	}
	asked := make(map[string]bool, len(paths))
	for _, p := range paths {
		asked[p] = true
	}
	for _, p := range strings.Fields(string(res.Stdout)) {
		delete(asked, p)
	}
	valid := slices.DeleteFunc(slices.Clone(paths), func(p string) bool { return !asked[p] })
	out := map[string]PathInfo{}
	if len(valid) == 0 {
		return out, nil
	}
	raw, err := c.run(ctx, append([]string{"path-info", "--store", storeURL, "--json", "--sigs"}, valid...)...)
	if err != nil {
		return nil, fmt.Errorf("ask %s about its paths: %w", redactURL(storeURL), err)
	}
	infos, err := ParsePathInfoJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("parse nix path-info of %s: %w", redactURL(storeURL), err)
	}
	for _, i := range infos {
		if asked[i.Path] {
			out[i.Path] = i
		}
	}
	return out, nil
}

// ParsePathInfoJSON parses `nix path-info --json`: a list of objects with
// a "path" (Nix before 2.19), or an object keyed by path whose values
// are null for a path the store lacks (2.19 and later).
func ParsePathInfoJSON(raw []byte) ([]PathInfo, error) {
	var list []PathInfo
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var byPath map[string]*PathInfo
	if err := json.Unmarshal(raw, &byPath); err != nil {
		return nil, fmt.Errorf("neither a list nor an object of path infos: %w", err)
	}
	for p, i := range byPath {
		if i == nil {
			continue
		}
		i.Path = p
		list = append(list, *i)
	}
	return list, nil
}

// redactURL drops the query of a store URL (keys and host keys) for
// messages.
func redactURL(u string) string {
	base, _, _ := strings.Cut(u, "?")
	return base
}

// ClosureInfos returns what the local store says of the closures of
// paths (`nix path-info -r --json --sigs`), sorted so that every path
// comes after its references.
func (c *CLI) ClosureInfos(ctx context.Context, paths []string) ([]PathInfo, error) {
	for _, p := range paths {
		if !IsStorePath(p) {
			return nil, fmt.Errorf("%q is not a store path", p)
		}
	}
	raw, err := c.run(ctx, append([]string{"path-info", "-r", "--json", "--sigs", "--"}, paths...)...)
	if err != nil {
		return nil, fmt.Errorf("list the closure of %d paths: %w", len(paths), err)
	}
	infos, err := ParsePathInfoJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("parse nix path-info: %w", err)
	}
	return ReferencesFirst(infos), nil
}

// ReferencesFirst orders infos so that each path comes after the paths it
// refers to (among infos), ties by path.
func ReferencesFirst(infos []PathInfo) []PathInfo {
	slices.SortFunc(infos, func(a, b PathInfo) int { return strings.Compare(a.Path, b.Path) })
	byPath := make(map[string]int, len(infos))
	for i, p := range infos {
		byPath[p.Path] = i
	}
	out := make([]PathInfo, 0, len(infos))
	seen := make([]bool, len(infos))
	var visit func(i int)
	visit = func(i int) {
		seen[i] = true
		for _, r := range infos[i].References {
			if j, ok := byPath[r]; ok && !seen[j] {
				visit(j)
			}
		}
		out = append(out, infos[i])
	}
	for i := range infos {
		if !seen[i] {
			visit(i)
		}
	}
	return out
}

// Dump writes the NAR of a store path to w (`nix-store --dump`).
func (c *CLI) Dump(ctx context.Context, path string, w io.Writer) error {
	if !IsStorePath(path) {
		return fmt.Errorf("%q is not a store path", path)
	}
	stderr, err := command.Stream(ctx, []string{"nix-store", "--dump", path}, c.Env, w)
	if err != nil {
		return fmt.Errorf("%w: %s", err, command.Tail(stderr, 1024))
	}
	return nil
}

// Outputs returns the output paths of derivations (`nix-store -q
// --outputs`).
func (c *CLI) Outputs(ctx context.Context, drvs []string) ([]string, error) {
	for _, d := range drvs {
		if !IsStorePath(d) || !strings.HasSuffix(d, ".drv") {
			return nil, fmt.Errorf("%q is not a derivation", d)
		}
	}
	res, err := command.Run(ctx, append([]string{"nix-store", "-q", "--outputs", "--"}, drvs...), c.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, command.Tail(res.Stderr, 1024))
	}
	out := strings.Fields(string(res.Stdout))
	for _, p := range out {
		if !IsStorePath(p) {
			return nil, fmt.Errorf("nix-store -q --outputs printed %q", p)
		}
	}
	return out, nil
}

// PathInfos is RemotePathInfos of the host's own store.
func (c *CLI) PathInfos(ctx context.Context, paths []string) (map[string]PathInfo, error) {
	return c.RemotePathInfos(ctx, "auto", paths)
}
