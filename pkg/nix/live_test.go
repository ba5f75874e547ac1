package nix

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLive(t *testing.T) {
	s := Settings{
		Substituters:      []string{"ssh://nix-ssh@a", "ssh://nix-ssh@b"},
		TrustedPublicKeys: []string{"a-1:x"},
		Fallback:          true,
		SecretKeyFiles:    []string{"/k"},
	}
	all := map[string]string{
		"substituters":        "https://cache.nixos.org/ ssh://nix-ssh@a ssh://nix-ssh@b",
		"trusted-public-keys": "cache.nixos.org-1:y a-1:x",
		"fallback":            "true",
		"secret-key-files":    "/k",
	}
	if got := Live(s, all); got != nil {
		t.Errorf("all live: Live = %q, want nil", got)
	}
	if got := Live(Settings{}, map[string]string{}); got != nil {
		t.Errorf("nothing wanted: Live = %q, want nil", got)
	}
	got := Live(s, map[string]string{"substituters": "ssh://nix-ssh@a ssh://nix-ssh@bb", "trusted-public-keys": "a-1:xx"})
	want := []string{
		"substituter ssh://nix-ssh@b is not in substituters",
		"trusted public key a-1:x is not in trusted-public-keys",
		"fallback is not set, not true",
		"secret key file /k is not in secret-key-files",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
}

func TestStillLive(t *testing.T) {
	eff := map[string]string{"substituters": "https://cache.nixos.org/ ssh://nix-ssh@a"}
	got := StillLive([]string{"ssh://nix-ssh@a", "ssh://nix-ssh@b", "ssh://nix-ssh@a"}, eff)
	want := []string{"substituter ssh://nix-ssh@a is still in substituters"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("mismatch (-want +got):\n%s", diff)
	}
	if got := StillLive(nil, eff); got != nil {
		t.Errorf("nothing withdrawn: %q", got)
	}
}
