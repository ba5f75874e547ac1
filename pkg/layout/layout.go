// Package layout says where on a host the agent reads and writes, optionally
// under a root directory (like nixos-install --root), so tests, the demo and
// image builders can run the agent without touching the machine.
package layout

import "path/filepath"

// Defaults without --root.
const (
	DefaultStateDir = "/var/lib/nixpeer"
	DefaultSocket   = "/run/nixpeer/agent.sock"
)

// Layout holds every path the agent uses on its host.
type Layout struct {
	Root     string
	StateDir string
	Socket   string
	// Database is the bbolt file of observed state.
	Database string
	// KeysDir holds the agent's private keys (0700).
	KeysDir string
	// ClientKey is the SSH key this host uses to fetch from its peers.
	ClientKey string
	// HostKey is the host's own sshd key, its identity towards peers.
	HostKey string
	// KnownHosts is root's known_hosts, where a managed block lives.
	KnownHosts string
	// SSHConfig is root's ssh client configuration.
	SSHConfig string
	// NixConfDir is /etc/nix: what NIX_CONF_DIR must be for Nix to read
	// the host's settings.
	NixConfDir string
	// NixConf is /etc/nix/nix.conf.
	NixConf string
	// NixpeerConf is the settings file /etc/nix/nix.conf includes on a
	// plain Nix install.
	NixpeerConf string
	// AuthorizedKeysDir is /etc/ssh/authorized_keys.d (plain Nix).
	AuthorizedKeysDir string
	// StateNixConf is the settings file nixpeer's NixOS module includes.
	StateNixConf string
	// StateAuthorizedKeysDir is where nixpeer's NixOS module makes sshd
	// look for authorized keys.
	StateAuthorizedKeysDir string
	// CachesDir holds each cache's credentials (NAME.credentials, put
	// there by the operator) and the post-build hook.
	CachesDir string
}

// CacheCredentials is the file of the credentials for the cache name.
func (l Layout) CacheCredentials(name string) string {
	return filepath.Join(l.CachesDir, name+".credentials")
}

// In returns path p of the host, placed under the root.
func (l Layout) In(p string) string {
	if l.Root == "" || l.Root == "/" {
		return p
	}
	return filepath.Join(l.Root, p)
}

// New lays out the paths under root ("" or "/" for the machine itself).
// stateDir and socket, when given, are used as they are.
func New(root, stateDir, socket string) Layout {
	in := Layout{Root: root}.In
	if stateDir == "" {
		stateDir = in(DefaultStateDir)
	}
	if socket == "" {
		socket = in(DefaultSocket)
	}
	return Layout{
		Root:                   root,
		StateDir:               stateDir,
		Socket:                 socket,
		Database:               filepath.Join(stateDir, "state.db"),
		KeysDir:                filepath.Join(stateDir, "keys"),
		ClientKey:              filepath.Join(stateDir, "keys", "ssh_client_ed25519"),
		HostKey:                in("/etc/ssh/ssh_host_ed25519_key"),
		KnownHosts:             in("/root/.ssh/known_hosts"),
		SSHConfig:              in("/root/.ssh/config"),
		NixConfDir:             in("/etc/nix"),
		NixConf:                in("/etc/nix/nix.conf"),
		NixpeerConf:            in("/etc/nix/nixpeer.conf"),
		AuthorizedKeysDir:      in("/etc/ssh/authorized_keys.d"),
		StateNixConf:           filepath.Join(stateDir, "nix.conf"),
		CachesDir:              filepath.Join(stateDir, "caches"),
		StateAuthorizedKeysDir: filepath.Join(stateDir, "authorized_keys.d"),
	}
}
