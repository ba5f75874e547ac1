package knownhosts

import (
	"bytes"
	"crypto/ed25519"
	crand "crypto/rand"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/managedblock"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

// Fixed keys of types nixpeer refuses, so that expected output can be
// written down.
const (
	ecdsaKeyText = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBOPkVtbGvGtnzk4Ewo/EA320ujCSZr38rbT9+qVGXlYI5gUld+lNRoz7ukMUDSQkjMqLpwC39Mol8lNppRxPAbY="
	rsaKeyText   = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDH9QhX4QnUDw7MLhXFkfcaetCpBAFOOq93DM6N1kg5KjGDGwHRUQPi3WlHQ1PiKYlwvIbBmwaE96RmNAlzrdsD7yRKyOwph32oAZN5V0J8xU3aWL6OXGDbQDZulEzbqft1IRYbq6UzErieY2PipNOb+lFgQrEb/paL+Ptx2LBCRYqus0Kr1HVyZvSTo2hNk4D/baM6FrqoYRev5963Lf0G/vim9NFpmvfS5GeKEeX5M20O5oKLCO42KDUzdvjaj9Abx0UIekVX+lkjc3W8OKkH5DBQ+4wI32BUuQLfy5DnF7cm0Su/scsnVEbPnsjHm+Hy7a2wd5LGHpUbYeSQBjZx"
)

// testKeys returns a few ed25519 public keys from fixed seeds.
func testKeys(t testing.TB) []ssh.PublicKey {
	t.Helper()
	var keys []ssh.PublicKey
	for i := range 5 {
		priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(i + 1)}, ed25519.SeedSize))
		pub, err := ssh.NewPublicKey(priv.Public())
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, pub)
	}
	return keys
}

// parseKey parses a key of any type from its authorized_keys text.
func parseKey(t testing.TB, s string) ssh.PublicKey {
	t.Helper()
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func text(k ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k)), "\n")
}

func lines(es []Entry) []string {
	var out []string
	for _, e := range es {
		out = append(out, e.line())
	}
	return out
}

func TestRender(t *testing.T) {
	k := testKeys(t)
	ed0, ed1, ed3 := text(k[0]), text(k[1]), text(k[3])
	block := func(ls ...string) string {
		return managedblock.BeginLine + "\n" + strings.Join(ls, "\n") + "\n" + managedblock.EndLine + "\n"
	}
	user := "# my hosts\r\n" +
		"|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-ed25519 AAAAC3Nz\n" +
		"@cert-authority *.example.com " + ecdsaKeyText + "\n" +
		"@revoked * " + ed1 + "\n" +
		"\n" +
		"old.example.com " + ed0 + "   \t\n" +
		"caf\xe9\xff bytes\r\n" +
		"last line without newline"
	one := []Entry{{Host: "127.0.0.2", Port: 22, Key: k[0]}}
	tests := []struct {
		name     string
		existing string
		entries  []Entry
		want     string
	}{
		{
			name:    "empty file gets the block",
			entries: one,
			want:    block("127.0.0.2 " + ed0),
		},
		{
			name:     "block goes on top, everything else untouched",
			existing: user,
			entries:  one,
			want:     block("127.0.0.2 "+ed0) + user,
		},
		{
			name:     "no entries, no block: unchanged",
			existing: user,
			want:     user,
		},
		{
			name:     "existing block replaced in place",
			existing: "a\n" + block("old "+ed1) + "b\r\nc",
			entries:  one,
			want:     "a\n" + block("127.0.0.2 "+ed0) + "b\r\nc",
		},
		{
			name:     "no entries removes the block",
			existing: "a\n" + block("old "+ed1) + "b",
			want:     "a\nb",
		},
		{
			name:     "block at the end without final newline",
			existing: "a\n" + strings.TrimSuffix(block("old "+ed1), "\n"),
			entries:  one,
			want:     "a\n" + block("127.0.0.2 "+ed0),
		},
		{
			name:     "markers with CRLF and blanks are recognised",
			existing: "a\r\n  " + managedblock.BeginLine + " \r\nold " + ed1 + "\r\n" + managedblock.EndLine + "\t\r\nb\r\n",
			entries:  one,
			want:     "a\r\n" + block("127.0.0.2 "+ed0) + "b\r\n",
		},
		{
			name: "sorted, deduplicated, canonical hosts and ports",
			entries: []Entry{
				{Host: "Stage.Example.COM", Port: 2222, Key: k[0]},
				{Host: "stage.example.com", Port: 2222, Key: k[0]},
				{Host: "2001:DB8:0:0::1", Port: 22, Key: k[1]},
				{Host: "::1", Port: 2222, Key: k[0]},
				{Host: "127.0.0.2", Port: 22, Key: k[3]},
				{Host: "127.0.0.2", Port: 22, Key: k[0]},
			},
			want: block(
				"127.0.0.2 "+ed0,
				"127.0.0.2 "+ed3,
				"2001:db8::1 "+ed1,
				"[::1]:2222 "+ed0,
				"[stage.example.com]:2222 "+ed0,
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.existing)
			got, err := Render(in, tt.entries)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Render (-want +got):\n%s", diff)
			}
			if string(in) != tt.existing {
				t.Errorf("Render modified its input")
			}
			again, err := Render(got, tt.entries)
			if err != nil || !bytes.Equal(again, got) {
				t.Errorf("Render is not idempotent: err=%v\n%q\n%q", err, got, again)
			}
		})
	}
}

