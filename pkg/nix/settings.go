package nix

import "fmt"

// Settings are the Nix settings nixpeer manages on one host.
type Settings struct {
	// Substituters are ssh:// or ssh-ng:// store URLs of serving hosts, as
	// SubstituterURL makes them (see ValidateSubstituter). Their order is
	// kept: Nix asks substituters of equal priority in this order.
	Substituters []string
	// TrustedPublicKeys are binary-cache public keys, "NAME:BASE64".
	TrustedPublicKeys []string
	// Fallback makes Nix build locally when a substituter fails. A
	// production host needs it: without it an unreachable staging host
	// aborts every build (Nix before 2.32).
	Fallback bool
	// SecretKeyFiles are absolute paths of signing keys (see ValidatePath).
	SecretKeyFiles []string
	// NoNegativeCache sets narinfo-cache-negative-ttl = 0: a host that
	// reads a cache through its agent sees a path published after it
	// first asked for it (Nix would remember the miss for an hour).
	NoNegativeCache bool
	// PostBuildHook is the program Nix runs after each build ("" for
	// none): on a host that publishes, the hook that queues what was
	// built.
	PostBuildHook string
}

// Validate checks every value of s against its format.
func (s Settings) Validate() error {
	for _, u := range s.Substituters {
		if err := ValidateSubstituter(u); err != nil {
			return err
		}
	}
	for _, k := range s.TrustedPublicKeys {
		if err := validateTrustedKey(k); err != nil {
			return err
		}
	}
	for _, p := range s.SecretKeyFiles {
		if err := ValidatePath(p); err != nil {
			return fmt.Errorf("secret key file: %w", err)
		}
	}
	if s.PostBuildHook != "" {
		if err := ValidatePath(s.PostBuildHook); err != nil {
			return fmt.Errorf("post-build hook: %w", err)
		}
	}
	return nil
}

// dedup returns the distinct values of in, in their first order.
func dedup(in []string) []string {
	seen := make(map[string]bool, len(in))
	out := make([]string, 0, len(in))
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
