package nixfiles

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/desired"
)

// root is the repository, from this package's directory.
const root = "../.."

// nixFiles are every Nix expression of the repository.
func nixFiles(t *testing.T) []string {
	t.Helper()
	files := []string{filepath.Join(root, "flake.nix"), filepath.Join(root, "default.nix")}
	err := filepath.WalkDir(filepath.Join(root, "nix"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".nix") {
			files = append(files, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// nix runs a Nix program with a configuration of the test's own and
// returns its standard output.
func nix(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	testenv.Require(t, name)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "nix.conf"), []byte("substituters =\nexperimental-features = nix-command\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+dir, "NIX_USER_CONF_FILES="+filepath.Join(dir, "none"), "NIX_CONFIG=")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return out
}

func TestEveryNixFileParses(t *testing.T) {
	files := nixFiles(t)
	for _, want := range []string{"nix/package.nix", "nix/module.nix", "nix/hardening.nix", "nix/tests/vm.nix"} {
		if !slices.Contains(files, filepath.Join(root, want)) {
			t.Errorf("%s is missing", want)
		}
	}
	for _, f := range files {
		nix(t, "nix-instantiate", "--parse", f)
	}
}

// TestVendorHashIsCurrent: nix/package.nix's vendorHash is the hash of
// `go mod vendor`'s output for go.mod as it is (scripts/vendorhash.sh
// --write puts the right one in).
func TestVendorHashIsCurrent(t *testing.T) {
	testenv.Require(t, "nix", "go")
	raw, err := os.ReadFile(filepath.Join(root, "nix/package.nix"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`vendorHash = "(sha256-[A-Za-z0-9+/=]+)";`).FindSubmatch(raw)
	if m == nil {
		t.Fatal("nix/package.nix has no vendorHash = \"sha256-...\";")
	}
	vendor := filepath.Join(t.TempDir(), "vendor")
	cmd := exec.Command("go", "mod", "vendor", "-o", vendor)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go mod vendor: %v\n%s", err, out)
	}
	got := strings.TrimSpace(string(nix(t, "nix", "hash", "path", "--sri", vendor)))
	if got != string(m[1]) {
		t.Fatalf("nix/package.nix has vendorHash %s, but go.mod's dependencies hash to %s: run scripts/vendorhash.sh --write", m[1], got)
	}
}

// TestGoDirectiveIsTheMinimum: go.mod asks for the Go that the code and
// its dependencies need, no newer: buildGoModule does not download
// toolchains, so a nixpkgs whose Go 1.26 is an earlier patch release than
// the directive would refuse to build the package. The build with exactly
// that Go (fetched through the module proxy) runs unless -short.
func TestGoDirectiveIsTheMinimum(t *testing.T) {
	testenv.Require(t, "go")
	cmd := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.GoVersion}}", "all")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -m all: %v", err)
	}
	var main, need, needBy string
	for i, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, v, _ := strings.Cut(line, " ")
		if i == 0 {
			main = v
		} else if v != "" && gover(v) > gover(need) {
			need, needBy = v, path
		}
	}
	if gover(main) > gover(need) {
		t.Fatalf("go.mod says go %s, but its dependencies need only %s (%s): lower it", main, need, needBy)
	}
	if testing.Short() {
		return
	}
	build := exec.Command("go", "build", "-o", filepath.Join(t.TempDir(), "nixpeer"), "./cmd/agent")
	build.Dir = root
	build.Env = append(os.Environ(), "GOTOOLCHAIN=go"+main)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build with go %s: %v\n%s", main, err, out)
	}
}

// gover makes a Go version ("1.26", "1.26.0", "1.9.3") comparable as a
// string: each number zero-padded to 4 digits, a missing patch as 0.
func gover(v string) string {
	parts := strings.Split(v, ".")
	for len(parts) < 3 {
		parts = append(parts, "0")
	}
	for i, p := range parts {
		parts[i] = fmt.Sprintf("%04s", p)
	}
	return strings.Join(parts, ".")
}

