// Package hostname checks the values that say where a host is and what it
// is called, for every package of nixpeer that reads or writes them:
//
//   - an address (Check, Canonical): a DNS name, an IPv4 address, or an
//     IPv6 address without brackets, zone or port;
//   - a host's name in the fleet (CheckLabel): one lowercase DNS label;
//   - ssh's notation of a host and its port (ParseWithPort): HOST for
//     port 22, [HOST]:PORT for any other, as known_hosts writes it.
//
// An address or name that passes holds only ASCII letters, digits, '-',
// '.' and ':' and never starts with '-', so ssh_config, known_hosts,
// nix.conf, a URL or a Nix string need no quoting for it and ssh never
// takes it for an option. A refusal says what is wrong in words that
// follow the value, for the caller to name the value its own way.
package hostname

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/nixpeer/nixpeer/internal/msg"
)

// Limits of DNS (RFC 1035): a name and one of its labels.
const (
	maxLen      = 253
	maxLabelLen = 63
)

// Kind tells what Check found.
type Kind int

// The kinds of address.
const (
	DNSName Kind = iota + 1
	IPv4
	IPv6
)

// Errors a refusal of Check matches (errors.Is) when the value was written
// with a port, or in brackets, so that a caller can say where the port goes
// instead.
var (
	ErrPort     = errors.New("address includes a port")
	ErrBrackets = errors.New("address is in brackets")
)

// Error says why Check or CheckLabel refused a value.
type Error struct {
	// Value is the value refused.
	Value string
	// Reason says what is wrong, worded to follow the value in a
	// message: "host " + quoted Value + " " + Reason.
	Reason string
	// kind is ErrPort, ErrBrackets or nil.
	kind error
}

func (e *Error) Error() string { return "host " + msg.Quote(e.Value) + " " + e.Reason }

// Unwrap returns ErrPort or ErrBrackets when the reason is one of those.
func (e *Error) Unwrap() error { return e.kind }

// Check reports what kind of address s is (0 when it is none): a DNS name of at most 253
// characters, made of labels of 1 to 63 ASCII letters (either case),
// digits and inner '-', joined by '.', without a trailing dot and not
// ending in an all-numeric label; an IPv4 address in dotted decimal
// without leading zeros; or an IPv6 address, not IPv4-mapped, without
// brackets, zone or port. A refusal is an *Error.
func Check(s string) (Kind, error) {
	bad := func(reason string, kind error) (Kind, error) {
		return 0, &Error{Value: s, Reason: reason, kind: kind}
	}
	switch {
	case s == "":
		return bad("is empty", nil)
	case len(s) > maxLen:
		return bad(fmt.Sprintf("is %d characters long; the limit is %d", len(s), maxLen), nil)
	case strings.ContainsAny(s, "[]"):
		return bad("has brackets; write an IPv6 address without [ ]", ErrBrackets)
	case strings.Contains(s, "@"):
		return bad("contains '@'; give only the host, without a user name", nil)
	case strings.Contains(s, ":"):
		a, err := netip.ParseAddr(s)
		switch {
		case err == nil && a.Zone() != "":
			return bad("has an IPv6 zone (%...); zones are not supported, use a global address or a host name", nil)
		case err == nil && a.Is4In6():
			return bad(fmt.Sprintf("is an IPv4-mapped IPv6 address; write the IPv4 address %s", a.Unmap()), nil)
		case err == nil:
			return IPv6, nil
		}
		if i := strings.IndexByte(s, ':'); strings.Count(s, ":") == 1 && i > 0 && allDigits(s[i+1:]) {
			return bad("includes a port; remove \":"+s[i+1:]+"\"", ErrPort)
		}
		return bad("is not a valid IPv6 address", nil)
	case strings.HasSuffix(s, "."):
		return bad("ends with '.'; remove the trailing dot", nil)
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		switch {
		case l == "":
			return bad("has an empty label (\"..\" or a leading '.')", nil)
		case len(l) > maxLabelLen:
			return bad(fmt.Sprintf("has a label of %d characters; the limit is %d", len(l), maxLabelLen), nil)
		case l[0] == '-' || l[len(l)-1] == '-':
			return bad(fmt.Sprintf("has a label %q that starts or ends with '-'", l), nil)
		}
		if c := msg.FirstBad(l, alnum+"-"); c != "" {
			return bad("contains "+c, nil)
		}
	}
	if allDigits(labels[len(labels)-1]) {
		if _, err := netip.ParseAddr(s); err != nil {
			return bad("looks like an IPv4 address but is not one (four numbers 0-255, no leading zeros)", nil)
		}
		return IPv4, nil
	}
	return DNSName, nil
}

