package nix

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// ModuleSettings are what the managed NixOS module (/etc/nixos/nixpeer.nix)
// declares for one host: its Settings, and for a serving host Serve,
// Protocol and ServeKeys, for a fetching host KnownHosts. A host may be
// both.
type ModuleSettings struct {
	Settings
	// Serve turns on nix.sshServe.
	Serve bool
	// Protocol is nix.sshServe.protocol, "ssh" or "ssh-ng"; required when
	// Serve is set, and must be empty otherwise.
	Protocol Protocol
	// ServeKeys are the ssh keys of the clients allowed to fetch
	// (nix.sshServe.keys); only with Serve.
	ServeKeys []ssh.PublicKey
	// KnownHosts become programs.ssh.knownHosts entries.
	KnownHosts []KnownHost
}

// KnownHost is one programs.ssh.knownHosts entry.
type KnownHost struct {
	// Name is the attribute name, [A-Za-z0-9][A-Za-z0-9._-]*.
	Name string
	// HostNames are host names or addresses, or [HOST]:PORT
	// (hostname.ParseWithPort).
	HostNames []string
	// PublicKey is the host's ed25519 key, or with CertAuthority the key
	// of a CA whose host certificates are trusted for HostNames.
	PublicKey     ssh.PublicKey
	CertAuthority bool
}

// moduleHeader starts the managed module.
const moduleHeader = `# Managed by nixpeer: it rewrites this file whenever the fleet changes.
# Import it once from configuration.nix (imports = [ ./nixpeer.nix ];) and do
# not edit it. Nothing here is forced: NixOS merges these lists with your own
# values and with the defaults (cache.nixos.org stays).
`

// RenderModule renders the managed NixOS module:
//
//	{ ... }:
//	{
//	  nix.sshServe.enable = true;
//	  nix.sshServe.keys = [ ... ];
//	  nix.sshServe.protocol = "ssh";
//	  nix.settings.secret-key-files = [ ... ];
//	  nix.settings.substituters = [ ... ];
//	  nix.settings.trusted-public-keys = [ ... ];
//	  nix.settings.fallback = true;
//	  programs.ssh.knownHosts."NAME" = { hostNames = [ ... ]; publicKey = "..."; };
//	}
//
// with only the lines that have something to say (an empty list, a false
// Fallback or Serve write nothing, so they never conflict with the user's
// own definitions). Every value is validated first and refused when it does
// not match its format; every string is then written with NixString. One
// value per line; the output is the same for the same settings.
func RenderModule(m ModuleSettings) ([]byte, error) {
	body, err := moduleBody(m)
	if err != nil {
		return nil, fmt.Errorf("render NixOS module: %w", err)
	}
	return []byte(moduleHeader + "{ ... }:\n{\n" + body + "}\n"), nil
}

// moduleBody validates m and renders the attribute definitions.
func moduleBody(m ModuleSettings) (string, error) {
	var b strings.Builder
	if m.Serve {
		if _, err := validateProtocol(m.Protocol); err != nil {
			return "", fmt.Errorf("sshServe: %w", err)
		}
		keys, err := keyLines(m.ServeKeys)
		if err != nil {
			return "", fmt.Errorf("sshServe keys: %w", err)
		}
		b.WriteString("  nix.sshServe.enable = true;\n")
		writeNixList(&b, "  ", "nix.sshServe.keys", keys, true)
		fmt.Fprintf(&b, "  nix.sshServe.protocol = %s;\n", NixString(string(m.Protocol)))
	} else if m.Protocol != "" || len(m.ServeKeys) > 0 {
		return "", errors.New("sshServe protocol or keys are set but Serve is not")
	}

	if err := m.Settings.Validate(); err != nil {
		return "", err
	}
	writeNixList(&b, "  ", "nix.settings.secret-key-files", sortedUnique(m.SecretKeyFiles), false)
	writeNixList(&b, "  ", "nix.settings.substituters", dedup(m.Substituters), false)
	writeNixList(&b, "  ", "nix.settings.trusted-public-keys", sortedUnique(m.TrustedPublicKeys), false)

	if m.Fallback {
		b.WriteString("  nix.settings.fallback = true;\n")
	}
	if m.NoNegativeCache {
		b.WriteString("  nix.settings.narinfo-cache-negative-ttl = 0;\n")
	}
	if m.PostBuildHook != "" {
		fmt.Fprintf(&b, "  nix.settings.post-build-hook = %s;\n", NixString(m.PostBuildHook))
	}

	hosts := slices.Clone(m.KnownHosts)
	slices.SortFunc(hosts, func(a, c KnownHost) int { return strings.Compare(a.Name, c.Name) })
	for i, h := range hosts {
		if i > 0 && hosts[i-1].Name == h.Name {
			return "", fmt.Errorf("known host %q appears twice", h.Name)
		}
		if err := writeKnownHost(&b, h); err != nil {
			return "", err
		}
	}
	return b.String(), nil
}

// writeKnownHost validates and renders one programs.ssh.knownHosts entry.
func writeKnownHost(b *strings.Builder, h KnownHost) error {
	if err := ValidateKeyName(h.Name); err != nil {
		return fmt.Errorf("known host name %q: %w", h.Name, err)
	}
	if len(h.HostNames) == 0 {
		return fmt.Errorf("known host %s has no host names", h.Name)
	}
	for _, n := range h.HostNames {
		if _, _, err := hostname.ParseWithPort(n); err != nil {
			return fmt.Errorf("known host %s: %w", h.Name, err)
		}
	}
	key, err := sshkeys.AuthorizedLineOf(h.PublicKey)
	if err != nil {
		return fmt.Errorf("known host %s: %w", h.Name, err)
	}
	fmt.Fprintf(b, "  programs.ssh.knownHosts.%s = {\n", NixString(h.Name))
	writeNixList(b, "    ", "hostNames", sortedUnique(h.HostNames), true)
	fmt.Fprintf(b, "    publicKey = %s;\n", NixString(key))
	if h.CertAuthority {
		b.WriteString("    certAuthority = true;\n")
	}
	b.WriteString("  };\n")
	return nil
}

// keyLines validates ssh keys and returns their sorted, distinct lines.
//
// Each line starts with "restrict": nix.sshServe's Match block leaves
// stream-local forwarding on, which would hand a client the daemon's
// socket; restrict turns every forwarding, the TTY and rc files off (the
// forced command is sshServe's ForceCommand).
func keyLines(keys []ssh.PublicKey) ([]string, error) {
	lines := make([]string, 0, len(keys))
	for i, k := range keys {
		line, err := sshkeys.AuthorizedLineOf(k)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		lines = append(lines, "restrict "+line)
	}
	return sortedUnique(lines), nil
}

// writeNixList writes `NAME = [ ... ];` with one string per line. An empty
// list is written as `[ ]` when always is set, and not at all otherwise.
func writeNixList(b *strings.Builder, indent, name string, values []string, always bool) {
	if len(values) == 0 {
		if always {
			fmt.Fprintf(b, "%s%s = [ ];\n", indent, name)
		}
		return
	}
	fmt.Fprintf(b, "%s%s = [\n", indent, name)
	for _, v := range values {
		fmt.Fprintf(b, "%s  %s\n", indent, NixString(v))
	}
	fmt.Fprintf(b, "%s];\n", indent)
}
