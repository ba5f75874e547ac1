package nix

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

// evalModule writes a module to a file, checks it parses, and evaluates it
// with stub arguments to JSON.
func evalModule(t *testing.T, module []byte) any {
	t.Helper()
	file := filepath.Join(t.TempDir(), "nixpeer.nix")
	if err := os.WriteFile(file, module, 0o644); err != nil {
		t.Fatal(err)
	}
	env := nixEnv(t)
	runProgram(t, env, "nix-instantiate", "--parse", file)
	out := runProgram(t, env, "nix-instantiate", "--eval", "--strict", "--json", "-E",
		"import "+NixString(file)+" { config = {}; lib = {}; pkgs = {}; options = {}; }")
	var v any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("nix-instantiate printed %q: %v", out, err)
	}
	return v
}

func TestRenderModuleEvaluatesInNix(t *testing.T) {
	requireNix(t, "nix-instantiate")
	a, b, hk := testSSHKey(t, 1), testSSHKey(t, 2), testSSHKey(t, 3)
	sub, err := SubstituterURL("ssh", "10.0.0.2", 22, "/var/lib/nixpeer/ssh/id_ed25519", hk, 0)
	if err != nil {
		t.Fatal(err)
	}
	k1, k2 := testCacheKey(t, "staging-1", 1), testCacheKey(t, "prod-1", 2)
	sorted := func(s ...string) []any {
		out := make([]any, len(s))
		for i, v := range s {
			out[i] = v
		}
		if len(s) == 2 && s[1] < s[0] {
			out[0], out[1] = out[1], out[0]
		}
		return out
	}
	for _, tc := range []struct {
		name string
		in   ModuleSettings
		want any
	}{
		{"nothing", ModuleSettings{}, map[string]any{}},
		{"serving host", ModuleSettings{
			Serve: true, Protocol: "ssh", ServeKeys: []ssh.PublicKey{b, a, a},
			Settings: Settings{SecretKeyFiles: []string{"/var/lib/nixpeer/keys/cache-priv-key.pem"}},
		}, map[string]any{
			"nix": map[string]any{
				"sshServe": map[string]any{
					"enable":   true,
					"keys":     sorted("restrict "+testSSHKeyLine(b), "restrict "+testSSHKeyLine(a)),
					"protocol": "ssh",
				},
				"settings": map[string]any{"secret-key-files": []any{"/var/lib/nixpeer/keys/cache-priv-key.pem"}},
			},
		}},
		{"serving host without clients", ModuleSettings{Serve: true, Protocol: "ssh-ng"}, map[string]any{
			"nix": map[string]any{"sshServe": map[string]any{"enable": true, "keys": []any{}, "protocol": "ssh-ng"}},
		}},
		{"fetching host", ModuleSettings{
			Settings: Settings{Substituters: []string{sub}, TrustedPublicKeys: []string{k1, k2}, Fallback: true},
			KnownHosts: []KnownHost{
				{Name: "staging", HostNames: []string{"[10.0.0.2]:2222", "10.0.0.2", "staging.example.org"}, PublicKey: hk},
				{Name: "other", HostNames: []string{"fd00::3"}, PublicKey: a},
			},
		}, map[string]any{
			"nix": map[string]any{"settings": map[string]any{
				"substituters":        []any{sub},
				"trusted-public-keys": sorted(k1, k2),
				"fallback":            true,
			}},
			"programs": map[string]any{"ssh": map[string]any{"knownHosts": map[string]any{
				"staging": map[string]any{
					"hostNames": []any{"10.0.0.2", "[10.0.0.2]:2222", "staging.example.org"},
					"publicKey": testSSHKeyLine(hk),
				},
				"other": map[string]any{"hostNames": []any{"fd00::3"}, "publicKey": testSSHKeyLine(a)},
			}}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mod, err := RenderModule(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(mod), "mkForce") {
				t.Error("module uses mkForce")
			}
			if diff := cmp.Diff(tc.want, evalModule(t, mod)); diff != "" {
				t.Errorf("evaluated module mismatch (-want +got):\n%s\nmodule:\n%s", diff, mod)
			}
		})
	}
}

func TestRenderModuleRefusesHostileValues(t *testing.T) {
	a, hk := testSSHKey(t, 1), testSSHKey(t, 3)
	k := testCacheKey(t, "k", 1)
	for _, tc := range []struct {
		name string
		in   ModuleSettings
		want string
	}{
		{"protocol with quote", ModuleSettings{Serve: true, Protocol: `ssh"; evil = true; x = "`}, "protocol"},
		{"protocol without serve", ModuleSettings{Protocol: "ssh"}, "Serve is not"},
		{"keys without serve", ModuleSettings{ServeKeys: []ssh.PublicKey{a}}, "Serve is not"},
		{"ecdsa client key", ModuleSettings{Serve: true, Protocol: "ssh", ServeKeys: []ssh.PublicKey{testECDSAKey(t)}}, `has key type "ecdsa-sha2-nistp256"; want ssh-ed25519`},
		{"interpolation in key file", ModuleSettings{Settings: Settings{SecretKeyFiles: []string{"/k${builtins.abort \"x\"}"}}}, "character"},
		{"newline in key file", ModuleSettings{Settings: Settings{SecretKeyFiles: []string{"/k\n"}}}, "character"},
		{"quote in substituter", ModuleSettings{Settings: Settings{Substituters: []string{`ssh://nix-ssh@h"];evil=["`}}}, "forbidden character"},
		{"interpolation in substituter", ModuleSettings{Settings: Settings{Substituters: []string{"ssh://nix-ssh@h${x}"}}}, "forbidden character"},
		{"backslash in trusted key", ModuleSettings{Settings: Settings{TrustedPublicKeys: []string{k + `\`}}}, "trusted public key"},
		{"quote in known host name", ModuleSettings{KnownHosts: []KnownHost{{Name: `a"`, HostNames: []string{"h"}, PublicKey: hk}}}, "known host name"},
		{"interpolation in known host name", ModuleSettings{KnownHosts: []KnownHost{{Name: "${x}", HostNames: []string{"h"}, PublicKey: hk}}}, "known host name"},
		{"newline in host name", ModuleSettings{KnownHosts: []KnownHost{{Name: "a", HostNames: []string{"h\nx"}, PublicKey: hk}}}, "host"},
		{"no host names", ModuleSettings{KnownHosts: []KnownHost{{Name: "a", PublicKey: hk}}}, "no host names"},
		{"bad port", ModuleSettings{KnownHosts: []KnownHost{{Name: "a", HostNames: []string{"[h]:0"}, PublicKey: hk}}}, "port"},
		{"bracketed host without port", ModuleSettings{KnownHosts: []KnownHost{{Name: "a", HostNames: []string{"[h]"}, PublicKey: hk}}}, "neither HOST nor [HOST]:PORT"},
		{"no host key", ModuleSettings{KnownHosts: []KnownHost{{Name: "a", HostNames: []string{"h"}}}}, "missing"},
		{"duplicate known host", ModuleSettings{KnownHosts: []KnownHost{
			{Name: "a", HostNames: []string{"h"}, PublicKey: hk}, {Name: "a", HostNames: []string{"i"}, PublicKey: hk},
		}}, "twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderModule(tc.in)
			if err == nil {
				t.Fatalf("RenderModule accepted it:\n%s", got)
			}
			if !strings.HasPrefix(err.Error(), "render NixOS module: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want one that starts with what was done and says %q", err, tc.want)
			}
		})
	}
}
