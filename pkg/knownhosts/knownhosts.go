// Package knownhosts keeps one agent-owned block inside an OpenSSH
// known_hosts file that people also edit by hand:
//
//	# BEGIN nixpeer managed block: do not edit, the agent rewrites it
//	127.0.0.2 ssh-ed25519 AAAA...
//	[stage.example.com]:2222 ssh-ed25519 AAAA...
//	# END nixpeer managed block
//
// Every byte outside the block is preserved exactly, as managedblock says:
// hashed entries, @cert-authority and @revoked lines too.
package knownhosts

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/managedblock"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// Entry is one host key the agent wants root's ssh to trust.
type Entry struct {
	// Host is a DNS name (compared and written in lower case) or an IP
	// address literal, as hostname.Check accepts it. An IPv6 address is
	// given bare, without brackets: the brackets are added when Port is
	// not 22.
	Host string
	// Port is the sshd port, 1..65535. Port 22 is written as the bare
	// host, any other port as "[host]:port", as ssh itself does.
	Port int
	// Key is the host's public key: a plain ed25519 key, as everywhere in
	// nixpeer (sshkeys.AuthorizedLineOf); other types and certificates
	// are refused.
	Key ssh.PublicKey
	// CA marks Key as a CA whose host certificates ssh trusts for the
	// host (a "@cert-authority" line).
	CA bool
	// Next marks the key the host hands itself over to in a host key
	// rotation: ssh trusts it beside the host's current key, and the
	// line says which is which (its comment is nextMarker).
	Next bool
}

// nextMarker is the comment of a Next entry's line.
const nextMarker = "nixpeer-next"

// line is the entry's known_hosts line, without a newline. The entry must
// have been normalized.
func (e Entry) line() string {
	l := hostname.WithPort(e.Host, e.Port) + " " + sshkeys.Key{Public: e.Key}.AuthorizedLine()
	if e.CA {
		l = certAuthority + " " + l
	}
	if e.Next {
		l += " " + nextMarker
	}
	return l
}

// certAuthority marks a known_hosts line whose key is a CA's.
const certAuthority = "@cert-authority"

// Render returns existing with the managed block set to hold entries,
// validated, sorted and deduplicated; the block is placed, removed or found
// malformed as managedblock.Render says (no entries remove it).
func Render(existing []byte, entries []Entry) ([]byte, error) {
	norm, err := normalize(entries)
	if err != nil {
		return nil, err
	}
	lines := make([]string, len(norm))
	for i, e := range norm {
		lines[i] = e.line()
	}
	return managedblock.Render(existing, lines)
}

// Managed returns the entries the managed block of existing holds, sorted
// and deduplicated as Render writes them, or nil when there is no block.
// A malformed block, or a line in it that is not a valid entry, is an error
// naming the line.
func Managed(existing []byte) ([]Entry, error) {
	lines, err := managedblock.Lines(existing)
	if err != nil {
		return nil, err
	}
	var entries []Entry
	for _, l := range lines {
		e, err := parseLine(l.Text)
		if err == nil {
			e, err = e.normalized()
		}
		if err != nil {
			return nil, fmt.Errorf("line %d (in the nixpeer managed block): %w", l.Number, err)
		}
		entries = append(entries, e)
	}
	return sortUnique(entries), nil
}

// parseLine reads one line of the managed block: "HOSTFIELD ssh-ed25519
// BASE64", the key as sshkeys.ParseAuthorizedLine accepts it.
func parseLine(l string) (Entry, error) {
	f := strings.Fields(l)
	ca := len(f) > 0 && f[0] == certAuthority
	if ca {
		f = f[1:]
	}
	next := len(f) == 4 && f[3] == nextMarker && !ca
	if next {
		f = f[:3]
	}
	if len(f) != 3 {
		return Entry{}, fmt.Errorf("want \"HOST ssh-ed25519 BASE64\", got %d fields", len(f))
	}
	host, port, err := hostname.ParseWithPort(f[0])
	if err != nil {
		return Entry{}, err
	}
	key, err := sshkeys.ParseAuthorizedLine(f[1] + " " + f[2])
	if err != nil {
		return Entry{}, fmt.Errorf("parse key of %q: %w", f[0], err)
	}
	return Entry{Host: host, Port: port, Key: key, CA: ca, Next: next}, nil
}

// normalize validates entries and returns them in canonical form, sorted
// and without duplicates.
func normalize(entries []Entry) ([]Entry, error) {
	out := make([]Entry, 0, len(entries))
	for i, e := range entries {
		n, err := e.normalized()
		if err != nil {
			return nil, fmt.Errorf("known_hosts entry %d: %w", i, err)
		}
		out = append(out, n)
	}
	return sortUnique(out), nil
}

// sortUnique sorts normalized entries and drops duplicates; it returns nil
// for no entries.
func sortUnique(out []Entry) []Entry {
	slices.SortFunc(out, compare)
	out = slices.CompactFunc(out, func(a, b Entry) bool { return compare(a, b) == 0 })
	if len(out) == 0 {
		return nil
	}
	return out
}

func compare(a, b Entry) int {
	if c := cmp.Or(
		strings.Compare(a.Host, b.Host),
		cmp.Compare(a.Port, b.Port),
		bytes.Compare(a.Key.Marshal(), b.Key.Marshal()),
	); c != 0 || a.CA == b.CA {
		return c
	}
	if a.CA { // a plain key before a CA
		return 1
	}
	return -1
}

// normalized checks e and returns it with Host in canonical form
// (hostname.Canonical).
func (e Entry) normalized() (Entry, error) {
	host, err := hostname.Canonical(e.Host)
	if err != nil {
		return Entry{}, err
	}
	if e.Port < 1 || e.Port > 65535 {
		return Entry{}, fmt.Errorf("host %s: port %d is out of range 1..65535", host, e.Port)
	}
	if _, err := sshkeys.AuthorizedLineOf(e.Key); err != nil {
		return Entry{}, fmt.Errorf("host %s: %w", host, err)
	}
	return Entry{Host: host, Port: e.Port, Key: e.Key, CA: e.CA, Next: e.Next && !e.CA}, nil
}
