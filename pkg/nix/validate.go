package nix

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"strconv"
	"strings"
)

// maxPathLen bounds the paths accepted in rendered files.
const maxPathLen = 1024

// ValidatePath checks that p is an absolute, clean path made only of
// A-Z a-z 0-9 . _ + / - (so it needs no quoting in nix.conf, an ssh
// command line, a URL or a Nix string), and is not the root itself.
func ValidatePath(p string) error {
	switch {
	case p == "":
		return errors.New("path is empty")
	case len(p) > maxPathLen:
		return fmt.Errorf("path is %d bytes long, longer than %d", len(p), maxPathLen)
	case p[0] != '/':
		return fmt.Errorf("path %q is not absolute", p)
	case p == "/":
		return errors.New("path is the root directory")
	}
	for i := 0; i < len(p); i++ {
		if c := p[i]; !isAlnum(c) && !strings.ContainsRune("._+/-", rune(c)) {
			return fmt.Errorf("path %q has a character other than A-Z a-z 0-9 . _ + / - at offset %d", p, i)
		}
	}
	if path.Clean(p) != p {
		return fmt.Errorf("path %q is not clean (want %q)", p, path.Clean(p))
	}
	return nil
}

// validateTrustedKey checks a trusted-public-keys entry: a valid cache
// public key in canonical form.
func validateTrustedKey(s string) error {
	k, err := ParsePublicKey(s)
	if err != nil {
		return fmt.Errorf("trusted public key %q: %w", s, err)
	}
	if k.String() != s {
		return fmt.Errorf("trusted public key %q is not in canonical form NAME:BASE64", s)
	}
	return nil
}

// hostKind tells what validateHost found.
type hostKind int

const (
	hostName hostKind = iota
	hostIPv4
	hostIPv6
)

// validateHost checks a DNS host name (letters, digits, hyphens, dots,
// labels of 1-63 bytes) or an IPv4 or IPv6 address without a zone.
func validateHost(h string) (hostKind, error) {
	if h == "" {
		return 0, errors.New("host is empty")
	}
	if a, err := netip.ParseAddr(h); err == nil {
		switch {
		case a.Zone() != "":
			return 0, fmt.Errorf("address %q has a zone, which is not supported", h)
		case a.Is4():
			return hostIPv4, nil
		default:
			return hostIPv6, nil
		}
	}
	if len(h) > 253 {
		return 0, fmt.Errorf("host name is %d bytes long, longer than 253", len(h))
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return 0, fmt.Errorf("host %q is neither an IP address nor a valid host name", h)
		}
		for i := 0; i < len(label); i++ {
			if c := label[i]; !isAlnum(c) && c != '-' {
				return 0, fmt.Errorf("host %q is neither an IP address nor a valid host name", h)
			}
		}
	}
	return hostName, nil
}

// validateKnownHostName checks one entry of a known_hosts host list: a host
// name or address, or [HOST]:PORT for a server on another port than 22.
func validateKnownHostName(h string) error {
	if strings.HasPrefix(h, "[") {
		end := strings.Index(h, "]:")
		if end < 0 {
			return fmt.Errorf("known host %q: want HOST or [HOST]:PORT", h)
		}
		if _, err := validateHost(h[1:end]); err != nil {
			return fmt.Errorf("known host %q: %w", h, err)
		}
		port := h[end+2:]
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
			return fmt.Errorf("known host %q: port %q is not a number from 1 to 65535", h, port)
		}
		return nil
	}
	if _, err := validateHost(h); err != nil {
		return fmt.Errorf("known host: %w", err)
	}
	return nil
}

// validateProtocol checks an sshServe protocol and returns the command sshd
// forces for it.
func validateProtocol(protocol string) (string, error) {
	switch protocol {
	case "ssh":
		return "nix-store --serve", nil
	case "ssh-ng":
		return "nix-daemon --stdio", nil
	default:
		return "", fmt.Errorf("protocol %q is neither \"ssh\" nor \"ssh-ng\"", protocol)
	}
}
