package sshkeys

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

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

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// snapshot is a file's bytes, mode and mtime.
type snapshot struct {
	data  string
	mode  fs.FileMode
	mtime time.Time
}

func snap(t *testing.T, path string) snapshot {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return snapshot{string(data), st.Mode().Perm(), st.ModTime()}
}

// age sets a file's mtime into the past, so that a rewrite shows without
// waiting for the clock.
func age(t *testing.T, paths ...string) {
	t.Helper()
	old := time.Unix(1_000_000, 0)
	for _, p := range paths {
		if err := os.Chtimes(p, old, old); err != nil {
			t.Fatal(err)
		}
	}
}

func assertMode(t *testing.T, path string, want fs.FileMode) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != want {
		t.Errorf("%s mode = %v, want %v", path, st.Mode().Perm(), want)
	}
}

func newKey(t *testing.T, dir string) (string, Key) {
	t.Helper()
	path := filepath.Join(dir, "id_ed25519")
	k, res, err := EnsureClientKey(path, "nixpeer@test")
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Created: true}) {
		t.Fatalf("Result = %+v, want Created only", res)
	}
	return path, k
}

func TestEnsureClientKeyCreates(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "nixpeer")
	path, k := newKey(t, dir)
	assertMode(t, dir, 0o700)
	assertMode(t, path, 0o600)
	assertMode(t, path+".pub", 0o644)
	pub, _ := os.ReadFile(path + ".pub")
	if want := k.AuthorizedLine() + " nixpeer@test\n"; string(pub) != want {
		t.Errorf(".pub = %q, want %q", pub, want)
	}
	if !strings.HasPrefix(k.AuthorizedLine(), "ssh-ed25519 AAAA") || strings.ContainsAny(k.AuthorizedLine(), "\n") {
		t.Errorf("AuthorizedLine = %q", k.AuthorizedLine())
	}
	priv, _ := os.ReadFile(path)
	if block, _ := pem.Decode(priv); block == nil || block.Type != "OPENSSH PRIVATE KEY" {
		t.Errorf("private key is not an OPENSSH PRIVATE KEY PEM block:\n%s", priv)
	}
	sig, err := k.Signer.Sign(rand.Reader, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Public.Verify([]byte("hello"), sig); err != nil {
		t.Errorf("signature does not verify: %v", err)
	}
	loaded, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.Fingerprint() != k.Fingerprint() || loaded.Signer == nil {
		t.Errorf("Load = %s (signer %v), want %s with a signer", loaded.Fingerprint(), loaded.Signer, k.Fingerprint())
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Errorf("directory holds %d entries, want the key and its .pub", len(ents))
	}
}

func TestEnsureClientKeyKeepsExisting(t *testing.T) {
	path, k := newKey(t, t.TempDir())
	age(t, path, path+".pub")
	before, beforePub := snap(t, path), snap(t, path+".pub")
	k2, res, err := EnsureClientKey(path, "nixpeer@test")
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{}) {
		t.Errorf("Result = %+v, want nothing changed", res)
	}
	if k2.Fingerprint() != k.Fingerprint() {
		t.Errorf("key changed from %s to %s", k.Fingerprint(), k2.Fingerprint())
	}
	if after := snap(t, path); after != before {
		t.Errorf("private key file changed: %+v -> %+v", before.mode, after.mode)
	}
	if after := snap(t, path+".pub"); after != beforePub {
		t.Errorf(".pub changed: %+v -> %+v", beforePub, after)
	}

	// Another comment asked for: the .pub, holding the right key, stays.
	if _, res, err := EnsureClientKey(path, "other@test"); err != nil || res != (Result{}) {
		t.Errorf("EnsureClientKey with another comment = %+v, %v; want nothing changed", res, err)
	}
}

