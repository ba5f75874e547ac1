package desired

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// The validators below return "" for a well-formed value, else the reason
// it is not, worded to follow the value in a message ("name "X" ...").
// They are strict on purpose: a value that passes never holds a quote,
// backslash, space, newline, '$', '{' or "${", so later writers of
// ssh_config, known_hosts, nix.conf or Nix files need no quoting.

var (
	keyNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	commandRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._+-]*$`)
	safePath  = regexp.MustCompile(`^[A-Za-z0-9._+/-]+$`)
)

const (
	maxKeyNameLen  = 255
	maxPathLen     = 4096
	maxApplyArgLen = 4096
)

// ValidateName reports whether s is a well-formed host name: a lowercase
// DNS label of 1 to 63 letters, digits and '-', not starting or ending
// with '-' (hostname.CheckLabel).
func ValidateName(s string) error {
	if r := checkName(s); r != "" {
		return fmt.Errorf("host name %s %s", quoteShort(s), r)
	}
	return nil
}

// ValidateAddress reports whether s is a well-formed address: a DNS host
// name, an IPv4 address, or an IPv6 address without brackets, zone or port
// (hostname.Check).
func ValidateAddress(s string) error {
	if r := checkAddress(s); r != "" {
		return fmt.Errorf("address %s %s", quoteShort(s), r)
	}
	return nil
}

// NormalizeHostKey checks that s is an ed25519 SSH public key line as
// sshkeys.ParsePublicLine accepts it ("ssh-ed25519 BASE64", optionally
// followed by a comment of [A-Za-z0-9@._+-], single spaces) and returns it
// as "ssh-ed25519 BASE64".
func NormalizeHostKey(s string) (string, error) {
	k, r := normalizeHostKey(s)
	if r != "" {
		return "", fmt.Errorf("host key %s", r)
	}
	return k, nil
}

func checkName(s string) string {
	return reason(hostname.CheckLabel(s))
}

// checkAddress checks an address with hostname.Check; an address written
// with a port or in brackets is told where the port goes.
func checkAddress(s string) string {
	_, err := hostname.Check(s)
	r := reason(err)
	if errors.Is(err, hostname.ErrPort) || errors.Is(err, hostname.ErrBrackets) {
		r += " and set the port with sshPort or peerPort"
	}
	return r
}

// reason returns the Reason of a *hostname.Error or *sshkeys.LineError,
// which follows the value in a message as the validators here do, or ""
// for nil.
func reason(err error) string {
	var he *hostname.Error
	var le *sshkeys.LineError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &he):
		return he.Reason
	case errors.As(err, &le):
		return le.Reason
	}
	return err.Error()
}

// firstBad describes the first rune of s that is not in allowed.
func firstBad(s, allowed string) string {
	for _, r := range s {
		if !strings.ContainsRune(allowed, r) {
			if r == ' ' {
				return "a space"
			}
			return fmt.Sprintf("%q", r)
		}
	}
	return "a character that is not allowed"
}

// normalizeHostKey returns "ssh-ed25519 BASE64" for a valid key line (see
// sshkeys.ParsePublicLine), or the reason it is not valid.
func normalizeHostKey(s string) (string, string) {
	pub, err := sshkeys.ParsePublicLine(s)
	if err == nil {
		return sshkeys.Key{Public: pub}.AuthorizedLine(), ""
	}
	if f := strings.Fields(s); len(f) >= 2 && f[1] == ssh.KeyAlgoED25519 {
		return "", fmt.Sprintf("starts with %s (ssh-keyscan prints a host name first); remove it so the line starts with ssh-ed25519", quoteShort(f[0]))
	}
	return "", reason(err)
}

func checkKeyName(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxKeyNameLen:
		return fmt.Sprintf("is %d characters long; the limit is %d", len(s), maxKeyNameLen)
	case !keyNameRE.MatchString(s):
		if !strings.ContainsAny(s[:1], "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789") {
			return "must start with a letter or digit"
		}
		return fmt.Sprintf("contains %s", firstBad(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"))
	}
	return ""
}

// checkAbsPath accepts an absolute, clean path of [A-Za-z0-9._+/-] with at
// least one component.
func checkAbsPath(s string) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxPathLen:
		return fmt.Sprintf("is %d characters long; the limit is %d", len(s), maxPathLen)
	case s[0] != '/':
		return "is not absolute; it must start with '/'"
	case !safePath.MatchString(s):
		return fmt.Sprintf("contains %s", firstBad(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+/-"))
	case s == "/":
		return "is the root directory"
	case path.Clean(s) != s:
		return fmt.Sprintf("is not clean (no \"//\", \"/./\", \"/../\" or trailing '/'); write %s", quoteShort(path.Clean(s)))
	}
	return ""
}

// checkApplyArg checks one element of apply; first tells whether it is
// the command (a command name or an absolute path).
func checkApplyArg(s string, first bool) string {
	switch {
	case s == "":
		return "is empty"
	case len(s) > maxApplyArgLen:
		return fmt.Sprintf("is %d characters long; the limit is %d", len(s), maxApplyArgLen)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return fmt.Sprintf("contains the control character %q", r)
		}
	}
	if !first {
		return ""
	}
	if strings.HasPrefix(s, "/") {
		if r := checkAbsPath(s); r != "" {
			return "is a command path that " + r
		}
		return ""
	}
	if !commandRE.MatchString(s) {
		return "must be a command name (letters, digits, . _ + -) or an absolute path, without spaces or arguments (put each argument in its own list element)"
	}
	return ""
}
