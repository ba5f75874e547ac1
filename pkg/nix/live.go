package nix

import (
	"cmp"
	"fmt"
	"maps"
	"net/url"
	"path"
	"slices"
	"strings"
)

// Live compares the settings nixpeer wants with the effective configuration
// (from ShowConfig) and returns one sentence per wanted setting that Nix
// does not use: a substituter missing from substituters, a key missing from
// trusted-public-keys, fallback not true while wanted, a signing key file
// missing from secret-key-files. It returns nil when every one is live.
//
// Values are compared by meaning, not by bytes (see SameSetting): Nix
// normalizes what it prints, differently from version to version.
func Live(s Settings, effective map[string]string) []string {
	var missing []string
	check := func(setting string, wanted []string, what string) {
		for _, w := range dedup(wanted) {
			if !HasSetting(setting, effective[setting], w) {
				missing = append(missing, fmt.Sprintf("%s %s is not in %s", what, w, setting))
			}
		}
	}
	check("substituters", s.Substituters, "substituter")
	check("trusted-public-keys", s.TrustedPublicKeys, "trusted public key")
	if s.Fallback && effective["fallback"] != "true" {
		got, ok := effective["fallback"]
		if !ok {
			got = "not set"
		}
		missing = append(missing, fmt.Sprintf("fallback is %s, not true", got))
	}
	check("secret-key-files", s.SecretKeyFiles, "secret key file")
	if s.NoNegativeCache && effective["narinfo-cache-negative-ttl"] != "0" {
		missing = append(missing, fmt.Sprintf("narinfo-cache-negative-ttl is %q, not 0", effective["narinfo-cache-negative-ttl"]))
	}
	if h := s.PostBuildHook; h != "" && path.Clean(effective["post-build-hook"]) != path.Clean(h) {
		missing = append(missing, fmt.Sprintf("post-build-hook is %q, not %s", effective["post-build-hook"], h))
	}
	return missing
}

// StillLive returns one sentence per substituter in withdrawn that the
// effective configuration still uses: nixpeer took it out (its peer went
// dark), and it must leave the live settings, not only the file.
func StillLive(withdrawn []string, effective map[string]string) []string {
	var live []string
	for _, w := range dedup(withdrawn) {
		if HasSetting("substituters", effective["substituters"], w) {
			live = append(live, fmt.Sprintf("substituter %s is still in substituters", w))
		}
	}
	return live
}

// HasSetting says whether the effective value of a list setting (its items
// separated by white space, as ShowConfig spells it) holds an item equal to
// want by SameSetting.
func HasSetting(setting, effective, want string) bool {
	return slices.ContainsFunc(strings.Fields(effective), func(have string) bool { return SameSetting(setting, have, want) })
}

// SameSetting is the one rule for "Nix uses the value nixpeer wrote": two
// items of a list setting mean the same thing.
//   - substituters (and any store URL): the same store reference, see
//     SameStoreURL;
//   - secret-key-files: the same path once cleaned;
//   - anything else (trusted-public-keys: NAME:BASE64): the same text.
func SameSetting(setting, a, b string) bool {
	switch setting {
	case "substituters", "extra-substituters", "trusted-substituters":
		return SameStoreURL(a, b)
	case "secret-key-files":
		return path.Clean(a) == path.Clean(b)
	}
	return a == b
}

// SameStoreURL says whether two store URLs name the same store the same
// way: the same scheme, user, host (IPv6 brackets and letter case aside),
// port and path, and the same query parameters as a set, each value
// compared after percent-decoding. Nix 2.8 prints a URL as it was written;
// later versions print it normalized (query parameters sorted, some
// characters encoded or not), which means the same. A trailing slash of an
// HTTP cache's path does not count ("https://cache.nixos.org/" is the
// cache ".../"). Text that is not a URL equals only itself.
func SameStoreURL(a, b string) bool {
	if a == b {
		return true
	}
	ua, erra := parseStoreURL(a)
	ub, errb := parseStoreURL(b)
	if erra != nil || errb != nil {
		return false
	}
	return ua.scheme == ub.scheme && ua.user == ub.user && ua.host == ub.host && ua.port == ub.port && ua.path == ub.path &&
		maps.Equal(ua.query, ub.query)
}

type storeURL struct {
	scheme, user, host, port, path string
	query                          map[string]string
}

// parseStoreURL splits a store URL, decoding the query the way Nix does
// (percent escapes only: a '+' is a '+', not a space). A parameter given
// twice is not a store URL Nix would print, and is refused.
func parseStoreURL(s string) (storeURL, error) {
	rest, rawQuery, _ := strings.Cut(s, "?")
	u, err := url.Parse(rest)
	if err != nil {
		return storeURL{}, err
	}
	if u.Scheme == "" || u.Opaque != "" || u.Fragment != "" {
		return storeURL{}, fmt.Errorf("%q is not a store URL", s)
	}
	out := storeURL{
		scheme: strings.ToLower(u.Scheme),
		host:   strings.ToLower(u.Hostname()),
		port:   u.Port(),
		path:   strings.TrimSuffix(u.Path, "/"),
		query:  map[string]string{},
	}
	if u.User != nil {
		out.user = u.User.String()
	}
	if rawQuery == "" {
		return out, nil
	}
	for _, kv := range strings.Split(rawQuery, "&") {
		k, v, _ := strings.Cut(kv, "=")
		dk, errK := url.PathUnescape(k)
		dv, errV := url.PathUnescape(v)
		if err := cmp.Or(errK, errV); err != nil {
			return storeURL{}, err
		}
		if _, dup := out.query[dk]; dup {
			return storeURL{}, fmt.Errorf("%q: query parameter %s twice", s, dk)
		}
		out.query[dk] = dv
	}
	return out, nil
}
