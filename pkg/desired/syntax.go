package desired

import (
	"errors"
	"fmt"
	"path"
	"regexp"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/msg"
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

// normalizeHostKey returns "ssh-ed25519 BASE64" for a valid key line (see
// sshkeys.ParsePublicLine), or the reason it is not valid.
func normalizeHostKey(s string) (string, string) {
	pub, err := sshkeys.ParsePublicLine(s)
	if err == nil {
		return sshkeys.Key{Public: pub}.AuthorizedLine(), ""
	}
	if f := strings.Fields(s); len(f) >= 2 && f[1] == ssh.KeyAlgoED25519 {
		return "", fmt.Sprintf("starts with %s (ssh-keyscan prints a host name first); remove it so the line starts with ssh-ed25519", msg.Quote(f[0]))
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
		return fmt.Sprintf("contains %s", msg.FirstBad(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"))
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
		return fmt.Sprintf("contains %s", msg.FirstBad(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+/-"))
	case s == "/":
		return "is the root directory"
	case path.Clean(s) != s:
		return fmt.Sprintf("is not clean (no \"//\", \"/./\", \"/../\" or trailing '/'); write %s", msg.Quote(path.Clean(s)))
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
