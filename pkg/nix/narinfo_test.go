package nix

import (
	"bytes"
	"crypto/sha256"
	"strings"
	"testing"
)

const testNarInfo = `StorePath: /nix/store/0c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk-hello-2.12
URL: nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.zst
Compression: zstd
FileHash: sha256:1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3
FileSize: 50264
NarHash: sha256:1bn7c3bf5z32cdgylhbp9nzhh6ydib5ngsm6mdhsvf233g0nh1ac
NarSize: 226488
References: 0c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk-hello-2.12 9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.38-77
Deriver: 7vz6b2qsv5qkr4x1bmcx5pihf9d2gwvs-hello-2.12.drv
`

func TestNarInfoRoundTripAndSign(t *testing.T) {
	n, err := ParseNarInfo([]byte(testNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	if n.NarSize != 226488 || len(n.References) != 2 || HashPart(n.StorePath) != "0c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk" {
		t.Fatalf("parsed %+v", n)
	}
	sk, pk, err := GenerateCacheKey("cache.example.com-1")
	if err != nil {
		t.Fatal(err)
	}
	if !n.AddSig(sk) || n.AddSig(sk) {
		t.Fatal("AddSig added the signature not once")
	}
	again, err := ParseNarInfo(n.Render())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again.Render(), n.Render()) {
		t.Fatalf("round trip changed it:\n%s\n%s", n.Render(), again.Render())
	}
	// The signature is over the fingerprint with full reference paths,
	// as Nix checks it.
	fp := Fingerprint(n.StorePath, n.NarHash, n.NarSize, []string{
		"/nix/store/9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.38-77", "/nix/store/0c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk-hello-2.12"})
	if !pk.Verify(fp, again.Sigs[0]) {
		t.Fatalf("signature %s does not verify over %s", again.Sigs[0], fp)
	}
}

func TestNarInfoOf(t *testing.T) {
	sum := sha256.Sum256([]byte("nar"))
	p := PathInfo{Path: "/nix/store/0c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk-hello-2.12", NarHash: "sha256-" + "QmFzZTY0QmFzZTY0QmFzZTY0QmFzZTY0QmFzZTY0QmE=", NarSize: 5,
		References: []string{"/nix/store/9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.38-77"}}
	n, err := NarInfoOf(p, "nar/abc.nar.zst", "zstd", SHA256Text(sum), 3)
	if err != nil {
		t.Fatal(err)
	}
	if n.References[0] != "9df65igwjmf2wbw0gbrrgair6piqjgmi-glibc-2.38-77" || !strings.HasPrefix(n.NarHash, "sha256:") || len(n.NarHash) != len("sha256:")+52 {
		t.Fatalf("NarInfoOf = %+v", n)
	}
	if n.Fingerprint() != Fingerprint(p.Path, p.NarHash, p.NarSize, p.References) {
		t.Fatalf("fingerprints differ: %s", n.Fingerprint())
	}
}

func TestParseNarInfoRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"unknown field":  testNarInfo + "Evil: x\n",
		"twice":          testNarInfo + "NarSize: 1\n",
		"bad path":       strings.Replace(testNarInfo, "/nix/store/0c6h", "/tmp/store/0c6h", 1),
		"traversing URL": strings.Replace(testNarInfo, "URL: nar/", "URL: ../", 1),
		"bad hash":       strings.Replace(testNarInfo, "NarHash: sha256:1bn7", "NarHash: md5:1bn7", 1),
		"bad sig":        testNarInfo + "Sig: k:notbase64\n",
		"no line":        testNarInfo + "junk\n",
		"missing field":  strings.Replace(testNarInfo, "FileSize: 50264\n", "", 1),
		"bad reference":  strings.Replace(testNarInfo, "References: 0c6h", "References: ../0c6h", 1),
	} {
		if _, err := ParseNarInfo([]byte(in)); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	// Both hashes bad: the error names the first, every time.
	n, err := ParseNarInfo([]byte(testNarInfo))
	if err != nil {
		t.Fatal(err)
	}
	n.FileHash, n.NarHash = "md5:x", "md5:y"
	for range 20 {
		if err := n.Validate(); err == nil || !strings.Contains(err.Error(), "FileHash") {
			t.Fatalf("both hashes bad: %v", err)
		}
	}
}

func FuzzParseNarInfo(f *testing.F) {
	f.Add([]byte(testNarInfo))
	f.Add([]byte("StorePath: x\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := ParseNarInfo(data)
		if err != nil {
			return
		}
		again, err := ParseNarInfo(n.Render())
		if err != nil {
			t.Fatalf("a parsed narinfo renders to one that does not parse: %v\n%s", err, n.Render())
		}
		if !bytes.Equal(again.Render(), n.Render()) {
			t.Fatalf("not stable:\n%s\n%s", n.Render(), again.Render())
		}
		if bytes.ContainsAny(n.Render(), "\r\x00") {
			t.Fatal("control characters in a rendered narinfo")
		}
	})
}

func TestReferencesFirst(t *testing.T) {
	p := func(name string, refs ...string) PathInfo { return PathInfo{Path: name, References: refs} }
	infos := []PathInfo{p("d", "c", "b", "d"), p("a"), p("c", "a", "x"), p("b", "a")}
	got := ReferencesFirst(infos)
	pos := map[string]int{}
	for i, g := range got {
		pos[g.Path] = i
	}
	if len(got) != 4 {
		t.Fatalf("got %d paths", len(got))
	}
	for _, g := range got {
		for _, r := range g.References {
			if j, ok := pos[r]; ok && r != g.Path && j > pos[g.Path] {
				t.Errorf("%s comes before its reference %s: %v", g.Path, r, got)
			}
		}
	}
}
