package nix

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// maxPathLen bounds the paths accepted in rendered files.
const maxPathLen = 1024

// ValidatePath checks that p is an absolute, clean path made only of
// A-Z a-z 0-9 . _ + / - (so it needs no quoting in nix.conf, an ssh
// command line, a URL or a Nix string), and is not the root itself.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return errors.New("path is empty")
	case len(p) > maxPathLen:
		return fmt.Errorf("path is %d bytes long, longer than %d", len(p), maxPathLen)
	case p[0] != '/':
		return fmt.Errorf("path %q is not absolute", p)
	case p == "/":
		return errors.New("path is the root directory")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; !isAlnum(c) && !strings.ContainsRune("._+/-", rune(c)) {
			return fmt.Errorf("path %q has a character other than A-Z a-z 0-9 . _ + / - at offset %d", p, i)
		}
	}
	if path.Clean(p) != p {
		return fmt.Errorf("path %q is not clean (want %q)", p, path.Clean(p))
	}
	return nil
}

// validateTrustedKey checks a trusted-public-keys entry: a valid cache
// public key in canonical form.
func validateTrustedKey(s string) error {
	k, err := ParsePublicKey(s)
	if err != nil {
		return fmt.Errorf("trusted public key %q: %w", s, err)
	}
	if k.String() != s {
		return fmt.Errorf("trusted public key %q is not in canonical form NAME:BASE64", s)
	}
	return nil
}

// validateProtocol checks an sshServe protocol and returns the command sshd
// forces for it.
func validateProtocol(protocol Protocol) (string, error) {
	if c := protocol.Command(); c != "" {
		return c, nil
	}
	return "", fmt.Errorf("protocol %q is neither %q nor %q", protocol, ProtocolSSH, ProtocolSSHNG)
}
