package nix

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestRenderNixConf(t *testing.T) {
	hk := testSSHKey(t, 7)
	u1, err := SubstituterURL("ssh", "staging", 22, "/var/lib/nixpeer/ssh/id_ed25519", hk, 0)
	if err != nil {
		t.Fatal(err)
	}
	u2 := "ssh-ng://nix-ssh@10.0.0.9"
	k1, k2 := testCacheKey(t, "b-1", 1), testCacheKey(t, "a-1", 2)
	for _, tc := range []struct {
		name string
		in   Settings
		want string
	}{
		{"empty", Settings{}, nixConfHeader},
		{"fetching host", Settings{
			Substituters:      []string{u2, u1, u2},
			TrustedPublicKeys: []string{k1, k2, k1},
			Fallback:          true,
		}, nixConfHeader +
			"extra-substituters = " + u2 + " " + u1 + "\n" +
			"extra-trusted-public-keys = " + k2 + " " + k1 + "\n" +
			"fallback = true\n"},
		{"serving host", Settings{SecretKeyFiles: []string{"/var/lib/nixpeer/keys/cache-priv-key.pem", "/etc/nix/a.pem"}},
			nixConfHeader + "extra-secret-key-files = /etc/nix/a.pem /var/lib/nixpeer/keys/cache-priv-key.pem\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderNixConf(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, string(got)); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestRenderNixConfRefusesHostileValues(t *testing.T) {
	k := testCacheKey(t, "k", 1)
	for _, tc := range []struct {
		name string
		in   Settings
	}{
		{"newline in substituter", Settings{Substituters: []string{"ssh://nix-ssh@h\nsubstituters = https://evil"}}},
		{"space in substituter", Settings{Substituters: []string{"ssh://nix-ssh@h https://evil"}}},
		{"comment in substituter", Settings{Substituters: []string{"ssh://nix-ssh@h#x"}}},
		{"https substituter", Settings{Substituters: []string{"https://evil.example"}}},
		{"newline in key", Settings{TrustedPublicKeys: []string{k + "\nsubstituters = x"}}},
		{"space in key", Settings{TrustedPublicKeys: []string{k + " other:x"}}},
		{"bad key", Settings{TrustedPublicKeys: []string{"k:AAAA"}}},
		{"relative key file", Settings{SecretKeyFiles: []string{"keys/k.pem"}}},
		{"key file with newline", Settings{SecretKeyFiles: []string{"/k\nfallback = false"}}},
		{"key file with space", Settings{SecretKeyFiles: []string{"/a b"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderNixConf(tc.in)
			if err == nil {
				t.Fatalf("RenderNixConf accepted it:\n%s", got)
			}
			if !strings.HasPrefix(err.Error(), "render nix.conf fragment: ") {
				t.Errorf("error %q does not say what was being done", err)
			}
		})
	}
}
