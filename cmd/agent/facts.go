package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// keyFacts is one public key of the host.
type keyFacts struct {
	Path        string `json:"path"`
	PublicKey   string `json:"publicKey,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Error       string `json:"error,omitempty"`
}

// hostFacts is what `nixpeer facts` prints: public material only.
type hostFacts struct {
	ClientKey keyFacts `json:"clientKey"`
	HostKey   keyFacts `json:"hostKey"`
	// CacheKey is the binary-cache public key of a serving host.
	CacheKey *keyFacts `json:"cacheKey,omitempty"`
	// NextCacheKey is the key a rotation under way replaces it with.
	NextCacheKey *keyFacts `json:"nextCacheKey,omitempty"`
	// HostCertificate is the host key's certificate (trust: ca), when
	// there is one beside it.
	HostCertificate *certFacts `json:"hostCertificate,omitempty"`
}

// certFacts is what a host certificate says.
type certFacts struct {
	Path       string    `json:"path"`
	KeyID      string    `json:"keyId,omitempty"`
	Principals []string  `json:"principals,omitempty"`
	ValidUntil time.Time `json:"validUntil,omitzero"`
	// CA is the fingerprint of the key that signed it.
	CA    string `json:"ca,omitempty"`
	Error string `json:"error,omitempty"`
}

// readHostCert reads the certificate beside the host key, if any.
func readHostCert(hostKey string) *certFacts {
	path := hostKey + "-cert.pub"
	key, err := sshkeys.Load(hostKey)
	if err != nil {
		return nil
	}
	cert, err := sshkeys.ReadHostCert(path, key.Public)
	switch {
	case err != nil:
		return &certFacts{Path: path, Error: err.Error()}
	case cert == nil:
		return nil
	}
	f := &certFacts{Path: path, KeyID: cert.KeyId, Principals: cert.ValidPrincipals, CA: ssh.FingerprintSHA256(cert.SignatureKey)}
	if cert.ValidBefore != ssh.CertTimeInfinity {
		f.ValidUntil = time.Unix(int64(cert.ValidBefore), 0).UTC()
	}
	return f
}

func cmdFacts(args []string, stdout io.Writer) error {
	fs, hf := newHostFlagSet("facts", false)
	asJSON := fs.Bool("json", false, "print the facts as a JSON object")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	l := hf.layout()
	facts := hostFacts{ClientKey: readKey(l.ClientKey), HostKey: readKey(l.HostKey), CacheKey: readCacheKey(l.KeysDir),
		NextCacheKey: readCacheKey(filepath.Join(l.KeysDir, nix.NextKeyDir)), HostCertificate: readHostCert(l.HostKey)}
	if *asJSON {
		return printJSON(stdout, facts)
	}
	for _, k := range []struct {
		what string
		f    keyFacts
	}{{"SSH client key (fetches from peers)", facts.ClientKey}, {"SSH host key (pin this as hostKey)", facts.HostKey}} {
		fmt.Fprintf(stdout, "%s: %s\n", k.what, k.f.Path)
		if k.f.Error != "" {
			fmt.Fprintf(stdout, "  not readable: %s\n", k.f.Error)
			continue
		}
		fmt.Fprintf(stdout, "  %s\n  %s\n", k.f.PublicKey, k.f.Fingerprint)
	}
	if c := facts.HostCertificate; c != nil {
		fmt.Fprintf(stdout, "SSH host certificate: %s\n", c.Path)
		if c.Error != "" {
			fmt.Fprintf(stdout, "  not usable: %s\n", c.Error)
		} else {
			until := "forever"
			if !c.ValidUntil.IsZero() {
				until = "until " + c.ValidUntil.Format(time.RFC3339)
			}
			fmt.Fprintf(stdout, "  %q for %s, signed by %s, valid %s\n", c.KeyID, strings.Join(c.Principals, ", "), c.CA, until)
		}
	}
	if c := facts.CacheKey; c != nil {
		fmt.Fprintf(stdout, "binary-cache public key (pin this as serve.publicKey): %s\n  %s\n", c.Path, c.PublicKey)
	}
	if c := facts.NextCacheKey; c != nil {
		fmt.Fprintf(stdout, "next binary-cache public key (a rotation is under way: nixpeer status): %s\n  %s\n", c.Path, c.PublicKey)
	}
	if facts.ClientKey.Error != "" || facts.HostKey.Error != "" {
		return &exitError{code: 1}
	}
	return nil
}

// readCacheKey reads the binary-cache public key, if the host has one.
func readCacheKey(dir string) *keyFacts {
	path := filepath.Join(dir, nix.PublicKeyFileName)
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return &keyFacts{Path: path, Error: err.Error()}
	}
	k, err := nix.ParsePublicKey(strings.TrimSpace(string(raw)))
	if err != nil {
		return &keyFacts{Path: path, Error: err.Error()}
	}
	return &keyFacts{Path: path, PublicKey: k.String()}
}

func readKey(path string) keyFacts {
	k, err := sshkeys.Load(path)
	if err != nil {
		return keyFacts{Path: path, Error: err.Error()}
	}
	return keyFacts{Path: path, PublicKey: k.AuthorizedLine(), Fingerprint: k.Fingerprint()}
}