func TestRenderMalformedBlock(t *testing.T) {
	k := testKeys(t)
	entries := []Entry{{Host: "a.example", Port: 22, Key: k[0]}}
	tests := []struct {
		name, existing, wantErr string
	}{
		{"BEGIN without END", "x\n" + managedblock.BeginLine + "\ny\n", "line 2: BEGIN marker of the nixpeer managed block has no END"},
		{"END without BEGIN", "x\ny\n" + managedblock.EndLine + "\n", "line 3: END marker of the nixpeer managed block without a BEGIN"},
		{"two BEGINs", managedblock.BeginLine + "\nx\n" + managedblock.BeginLine + "\n" + managedblock.EndLine + "\n", "line 3: second BEGIN marker"},
		{"two blocks", managedblock.BeginLine + "\n" + managedblock.EndLine + "\nx\n" + managedblock.BeginLine + "\n" + managedblock.EndLine + "\n", "line 4: a second nixpeer managed block; the first begins at line 1"},
		{"edited BEGIN marker", "# BEGIN nixpeer managed block (edited)\n", "line 1: BEGIN marker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, es := range [][]Entry{entries, nil} {
				out, err := Render([]byte(tt.existing), es)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Render error = %v, want it to contain %q", err, tt.wantErr)
				}
				if out != nil {
					t.Errorf("Render returned output with an error")
				}
			}
			if _, err := Managed([]byte(tt.existing)); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Managed error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestRenderRejectsBadEntries(t *testing.T) {
	k := testKeys(t)
	cert := &ssh.Certificate{Key: k[0], CertType: ssh.HostCert, ValidPrincipals: []string{"a.example"}}
	signer, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(make([]byte, 32)))
	if err != nil {
		t.Fatal(err)
	}
	if err := cert.SignCert(crand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		e    Entry
		want string
	}{
		{"empty host", Entry{Host: "", Port: 22, Key: k[0]}, `host "" is empty`},
		{"space", Entry{Host: "a b", Port: 22, Key: k[0]}, `host "a b" contains a space`},
		{"comma", Entry{Host: "a,b", Port: 22, Key: k[0]}, "contains ','"},
		{"newline", Entry{Host: "a\nb", Port: 22, Key: k[0]}, `contains '\n'`},
		{"trailing newline", Entry{Host: "a.example\n", Port: 22, Key: k[0]}, `contains '\n'`},
		{"wildcard", Entry{Host: "*.example.com", Port: 22, Key: k[0]}, "contains '*'"},
		{"negation", Entry{Host: "!a", Port: 22, Key: k[0]}, "contains '!'"},
		{"hashed", Entry{Host: "|1|abc=|def=", Port: 22, Key: k[0]}, "contains '|'"},
		{"underscore", Entry{Host: "a_b.example", Port: 22, Key: k[0]}, "contains '_'"},
		{"empty label", Entry{Host: "a..example", Port: 22, Key: k[0]}, "empty label"},
		{"trailing dot", Entry{Host: "a.example.", Port: 22, Key: k[0]}, "remove the trailing dot"},
		{"leading hyphen", Entry{Host: "-a.example", Port: 22, Key: k[0]}, "starts or ends with '-'"},
		{"long label", Entry{Host: strings.Repeat("a", 64) + ".example", Port: 22, Key: k[0]}, "label of 64 characters"},
		{"long name", Entry{Host: strings.Repeat("a.", 127) + "ab", Port: 22, Key: k[0]}, "256 characters long; the limit is 253"},
		{"numeric tld", Entry{Host: "1.2.3", Port: 22, Key: k[0]}, "looks like an IPv4 address but is not one"},
		{"bad ipv4", Entry{Host: "1.2.3.256", Port: 22, Key: k[0]}, "looks like an IPv4 address but is not one"},
		{"bracketed ipv6", Entry{Host: "[::1]", Port: 22, Key: k[0]}, "without [ ]"},
		{"bracketed ipv6 with port", Entry{Host: "[::1]:2222", Port: 2222, Key: k[0]}, "without [ ]"},
		{"ipv4-mapped ipv6", Entry{Host: "::ffff:10.0.0.1", Port: 22, Key: k[0]}, "IPv4-mapped"},
		{"non-ASCII that lowercases to ASCII", Entry{Host: "\u212a.example", Port: 22, Key: k[0]}, "contains"},
		{"ipv6 zone", Entry{Host: "fe80::1%eth0", Port: 22, Key: k[0]}, "IPv6 zone"},
		{"port 0", Entry{Host: "a.example", Port: 0, Key: k[0]}, "port 0 is out of range"},
		{"port 65536", Entry{Host: "a.example", Port: 65536, Key: k[0]}, "port 65536 is out of range"},
		{"nil key", Entry{Host: "a.example", Port: 22}, "public key is missing"},
		{"ecdsa key", Entry{Host: "a.example", Port: 22, Key: parseKey(t, ecdsaKeyText)}, `has key type "ecdsa-sha2-nistp256"; want ssh-ed25519`},
		{"rsa key", Entry{Host: "a.example", Port: 22, Key: parseKey(t, rsaKeyText)}, `has key type "ssh-rsa"; want ssh-ed25519`},
		{"certificate", Entry{Host: "a.example", Port: 22, Key: cert}, "certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good := Entry{Host: "ok.example", Port: 22, Key: k[1]}
			out, err := Render([]byte("x\n"), []Entry{good, tt.e})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Render error = %v, want it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "entry 1") {
				t.Errorf("error %q does not say which entry", err)
			}
			if out != nil {
				t.Errorf("Render returned output with an error")
			}
		})
	}
}

