package nix

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// NarInfo is what a binary cache says of one store path: the file
// HASH.narinfo (HASH the path's hash part) beside the NAR it points to.
type NarInfo struct {
	StorePath   string
	URL         string
	Compression string
	// FileHash and NarHash are sha256:NIX32 hashes of the file as stored
	// and of the NAR itself.
	FileHash string
	FileSize uint64
	NarHash  string
	NarSize  uint64
	// References are base names of store paths, sorted.
	References []string
	Sigs       []string
}

// MaxNarInfoSize bounds the narinfo files this package reads.
const MaxNarInfoSize = 1 << 20

var (
	storePathRE = regexp.MustCompile(`^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]{1,211}$`)
	baseNameRE  = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]{1,211}$`)
	// NarURLRE matches the URLs of NARs nixpeer reads and writes.
	NarURLRE = regexp.MustCompile(`^nar/[0-9a-z]{1,128}\.nar(\.[a-z0-9]{1,8})?$`)
	sigRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,254}:[A-Za-z0-9+/]{86}==$`)
)

// Compressions are the values of Compression nixpeer writes and reads.
var Compressions = []string{"none", "xz", "zstd", "bzip2"}

// HashPart returns the hash part of a store path (or of its base name).
func HashPart(storePath string) string {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	h, _, _ := strings.Cut(base, "-")
	return h
}

// IsStorePath says whether p is a path directly in /nix/store.
func IsStorePath(p string) bool { return storePathRE.MatchString(p) }

// SHA256Text writes a sha256 digest as sha256:NIX32.
func SHA256Text(digest [32]byte) string { return "sha256:" + nix32Encode(digest[:]) }

// NarInfoOf is the narinfo of a path of the local store, stored as a file
// of fileSize bytes with hash fileHash, compressed with compression, at
// url. The signatures are the path's own.
func NarInfoOf(p PathInfo, url, compression, fileHash string, fileSize uint64) (NarInfo, error) {
	narHash, err := NormalizeNarHash(p.NarHash)
	if err != nil {
		return NarInfo{}, err
	}
	n := NarInfo{StorePath: p.Path, URL: url, Compression: compression, FileHash: fileHash, FileSize: fileSize,
		NarHash: narHash, NarSize: p.NarSize, Sigs: slices.Clone(p.Signatures)}
	for _, r := range p.References {
		n.References = append(n.References, r[strings.LastIndexByte(r, '/')+1:])
	}
	slices.Sort(n.References)
	return n, n.Validate()
}

// Fingerprint is the text the path's signatures sign.
func (n NarInfo) Fingerprint() string {
	refs := make([]string, len(n.References))
	for i, r := range n.References {
		refs[i] = "/nix/store/" + r
	}
	return Fingerprint(n.StorePath, n.NarHash, n.NarSize, refs)
}

// AddSig adds the signature of k, unless the narinfo has it already; it
// reports whether it added it.
func (n *NarInfo) AddSig(k SecretKey) bool {
	sig := k.Sign(n.Fingerprint())
	if slices.Contains(n.Sigs, sig) {
		return false
	}
	n.Sigs = append(n.Sigs, sig)
	return true
}

// Validate checks every field against its format.
func (n NarInfo) Validate() error {
	switch {
	case !storePathRE.MatchString(n.StorePath):
		return fmt.Errorf("narinfo: StorePath %q is not a store path", n.StorePath)
	case !NarURLRE.MatchString(n.URL):
		return fmt.Errorf("narinfo: URL %q is not nar/NAME.nar[.EXT]", n.URL)
	case !slices.Contains(Compressions, n.Compression):
		return fmt.Errorf("narinfo: Compression %q is not one of %s", n.Compression, strings.Join(Compressions, ", "))
	case n.NarSize == 0:
		return fmt.Errorf("narinfo: NarSize is 0")
	}
	for _, f := range [...]struct{ what, h string }{{"FileHash", n.FileHash}, {"NarHash", n.NarHash}} {
		if norm, err := NormalizeNarHash(f.h); err != nil || norm != f.h {
			return fmt.Errorf("narinfo: %s %q is not sha256:NIX32", f.what, f.h)
		}
	}
	for _, r := range n.References {
		if !baseNameRE.MatchString(r) {
			return fmt.Errorf("narinfo: reference %q is not a store path's base name", r)
		}
	}
	for _, s := range n.Sigs {
		if !sigRE.MatchString(s) {
			return fmt.Errorf("narinfo: Sig %q is not NAME:BASE64 of an ed25519 signature", s)
		}
	}
	return nil
}

// Render writes the narinfo as Nix reads it.
func (n NarInfo) Render() []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "StorePath: %s\nURL: %s\nCompression: %s\nFileHash: %s\nFileSize: %d\nNarHash: %s\nNarSize: %d\nReferences: %s\n",
		n.StorePath, n.URL, n.Compression, n.FileHash, n.FileSize, n.NarHash, n.NarSize, strings.Join(n.References, " "))
	for _, s := range n.Sigs {
		fmt.Fprintf(&b, "Sig: %s\n", s)
	}
	return b.Bytes()
}

// ParseNarInfo reads a narinfo, strictly: every field nixpeer writes,
// once (Sig any number of times), valid; Deriver, CA and System are
// accepted and dropped, any other field is an error.
func ParseNarInfo(data []byte) (NarInfo, error) {
	if len(data) > MaxNarInfoSize {
		return NarInfo{}, fmt.Errorf("narinfo: %d bytes; the limit is %d", len(data), MaxNarInfoSize)
	}
	var n NarInfo
	texts := map[string]*string{"StorePath": &n.StorePath, "URL": &n.URL, "Compression": &n.Compression, "FileHash": &n.FileHash, "NarHash": &n.NarHash}
	sizes := map[string]*uint64{"FileSize": &n.FileSize, "NarSize": &n.NarSize}
	seen := map[string]bool{}
	for i, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		key, value, ok := strings.Cut(line, ": ")
		if !ok {
			return NarInfo{}, fmt.Errorf("narinfo: line %d is not \"Key: value\"", i+1)
		}
		if key != "Sig" && seen[key] {
			return NarInfo{}, fmt.Errorf("narinfo: line %d: %s given twice", i+1, key)
		}
		seen[key] = true
		var err error
		switch text, size := texts[key], sizes[key]; {
		case text != nil:
			*text = value
		case size != nil:
			*size, err = strconv.ParseUint(value, 10, 64)
		case key == "References":
			n.References = strings.Fields(value)
		case key == "Sig":
			n.Sigs = append(n.Sigs, value)
		case key == "Deriver", key == "CA", key == "System":
		default:
			return NarInfo{}, fmt.Errorf("narinfo: line %d: unknown field %q", i+1, key)
		}
		if err != nil {
			return NarInfo{}, fmt.Errorf("narinfo: line %d: %s: %w", i+1, key, err)
		}
	}
	for _, k := range []string{"StorePath", "URL", "Compression", "FileHash", "FileSize", "NarHash", "NarSize", "References"} {
		if !seen[k] {
			return NarInfo{}, fmt.Errorf("narinfo: no %s", k)
		}
	}
	slices.Sort(n.References)
	return n, n.Validate()
}