// stubs evaluates the NixOS module without nixpkgs: lib and pkgs are a
// stand-in that keeps what matters (mkIf conditions, option defaults,
// the JSON of the generated settings file); config is the option
// defaults of services.nixpeer overlaid with the test's values.
const stubs = `
module: cfg:
let
  lib = {
    mkEnableOption = d: { default = false; description = d; };
    mkOption = o: o;
    mkIf = c: v: { _if = c; _then = v; };
    mkDefault = v: v;
    mkAfter = v: v;
    hasSuffix = suf: str: let n = builtins.stringLength str; k = builtins.stringLength suf;
      in n >= k && builtins.substring (n - k) k str == suf;
    literalExpression = e: e;
    optionals = c: l: if c then l else [ ];
    filterAttrs = f: s: builtins.listToAttrs (builtins.filter (a: f a.name a.value)
      (map (n: { name = n; value = s.${n}; }) (builtins.attrNames s)));
    mapAttrs = builtins.mapAttrs;
    hasInfix = infix: str: builtins.length (builtins.split infix str) > 1; # infix is a plain string here
    hasPrefix = pre: str: builtins.substring 0 (builtins.stringLength pre) str == pre;
    findFirst = p: d: l: let m = builtins.filter p l; in if m == [ ] then d else builtins.head m;
    escapeShellArgs = l: builtins.concatStringsSep " " (map (a: "'" + a + "'") l);
    types = {
      package = "package"; bool = "bool"; path = "path"; str = "str"; port = "port";
      nullOr = t: "nullOr"; strMatching = r: "strMatching"; enum = l: "enum";
      listOf = t: "listOf"; submodule = m: "submodule"; either = a: b: "either";
    };
  };
  pkgs = {
    formats.json = { }: {
      type = "json";
      generate = name: value: "/nix/store/generated-" + name + "=" + builtins.toJSON value;
    };
    openssh = "/nix/store/openssh";
    coreutils = "/nix/store/coreutils";
    callPackage = f: args: "/nix/store/nixpeer-from-package-nix";
    yq-go = "/nix/store/yq-go";
    # Stands in for the YAML to JSON conversion: a file of the test's own.
    runCommand = name: env: script: builtins.getEnv "NIXPEER_TEST_YAML_AS_JSON";
  };
  # An option's default; a set of options gives the set of their defaults.
  def = o: if o ? description then (o.default or null) else builtins.mapAttrs (_: def) o;
  resolve = v:
    if builtins.isAttrs v then
      (if v ? _if then (if v._if then resolve v._then else null) else builtins.mapAttrs (_: resolve) v)
    else if builtins.isList v then map resolve v
    else v;
  m = import module {
    inherit lib pkgs;
    config = {
      services.nixpeer = builtins.mapAttrs (_: def) m.options.services.nixpeer // cfg;
      nix.package = "/nix/store/nix";
      systemd.package = "/nix/store/systemd";
      networking.hostName = "staging";
    };
  };
in {
  options = builtins.mapAttrs (_: o: { default = o.default or null; type = o.type or "bool"; }) m.options.services.nixpeer;
  config = resolve m.config;
}
`

func evalModule(t *testing.T, cfgJSON string) map[string]any {
	t.Helper()
	dir := t.TempDir()
	stubsFile := filepath.Join(dir, "stubs.nix")
	if err := os.WriteFile(stubsFile, []byte(stubs), 0o644); err != nil {
		t.Fatal(err)
	}
	module, err := filepath.Abs(filepath.Join(root, "nix/module.nix"))
	if err != nil {
		t.Fatal(err)
	}
	q, _ := json.Marshal(cfgJSON) // a JSON string is a Nix string here
	expr := "import " + mustJSON(t, stubsFile) + " " + mustJSON(t, module) + " (builtins.fromJSON " + strings.ReplaceAll(string(q), "${", `\${`) + ")"
	out := nix(t, "nix-instantiate", "--eval", "--strict", "--json", "-E", expr)
	var v map[string]any
	if err := json.Unmarshal(out, &v); err != nil {
		t.Fatalf("nix-instantiate printed %q: %v", out, err)
	}
	return v
}