func TestManaged(t *testing.T) {
	k := testKeys(t)
	ed0, ed1 := text(k[0]), text(k[1])
	got, err := Managed([]byte("a\n" + managedblock.BeginLine + "\r\n" +
		"[Stage.example.com]:2222 " + ed0 + "\r\n" +
		"[::1]:22 " + ed1 + "\n" +
		"10.0.0.1 " + ed0 + "\n" +
		managedblock.EndLine + "\nb"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"10.0.0.1 " + ed0, "::1 " + ed1, "[stage.example.com]:2222 " + ed0}
	if diff := cmp.Diff(want, lines(got)); diff != "" {
		t.Errorf("Managed (-want +got):\n%s", diff)
	}
	if got, err := Managed([]byte("no block\n")); got != nil || err != nil {
		t.Errorf("Managed without a block = %v, %v; want nil, nil", got, err)
	}
	for _, bad := range []string{
		"# a comment",
		"",
		"host " + ed0 + " comment",
		"*.example.com " + ed0,
		"[h.example]:0 " + ed0,
		"[h.example]:022 " + ed0,
		"[h.example] " + ed0,
		"h.example ssh-ed25519 AAAA",
		"h.example ssh-rsa " + strings.Fields(ed0)[1],
		"h.example " + ecdsaKeyText,
		"h.example " + rsaKeyText,
	} {
		_, err := Managed([]byte("x\n" + managedblock.BeginLine + "\n" + bad + "\n" + managedblock.EndLine + "\n"))
		if err == nil || !strings.Contains(err.Error(), "line 3") {
			t.Errorf("Managed(block holding %q) error = %v, want one naming line 3", bad, err)
		}
	}
}

// checkRender asserts the properties Render must have for any input.
func checkRender(t *testing.T, existing []byte, entries []Entry) {
	t.Helper()
	orig := bytes.Clone(existing)
	out, err := Render(existing, entries)
	if !bytes.Equal(existing, orig) {
		t.Fatalf("Render modified its input")
	}
	want, werr := normalize(entries)
	if werr != nil {
		if err == nil {
			t.Fatalf("Render accepted entries that normalize rejects: %v", werr)
		}
		return
	}
	// Conservative: existing holds no marker line if it lacks this text.
	noMarkers := !bytes.Contains(existing, []byte("nixpeer managed block"))
	if err != nil {
		if noMarkers {
			t.Fatalf("Render(%q) failed on a file without markers: %v", existing, err)
		}
		if _, merr := Managed(existing); merr == nil {
			t.Fatalf("Render failed (%v) but Managed did not", err)
		}
		return
	}
	if again, err := Render(out, entries); err != nil || !bytes.Equal(again, out) {
		t.Fatalf("Render not idempotent: err=%v\n%q\n%q", err, out, again)
	}
	got, err := Managed(out)
	if err != nil {
		t.Fatalf("Managed(Render(x, e)): %v\n%q", err, out)
	}
	if diff := cmp.Diff(lines(want), lines(got)); diff != "" {
		t.Fatalf("Managed(Render(x, e)) (-want +got):\n%s", diff)
	}
	for _, e := range got {
		if strings.ContainsAny(e.Host, " ,\t\r\n#[]*?!|") {
			t.Fatalf("host %q holds a separator or pattern character", e.Host)
		}
	}
	removed, err := Render(out, nil)
	if err != nil {
		t.Fatalf("Render(Render(x, e), nil): %v", err)
	}
	if noMarkers {
		blockOnly, err := Render(nil, entries)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, append(blockOnly, existing...)) {
			t.Fatalf("Render(x, e) is not block+x:\n%q", out)
		}
		if !bytes.Equal(removed, existing) {
			t.Fatalf("Render(Render(x, e), nil) = %q, want %q", removed, existing)
		}
		return
	}
	stripped, err := Render(existing, nil)
	if err != nil || !bytes.Equal(removed, stripped) {
		t.Fatalf("Render(Render(x, e), nil) = %q, want Render(x, nil) = %q (err %v)", removed, stripped, err)
	}
}

