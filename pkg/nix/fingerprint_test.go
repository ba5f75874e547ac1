package nix

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"
)

func TestFingerprint(t *testing.T) {
	refs := []string{"/nix/store/bbbb-b", "/nix/store/aaaa-a"}
	got := Fingerprint("/nix/store/cccc-c", "sha256:0fzhhzz647wm25pggg9ykjyd4syrac7692hlcmfsa7ikp9drr4xq", 128, refs)
	want := "1;/nix/store/cccc-c;sha256:0fzhhzz647wm25pggg9ykjyd4syrac7692hlcmfsa7ikp9drr4xq;128;/nix/store/aaaa-a,/nix/store/bbbb-b"
	if got != want {
		t.Fatalf("Fingerprint = %q, want %q", got, want)
	}
	if refs[0] != "/nix/store/bbbb-b" {
		t.Fatal("Fingerprint sorted the caller's slice")
	}
	if got := Fingerprint("/nix/store/x", "md5:abc", 1, nil); got != "1;/nix/store/x;md5:abc;1;" {
		t.Fatalf("Fingerprint with an unknown hash and no refs = %q", got)
	}
}

// The pair below was printed by Nix 2.8 for one path: `nix path-info --json`
// gave the SRI form, `nix-store -q --hash` the nix32 form.
func TestNormalizeNarHash(t *testing.T) {
	const nix32 = "sha256:0fzhhzz647wm25pggg9ykjyd4syrac7692hlcmfsa7ikp9drr4xq"
	digest, _ := base64.StdEncoding.DecodeString("uJOcW7ozHqVdZRSKZA5T2WvSvJw+vfduEZUfYv6H8Ds=")
	for _, in := range []string{
		"sha256-uJOcW7ozHqVdZRSKZA5T2WvSvJw+vfduEZUfYv6H8Ds=",
		nix32,
		"sha256:" + hex.EncodeToString(digest),
		"sha256:" + base64.StdEncoding.EncodeToString(digest),
	} {
		got, err := NormalizeNarHash(in)
		if err != nil || got != nix32 {
			t.Errorf("NormalizeNarHash(%q) = %q, %v; want %q", in, got, err, nix32)
		}
	}
	for _, bad := range []string{"", "md5:x", "sha256-", "sha256-!!!!", "sha256:" + strings.Repeat("e", 52), "sha256:" + strings.Repeat("z", 52), "sha256:" + strings.Repeat("0", 51)} {
		if got, err := NormalizeNarHash(bad); err == nil {
			t.Errorf("NormalizeNarHash(%q) = %q, want an error", bad, got)
		}
	}
}

func TestNix32RoundTrip(t *testing.T) {
	for i := 0; i < 200; i++ {
		d := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		enc := nix32Encode(d[:])
		back, err := nix32Decode(enc, 32)
		if err != nil || !bytes.Equal(back, d[:]) {
			t.Fatalf("nix32 round trip of %x: %q -> %x, %v", d, enc, back, err)
		}
	}
}
