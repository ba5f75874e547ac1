// Package knownhosts keeps one agent-owned block inside an OpenSSH
// known_hosts file that people also edit by hand:
//
//	# BEGIN nixpeer managed block: do not edit, the agent rewrites it
//	127.0.0.2 ssh-ed25519 AAAA...
//	[stage.example.com]:2222 ssh-ed25519 AAAA...
//	# END nixpeer managed block
//
// Every byte outside the block is preserved exactly: comments, blank lines,
// hashed entries, @cert-authority and @revoked lines, CRLF line endings,
// trailing whitespace, a missing final newline and bytes that are not UTF-8.
// A file without a block gets the block at its top, so that removing the
// block later gives the original bytes back.
package knownhosts

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/managedblock"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// The marker lines, kept under these names for the tests.
const (
	beginLine = managedblock.BeginLine
	endLine   = managedblock.EndLine
)

// Entry is one host key the agent wants root's ssh to trust.
type Entry struct {
	// Host is a DNS name (compared and written in lower case) or an IP
	// address literal. An IPv6 address is given bare, without brackets:
	// the brackets are added when Port is not 22.
	Host string
	// Port is the sshd port, 1..65535. Port 22 is written as the bare
	// host, any other port as "[host]:port", as ssh itself does.
	Port int
	// Key is the host's public key: a plain ed25519 key, as everywhere in
	// nixpeer (sshkeys.AuthorizedLineOf); other types and certificates
	// are refused.
	Key ssh.PublicKey
}

// hostField is the first column of the entry's known_hosts line.
func (e Entry) hostField() string {
	if e.Port == 22 {
		return e.Host
	}
	return "[" + e.Host + "]:" + strconv.Itoa(e.Port)
}

// line is the entry's known_hosts line, without a newline. The entry must
// have been normalized.
func (e Entry) line() string {
	return e.hostField() + " " + sshkeys.Key{Public: e.Key}.AuthorizedLine()
}

// Render returns existing with the managed block set to hold entries.
// Entries are validated, sorted and deduplicated. An existing block is
// replaced in place; with no block yet, the block goes at the top of the
// file. With no entries, the block is removed, and a file without a block
// is returned unchanged. A malformed block (BEGIN without END, END without
// BEGIN, a BEGIN inside the block, a second block) is an error naming the
// line. existing is never modified; the result does not share its memory.
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

// Update sets the managed block of the known_hosts file at path to entries
// and reports whether it wrote anything. A missing file counts as empty and
// is created with mode 0644 (its parent directory with mode 0700 if
// missing); an existing file keeps its mode. Nothing is written when the
// content is already right, or on any error. A path that is a symlink or
// not a regular file is refused rather than replaced.
func Update(path string, entries []Entry) (changed bool, err error) {
	return managedblock.Update(path, "known_hosts", func(existing []byte) ([]byte, error) {
		return Render(existing, entries)
	})
}

// parseLine reads one line of the managed block: "HOSTFIELD ssh-ed25519
// BASE64", the key as sshkeys.ParseAuthorizedLine accepts it.
func parseLine(l string) (Entry, error) {
	f := strings.Fields(l)
	if len(f) != 3 {
		return Entry{}, fmt.Errorf("want \"HOST ssh-ed25519 BASE64\", got %d fields", len(f))
	}
	host, port, err := parseHostField(f[0])
	if err != nil {
		return Entry{}, err
	}
	key, err := sshkeys.ParseAuthorizedLine(f[1] + " " + f[2])
	if err != nil {
		return Entry{}, fmt.Errorf("parse key of %q: %w", f[0], err)
	}
	return Entry{Host: host, Port: port, Key: key}, nil
}

func parseHostField(f string) (host string, port int, err error) {
	if !strings.HasPrefix(f, "[") {
		return f, 22, nil
	}
	i := strings.LastIndex(f, "]:")
	if i < 0 {
		return "", 0, fmt.Errorf("host %q: want HOST or [HOST]:PORT", f)
	}
	port, err = parsePort(f[i+2:])
	if err != nil {
		return "", 0, fmt.Errorf("host %q: %w", f, err)
	}
	return f[1:i], port, nil
}

func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || s[0] == '0' || strings.Trim(s, "0123456789") != "" {
		return 0, fmt.Errorf("port %q is not a number 1..65535", s)
	}
	p, _ := strconv.Atoi(s)
	if p > 65535 {
		return 0, fmt.Errorf("port %d is out of range 1..65535", p)
	}
	return p, nil
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
	return cmp.Or(
		strings.Compare(a.Host, b.Host),
		cmp.Compare(a.Port, b.Port),
		bytes.Compare(a.Key.Marshal(), b.Key.Marshal()),
	)
}

// normalized checks e and returns it with Host in canonical form.
func (e Entry) normalized() (Entry, error) {
	host, err := CanonicalHost(e.Host)
	if err != nil {
		return Entry{}, err
	}
	if e.Port < 1 || e.Port > 65535 {
		return Entry{}, fmt.Errorf("host %s: port %d is out of range 1..65535", host, e.Port)
	}
	if _, err := sshkeys.AuthorizedLineOf(e.Key); err != nil {
		return Entry{}, fmt.Errorf("host %s: %w", host, err)
	}
	return Entry{Host: host, Port: e.Port, Key: e.Key}, nil
}

// CanonicalHost checks that h is a host ssh can be pointed at and that is
// safe to write into one field of an OpenSSH file (known_hosts, ssh_config),
// and returns it in canonical form: an IP address literal without brackets
// or zone (as netip formats it), or a DNS name of letters, digits, inner
// hyphens and dots (in lower case). So the result never holds a space,
// comma, quote, newline, bracket or pattern character (*, ?, !), and never
// starts with '-'.
func CanonicalHost(h string) (string, error) {
	if h == "" {
		return "", errors.New("empty host")
	}
	if addr, err := netip.ParseAddr(h); err == nil {
		if addr.Zone() != "" {
			return "", fmt.Errorf("host %q: IPv6 zones are not allowed", h)
		}
		return addr.String(), nil
	}
	if strings.HasPrefix(h, "[") {
		return "", fmt.Errorf("host %q: give the bare address without brackets; they are added for a port other than 22", h)
	}
	name := strings.ToLower(h)
	if len(name) > 253 {
		return "", fmt.Errorf("host %q: DNS name longer than 253 bytes", h)
	}
	labels := strings.Split(name, ".")
	for _, l := range labels {
		if !validLabel(l) {
			return "", fmt.Errorf("host %q: not an IP address and not a DNS name (labels of 1..63 letters, digits and inner hyphens)", h)
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return "", fmt.Errorf("host %q: not an IP address, and a DNS name cannot end in an all-numeric label", h)
	}
	return name, nil
}

func validLabel(l string) bool {
	if len(l) == 0 || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
		return false
	}
	for i := 0; i < len(l); i++ {
		c := l[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