func TestRenderProperties(t *testing.T) {
	keys := testKeys(t)
	// Pieces of real-world known_hosts files that random files are made of.
	fragments := []string{
		"", "\n", "\r\n", " ", "\t", "#", "# comment\n", "host.example ", "ssh-ed25519 AAAA\n",
		"|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= ssh-rsa AAAA\n",
		"@cert-authority * ", "@revoked ", "[a]:2222,1.2.3.4 ", "\xff\xfe", "caf\xc3\xa9",
		"  \r\n", "no newline",
	}
	hosts := []string{"a.example", "B.example", "10.0.0.1", "::1", "2001:db8::1", "x", "xn--caf-dma.example"}
	r := rand.New(rand.NewPCG(1, 2))
	for range 1000 {
		var existing []byte
		for range r.IntN(12) {
			existing = append(existing, fragments[r.IntN(len(fragments))]...)
		}
		var entries []Entry
		for range r.IntN(6) {
			port := 22
			if r.IntN(2) == 0 {
				port = 1 + r.IntN(65535)
			}
			entries = append(entries, Entry{Host: hosts[r.IntN(len(hosts))], Port: port, Key: keys[r.IntN(len(keys))]})
		}
		checkRender(t, existing, entries)
		// And the same with a block already there.
		withBlock, err := Render(existing, entries[:len(entries)/2])
		if err != nil {
			t.Fatal(err)
		}
		checkRender(t, withBlock, entries)
	}
}

// FuzzRender feeds arbitrary file content and entries built from hosts
// (split at '|') and ports (two bytes per entry; 22 where missing).
func FuzzRender(f *testing.F) {
	keys := testKeys(f)
	f.Add([]byte(""), "127.0.0.2|stage.example.com", []byte{0, 22, 8, 174})
	f.Add([]byte("# c\r\nx y\n\xff"), "::1", []byte{0, 22})
	f.Add([]byte(managedblock.BeginLine+"\nold\n"+managedblock.EndLine+"\n"), "a.example", []byte{})
	f.Fuzz(func(t *testing.T, existing []byte, hosts string, ports []byte) {
		var entries []Entry
		if hosts != "" {
			for i, h := range strings.Split(hosts, "|") {
				if i == 8 {
					break
				}
				port := 22
				if 2*i+1 < len(ports) {
					port = int(ports[2*i])<<8 | int(ports[2*i+1])
				}
				entries = append(entries, Entry{Host: h, Port: port, Key: keys[(i+len(ports))%len(keys)]})
			}
		}
		checkRender(t, existing, entries)
	})
}

