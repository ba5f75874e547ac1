package nix

// Protocol is the Nix remote store protocol a serving host is reached by.
// It is the one type of it: the desired-state file, the facts peers
// exchange, the probe and the Nix files all use it.
type Protocol string

const (
	// ProtocolSSH is Nix's ssh:// store (the default).
	ProtocolSSH Protocol = "ssh"
	// ProtocolSSHNG is Nix's ssh-ng:// store.
	ProtocolSSHNG Protocol = "ssh-ng"
)

// Command is what sshd runs for a client of a store served with p
// (nix.sshServe's forced command), or "" for an unknown protocol.
func (p Protocol) Command() string {
	switch p {
	case ProtocolSSH:
		return "nix-store --serve"
	case ProtocolSSHNG:
		return "nix-daemon --stdio"
	}
	return ""
}