func TestEnsureClientKeyFixesModes(t *testing.T) {
	path, k := newKey(t, t.TempDir())
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path+".pub", 0o600); err != nil {
		t.Fatal(err)
	}
	before := snap(t, path)
	k2, res, err := EnsureClientKey(path, "nixpeer@test")
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{ModeFixed: true, PubRewritten: true}) {
		t.Errorf("Result = %+v, want ModeFixed and PubRewritten", res)
	}
	assertMode(t, path, 0o600)
	assertMode(t, path+".pub", 0o644)
	if got, _ := os.ReadFile(path); string(got) != before.data || k2.Fingerprint() != k.Fingerprint() {
		t.Errorf("fixing the mode changed the key")
	}
}

func TestEnsureClientKeyRewritesPub(t *testing.T) {
	path, k := newKey(t, t.TempDir())
	_, other := newKey(t, t.TempDir())
	want := k.AuthorizedLine() + " nixpeer@test\n"
	for name, content := range map[string]*string{
		"missing":   nil,
		"other key": ptr(other.AuthorizedLine() + " nixpeer@test\n"),
		"garbage":   ptr("not a key\n"),
		"two keys":  ptr(want + want),
		"empty":     ptr(""),
	} {
		t.Run(name, func(t *testing.T) {
			os.Remove(path + ".pub")
			if content != nil {
				if err := os.WriteFile(path+".pub", []byte(*content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			_, res, err := EnsureClientKey(path, "nixpeer@test")
			if err != nil {
				t.Fatal(err)
			}
			if res != (Result{PubRewritten: true}) {
				t.Errorf("Result = %+v, want PubRewritten", res)
			}
			if got := snap(t, path+".pub"); got.data != want || got.mode != 0o644 {
				t.Errorf(".pub = %q mode %v, want %q mode 0644", got.data, got.mode, want)
			}
		})
	}
}

func ptr(s string) *string { return &s }

func pemOf(t *testing.T, key any) []byte {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(key, "c")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

func TestEnsureClientKeyRefusesBadFiles(t *testing.T) {
	realPath, _ := newKey(t, t.TempDir())
	real, err := os.ReadFile(realPath)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	encBlock, err := ssh.MarshalPrivateKeyWithPassphrase(edKey, "c", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(edKey)
	if err != nil {
		t.Fatal(err)
	}
	mismatched := ed25519.PrivateKey(bytes.Clone(edKey))
	mismatched[40] ^= 1

	tests := []struct {
		name, data, want string
	}{
		{"empty", "", "empty"},
		{"blank", " \n\n", "empty"},
		{"garbage", "hello world\n", "not a PEM-encoded private key"},
		{"truncated", string(real[:len(real)/2]), "truncated"},
		{"truncated at END", string(real[:len(real)-10]), "truncated"},
		{"corrupt body", strings.Replace(string(real), "b3BlbnNzaC1rZXktdjE", "b3BlbnNzaC1rZXktdjF", 1), "does not parse"},
		{"data after", string(real) + "junk\n", "data after"},
		{"data before", "junk\n" + string(real), "data before"},
		{"rsa", string(pemOf(t, rsaKey)), "RSA; want ed25519"},
		{"ecdsa", string(pemOf(t, ecKey)), "ECDSA; want ed25519"},
		{"encrypted", string(pem.EncodeToMemory(encBlock)), "encrypted with a passphrase"},
		{"pkcs8 ed25519", string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})), `PEM "PRIVATE KEY" block`},
		{"public half mismatch", string(pemOf(t, mismatched)), "does not match"},
	}
	for _, tt := range tests {
		for _, mode := range []fs.FileMode{0o600, 0o644} {
			t.Run(tt.name+"/"+mode.String(), func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "id_ed25519")
				if err := os.WriteFile(path, []byte(tt.data), mode); err != nil {
					t.Fatal(err)
				}
				age(t, path)
				before := snap(t, path)
				for _, ensure := range []func(string, string) (Key, Result, error){EnsureClientKey, EnsureHostKey} {
					_, res, err := ensure(path, "c")
					if err == nil {
						t.Fatal("no error")
					}
					msg := err.Error()
					for _, want := range []string{path, tt.want, "move it away"} {
						if !strings.Contains(msg, want) {
							t.Errorf("error %q does not contain %q", msg, want)
						}
					}
					if res != (Result{}) {
						t.Errorf("Result = %+v with an error", res)
					}
					assertNoSecret(t, msg, tt.data)
				}
				if _, err := Load(path); err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Load error = %v, want it to contain %q", err, tt.want)
				}
				if after := snap(t, path); after != before {
					t.Errorf("file changed: %+v -> %+v", before, after)
				}
				if _, err := os.Stat(path + ".pub"); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf(".pub was written next to a bad key (stat err %v)", err)
				}
			})
		}
	}
}

