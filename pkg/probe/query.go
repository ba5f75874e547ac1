package probe

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/nix"
)

const (
	// cmdQueryPathInfos is the serve protocol's batched path-info query.
	cmdQueryPathInfos = 2
	// maxPaths bounds the paths asked or answered in one query, and the
	// references of one path.
	maxPaths = 1 << 16
	// maxAnswer bounds the whole answer to one query, and maxPathLen a
	// store path in it.
	maxAnswer  = 64 << 20
	maxPathLen = 1024
)

// QueryPathInfos connects as Probe does and asks the store, in one round
// trip (the serve protocol's QueryPathInfos), what it holds of paths;
// those it lacks are not in the map. It speaks the ssh protocol (nix-store
// --serve) only.
func QueryPathInfos(ctx context.Context, t Target, paths []string) (map[string]nix.PathInfo, error) {
	if t.Protocol != nix.ProtocolSSH {
		return nil, fmt.Errorf("query path infos: protocol %s is not spoken here; only ssh", t.Protocol)
	}
	if len(paths) > maxPaths {
		return nil, fmt.Errorf("query path infos: %d paths, at most %d at once", len(paths), maxPaths)
	}
	for _, p := range paths {
		if !strings.HasPrefix(p, "/nix/store/") || len(p) > maxPathLen {
			return nil, fmt.Errorf("query path infos: %q is not a store path", p)
		}
	}
	out := map[string]nix.PathInfo{}
	t.after = func(w io.Writer, r io.Reader) error {
		req := words(cmdQueryPathInfos, uint64(len(paths)))
		for _, p := range paths {
			req = append(req, wireString(p)...)
		}
		if _, err := w.Write(req); err != nil {
			return fmt.Errorf("send QueryPathInfos: %w", err)
		}
		infos, err := readPathInfos(&wireReader{r: io.LimitReader(r, maxAnswer)}, paths)
		for _, i := range infos {
			out[i.Path] = i
		}
		return err
	}
	if _, err := Probe(ctx, t); err != nil {
		return nil, err
	}
	return out, nil
}

// readPathInfos reads QueryPathInfos' answer: for each path the store
// holds, its path, deriver, references, download and NAR sizes, NAR hash,
// content address and signatures (the download size and content address
// are dropped); then an empty string. Only paths that were asked are
// accepted, each once.
func readPathInfos(r *wireReader, asked []string) ([]nix.PathInfo, error) {
	want := make(map[string]bool, len(asked))
	for _, p := range asked {
		want[p] = true
	}
	var infos []nix.PathInfo
	for {
		path := r.string("path", maxPathLen)
		if r.err != nil {
			return infos, r.err
		}
		if path == "" {
			return infos, nil
		}
		if !want[path] {
			return infos, fail(WrongProtocol, "QueryPathInfos answered about %q, which was not asked (or twice)", path)
		}
		delete(want, path)
		i := nix.PathInfo{Path: path}
		i.Deriver = r.string("deriver", maxPathLen)
		i.References = r.strings("references", maxPaths, maxPathLen)
		r.uint64("download size")
		i.NarSize = r.uint64("NAR size")
		i.NarHash = r.string("NAR hash", maxPathLen)
		r.string("content address", maxString)
		i.Signatures = r.strings("signatures", maxFields, maxPathLen)
		if r.err != nil {
			return infos, r.err // the half-read info is dropped
		}
		infos = append(infos, i)
	}
}

// strings reads a list of at most limit strings of at most size bytes.
func (w *wireReader) strings(what string, limit, size uint64) []string {
	n := w.uint64(what + " count")
	if n > limit {
		w.err = fail(WrongProtocol, "%d %s, more than %d", n, what, limit)
		return nil
	}
	out := make([]string, 0, min(n, 1024))
	for i := uint64(0); i < n && w.err == nil; i++ {
		out = append(out, w.string(what, size))
	}
	return out
}

// wireString encodes s in Nix's wire format.
func wireString(s string) []byte {
	b := words(uint64(len(s)))
	b = append(b, s...)
	return append(b, make([]byte, (8-len(s)%8)%8)...)
}
