package nix

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// sshServeUser is the account nix.sshServe creates on a serving host.
const sshServeUser = "nix-ssh"

// URL query parameters of an ssh store.
const (
	paramSSHKey  = "ssh-key"
	paramHostKey = "base64-ssh-public-host-key"
)

// SubstituterURL returns the store URL of a serving host:
// ssh://nix-ssh@ADDRESS?ssh-key=PATH&base64-ssh-public-host-key=B64
// (ssh-ng:// for protocol "ssh-ng"), where B64 is the base64 of the line
// "ssh-ed25519 AAAA..." of hostKey, which pins the host key so that Nix never
// asks about an unknown one. An IPv6 address is put in brackets (Nix 2.8
// removes them before it calls ssh). Query values are percent-encoded.
//
// sshPort is checked (1-65535) but not put in the URL: Nix before 2.31
// ignores a port there; the caller writes an ssh_config Host block instead.
// A priority above 0 is put in the URL (priority=N: Nix asks substituters
// with a lower one first; cache.nixos.org has 40).
// clientKeyPath must pass ValidatePath; only ed25519 host keys are accepted.
// A nil hostKey pins none (trust: ca): ssh then checks the host's
// certificate against root's known_hosts.
func SubstituterURL(protocol Protocol, address string, sshPort int, clientKeyPath string, hostKey ssh.PublicKey, priority int) (string, error) {
	if _, err := validateProtocol(protocol); err != nil {
		return "", fmt.Errorf("substituter URL: %w", err)
	}
	_, err := hostname.Check(address)
	if err != nil {
		return "", fmt.Errorf("substituter URL: %w", err)
	}
	if sshPort < 1 || sshPort > 65535 {
		return "", fmt.Errorf("substituter URL for %s: ssh port %d is not from 1 to 65535", address, sshPort)
	}
	if err := ValidatePath(clientKeyPath); err != nil {
		return "", fmt.Errorf("substituter URL for %s: client key: %w", address, err)
	}
	u := string(protocol) + "://" + sshServeUser + "@" + hostname.Bracket(address) +
		"?" + paramSSHKey + "=" + queryEscape(clientKeyPath)
	if hostKey != nil {
		line, err := sshkeys.AuthorizedLineOf(hostKey)
		if err != nil {
			return "", fmt.Errorf("substituter URL for %s: host key: %w", address, err)
		}
		u += "&" + paramHostKey + "=" + queryEscape(base64.StdEncoding.EncodeToString([]byte(line)))
	}
	if priority < 0 || priority > 1000 {
		return "", fmt.Errorf("substituter URL for %s: priority %d is not from 0 to 1000", address, priority)
	}
	if priority > 0 {
		u += "&priority=" + strconv.Itoa(priority)
	}
	if err := ValidateSubstituter(u); err != nil {
		return "", fmt.Errorf("substituter URL for %s: built an invalid URL: %w", address, err)
	}
	return u, nil
}

