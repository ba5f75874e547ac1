// Package peer is the agent's peer port: a small SSH server that tells
// other agents this host's public facts (its SSH host keys, its client
// key, whether it is ready, what it serves and to whom), and the client
// that fetches or watches those facts from a peer.
//
// The server authenticates with the host's own SSH host key, so the key a
// client pins for the peer port is the very key production later puts in
// known_hosts. Clients need no credentials: everything the server says is
// public. Every document is validated strictly on both ends, because its
// values end up in known_hosts, authorized_keys and nix.conf.
//
// The protocol is an SSH "session" channel with an exec request of
// "facts" (one JSON document and a newline, then exit status 0) or
// "watch" (the current document at once, again whenever it changes, and
// a keepalive line "{}" every Keepalive). Over the connection of its
// watch, a client may also "turn" (wait for a turn to probe this host's
// sshd) and "tell" (send its own host's facts, the same way a watch gets
// them: a consumer tells the host it fetches from whom to let in, and
// needs no watch of its own from it). Nothing else is accepted.
package peer
