package nix

import (
	"bytes"
	"fmt"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// authorizedKeysHeader starts the managed authorized_keys file.
const authorizedKeysHeader = "# Managed by nixpeer: the clients allowed to fetch from this host's Nix store.\n# Do not edit; nixpeer rewrites this file.\n"

// RenderAuthorizedKeys renders the authorized_keys file of the nix-ssh user
// (/etc/ssh/authorized_keys.d/nix-ssh): a header comment, then one line per
// distinct key, sorted,
//
//	command="nix-store --serve",restrict ssh-ed25519 AAAA...
//
// with "nix-daemon --stdio" for protocol "ssh-ng". restrict turns off
// forwarding, the TTY and user rc files. Only ed25519 keys are accepted.
func RenderAuthorizedKeys(protocol Protocol, keys []ssh.PublicKey) ([]byte, error) {
	command, err := validateProtocol(protocol)
	if err != nil {
		return nil, fmt.Errorf("render authorized_keys: %w", err)
	}
	lines := make([]string, 0, len(keys))
	for i, k := range keys {
		line, err := sshkeys.AuthorizedLineOf(k)
		if err != nil {
			return nil, fmt.Errorf("render authorized_keys: key %d: %w", i, err)
		}
		lines = append(lines, line)
	}
	var b bytes.Buffer
	b.WriteString(authorizedKeysHeader)
	for _, line := range sortedUnique(lines) {
		fmt.Fprintf(&b, "command=%q,restrict %s\n", command, line)
	}
	return b.Bytes(), nil
}