// assertNoSecret fails if msg holds any 12-byte run of a key file's body.
func assertNoSecret(t *testing.T, msg, file string) {
	t.Helper()
	var body strings.Builder
	for _, l := range strings.Split(file, "\n") {
		if !strings.HasPrefix(l, "-----") {
			body.WriteString(l)
		}
	}
	b := body.String()
	for i := 0; i+12 <= len(b); i++ {
		if strings.Contains(msg, b[i:i+12]) {
			t.Fatalf("error message holds part of the key file: %q", msg)
		}
	}
}

func TestEnsureRefusesNonRegularAndBadComment(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key")
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if _, _, err := EnsureClientKey(path, "c"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("EnsureClientKey(directory) error = %v", err)
	}
	for _, c := range []string{"a b", "a\nb", `a"b`, "ä"} {
		p := filepath.Join(dir, "k2")
		if _, _, err := EnsureClientKey(p, c); err == nil || !strings.Contains(err.Error(), "comment") {
			t.Errorf("EnsureClientKey(comment %q) error = %v", c, err)
		}
		if _, err := os.Stat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("a key was written with comment %q", c)
		}
	}
	// No comment at all is fine.
	p := filepath.Join(dir, "k3")
	k, _, err := EnsureClientKey(p, "")
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(p + ".pub"); string(got) != k.AuthorizedLine()+"\n" {
		t.Errorf(".pub without comment = %q", got)
	}
}

func TestEnsureHostKey(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "etc", "ssh")
	path := filepath.Join(dir, "ssh_host_ed25519_key")
	k, res, err := EnsureHostKey(path, "")
	if err != nil {
		t.Fatal(err)
	}
	if res != (Result{Created: true}) {
		t.Errorf("Result = %+v", res)
	}
	assertMode(t, dir, 0o755)
	assertMode(t, path, 0o600)
	assertMode(t, path+".pub", 0o644)
	if got, want := snap(t, path+".pub").data, k.AuthorizedLine()+" root@"+host+"\n"; got != want {
		t.Errorf(".pub = %q, want %q", got, want)
	}
	age(t, path, path+".pub")
	before := snap(t, path)
	k2, res, err := EnsureHostKey(path, "")
	if err != nil || res != (Result{}) || k2.Fingerprint() != k.Fingerprint() {
		t.Errorf("second EnsureHostKey = %s %+v %v", k2.Fingerprint(), res, err)
	}
	if snap(t, path) != before {
		t.Errorf("second EnsureHostKey touched the key")
	}
}

