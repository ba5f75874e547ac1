package nix

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// moduleNixPath is nixpeer's own NixOS module, in this repository.
const moduleNixPath = "../../configs/nixos/module.nix"

// moduleStubs evaluates a NixOS module without nixpkgs: lib and pkgs are
// stubs that keep what matters (mkIf conditions, option defaults, the JSON
// of the generated settings file), and config is the option defaults of
// services.nixpeer overlaid with the test's values.
const moduleStubs = `
module: cfg:
let
  lib = {
    mkEnableOption = d: { default = false; description = d; };
    mkOption = o: o;
    mkIf = c: v: { _if = c; _then = v; };
    optionals = c: l: if c then l else [ ];
    escapeShellArgs = l: builtins.concatStringsSep " " (map (a: "'" + a + "'") l);
    types = {
      package = "package"; bool = "bool"; path = "path"; str = "str"; port = "port";
      nullOr = t: "nullOr"; strMatching = r: "strMatching " + r; enum = l: "enum";
    };
  };
  pkgs = {
    formats.json = { }: {
      type = "json";
      generate = name: value: "/nix/store/generated-" + name + "=" + builtins.toJSON value;
    };
    openssh = "/nix/store/openssh";
  };
  resolve = v:
    if builtins.isAttrs v then
      (if v ? _if then (if v._if then resolve v._then else null) else builtins.mapAttrs (_: resolve) v)
    else if builtins.isList v then map resolve v
    else v;
  m = import module {
    inherit lib pkgs;
    config = {
      services.nixpeer = builtins.mapAttrs (_: o: o.default or null) m.options.services.nixpeer // cfg;
      nix.package = "/nix/store/nix";
    };
  };
in {
  options = builtins.mapAttrs (_: o: { default = o.default or null; type = o.type or "bool"; }) m.options.services.nixpeer;
  config = resolve m.config;
}
`

func evalModuleNix(t *testing.T, cfgJSON string) map[string]any {
	t.Helper()
	dir := t.TempDir()
	stubs := filepath.Join(dir, "stubs.nix")
	if err := os.WriteFile(stubs, []byte(moduleStubs), 0o644); err != nil {
		t.Fatal(err)
	}
	module, err := filepath.Abs(moduleNixPath)
	if err != nil {
		t.Fatal(err)
	}
	expr := "import " + NixString(stubs) + " " + NixString(module) + " (builtins.fromJSON " + NixString(cfgJSON) + ")"
	out := runProgram(t, nixEnv(t), "nix-instantiate", "--eval", "--strict", "--json", "-E", expr)
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("nix-instantiate printed %q: %v", out, err)
	}
	return v
}

func TestModuleNixParses(t *testing.T) {
	requireNix(t, "nix-instantiate")
	runProgram(t, nixEnv(t), "nix-instantiate", "--parse", moduleNixPath)
}

func TestModuleNixOptions(t *testing.T) {
	requireNix(t, "nix-instantiate")
	got := evalModuleNix(t, `{}`)["options"]
	want := map[string]any{
		"enable":        map[string]any{"default": false, "type": "bool"},
		"package":       map[string]any{"default": nil, "type": "package"},
		"settings":      map[string]any{"default": map[string]any{}, "type": "json"},
		"configFile":    map[string]any{"default": nil, "type": "nullOr"},
		"host":          map[string]any{"default": nil, "type": "nullOr"},
		"serve":         map[string]any{"default": false, "type": "bool"},
		"serveProtocol": map[string]any{"default": "ssh", "type": "enum"},
		"peerPort":      map[string]any{"default": float64(7722), "type": "port"},
		"openFirewall":  map[string]any{"default": true, "type": "bool"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("options mismatch (-want +got):\n%s", diff)
	}
}

func TestModuleNixConfig(t *testing.T) {
	requireNix(t, "nix-instantiate")
	unit := func(execStart string) map[string]any {
		return map[string]any{
			"description": "nixpeer agent",
			"wantedBy":    []any{"multi-user.target"},
			"wants":       []any{"network-online.target"},
			"after":       []any{"network-online.target", "nix-daemon.service"},
			"path":        []any{"/nix/store/nix", "/nix/store/openssh"},
			"serviceConfig": map[string]any{
				"Type":                 "notify",
				"ExecStart":            execStart,
				"StateDirectory":       "nixpeer",
				"StateDirectoryMode":   "0755",
				"RuntimeDirectory":     "nixpeer",
				"RuntimeDirectoryMode": "0750",
				"Restart":              "on-failure",
				"RestartSec":           float64(5),
			},
		}
	}
	common := func(sshServe, ports any, execStart string, assertion bool) map[string]any {
		return map[string]any{
			"assertions": []any{map[string]any{
				"assertion": assertion,
				"message":   "services.nixpeer: set either settings or configFile, not both.",
			}},
			"nix": map[string]any{
				"extraOptions": "!include /var/lib/nixpeer/nix.conf\n",
				"sshServe":     sshServe,
			},
			"services":   map[string]any{"openssh": map[string]any{"authorizedKeysFiles": []any{"/var/lib/nixpeer/authorized_keys.d/%u"}}},
			"networking": map[string]any{"firewall": map[string]any{"allowedTCPPorts": ports}},
			"systemd":    map[string]any{"services": map[string]any{"nixpeer": unit(execStart)}},
		}
	}
	for _, tc := range []struct {
		name, cfg string
		want      any
	}{
		{"disabled", `{}`, nil},
		{"serving host", `{"enable": true, "package": "/nix/store/nixpeer", "serve": true, "host": "staging", "settings": {"fleet": ["a"]}}`,
			common(map[string]any{"enable": true, "protocol": "ssh"}, []any{float64(7722)},
				`'/nix/store/nixpeer/bin/nixpeer' 'run' '--config' '/nix/store/generated-nixpeer.json={"fleet":["a"]}' '--host' 'staging'`, true)},
		{"fetching host with its own file", `{"enable": true, "package": "/nix/store/nixpeer", "configFile": "/etc/nixpeer.yaml", "peerPort": 9000, "openFirewall": false}`,
			common(nil, nil, `'/nix/store/nixpeer/bin/nixpeer' 'run' '--config' '/etc/nixpeer.yaml'`, true)},
		{"ssh-ng server, both settings and file", `{"enable": true, "package": "/p", "serve": true, "serveProtocol": "ssh-ng", "configFile": "/c", "settings": {"a": 1}}`,
			common(map[string]any{"enable": true, "protocol": "ssh-ng"}, []any{float64(7722)},
				`'/p/bin/nixpeer' 'run' '--config' '/c'`, false)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := evalModuleNix(t, tc.cfg)["config"]
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("config mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