// cacheURLRE matches CacheURL's URLs.
var cacheURLRE = regexp.MustCompile(`^http://127\.0\.0\.1:[1-9][0-9]{0,4}/[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// CacheURL is the substituter URL of a cache that the host's agent serves
// to its Nix on the loopback port: http://127.0.0.1:PORT/NAME.
func CacheURL(port int, name string) string {
	return "http://127.0.0.1:" + strconv.Itoa(port) + "/" + name
}

// queryEscape percent-encodes everything but RFC 3986 unreserved characters
// and '/', which Nix's query decoding (percentDecode) reverses exactly.
func queryEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if isAlnum(c) || strings.IndexByte("-._~/", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// ValidateSubstituter checks a substituter URL of a serving host:
// ssh:// or ssh-ng://, USER@HOST with no port and no path, and only the
// query parameters ssh-key (a path, see ValidatePath),
// base64-ssh-public-host-key (an ed25519 host key line), priority,
// max-connections (numbers) and compress (true or false), each at most once.
// Only the characters A-Z a-z 0-9 - . _ ~ : / ? [ ] @ & = % + may appear, so
// the URL can never end a nix.conf value, start a comment or leave a string.
func ValidateSubstituter(u string) error {
	if cacheURLRE.MatchString(u) {
		return nil
	}
	if u == "" {
		return errors.New("substituter URL is empty")
	}
	if len(u) > 4096 {
		return fmt.Errorf("substituter URL is %d bytes long, longer than 4096", len(u))
	}
	for i := 0; i < len(u); i++ {
		if c := u[i]; !isAlnum(c) && strings.IndexByte("-._~:/?[]@&=%+", c) < 0 {
			return fmt.Errorf("substituter URL %q has a forbidden character %q at offset %d", u, c, i)
		}
	}
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok || (scheme != "ssh" && scheme != "ssh-ng") {
		return fmt.Errorf("substituter URL %q: scheme is not ssh:// or ssh-ng://", u)
	}
	authority, query, _ := strings.Cut(rest, "?")
	if strings.Contains(authority, "/") {
		return fmt.Errorf("substituter URL %q: an ssh store URL has no path", u)
	}
	user, host, ok := strings.Cut(authority, "@")
	if !ok {
		return fmt.Errorf("substituter URL %q: no USER@ before the host", u)
	}
	if !userRE.MatchString(user) {
		return fmt.Errorf("substituter URL %q: user %q is not a valid login name", u, user)
	}
	if err := validateURLHost(host); err != nil {
		return fmt.Errorf("substituter URL %q: %w", u, err)
	}
	if err := validateQuery(query); err != nil {
		return fmt.Errorf("substituter URL %q: %w", u, err)
	}
	return nil
}

// userRE matches a login name.
var userRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// validateURLHost checks the host part of a URL: a host name, an IPv4
// address, or an IPv6 address in brackets; never a port.
func validateURLHost(host string) error {
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return fmt.Errorf("host %q: text after the IPv6 address (a port is not supported before Nix 2.31; use ssh_config)", host)
		}
		kind, err := hostname.Check(host[1 : len(host)-1])
		if err != nil {
			return err
		}
		if kind != hostname.IPv6 {
			return fmt.Errorf("host %q: only an IPv6 address goes in brackets", host)
		}
		return nil
	}
	if strings.Contains(host, ":") {
		return fmt.Errorf("host %q has a port or is an IPv6 address without brackets (a port is not supported before Nix 2.31; use ssh_config)", host)
	}
	_, err := hostname.Check(host)
	return err
}

// validateQuery checks the query of an ssh store URL.
func validateQuery(query string) error {
	if query == "" {
		return nil
	}
	seen := map[string]bool{}
	for _, kv := range strings.Split(query, "&") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return fmt.Errorf("query parameter %q has no value", kv)
		}
		if seen[k] {
			return fmt.Errorf("query parameter %q appears twice", k)
		}
		seen[k] = true
		val, err := url.PathUnescape(v)
		if err != nil {
			return fmt.Errorf("query parameter %s: %w", k, err)
		}
		if err := validateParam(k, val); err != nil {
			return err
		}
	}
	return nil
}

// validateParam checks the decoded value of one ssh store parameter.
func validateParam(k, val string) error {
	switch k {
	case paramSSHKey:
		if err := ValidatePath(val); err != nil {
			return fmt.Errorf("query parameter %s: %w", k, err)
		}
	case paramHostKey:
		line, err := base64.StdEncoding.Strict().DecodeString(val)
		if err != nil {
			return fmt.Errorf("query parameter %s: invalid base64: %w", k, err)
		}
		if _, err := sshkeys.ParseAuthorizedLine(string(line)); err != nil {
			return fmt.Errorf("query parameter %s: %w", k, err)
		}
	case "priority", "max-connections":
		n, err := strconv.Atoi(val)
		if err != nil || n < 0 || n > 1_000_000 || strconv.Itoa(n) != val {
			return fmt.Errorf("query parameter %s: %q is not a number from 0 to 1000000", k, val)
		}
	case "compress":
		if val != "true" && val != "false" {
			return fmt.Errorf("query parameter %s: %q is neither true nor false", k, val)
		}
	default:
		return fmt.Errorf("query parameter %q is not one nixpeer accepts (%s, %s, priority, max-connections, compress)", k, paramSSHKey, paramHostKey)
	}
	return nil
}

// substituterRE finds nixpeer's substituter URLs in a settings file
// (nixpeer.conf or the NixOS module): only the characters a URL of
// ValidateSubstituter may hold.
var substituterRE = regexp.MustCompile(`ssh(?:-ng)?://[A-Za-z0-9._~:/?\[\]@&=%+-]+`)

// PinnedHostKeys returns the host keys that the substituter URLs in
// content pin (base64-ssh-public-host-key), by the URL's host (an IPv6
// address without brackets). A URL that is not valid is skipped; a host
// pinned with two different keys maps to the first.
func PinnedHostKeys(content []byte) map[string]ssh.PublicKey {
	out := map[string]ssh.PublicKey{}
	for _, m := range substituterRE.FindAll(content, -1) {
		u := string(m)
		if ValidateSubstituter(u) != nil {
			continue
		}
		parsed, err := url.Parse(u)
		if err != nil {
			continue
		}
		b64 := parsed.Query().Get(paramHostKey)
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil {
			continue
		}
		key, err := sshkeys.ParseAuthorizedLine(string(raw))
		if err != nil {
			continue
		}
		if _, ok := out[parsed.Hostname()]; !ok {
			out[parsed.Hostname()] = key
		}
	}
	return out
}