// sshKeygen returns the path of ssh-keygen; testenv.Require skips the test where it
// is missing, or fails it on CI, where it must be installed.
func sshKeygen(t *testing.T) string {
	t.Helper()
	testenv.Require(t, "ssh-keygen")
	p, err := testenv.LookPath("ssh-keygen")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSSHKeygenFindsManagedEntries(t *testing.T) {
	keygen := sshKeygen(t)
	k := testKeys(t)
	path := filepath.Join(t.TempDir(), "known_hosts")
	user := "# mine\n|1|F1E1KeoE/eEWhi10WpGv4OdiO6Y=|3988QV0VE8wmZL7suNrYQLITLCg= " + text(k[2]) + "\nother.example " + text(k[2]) + "\n"
	if err := os.WriteFile(path, []byte(user), 0o644); err != nil {
		t.Fatal(err)
	}
	entries := []Entry{
		{Host: "127.0.0.2", Port: 22, Key: k[0]},
		{Host: "Stage.Example.com", Port: 2222, Key: k[1]},
		{Host: "::1", Port: 2222, Key: k[3]},
		{Host: "2001:db8::5", Port: 22, Key: k[4]},
	}
	if err := renderTo(path, entries); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		query string
		key   ssh.PublicKey
	}{
		{"127.0.0.2", k[0]},
		{"[stage.example.com]:2222", k[1]},
		{"[::1]:2222", k[3]},
		{"2001:db8::5", k[4]},
		{"other.example", k[2]},
	} {
		out, err := exec.Command(keygen, "-F", c.query, "-f", path).CombinedOutput()
		if err != nil {
			t.Errorf("ssh-keygen -F %s: %v\n%s", c.query, err, out)
			continue
		}
		if !strings.Contains(string(out), " "+text(c.key)+"\n") {
			t.Errorf("ssh-keygen -F %s did not print the key:\n%s", c.query, out)
		}
	}
	// The port matters: stage on 22 is not in the file.
	if out, err := exec.Command(keygen, "-F", "stage.example.com", "-f", path).CombinedOutput(); err == nil {
		t.Errorf("ssh-keygen -F stage.example.com found an entry:\n%s", out)
	}
}

// FuzzManaged: whatever known_hosts holds (it is shared with people),
// reading the managed block never panics, and what it returns renders
// back to a block that reads the same.
func FuzzManaged(f *testing.F) {
	f.Add([]byte("# BEGIN nixpeer managed block: do not edit, the agent rewrites it\n127.0.0.2 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n# END nixpeer managed block\nmine\n"))
	f.Add([]byte("# BEGIN nixpeer managed block\n[::1]:2222 ssh-ed25519 AAAA\n"))
	f.Add([]byte("no block\n"))
	f.Fuzz(func(t *testing.T, existing []byte) {
		entries, err := Managed(existing)
		if err != nil {
			return
		}
		out, err := Render(nil, entries)
		if err != nil {
			t.Fatalf("Managed(%q) = %v, which does not render: %v", existing, entries, err)
		}
		again, err := Managed(out)
		if err != nil || len(again) != len(entries) {
			t.Fatalf("rendered block %q reads back as %v, %v; want %v", out, again, err, entries)
		}
	})
}

// renderTo renders the managed block into the file at path, as the agent's
// act step does with what Render returns.
func renderTo(path string, v []Entry) error {
	existing, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := Render(existing, v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}

// TestCertAuthorityEntries: a CA entry is written as ssh reads it, and
// read back.
func TestCertAuthorityEntries(t *testing.T) {
	k := testKeys(t)
	entries := []Entry{{Host: "127.0.0.2", Port: 2222, Key: k[0], CA: true}, {Host: "127.0.0.2", Port: 2222, Key: k[1]}}
	out, err := Render(nil, entries)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "\n@cert-authority [127.0.0.2]:2222 "+text(k[0])+"\n") {
		t.Fatalf("no @cert-authority line:\n%s", out)
	}
	got, err := Managed(out)
	if err != nil || len(got) != 2 || got[0].CA == got[1].CA {
		t.Fatalf("Managed = %+v, %v", got, err)
	}
}

// TestNextEntryIsMarked: the key a host hands over to is written with a
// comment that ssh ignores and Managed reads back, whatever order the
// keys sort in.
func TestNextEntryIsMarked(t *testing.T) {
	keys := testKeys(t)
	for i := range keys {
		cur, next := keys[i], keys[(i+1)%len(keys)] // either order of their bytes
		out, err := Render(nil, []Entry{{Host: "127.0.0.2", Port: 22, Key: cur}, {Host: "127.0.0.2", Port: 22, Key: next, Next: true}})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), " nixpeer-next\n") {
			t.Fatalf("no marker:\n%s", out)
		}
		got, err := Managed(out)
		if err != nil || len(got) != 2 {
			t.Fatalf("Managed: %v %v", got, err)
		}
		for _, e := range got {
			if isNext := bytes.Equal(e.Key.Marshal(), next.Marshal()); e.Next != isNext {
				t.Fatalf("entry %+v: Next %v, want %v", e, e.Next, isNext)
			}
		}
	}
}
