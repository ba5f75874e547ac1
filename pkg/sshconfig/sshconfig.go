// Package sshconfig keeps one agent-owned block at the top of root's ssh
// client configuration (/root/.ssh/config), so that Nix's ssh substituter,
// whose URL ssh://nix-ssh@ADDRESS cannot carry a port before Nix 2.31,
// reaches each peer on its sshd port and gives up quickly when a peer does
// not answer:
//
//	# BEGIN nixpeer managed block: do not edit, the agent rewrites it
//	Host 127.0.0.2
//	  Port 2222
//	  ConnectTimeout 5
//	  ConnectionAttempts 1
//	  ServerAliveInterval 5
//	  ServerAliveCountMax 2
//	Host stage.example.com
//	  ConnectTimeout 5
//	  ...
//	Host *
//	# END nixpeer managed block
//	...the user's own lines...
//
// ssh uses the first value it finds for each option, so the block is put
// at the top of a file that has none, where it wins for the peers. It ends
// with "Host *", so the user's lines after it, including global options
// written before any Host line of their own, keep applying to every host as
// they did before. Every byte outside the block is preserved exactly, and
// removing the block gives the original file back.
package sshconfig

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/managedblock"
)

// Peer is one host root's ssh reaches for a substituter.
type Peer struct {
	// Address is a DNS name or an IP address literal, without brackets or
	// zone, as hostname.Check accepts it (so in ASCII). It is written
	// exactly as given, because ssh matches a Host line against the host
	// as typed, case and all: give it in the very form the substituter
	// URL uses.
	Address string
	// Port is the sshd port, 1..65535. Port 22 writes no Port line, so an
	// option the user's own file sets for all hosts still applies.
	Port int
	// ConnectTimeout bounds how long ssh waits for the connection. It is
	// written in whole seconds, rounded up, and at least 1 second (so zero
	// also means 1 second); it must not be negative.
	ConnectTimeout time.Duration
}

// aliveLines bound every ssh connection to a peer, besides ConnectTimeout:
// one connection attempt (a peer that drops packets costs one timeout, not
// several), and a connection whose peer stops answering is dropped after
// 2 × 5 s without an answer to ssh's keepalive.
var aliveLines = []string{"  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2"}

// peer is a validated Peer in the form it is written.
type peer struct {
	address string
	port    int
	timeout int // seconds, >= 1
}

// Render returns existing with the managed block set to one stanza per
// peer. Peers are validated, sorted by address and deduplicated; two peers
// with the same address and different settings are an error, since ssh
// would apply only the first. Addresses are compared as given: names that
// differ only in case get a stanza each. The block is placed, removed or
// found malformed as managedblock.Render says (no peers remove it).
func Render(existing []byte, peers []Peer) ([]byte, error) {
	norm, err := normalize(peers)
	if err != nil {
		return nil, err
	}
	var lines []string
	for _, p := range norm {
		lines = append(lines, "Host "+p.address)
		if p.port != 22 {
			lines = append(lines, "  Port "+strconv.Itoa(p.port))
		}
		lines = append(lines, "  ConnectTimeout "+strconv.Itoa(p.timeout))
		lines = append(lines, aliveLines...)
	}
	if len(lines) > 0 {
		lines = append(lines, "Host *")
	}
	return managedblock.Render(existing, lines)
}

// normalize validates peers and returns them sorted by address, without
// duplicates.
func normalize(peers []Peer) ([]peer, error) {
	out := make([]peer, 0, len(peers))
	for i, p := range peers {
		n, err := p.normalized()
		if err != nil {
			return nil, fmt.Errorf("ssh config peer %d: %w", i, err)
		}
		out = append(out, n)
	}
	slices.SortStableFunc(out, func(a, b peer) int { return cmp.Compare(a.address, b.address) })
	out = slices.Compact(out)
	for i := 1; i < len(out); i++ {
		if out[i].address == out[i-1].address {
			return nil, fmt.Errorf("ssh config: host %s is given twice with different settings (port %d, timeout %ds and port %d, timeout %ds)",
				out[i].address, out[i-1].port, out[i-1].timeout, out[i].port, out[i].timeout)
		}
	}
	return out, nil
}

// normalized checks p and returns it in the form it is written.
func (p Peer) normalized() (peer, error) {
	if _, err := hostname.Check(p.Address); err != nil {
		return peer{}, err
	}
	if p.Port < 1 || p.Port > 65535 {
		return peer{}, fmt.Errorf("host %s: port %d is out of range 1..65535", p.Address, p.Port)
	}
	secs, err := timeoutSeconds(p.ConnectTimeout)
	if err != nil {
		return peer{}, fmt.Errorf("host %s: %w", p.Address, err)
	}
	return peer{address: p.Address, port: p.Port, timeout: secs}, nil
}

// timeoutSeconds rounds d up to whole seconds, at least 1 and at most what
// ssh's time parser takes (a C int).
func timeoutSeconds(d time.Duration) (int, error) {
	if d < 0 {
		return 0, fmt.Errorf("connect timeout %v is negative", d)
	}
	secs := d / time.Second
	if d%time.Second != 0 {
		secs++
	}
	if secs > math.MaxInt32 {
		return 0, fmt.Errorf("connect timeout %v is longer than ssh takes (%d seconds)", d, math.MaxInt32)
	}
	return max(int(secs), 1), nil
}
