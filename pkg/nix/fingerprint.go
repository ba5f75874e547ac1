package nix

import (
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Fingerprint returns the text Nix signs for a store path:
// 1;STOREPATH;NARHASH;NARSIZE;REF1,REF2,... with the references (full store
// paths) sorted and comma-joined.
//
// Nix signs the NAR hash as sha256:NIX32. Tools print it in other encodings
// (`nix path-info --json` of Nix 2.8 prints the SRI form sha256-BASE64), so a
// sha256 hash in SRI, base16 or base64 form is converted to sha256:NIX32
// first (see NormalizeNarHash); anything else is used as given.
func Fingerprint(storePath, narHash string, narSize uint64, refs []string) string {
	if h, err := NormalizeNarHash(narHash); err == nil {
		narHash = h
	}
	sorted := slices.Clone(refs)
	slices.Sort(sorted)
	return "1;" + storePath + ";" + narHash + ";" + strconv.FormatUint(narSize, 10) + ";" + strings.Join(sorted, ",")
}

// NormalizeNarHash converts a sha256 hash given as sha256-BASE64 (SRI),
// sha256:BASE16, sha256:BASE64 or sha256:NIX32 into sha256:NIX32, the form
// in a path's fingerprint.
func NormalizeNarHash(h string) (string, error) {
	const size = 32
	var (
		digest []byte
		form   string
		err    error
	)
	rest, isColon := strings.CutPrefix(h, "sha256:")
	switch {
	case strings.HasPrefix(h, "sha256-"):
		form = "SRI form: invalid base64"
		digest, err = base64.StdEncoding.Strict().DecodeString(h[len("sha256-"):])
	case !isColon:
		return "", fmt.Errorf("NAR hash %q is not a sha256 hash", h)
	case len(rest) == nix32Len(size):
		form = "nix32 form"
		digest, err = nix32Decode(rest, size)
	case len(rest) == hex.EncodedLen(size):
		form = "base16 form"
		digest, err = hex.DecodeString(rest)
	case len(rest) == base64.StdEncoding.EncodedLen(size):
		form = "base64 form: invalid base64"
		digest, err = base64.StdEncoding.Strict().DecodeString(rest)
	default:
		return "", fmt.Errorf("NAR hash %q: %d characters after sha256: fit no encoding of a sha256 hash", h, len(rest))
	}
	if err != nil {
		return "", fmt.Errorf("NAR hash in %s: %w", form, err)
	}
	if len(digest) != size {
		return "", fmt.Errorf("NAR hash %q decodes to %d bytes, want %d", h, len(digest), size)
	}
	return "sha256:" + nix32Encode(digest), nil
}

// nix32Alphabet is Nix's base-32 alphabet (no e, o, u, t).
const nix32Alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

func nix32Len(n int) int { return (n*8-1)/5 + 1 }

// nix32Encode is Nix's base-32 encoding (libutil/hash.cc printHash32): the
// last 5-bit group of the hash comes first.
func nix32Encode(b []byte) string {
	n := nix32Len(len(b))
	out := make([]byte, 0, n)
	for i := n - 1; i >= 0; i-- {
		bit := i * 5
		j, k := bit/8, uint(bit%8)
		c := b[j] >> k
		if j+1 < len(b) {
			c |= b[j+1] << (8 - k)
		}
		out = append(out, nix32Alphabet[c&0x1f])
	}
	return string(out)
}

// nix32Decode reverses nix32Encode for a hash of size bytes.
func nix32Decode(s string, size int) ([]byte, error) {
	if len(s) != nix32Len(size) {
		return nil, fmt.Errorf("nix32 text is %d characters, want %d", len(s), nix32Len(size))
	}
	out := make([]byte, size)
	for n := 0; n < len(s); n++ {
		d := strings.IndexByte(nix32Alphabet, s[len(s)-n-1])
		if d < 0 {
			return nil, fmt.Errorf("invalid nix32 character at offset %d", len(s)-n-1)
		}
		bit := n * 5
		j, k := bit/8, uint(bit%8)
		out[j] |= byte(d) << k
		carry := byte(d) >> (8 - k)
		if j+1 < size {
			out[j+1] |= carry
		} else if carry != 0 {
			return nil, errors.New("nix32 text encodes more bits than the hash holds")
		}
	}
	return out, nil
}