// get walks v along keys.
func get(v any, keys ...string) any {
	for _, k := range keys {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func TestModuleOptions(t *testing.T) {
	opts := evalModule(t, `{}`)["options"].(map[string]any)
	var names []string
	for k := range opts {
		names = append(names, k)
	}
	slices.Sort(names)
	want := []string{"configFile", "enable", "host", "logLevel", "metrics", "openFirewall", "package", "peerPort", "serve", "serveProtocol", "settings"}
	if diff := cmp.Diff(want, names); diff != "" {
		t.Fatalf("options (-want +got):\n%s", diff)
	}
	for k, v := range map[string]any{"package": "/nix/store/nixpeer-from-package-nix", "peerPort": float64(7722), "logLevel": "info", "serve": false, "openFirewall": true} {
		if got := get(opts, k, "default"); got != v {
			t.Errorf("default of %s: %v, want %v", k, got, v)
		}
	}
}

const fleetSettings = `{"hosts": [
  {"name": "staging", "address": "staging.example.com", "serve": {"protocol": "ssh-ng", "keyName": null}, "substituteFrom": null, "peerPort": 7800},
  {"name": "production", "address": "production.example.com", "substituteFrom": ["staging"], "serve": null}]}`

func TestModuleConfig(t *testing.T) {
	// A configFile of the host's own, in YAML, and what yq makes of it.
	dir := t.TempDir()
	yamlFile, jsonFile := filepath.Join(dir, "desired.yaml"), filepath.Join(dir, "desired.json")
	if err := os.WriteFile(yamlFile, []byte("hosts: [{name: staging, address: s, serve: {protocol: ssh-ng}}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jsonFile, []byte(fleetSettings), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NIXPEER_TEST_YAML_AS_JSON", jsonFile)
	for _, c := range []struct {
		name, cfg     string
		sshServe      any
		ports         any
		execStart     string
		settingsValid bool
	}{
		{"serving host, from its entry in settings", `{"enable": true, "host": "staging", "settings": ` + fleetSettings + `}`,
			map[string]any{"enable": true, "protocol": "ssh-ng"}, []any{float64(7800)},
			`'/nix/store/nixpeer-from-package-nix/bin/nixpeer' 'run' '--config' '/nix/store/generated-nixpeer.json=`, true},
		{"serving host, found by its host name", `{"enable": true, "settings": ` + fleetSettings + `}`,
			map[string]any{"enable": true, "protocol": "ssh-ng"}, []any{float64(7800)},
			`'/nix/store/nixpeer-from-package-nix/bin/nixpeer' 'run' '--config' '/nix/store/generated-nixpeer.json=`, true},
		{"fetching host", `{"enable": true, "host": "production", "logLevel": "debug", "settings": ` + fleetSettings + `}`,
			nil, []any{float64(7722)},
			`'/nix/store/nixpeer-from-package-nix/bin/nixpeer' 'run' '--config' '/nix/store/generated-nixpeer.json=`, true},
		{"its own YAML file, no firewall", `{"enable": true, "package": "/p", "configFile": "` + yamlFile + `", "openFirewall": false}`,
			map[string]any{"enable": true, "protocol": "ssh-ng"}, []any{}, `'/p/bin/nixpeer' 'run' '--config' '` + yamlFile + `' '--log-level' 'info'`, false},
		{"its own JSON file, not serving", `{"enable": true, "package": "/p", "host": "production", "configFile": "` + jsonFile + `"}`,
			nil, []any{float64(7722)}, `'/p/bin/nixpeer' 'run' '--config' '` + jsonFile + `' '--log-level' 'info'`, false},
		{"metrics over TCP", `{"enable": true, "package": "/p", "host": "production", "configFile": "` + jsonFile + `", "metrics": {"enable": true, "listenAddress": "::1", "port": 9000, "openFirewall": true}}`,
			nil, []any{float64(7722), float64(9000)}, `'/p/bin/nixpeer' 'run' '--config' '` + jsonFile + `' '--log-level' 'info' '--host' 'production' '--metrics-listen' '[::1]:9000'`, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			conf := evalModule(t, c.cfg)["config"]
			if diff := cmp.Diff(c.sshServe, get(conf, "nix", "sshServe")); diff != "" {
				t.Errorf("nix.sshServe (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(c.ports, get(conf, "networking", "firewall", "allowedTCPPorts")); diff != "" {
				t.Errorf("firewall (-want +got):\n%s", diff)
			}
			if got := get(conf, "nix", "extraOptions"); got != "!include /var/lib/nixpeer/nix.conf\n" {
				t.Errorf("nix.extraOptions %q", got)
			}
			if got, _ := get(conf, "services", "openssh", "extraConfig").(string); !strings.HasPrefix(got, "Match User nix-ssh\n") ||
				!strings.Contains(got, "AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u /var/lib/nixpeer/authorized_keys.d/%u\n") || !strings.Contains(got, "DisableForwarding yes\n") {
				t.Errorf("services.openssh.extraConfig %q: want nix-ssh's keys and no forwarding in a Match block of its own", got)
			}
			if get(conf, "services", "openssh", "authorizedKeysFiles") != nil {
				t.Error("services.openssh.authorizedKeysFiles is set: for every user")
			}
			if got := get(conf, "users", "groups", "nixpeer"); got == nil {
				t.Error("no nixpeer group")
			}
			if pkgs, _ := get(conf, "environment", "systemPackages").([]any); len(pkgs) != 1 || !strings.HasPrefix(c.execStart, "'"+pkgs[0].(string)+"/bin/nixpeer'") {
				t.Errorf("environment.systemPackages %v: nixpeer is not on the PATH", pkgs)
			}
			for _, a := range get(conf, "assertions").([]any) {
				if get(a, "assertion") != true {
					t.Errorf("assertion fails: %v", get(a, "message"))
				}
			}
			svc := get(conf, "systemd", "services", "nixpeer", "serviceConfig").(map[string]any)
			exec, _ := svc["ExecStart"].(string)
			if !strings.HasPrefix(exec, c.execStart) {
				t.Fatalf("ExecStart %q, want it to start with %q", exec, c.execStart)
			}
			for k, v := range map[string]any{"Type": "notify", "WatchdogSec": "60s", "StateDirectoryMode": "0755", "RuntimeDirectoryMode": "0755", "ProtectSystem": "strict"} {
				if svc[k] != v {
					t.Errorf("serviceConfig.%s = %v, want %v", k, svc[k], v)
				}
			}
			if !c.settingsValid {
				return
			}
			// The generated file is one the agent accepts, nulls left out.
			_, rest, _ := strings.Cut(exec, "generated-nixpeer.json=")
			doc, _, _ := strings.Cut(rest, "' '")
			if strings.Contains(doc, "null") {
				t.Errorf("the generated settings hold a null: %s", doc)
			}
			f, err := desired.Parse("settings", []byte(doc))
			if err != nil {
				t.Fatalf("the generated settings are refused: %v\n%s", err, doc)
			}
			if len(f.Hosts) != 2 || f.Hosts[0].Serve == nil || f.Hosts[0].PeerPort != 7800 {
				t.Fatalf("parsed %+v", f.Hosts)
			}
		})
	}
}

// TestModuleRefusesTwoProtocols: nix.sshServe's ForceCommand would win over
// the agent's command=, so serveProtocol must be what the desired state
// says this host serves.
func TestModuleRefusesTwoProtocols(t *testing.T) {
	conf := evalModule(t, `{"enable": true, "host": "staging", "serveProtocol": "ssh", "settings": `+fleetSettings+`}`)["config"]
	var failed []string
	for _, a := range get(conf, "assertions").([]any) {
		if get(a, "assertion") != true {
			failed = append(failed, get(a, "message").(string))
		}
	}
	if len(failed) != 1 || !strings.Contains(failed[0], "serveProtocol is ssh but this host's serve.protocol in the desired state is ssh-ng") {
		t.Fatalf("failed assertions %q, want the one of serveProtocol", failed)
	}
}

// unitService reads the [Service] section of a systemd unit: each key's
// values, split on white space, in order.
func unitService(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		case section == "[Service]":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: %q is not KEY=VALUE", path, line)
			}
			got[k] = append(got[k], strings.Fields(v)...)
		}
	}
	return got
}