// TestHostKeyLikeSSHKeygenA compares a key made by EnsureHostKey with one
// made by `ssh-keygen -A`, and checks that the latter is kept as it is.
func TestHostKeyLikeSSHKeygenA(t *testing.T) {
	keygen := sshKeygen(t)
	theirRoot, ourRoot := t.TempDir(), t.TempDir()
	for _, r := range []string{theirRoot, ourRoot} {
		if err := os.MkdirAll(filepath.Join(r, "etc", "ssh"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	run(t, keygen, "-A", "-f", theirRoot)
	theirs := filepath.Join(theirRoot, "etc", "ssh", "ssh_host_ed25519_key")
	ours := filepath.Join(ourRoot, "etc", "ssh", "ssh_host_ed25519_key")
	if _, _, err := EnsureHostKey(ours, ""); err != nil {
		t.Fatal(err)
	}
	for _, suffix := range []string{"", ".pub"} {
		a, b := snap(t, theirs+suffix), snap(t, ours+suffix)
		if a.mode != b.mode {
			t.Errorf("mode of %s: ssh-keygen -A %v, ours %v", suffix, a.mode, b.mode)
		}
		if lineShape(a.data, suffix) != lineShape(b.data, suffix) {
			t.Errorf("shape of %s differs:\nssh-keygen -A: %q\nours:          %q", suffix, a.data, b.data)
		}
	}
	// The private key embeds the same comment.
	for _, p := range []string{theirs, ours} {
		if out := run(t, keygen, "-y", "-f", p); !strings.HasSuffix(strings.TrimSpace(out), strings.Fields(snap(t, theirs+".pub").data)[2]) {
			t.Errorf("ssh-keygen -y -f %s = %q, want the root@HOST comment", p, out)
		}
	}
	age(t, theirs, theirs+".pub")
	before, beforePub := snap(t, theirs), snap(t, theirs+".pub")
	if _, res, err := EnsureHostKey(theirs, ""); err != nil || res != (Result{}) {
		t.Errorf("EnsureHostKey(ssh-keygen -A key) = %+v, %v", res, err)
	}
	if snap(t, theirs) != before || snap(t, theirs+".pub") != beforePub {
		t.Errorf("EnsureHostKey changed the key ssh-keygen -A made")
	}
}

// lineShape describes a key file by its line lengths, or a .pub file by its
// key type and comment.
func lineShape(data, suffix string) string {
	if suffix == ".pub" {
		f := strings.Fields(data)
		return f[0] + " " + f[len(f)-1]
	}
	var b strings.Builder
	for _, l := range strings.SplitAfter(data, "\n") {
		fmt.Fprintf(&b, "%d,", len(l))
	}
	return b.String()
}

func TestSSHKeygenReadsOurKey(t *testing.T) {
	keygen := sshKeygen(t)
	path, k := newKey(t, t.TempDir())
	pub := strings.Fields(run(t, keygen, "-y", "-f", path))
	if len(pub) < 2 || pub[0]+" "+pub[1] != k.AuthorizedLine() {
		t.Errorf("ssh-keygen -y = %q, want %q", pub, k.AuthorizedLine())
	}
	for _, p := range []string{path + ".pub", path} {
		out := strings.Fields(run(t, keygen, "-l", "-f", p))
		if len(out) < 2 || out[1] != k.Fingerprint() {
			t.Errorf("ssh-keygen -l -f %s = %q, want fingerprint %s", p, out, k.Fingerprint())
		}
	}
}

func TestWeReadSSHKeygenKey(t *testing.T) {
	keygen := sshKeygen(t)
	path := filepath.Join(t.TempDir(), "K")
	run(t, keygen, "-q", "-t", "ed25519", "-N", "", "-C", "someone@elsewhere", "-f", path)
	age(t, path, path+".pub")
	before, beforePub := snap(t, path), snap(t, path+".pub")
	pubFields := strings.Fields(beforePub.data)
	fp := strings.Fields(run(t, keygen, "-l", "-f", path+".pub"))[1]

	k, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if k.AuthorizedLine() != pubFields[0]+" "+pubFields[1] || k.Fingerprint() != fp || k.Signer == nil {
		t.Errorf("Load = %q %s, want %q %s", k.AuthorizedLine(), k.Fingerprint(), beforePub.data, fp)
	}
	k2, res, err := EnsureClientKey(path, "nixpeer@test")
	if err != nil || res != (Result{}) || k2.Fingerprint() != fp {
		t.Errorf("EnsureClientKey(ssh-keygen key) = %s %+v %v", k2.Fingerprint(), res, err)
	}
	if snap(t, path) != before || snap(t, path+".pub") != beforePub {
		t.Errorf("EnsureClientKey changed the key ssh-keygen made")
	}
}

func TestLoad(t *testing.T) {
	path, k := newKey(t, t.TempDir())
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if got.Signer != nil || got.Fingerprint() != k.Fingerprint() {
		t.Errorf("Load(only .pub) = %s signer %v", got.Fingerprint(), got.Signer)
	}
	if err := os.WriteFile(path+".pub", []byte("ssh-rsa "+strings.Repeat("A", 8)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil || !strings.Contains(err.Error(), path+".pub") {
		t.Errorf("Load(bad .pub) error = %v", err)
	}
	os.Remove(path + ".pub")
	if _, err := Load(path); err == nil || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(nothing) error = %v, want ErrNotExist", err)
	}
	var zero Key
	if zero.AuthorizedLine() != "" || zero.Fingerprint() != "" {
		t.Errorf("zero Key methods returned text")
	}
}

func TestParsePublicLine(t *testing.T) {
	// A fixed key, so that every case is the same on every run.
	k, err := keyOf(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	line := k.AuthorizedLine()
	b64 := strings.Fields(line)[1]
	ecPub, _ := ssh.NewPublicKey(&mustEC(t).PublicKey)
	ecLine := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(ecPub)))
	tests := []struct {
		in, wantErr string
	}{
		{line, ""},
		{line + " root@host-1.example", ""},
		{line + " a+b_c.d-e@F", ""},
		{"", "is empty"},
		{"ssh-ed25519", "one field only"},
		{line + "\n", "line break"},
		{line + " c\nssh-ed25519 " + b64, "line break"},
		{line + "\r", "line break"},
		{" " + line, "starts with a space"},
		{line + " ", "ends with a space"},
		{strings.Replace(line, " ", "  ", 1), "two spaces in a row"},
		{line + "  c", "two spaces in a row"},
		{line + " c ", "comment with characters other than"},
		{strings.Replace(line, " ", "\t", 1), "one field only"},
		{line + " a b", "comment with characters other than"},
		{line + ` "quoted"`, "remove the comment"},
		{line + " caf\u00e9", "comment"},
		{ecLine, `has key type "ecdsa-sha2-nistp256"; want ssh-ed25519`},
		{"ssh-ed25519 " + strings.Fields(ecLine)[1], `holds a "ecdsa-sha2-nistp256" key although it says ssh-ed25519`},
		{"ssh-ed25519 " + b64 + "=", "canonical base64"},
		{"ssh-ed25519 " + b64[:len(b64)-1], "canonical base64"},
		{"ssh-ed25519 " + b64[:len(b64)-2] + "==", "canonical base64"},
		{"ssh-ed25519 " + b64[:len(b64)-4], "does not decode"},
		{"ssh-ed25519 " + b64 + "AAAA", "does not decode"},
		{"ssh-ed25519 " + b64[:20], "does not decode"},
		{"ssh-ed25519 AAAA", "does not decode"},
		{"SSH-ED25519 " + b64, "key type"},
		{line + " " + strings.Repeat("a", 1024), "1105 characters long"},
		{`command="x" ` + line, "key type"},
	}
	for _, tt := range tests {
		pub, err := ParsePublicLine(tt.in)
		if tt.wantErr == "" {
			if err != nil {
				t.Errorf("ParsePublicLine(%q): %v", tt.in, err)
			} else if diff := cmp.Diff(k.AuthorizedLine(), Key{Public: pub}.AuthorizedLine()); diff != "" {
				t.Errorf("ParsePublicLine(%q) (-want +got):\n%s", tt.in, diff)
			}
			continue
		}
		var le *LineError
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.As(err, &le) || !strings.HasSuffix(err.Error(), le.Reason) {
			t.Errorf("ParsePublicLine(%q) error = %v, want a *LineError containing %q", tt.in, err, tt.wantErr)
		}
		if err != nil && strings.Contains(err.Error(), b64[12:]) {
			t.Errorf("ParsePublicLine(%q) error quotes the key: %v", tt.in, err)
		}
	}
}

func TestParseAuthorizedLine(t *testing.T) {
	k, err := keyOf(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	line := k.AuthorizedLine()
	if pub, err := ParseAuthorizedLine(line); err != nil || !bytes.Equal(pub.Marshal(), k.Public.Marshal()) {
		t.Errorf("ParseAuthorizedLine(%q) = %v, %v", line, pub, err)
	}
	for _, tt := range []struct{ in, wantErr string }{
		{line + " root@host", `has a comment; want "ssh-ed25519 BASE64" only`},
		{line + " ", "ends with a space"},
		{"ssh-ed25519  " + strings.Fields(line)[1], "two spaces in a row"},
		{"ssh-rsa " + strings.Fields(line)[1], "key type"},
		{line + "\n", "line break"},
	} {
		pub, err := ParseAuthorizedLine(tt.in)
		var le *LineError
		if pub != nil || !errors.As(err, &le) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("ParseAuthorizedLine(%q) = %v, %v; want a *LineError containing %q", tt.in, pub, err, tt.wantErr)
		}
	}
}

func TestAuthorizedLineOf(t *testing.T) {
	k, err := keyOf(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := AuthorizedLineOf(k.Public); err != nil || got != k.AuthorizedLine() {
		t.Errorf("AuthorizedLineOf = %q, %v; want %q", got, err, k.AuthorizedLine())
	}
	ecPub, _ := ssh.NewPublicKey(&mustEC(t).PublicKey)
	cert := &ssh.Certificate{Key: k.Public, CertType: ssh.HostCert, ValidPrincipals: []string{"h"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, k.Signer); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		key     ssh.PublicKey
		wantErr string
	}{
		{"nil", nil, "public key is missing"},
		{"ecdsa", ecPub, `has key type "ecdsa-sha2-nistp256"; want ssh-ed25519`},
		{"certificate", cert, "is a certificate"},
		{"type that lies", lyingKey{ecPub}, `holds a "ecdsa-sha2-nistp256" key although it says ssh-ed25519`},
	} {
		got, err := AuthorizedLineOf(tt.key)
		var le *LineError
		if got != "" || !errors.As(err, &le) || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("AuthorizedLineOf(%s) = %q, %v; want a *LineError containing %q", tt.name, got, err, tt.wantErr)
		}
	}
}

// lyingKey says it is ed25519 whatever its wire form holds.
type lyingKey struct{ ssh.PublicKey }

func (lyingKey) Type() string { return ssh.KeyAlgoED25519 }

func mustEC(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzParsePublicLine checks ParsePublicLine, ParseAuthorizedLine and
// AuthorizedLineOf: they never panic, refuse with a *LineError, and accept
// only one-line keys that start with their canonical form, which
// AuthorizedLineOf gives back. The seed corpus is in
// testdata/fuzz/FuzzParsePublicLine.
func FuzzParsePublicLine(f *testing.F) {
	f.Add("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIqI4910CfGV/VLbLTy6XXLKZwm/HZQSG/N0iAG0D29c root@host")
	f.Fuzz(func(t *testing.T, s string) {
		pub, err := ParsePublicLine(s)
		bare, berr := ParseAuthorizedLine(s)
		if err != nil {
			var le *LineError
			if pub != nil || bare != nil || berr == nil || !errors.As(err, &le) || le.Reason == "" {
				t.Fatalf("ParsePublicLine(%q) = %v, %#v; ParseAuthorizedLine = %v", s, pub, err, bare)
			}
			return
		}
		if strings.ContainsAny(s, "\n\r\"'`\x00") || len(s) > maxLineLen {
			t.Fatalf("accepted %q, which holds a line break or quote, or is long", s)
		}
		canon := Key{Public: pub}.AuthorizedLine()
		if s != canon && !strings.HasPrefix(s, canon+" ") {
			t.Fatalf("accepted %q, which does not start with its canonical form %q", s, canon)
		}
		if (berr == nil) != (s == canon) || (berr == nil && !bytes.Equal(bare.Marshal(), pub.Marshal())) {
			t.Fatalf("ParseAuthorizedLine(%q) = %v, %v; canonical form %q", s, bare, berr, canon)
		}
		again, err := ParseAuthorizedLine(canon)
		if err != nil || !bytes.Equal(again.Marshal(), pub.Marshal()) {
			t.Fatalf("canonical form %q does not parse back: %v", canon, err)
		}
		if line, err := AuthorizedLineOf(pub); err != nil || line != canon {
			t.Fatalf("AuthorizedLineOf(key of %q) = %q, %v; want %q", s, line, err, canon)
		}
	})
}
