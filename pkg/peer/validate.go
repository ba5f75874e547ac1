package peer

import (
	"encoding/base64"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
)

// Limits on a document's values.
const (
	maxListLen = 256 // hostKeys
	// maxAuthorized bounds serve.authorized: as many consumers as a peer
	// port takes known peers (DefaultMaxPeers); about 100 bytes each.
	maxAuthorized = 4096
	maxCacheKey   = 300 // NAME (up to 255) + ":" + 44
	maxProof      = 512 // an ed25519 signature in SSH wire format, base64: 112
)

// The value patterns. A value that matches holds no quote, backslash,
// white space, '$' or '{', so known_hosts, authorized_keys and nix.conf
// need no quoting for it.
var (
	fingerprintRE = regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{43}$`)
	checkReasonRE = regexp.MustCompile(`^[a-z]+( [a-z]+){0,3}$`)
)

// Validate reports the first problem of f, or nil when every value is
// well formed: the version is FactsVersion; name is a lowercase DNS label
// (hostname.CheckLabel); address a DNS name or an IP address, without
// port, brackets or zone (hostname.Check); generations are not negative;
// hostKeys (1 to 256, no duplicates) and a non-empty clientKey are
// "ssh-ed25519 BASE64" lines with canonical base64 and no comment
// (sshkeys.ParseAuthorizedLine); serve's protocol is "ssh" or "ssh-ng", its
// cacheKey is NAME:BASE64 of a 32-byte key, and its authorized list (up to
// 4096, no duplicates) names hosts by DNS label and keys by SHA256
// fingerprint; its check's reason is up to four lowercase words, given
// only when it is not serving. A value holding private key material is
// refused without being quoted. Messages quote other values only when
// they are short.
func (f Facts) Validate() error {
	if f.Version != FactsVersion {
		return fmt.Errorf("version %d is not supported; want %d", f.Version, FactsVersion)
	}
	if err := noPrivate(f); err != nil {
		return err
	}
	if err := hostError("name", f.Name, hostname.CheckLabel(f.Name)); err != nil {
		return err
	}
	if _, err := hostname.Check(f.Address); err != nil {
		return hostError("address", f.Address, err)
	}
	if f.Generation < 0 || f.ObservedGeneration < 0 {
		return fmt.Errorf("generation %d / observedGeneration %d is negative", f.Generation, f.ObservedGeneration)
	}
	switch {
	case len(f.HostKeys) == 0:
		return errors.New("hostKeys is empty; want at least the host's ed25519 key")
	case len(f.HostKeys) > maxListLen:
		return fmt.Errorf("hostKeys has %d entries; the limit is %d", len(f.HostKeys), maxListLen)
	}
	seen := map[string]bool{}
	for i, k := range f.HostKeys {
		what := fmt.Sprintf("hostKeys[%d]", i)
		if err := checkKeyLine(what, k); err != nil {
			return err
		}
		if seen[k] {
			return fmt.Errorf("%s repeats an earlier key", what)
		}
		seen[k] = true
	}
	if f.ClientKey != "" {
		if err := checkKeyLine("clientKey", f.ClientKey); err != nil {
			return err
		}
	}
	switch {
	case (f.NextHostKey == "") != (f.NextHostKeyProof == ""):
		return errors.New("nextHostKey and nextHostKeyProof come together")
	case len(f.NextHostKeyProof) > maxProof:
		return fmt.Errorf("nextHostKeyProof is %d characters long; the limit is %d", len(f.NextHostKeyProof), maxProof)
	case f.NextHostKey != "" && slices.Contains(f.HostKeys, f.NextHostKey):
		return errors.New("nextHostKey is one of hostKeys")
	}
	if f.NextHostKey != "" {
		if err := checkKeyLine("nextHostKey", f.NextHostKey); err != nil {
			return err
		}
		if _, err := base64.StdEncoding.Strict().DecodeString(f.NextHostKeyProof); err != nil {
			return errors.New("nextHostKeyProof is not canonical base64")
		}
	}
	if len(f.AcceptedHostKeys) > maxAuthorized {
		return fmt.Errorf("acceptedHostKeys has %d entries; the limit is %d", len(f.AcceptedHostKeys), maxAuthorized)
	}
	for i, k := range f.AcceptedHostKeys {
		if err := checkKeyLine(fmt.Sprintf("acceptedHostKeys[%d]", i), k); err != nil {
			return err
		}
	}
	if len(f.TrustedCacheKeys) > maxListLen {
		return fmt.Errorf("trustedCacheKeys has %d entries; the limit is %d", len(f.TrustedCacheKeys), maxListLen)
	}
	for i, k := range f.TrustedCacheKeys {
		if err := checkCacheKey(fmt.Sprintf("trustedCacheKeys[%d]", i), k); err != nil {
			return err
		}
	}
	if f.Serve != nil {
		return f.Serve.validate()
	}
	return nil
}

func (s *ServeFacts) validate() error {
	if s.Protocol.Command() == "" {
		return fmt.Errorf("serve.protocol %s is not \"ssh\" or \"ssh-ng\"", quoteShort(string(s.Protocol)))
	}
	if err := checkCacheKey("serve.cacheKey", s.CacheKey); err != nil {
		return err
	}
	if s.NextCacheKey != "" {
		if err := checkCacheKey("serve.nextCacheKey", s.NextCacheKey); err != nil {
			return err
		}
		if cur, _, _ := strings.Cut(s.CacheKey, ":"); strings.HasPrefix(s.NextCacheKey, cur+":") {
			return errors.New("serve.nextCacheKey has the name of serve.cacheKey; Nix trusts one key per name")
		}
	}
	if len(s.Authorized) > maxAuthorized {
		return fmt.Errorf("serve.authorized has %d entries; the limit is %d", len(s.Authorized), maxAuthorized)
	}
	seen := map[AuthorizedFact]bool{}
	for i, a := range s.Authorized {
		what := fmt.Sprintf("serve.authorized[%d]", i)
		if err := hostError(what+".host", a.Host, hostname.CheckLabel(a.Host)); err != nil {
			return err
		}
		if err := checkFingerprint(what+".fingerprint", a.Fingerprint); err != nil {
			return err
		}
		key := AuthorizedFact{Host: a.Host, Fingerprint: a.Fingerprint}
		if seen[key] {
			return fmt.Errorf("%s repeats an earlier entry for host %q", what, a.Host)
		}
		seen[key] = true
	}
	if c := s.Check; c != nil {
		switch {
		case c.Serving && c.Reason != "":
			return fmt.Errorf("serve.check.reason %s is given while serving", quoteShort(c.Reason))
		case !c.Serving && !checkReasonRE.MatchString(c.Reason):
			return fmt.Errorf("serve.check.reason %s is not a few lowercase words", quoteShort(c.Reason))
		}
	}
	return nil
}

// noPrivate refuses any string of f that holds a PEM private key marker,
// naming the field but not quoting its value.
func noPrivate(f Facts) error {
	type field struct{ what, v string }
	fields := []field{{"name", f.Name}, {"address", f.Address}, {"clientKey", f.ClientKey}}
	list := func(name string, vs []string) {
		for i, v := range vs {
			fields = append(fields, field{fmt.Sprintf("%s[%d]", name, i), v})
		}
	}
	list("hostKeys", f.HostKeys)
	list("trustedCacheKeys", f.TrustedCacheKeys)
	fields = append(fields, field{"nextHostKey", f.NextHostKey}, field{"nextHostKeyProof", f.NextHostKeyProof})
	list("acceptedHostKeys", f.AcceptedHostKeys)
	if s := f.Serve; s != nil {
		fields = append(fields, field{"serve.protocol", string(s.Protocol)}, field{"serve.cacheKey", s.CacheKey}, field{"serve.nextCacheKey", s.NextCacheKey})
		for i, a := range s.Authorized {
			fields = append(fields,
				field{fmt.Sprintf("serve.authorized[%d].host", i), a.Host},
				field{fmt.Sprintf("serve.authorized[%d].fingerprint", i), a.Fingerprint})
		}
	}
	for _, fd := range fields {
		if strings.Contains(fd.v, "PRIVATE KEY") {
			return fmt.Errorf("%s holds private key material; a peer must send public keys only", fd.what)
		}
	}
	return nil
}

// hostError turns err, from hostname.CheckLabel or hostname.Check on the
// value s of what, into a message that quotes s with quoteShort; it is nil
// when err is.
func hostError(what, s string, err error) error {
	if err == nil {
		return nil
	}
	reason := "is not valid"
	if e := (*hostname.Error)(nil); errors.As(err, &e) {
		reason = e.Reason
	}
	return fmt.Errorf("%s %s %s", what, quoteShort(s), reason)
}

// checkKeyLine accepts exactly "ssh-ed25519 BASE64": one ed25519 public
// key in canonical padded base64, no comment (sshkeys.ParseAuthorizedLine,
// whose errors quote no more of s than a short key type).
func checkKeyLine(what, s string) error {
	if _, err := sshkeys.ParseAuthorizedLine(s); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// checkCacheKey accepts a Nix binary-cache public key, NAME:BASE64 of 32
// bytes in canonical base64 (nix.ParsePublicKey, without its trailing
// newline), and recognizes a secret key without quoting it.
func checkCacheKey(what, s string) error {
	if len(s) > maxCacheKey {
		return fmt.Errorf("%s is %d characters long; the limit is %d", what, len(s), maxCacheKey)
	}
	if _, err := nix.ParseSecretKey(s); err == nil {
		return fmt.Errorf("%s is a binary-cache SECRET key; a peer must send the public key only", what)
	}
	_, err := nix.ParsePublicKey(s)
	if err == nil && strings.HasSuffix(s, "\n") {
		err = errors.New("it ends in a newline")
	}
	if err != nil {
		return fmt.Errorf("%s is not a binary-cache public key NAME:BASE64 of 32 bytes: %v", what, err)
	}
	return nil
}

func checkFingerprint(what, s string) error {
	if !fingerprintRE.MatchString(s) {
		return fmt.Errorf("%s is not a SHA256 fingerprint \"SHA256:\" + 43 base64 characters", what)
	}
	if b, err := base64.RawStdEncoding.Strict().DecodeString(s[len("SHA256:"):]); err != nil || len(b) != 32 {
		return fmt.Errorf("%s does not hold canonical base64 of 32 bytes", what)
	}
	return nil
}

// quoteShort quotes s for a message when it is short; a longer value is
// described by its length only, so that a message never carries much of
// whatever a peer put where it did not belong (such as a key).
func quoteShort(s string) string {
	const limit = 40
	if len(s) > limit {
		return fmt.Sprintf("(a value of %d bytes)", len(s))
	}
	return fmt.Sprintf("%q", s)
}
