package sshkeys

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
)

// TestHandover: a proof holds for the host, address and next key it was
// made for, signed by the current key, and for nothing else.
func TestHandover(t *testing.T) {
	cur, next, other := edSigner(t), edSigner(t), edSigner(t)
	proof, err := HandoverProof(cur, "stage", "127.0.0.2", next.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	if err := VerifyHandover(cur.PublicKey(), "stage", "127.0.0.2", next.PublicKey(), proof); err != nil {
		t.Fatalf("a good proof: %v", err)
	}
	for _, c := range []struct {
		what          string
		trusted       ssh.PublicKey
		name, address string
		next          ssh.PublicKey
		proof         string
	}{
		{"another signer", other.PublicKey(), "stage", "127.0.0.2", next.PublicKey(), proof},
		{"another host", cur.PublicKey(), "prod", "127.0.0.2", next.PublicKey(), proof},
		{"another address", cur.PublicKey(), "stage", "127.0.0.3", next.PublicKey(), proof},
		{"another next key", cur.PublicKey(), "stage", "127.0.0.2", other.PublicKey(), proof},
		{"not base64", cur.PublicKey(), "stage", "127.0.0.2", next.PublicKey(), "!!"},
		{"garbage", cur.PublicKey(), "stage", "127.0.0.2", next.PublicKey(), "AAAA"},
		{"too long", cur.PublicKey(), "stage", "127.0.0.2", next.PublicKey(), string(make([]byte, 600))},
	} {
		if err := VerifyHandover(c.trusted, c.name, c.address, c.next, c.proof); err == nil {
			t.Errorf("%s: accepted", c.what)
		}
	}
}

func FuzzVerifyHandover(f *testing.F) {
	f.Add("AAAAC3NzaC1lZDI1NTE5AAAAQA==")
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, _ := ssh.NewSignerFromKey(priv)
	f.Fuzz(func(t *testing.T, proof string) {
		if VerifyHandover(s.PublicKey(), "a", "b", s.PublicKey(), proof) == nil {
			t.Fatalf("a proof nobody signed verified: %q", proof)
		}
	})
}

func TestPromoteNext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ssh_host_ed25519_key")
	old, _, err := EnsureHostKey(path, "root@stage")
	if err != nil {
		t.Fatal(err)
	}
	next, _, err := EnsureHostKey(path+NextSuffix, "root@stage")
	if err != nil {
		t.Fatal(err)
	}
	if err := PromoteNext(path); err != nil {
		t.Fatal(err)
	}
	k, in, err := Inspect("host key", path)
	if err != nil || k.Fingerprint() != next.Fingerprint() || !in.PubWrong {
		t.Fatalf("host key %s, %+v, %v; want the next one, its public file to make", k.Fingerprint(), in, err)
	}
	if r, err := Load(path + RetiredSuffix); err != nil || r.Fingerprint() != old.Fingerprint() {
		t.Fatalf("retired key %v: %v", r.Fingerprint(), err)
	}
	if st, err := os.Stat(path + RetiredSuffix); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("retired key mode: %v", err)
	}
	if err := PromoteNext(path); err == nil {
		t.Fatal("promoted with no next key")
	}
}
