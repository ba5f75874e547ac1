package sshkeys

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func edSigner(t *testing.T) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// certFor makes a certificate of key by ca, edited by edit.
func certFor(t *testing.T, ca ssh.Signer, key ssh.PublicKey, edit func(*ssh.Certificate)) *ssh.Certificate {
	t.Helper()
	c := &ssh.Certificate{Key: key, CertType: ssh.HostCert, KeyId: "stage", ValidPrincipals: []string{"stage", "127.0.0.2"},
		ValidAfter: uint64(time.Now().Add(-time.Hour).Unix()), ValidBefore: uint64(time.Now().Add(time.Hour).Unix())}
	if edit != nil {
		edit(c)
	}
	if err := c.SignCert(rand.Reader, ca); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCertifiedKey: a host certificate of a listed CA, valid now, for the
// peer's name or address certifies its key; anything else is refused,
// saying why.
func TestCertifiedKey(t *testing.T) {
	ca, other, host := edSigner(t), edSigner(t), edSigner(t)
	cas := []ssh.PublicKey{other.PublicKey(), ca.PublicKey()}
	c, err := CertifiedKey(certFor(t, ca, host.PublicKey(), nil), cas, "127.0.0.2")
	if err != nil || string(c.Key.Marshal()) != string(host.PublicKey().Marshal()) {
		t.Fatalf("for 127.0.0.2: %v, %v; want the certificate of the host key", c, err)
	}
	// The name in the file is no principal: Nix's ssh checks the address.
	nameOnly := certFor(t, ca, host.PublicKey(), func(c *ssh.Certificate) { c.ValidPrincipals = []string{"stage"} })
	if _, err := CertifiedKey(nameOnly, cas, "127.0.0.2"); err == nil {
		t.Fatal("a certificate for the name alone holds for the address")
	}
	mixed := certFor(t, ca, host.PublicKey(), func(c *ssh.Certificate) { c.ValidPrincipals = []string{"stage.example.com"} })
	if _, err := CertifiedKey(mixed, cas, "Stage.Example.COM"); err != nil {
		t.Fatalf("an address in another case: %v", err)
	}
	for name, c := range map[string]struct {
		offered ssh.PublicKey
		want    string
	}{
		"a plain key":   {host.PublicKey(), "plain host key"},
		"another CA":    {certFor(t, edSigner(t), host.PublicKey(), nil), "not one of hostCAs"},
		"expired":       {certFor(t, ca, host.PublicKey(), func(c *ssh.Certificate) { c.ValidBefore = uint64(time.Now().Add(-time.Minute).Unix()) }), "does not hold"},
		"not yet valid": {certFor(t, ca, host.PublicKey(), func(c *ssh.Certificate) { c.ValidAfter = uint64(time.Now().Add(time.Hour).Unix()) }), "does not hold"},
		"another host":  {certFor(t, ca, host.PublicKey(), func(c *ssh.Certificate) { c.ValidPrincipals = []string{"prod", "127.0.0.3"} }), "does not hold"},
		"a user cert":   {certFor(t, ca, host.PublicKey(), func(c *ssh.Certificate) { c.CertType = ssh.UserCert }), "user certificate"},
	} {
		if _, err := CertifiedKey(c.offered, cas, "127.0.0.2"); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v; want a refusal containing %q", name, err, c.want)
		}
	}
}

func TestReadHostCert(t *testing.T) {
	ca, host := edSigner(t), edSigner(t)
	path := filepath.Join(t.TempDir(), "ssh_host_ed25519_key-cert.pub")
	if c, err := ReadHostCert(path, host.PublicKey()); c != nil || err != nil {
		t.Fatalf("missing file: %v, %v; want nothing", c, err)
	}
	write := func(k ssh.PublicKey) {
		if err := os.WriteFile(path, ssh.MarshalAuthorizedKey(k), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(certFor(t, ca, host.PublicKey(), nil))
	if c, err := ReadHostCert(path, host.PublicKey()); c == nil || err != nil || c.KeyId != "stage" {
		t.Fatalf("good certificate: %v, %v", c, err)
	}
	if _, err := ReadHostCert(path, edSigner(t).PublicKey()); err == nil || !strings.Contains(err.Error(), "another key") {
		t.Fatalf("certificate of another key: %v", err)
	}
	write(host.PublicKey())
	if _, err := ReadHostCert(path, host.PublicKey()); err == nil || !strings.Contains(err.Error(), "plain key") {
		t.Fatalf("a plain key: %v", err)
	}
}
