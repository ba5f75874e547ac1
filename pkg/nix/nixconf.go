package nix

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// nixConfHeader starts the managed nix.conf fragment.
const nixConfHeader = `# Managed by nixpeer: it rewrites this file whenever the fleet changes.
# Do not edit it; nix.conf includes it with "!include", as its last line.
`

// RenderNixConf renders the managed nix.conf fragment (nixpeer.conf) that
// nix.conf pulls in with !include. Lists use the extra- form, which appends
// to what nix.conf already says, so the user's own substituters, keys
// and cache.nixos.org stay:
//
//	extra-substituters = URL ...
//	extra-trusted-public-keys = NAME:KEY ...
//	fallback = true
//	extra-secret-key-files = PATH ...
//
// (extra-secret-key-files rather than secret-key-files, for the same reason:
// a signing key the user configured keeps working; Nix 2.8 accepts it.)
// An empty list and a false Fallback write no line at all, so they never
// override a value the user chose. Duplicates are dropped; substituters keep
// their order (it matters), keys and files are sorted. The output is the
// same for the same Settings.
func RenderNixConf(s Settings) ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("render nix.conf fragment: %w", err)
	}
	var b bytes.Buffer
	b.WriteString(nixConfHeader)
	writeList := func(name string, values []string) {
		if len(values) > 0 {
			fmt.Fprintf(&b, "%s = %s\n", name, strings.Join(values, " "))
		}
	}
	writeList("extra-substituters", dedup(s.Substituters))
	writeList("extra-trusted-public-keys", sortedUnique(s.TrustedPublicKeys))
	if s.Fallback {
		b.WriteString("fallback = true\n")
	}
	writeList("extra-secret-key-files", sortedUnique(s.SecretKeyFiles))
	if s.NoNegativeCache {
		b.WriteString("narinfo-cache-negative-ttl = 0\n")
	}
	if s.PostBuildHook != "" {
		fmt.Fprintf(&b, "post-build-hook = %s\n", s.PostBuildHook)
	}
	return b.Bytes(), nil
}

// sortedUnique returns the distinct values of in, sorted.
func sortedUnique(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}
