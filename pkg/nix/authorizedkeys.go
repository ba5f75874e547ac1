package nix

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// authorizedKeysHeader starts the managed authorized_keys file.
const authorizedKeysHeader = "# Managed by nixpeer: the clients allowed to fetch from this host's Nix store.\n# Do not edit; nixpeer rewrites this file.\n"

// consumerTag starts the comment of a consumer's line.
const consumerTag = "nixpeer:"

// AuthorizedKey is a client key let in. For a consumer's key, Host and
// HostKey are the consumer's name and the SSH host key this host trusts
// for it, written as the line's comment ("nixpeer:NAME:BASE64" of the host
// key): trust in consumers outlives state.db (RememberedConsumers).
type AuthorizedKey struct {
	Key     ssh.PublicKey
	Host    string
	HostKey ssh.PublicKey
}

// RenderAuthorizedKeys renders the authorized_keys file of the nix-ssh user
// (/etc/ssh/authorized_keys.d/nix-ssh): a header comment, then one line per
// distinct entry, sorted,
//
//	command="nix-store --serve",restrict ssh-ed25519 AAAA... nixpeer:prod:AAAA...
//
// with "nix-daemon --stdio" for protocol "ssh-ng". restrict turns off
// forwarding, the TTY and user rc files. Only ed25519 keys are accepted.
func RenderAuthorizedKeys(protocol Protocol, keys []AuthorizedKey) ([]byte, error) {
	command, err := validateProtocol(protocol)
	if err != nil {
		return nil, fmt.Errorf("render authorized_keys: %w", err)
	}
	lines := make([]string, 0, len(keys))
	for i, k := range keys {
		line, err := sshkeys.AuthorizedLineOf(k.Key)
		if err != nil {
			return nil, fmt.Errorf("render authorized_keys: key %d: %w", i, err)
		}
		if k.Host != "" || k.HostKey != nil {
			if err := hostname.CheckLabel(k.Host); err != nil {
				return nil, fmt.Errorf("render authorized_keys: key %d: host: %w", i, err)
			}
			if k.HostKey == nil || k.HostKey.Type() != ssh.KeyAlgoED25519 {
				return nil, fmt.Errorf("render authorized_keys: key %d: the host key of %s is not an ed25519 key", i, k.Host)
			}
			line += " " + consumerTag + k.Host + ":" + base64.StdEncoding.EncodeToString(k.HostKey.Marshal())
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

// RememberedConsumers returns the consumers that an authorized_keys file
// written by RenderAuthorizedKeys lets in, by name, with their client and
// host keys; a line that does not parse ends the reading, a comment that
// is not one of nixpeer's is skipped, and of two lines for one name the
// first is kept.
func RememberedConsumers(content []byte) map[string]AuthorizedKey {
	out := map[string]AuthorizedKey{}
	for rest := content; len(rest) > 0; {
		client, comment, _, next, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			break
		}
		rest = next
		name, b64, ok := strings.Cut(strings.TrimPrefix(comment, consumerTag), ":")
		if !ok || !strings.HasPrefix(comment, consumerTag) || hostname.CheckLabel(name) != nil {
			continue
		}
		wire, err := base64.StdEncoding.Strict().DecodeString(b64)
		if err != nil {
			continue
		}
		k, err := ssh.ParsePublicKey(wire)
		if err != nil || k.Type() != ssh.KeyAlgoED25519 {
			continue
		}
		if _, seen := out[name]; !seen {
			out[name] = AuthorizedKey{Key: client, Host: name, HostKey: k}
		}
	}
	return out
}
