package nix

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseShowConfigJSON(t *testing.T) {
	// The shape Nix 2.8 prints (every setting an object with "value"), and
	// the flat shape of older versions.
	nested := `{"substituters":{"aliases":["binary-caches"],"defaultValue":[],"description":"x","value":["https://a","ssh://b"]},
		"fallback":{"value":true},"max-jobs":{"value":1},"access-tokens":{"value":{"github.com":"t","a":"b"}},
		"builders":{"value":"@/etc/nix/machines"},"post-build-hook":{"value":null},"cores":{"value":0}}`
	flat := `{"substituters":["https://a","ssh://b"],"fallback":true,"max-jobs":1,"access-tokens":{"github.com":"t","a":"b"},
		"builders":"@/etc/nix/machines","post-build-hook":null,"cores":0}`
	want := map[string]string{
		"substituters": "https://a ssh://b", "fallback": "true", "max-jobs": "1", "access-tokens": "a=b github.com=t",
		"builders": "@/etc/nix/machines", "post-build-hook": "", "cores": "0",
	}
	for name, in := range map[string]string{"nested": nested, "flat": flat} {
		got, err := ParseShowConfigJSON([]byte(in))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: mismatch (-want +got):\n%s", name, diff)
		}
	}
	if _, err := ParseShowConfigJSON([]byte("substituters = x")); err == nil {
		t.Error("ParseShowConfigJSON accepted text")
	}
}

// nixConfDir writes nix.conf (the user's own lines) and, when fragment is
// not nil, nixpeer.conf into a new directory.
func nixConfDir(t *testing.T, nixConf string, fragment []byte) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix.conf"), []byte(nixConf), 0o644); err != nil {
		t.Fatal(err)
	}
	if fragment != nil {
		if err := os.WriteFile(filepath.Join(dir, "nixpeer.conf"), fragment, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// liveSettings returns settings for a host that both fetches and signs.
func liveSettings(t *testing.T) Settings {
	t.Helper()
	keyDir := filepath.Join(t.TempDir(), "keys")
	pk, _, err := EnsureCacheKey(keyDir, "staging-1")
	if err != nil {
		t.Fatal(err)
	}
	sub, err := SubstituterURL("ssh", "127.0.0.2", 22, "/var/lib/nixpeer/ssh/id_ed25519", testSSHKey(t, 5), 0)
	if err != nil {
		t.Fatal(err)
	}
	return Settings{
		Substituters:      []string{sub},
		TrustedPublicKeys: []string{pk.String()},
		Fallback:          true,
		SecretKeyFiles:    []string{filepath.Join(keyDir, SecretKeyFileName)},
	}
}

func showConfig(t *testing.T, confDir string) map[string]string {
	t.Helper()
	env := []string{"NIX_CONF_DIR=" + confDir, "NIX_USER_CONF_FILES=" + filepath.Join(confDir, "no-user-conf"), "NIX_CONFIG="}
	cfg, err := (&CLI{Env: env}).ShowConfig(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// TestIncludeIsLiveInNix: real Nix reads nix.conf with the include that
// EnsureInclude adds and the fragment RenderNixConf writes; every nixpeer
// setting is live and the user's own substituter stays.
func TestIncludeIsLiveInNix(t *testing.T) {
	requireNix(t, "nix")
	s := liveSettings(t)
	fragment, err := RenderNixConf(s)
	if err != nil {
		t.Fatal(err)
	}
	const user = "# the user's own\r\nsubstituters = https://example.invalid\nsandbox = false"
	conf, changed := EnsureInclude([]byte(user), "!include nixpeer.conf")
	if !changed || !strings.HasPrefix(string(conf), user+"\n") {
		t.Fatalf("EnsureInclude changed the user's lines:\n%q", conf)
	}
	cfg := showConfig(t, nixConfDir(t, string(conf), fragment))
	if missing := Live(s, cfg); len(missing) != 0 {
		t.Fatalf("settings not live: %q\nsubstituters = %s", missing, cfg["substituters"])
	}
	if !strings.Contains(" "+cfg["substituters"]+" ", " https://example.invalid ") {
		t.Errorf("the user's substituter is gone: substituters = %s", cfg["substituters"])
	}
	if !strings.Contains(cfg["trusted-public-keys"], "cache.nixos.org-1:") {
		t.Errorf("cache.nixos.org's key is gone: trusted-public-keys = %s", cfg["trusted-public-keys"])
	}
	if cfg["sandbox"] != "false" {
		t.Errorf("sandbox = %q, the user's false is lost", cfg["sandbox"])
	}
}

// TestLiveReportsWhatNixDoesNotUse: without the include nothing is live;
// with the include before a user's substituters line, Nix drops the extra
// substituters, which is why EnsureInclude moves the include to the end.
func TestLiveReportsWhatNixDoesNotUse(t *testing.T) {
	requireNix(t, "nix")
	s := liveSettings(t)
	fragment, err := RenderNixConf(s)
	if err != nil {
		t.Fatal(err)
	}
	missing := Live(s, showConfig(t, nixConfDir(t, "substituters = https://example.invalid\n", fragment)))
	want := []string{
		"substituter " + s.Substituters[0] + " is not in substituters",
		"trusted public key " + s.TrustedPublicKeys[0] + " is not in trusted-public-keys",
		"fallback is false, not true",
		"secret key file " + s.SecretKeyFiles[0] + " is not in secret-key-files",
	}
	if diff := cmp.Diff(want, missing); diff != "" {
		t.Errorf("without the include (-want +got):\n%s", diff)
	}

	early := "!include nixpeer.conf\nsubstituters = https://example.invalid\n"
	missing = Live(s, showConfig(t, nixConfDir(t, early, fragment)))
	if diff := cmp.Diff([]string{"substituter " + s.Substituters[0] + " is not in substituters"}, missing); diff != "" {
		t.Errorf("with the include before substituters (-want +got):\n%s", diff)
	}
	fixed, _ := EnsureInclude([]byte(early), "!include nixpeer.conf")
	if missing := Live(s, showConfig(t, nixConfDir(t, string(fixed), fragment))); len(missing) != 0 {
		t.Errorf("after EnsureInclude moved the include: not live: %q", missing)
	}
}

func TestShowConfigReportsNixErrors(t *testing.T) {
	requireNix(t, "nix")
	dir := nixConfDir(t, "include missing.conf\n", nil)
	_, err := (&CLI{Env: []string{"NIX_CONF_DIR=" + dir}}).ShowConfig(context.Background())
	if err == nil || !strings.Contains(err.Error(), "missing.conf") {
		t.Fatalf("ShowConfig with a broken nix.conf: err = %v, want Nix's complaint", err)
	}
}