// TestHardeningIsTheUnits: the NixOS service runs with the settings of
// systemd/nixpeer.service, but for the paths of its commands and the
// state directory's mode.
func TestHardeningIsTheUnits(t *testing.T) {
	out := nix(t, "nix-instantiate", "--eval", "--strict", "--json", "-E", "(import "+mustJSON(t, mustAbs(t, filepath.Join(root, "nix/hardening.nix")))+").service")
	var nixSide map[string]any
	if err := json.Unmarshal(out, &nixSide); err != nil {
		t.Fatal(err)
	}
	got := map[string][]string{}
	for k, v := range nixSide {
		switch v := v.(type) {
		case []any:
			for _, s := range v {
				got[k] = append(got[k], strings.Fields(s.(string))...)
			}
		case bool:
			got[k] = []string{map[bool]string{true: "yes", false: "no"}[v]}
		case float64:
			got[k] = []string{mustJSON(t, v)} // 256
		case string:
			got[k] = strings.Fields(v)
		}
		if got[k] == nil {
			got[k] = []string{}
		}
	}
	want := unitService(t, filepath.Join(root, "systemd/nixpeer.service"))
	for _, k := range []string{"ExecStart", "ExecStartPre", "ExecReload", "StateDirectoryMode"} {
		delete(want, k)
	}
	for k, v := range want {
		if v == nil {
			want[k] = []string{}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("nix/hardening.nix and systemd/nixpeer.service differ (-unit +nix):\n%s", diff)
	}
}

func mustAbs(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
