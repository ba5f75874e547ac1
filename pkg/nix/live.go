package nix

import (
	"fmt"
	"strings"
)

// Live compares the settings nixpeer wants with the effective configuration
// (from ShowConfig) and returns one sentence per wanted setting that Nix
// does not use: a substituter missing from substituters, a key missing from
// trusted-public-keys, fallback not true while wanted, a signing key file
// missing from secret-key-files. It returns nil when every one is live.
func Live(s Settings, effective map[string]string) []string {
	var missing []string
	check := func(setting string, wanted []string, what string) {
		have := map[string]bool{}
		for _, v := range strings.Fields(effective[setting]) {
			have[v] = true
		}
		for _, w := range dedup(wanted) {
			if !have[w] {
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
	return missing
}

// StillLive returns one sentence per substituter in withdrawn that the
// effective configuration still uses: nixpeer took it out (its peer went
// dark), and it must leave the live settings, not only the file.
func StillLive(withdrawn []string, effective map[string]string) []string {
	have := map[string]bool{}
	for _, v := range strings.Fields(effective["substituters"]) {
		have[v] = true
	}
	var live []string
	for _, w := range dedup(withdrawn) {
		if have[w] {
			live = append(live, fmt.Sprintf("substituter %s is still in substituters", w))
		}
	}
	return live
}