// Canonical checks s as Check does and returns it in canonical form, the
// same for every spelling of one address: a DNS name in lower case, an IP
// address as net/netip formats it (IPv6 compressed, in lower case).
func Canonical(s string) (string, error) {
	kind, err := Check(s)
	switch {
	case err != nil:
		return "", err
	case kind == DNSName:
		return strings.ToLower(s), nil
	}
	return netip.MustParseAddr(s).String(), nil
}

// CheckLabel checks the name of a host in the fleet: one DNS label of 1 to
// 63 lowercase letters, digits and '-', not starting or ending with '-'.
// A refusal is an *Error.
func CheckLabel(s string) error {
	bad := func(reason string) error { return &Error{Value: s, Reason: reason} }
	switch {
	case s == "":
		return bad("is empty")
	case len(s) > maxLabelLen:
		return bad(fmt.Sprintf("is %d characters long; the limit is %d", len(s), maxLabelLen))
	case strings.ToLower(s) != s:
		return bad("has upper-case letters")
	case s[0] == '-' || s[len(s)-1] == '-':
		return bad("starts or ends with '-'")
	}
	if c := msg.FirstBad(s, lower+digits+"-"); c != "" {
		return bad("contains " + c)
	}
	return nil
}

// ParseWithPort reads a host in ssh's notation: HOST, which is port 22, or
// [HOST]:PORT, with HOST as Check accepts it (a DNS name or an IP address,
// IPv6 included, inside the brackets) and PORT a number from 1 to 65535
// without leading zeros. It returns HOST as given.
func ParseWithPort(s string) (host string, port int, err error) {
	if !strings.HasPrefix(s, "[") {
		if _, err := Check(s); err != nil {
			return "", 0, err
		}
		return s, 22, nil
	}
	end := strings.Index(s, "]:")
	if end < 0 {
		return "", 0, fmt.Errorf("host %s is neither HOST nor [HOST]:PORT", msg.Quote(s))
	}
	host, p := s[1:end], s[end+2:]
	if _, err := Check(host); err != nil {
		return "", 0, fmt.Errorf("host %s: %w", msg.Quote(s), err)
	}
	if p == "" || len(p) > 5 || p[0] == '0' || !allDigits(p) {
		return "", 0, fmt.Errorf("host %s: port %s is not a number from 1 to 65535", msg.Quote(s), msg.Quote(p))
	}
	if port, _ = strconv.Atoi(p); port > 65535 {
		return "", 0, fmt.Errorf("host %s: port %d is not a number from 1 to 65535", msg.Quote(s), port)
	}
	return host, port, nil
}

// WithPort writes host in ssh's notation, as ParseWithPort reads it: HOST
// for port 22, else [HOST]:PORT.
func WithPort(host string, port int) string {
	if port == 22 {
		return host
	}
	return "[" + host + "]:" + strconv.Itoa(port)
}

// Bracket writes host as the host part of a URL: an IPv6 address (any
// value with a ':') in brackets, anything else as it is.
func Bracket(host string) string {
	if strings.Contains(host, ":") {
		return "[" + host + "]"
	}
	return host
}

const (
	lower  = "abcdefghijklmnopqrstuvwxyz"
	digits = "0123456789"
	alnum  = lower + "ABCDEFGHIJKLMNOPQRSTUVWXYZ" + digits
)

func allDigits(s string) bool {
	return s != "" && strings.Trim(s, digits) == ""
}
