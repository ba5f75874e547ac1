package desired

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nixpeer/nixpeer/pkg/nix"
)

const tutorial = `apiVersion: nixpeer/v1
trust: approve         # optional
hosts:
  - name: yourapp-stage
    address: stage.yourapp.com   # how peers reach it
    serve: {}                    # shares its store
  - name: yourapp
    address: yourapp.com
    substituteFrom: [yourapp-stage]
`

func mustParse(t *testing.T, in string) *File {
	t.Helper()
	f, err := Parse("test.yaml", []byte(in))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return f
}

func TestParseDefaults(t *testing.T) {
	f := mustParse(t, tutorial)
	restart := []string{"systemctl", "restart", "nix-daemon.service"}
	want := &File{
		Filename:   "test.yaml",
		APIVersion: APIVersion,
		Trust:      TrustApprove,
		Hosts: []*Host{
			{
				Name: "yourapp-stage", Address: "stage.yourapp.com",
				PeerPort: 7722, SSHPort: 22, Platform: PlatformNixOS,
				Apply: restart, NixOSModuleFile: "/etc/nixos/nixpeer.nix",
				Serve: &Serve{Protocol: nix.ProtocolSSH, KeyName: "stage.yourapp.com", KeyGeneration: 1, SignClosure: "/run/current-system", Pos: Pos{6, 12}},
				Pos:   Pos{4, 5},
			},
			{
				Name: "yourapp", Address: "yourapp.com",
				PeerPort: 7722, SSHPort: 22, Platform: PlatformNixOS,
				Apply: restart, NixOSModuleFile: "/etc/nixos/nixpeer.nix",
				SubstituteFrom: []string{"yourapp-stage"},
				Pos:            Pos{7, 5},
			},
		},
	}
	if diff := cmp.Diff(want, f); diff != "" {
		t.Errorf("Parse(tutorial) mismatch (-want +got):\n%s", diff)
	}
}

func TestParseExplicitValues(t *testing.T) {
	f := mustParse(t, y(
		"apiVersion: nixpeer/v1",
		"trust: pinned",
		"hosts:",
		"  - name: build",
		"    address: 2001:db8::10",
		"    peerPort: 7000",
		"    sshPort: 2222",
		"    hostKey: "+keyA+" root@build-1.example_host+x",
		"    platform: nix",
		"    apply: [/run/current-system/sw/bin/systemctl, reload-or-restart, nix-daemon]",
		"    serve:",
		"      protocol: ssh-ng",
		"      keyName: build-1",
		"      signClosure: /nix/var/nix/profiles/system",
		"  - name: web",
		"    address: 192.0.2.7",
		`    hostKey: "`+keyB+`"`,
		"    platform: nixos-module",
		"    nixosModuleFile: /etc/nixos/generated/nixpeer.nix",
		"    substituteFrom:",
		"      - build",
		"  - name: files-only",
		"    address: localhost",
		"    apply: []",
	))
	b, web, fo := f.Hosts[0], f.Hosts[1], f.Hosts[2]
	if f.Trust != TrustPinned {
		t.Errorf("Trust = %q, want pinned", f.Trust)
	}
	if b.HostKey != keyA {
		t.Errorf("HostKey = %q, want it without comment: %q", b.HostKey, keyA)
	}
	if b.PeerPort != 7000 || b.SSHPort != 2222 || b.Platform != PlatformNix {
		t.Errorf("build ports/platform = %d %d %q", b.PeerPort, b.SSHPort, b.Platform)
	}
	if diff := cmp.Diff([]string{"/run/current-system/sw/bin/systemctl", "reload-or-restart", "nix-daemon"}, b.Apply); diff != "" || !b.ApplySet {
		t.Errorf("build Apply (ApplySet %v) mismatch:\n%s", b.ApplySet, diff)
	}
	if diff := cmp.Diff(&Serve{Protocol: nix.ProtocolSSHNG, KeyName: "build-1", KeyGeneration: 1, SignClosure: "/nix/var/nix/profiles/system", Pos: Pos{12, 7}}, b.Serve); diff != "" {
		t.Errorf("build Serve mismatch:\n%s", diff)
	}
	if web.Apply == nil || len(web.Apply) != 0 || web.ApplySet {
		t.Errorf("nixos-module default Apply = %#v (set %v), want empty, not set", web.Apply, web.ApplySet)
	}
	if web.NixOSModuleFile != "/etc/nixos/generated/nixpeer.nix" || web.HostKey != keyB {
		t.Errorf("web = %+v", web)
	}
	if fo.Apply == nil || len(fo.Apply) != 0 || !fo.ApplySet {
		t.Errorf("explicit [] Apply = %#v (set %v), want empty and set", fo.Apply, fo.ApplySet)
	}
	if fo.Platform != PlatformNixOS || fo.Address != "localhost" {
		t.Errorf("files-only = %+v", fo)
	}
}

func TestDefaultApplyIsFresh(t *testing.T) {
	a := DefaultApply(PlatformNixOS)
	a[0] = "changed"
	if DefaultApply(PlatformNixOS)[0] != "systemctl" {
		t.Error("DefaultApply returns a shared slice")
	}
	if got := DefaultApply(PlatformNix); len(got) != 3 {
		t.Errorf("DefaultApply(nix) = %v", got)
	}
}

func TestValidValues(t *testing.T) {
	for _, a := range []string{"localhost", "a", "A-1.example.COM", "192.0.2.1", "0.0.0.0", "2001:db8::1", "::1", "2001:db8::192.0.2.1", "xn--bcher-kva.example", strings.Repeat("a", 63) + ".example"} {
		if r := checkAddress(a); r != "" {
			t.Errorf("checkAddress(%q) = %s", a, r)
		}
	}
	for _, n := range []string{"a", "0", "web-1", strings.Repeat("a", 63)} {
		if r := checkName(n); r != "" {
			t.Errorf("checkName(%q) = %s", n, r)
		}
	}
	for _, k := range []string{keyA, keyA + " root@host", keyA + " a.b_c+d-e@f"} {
		if got, r := normalizeHostKey(k); r != "" || got != keyA {
			t.Errorf("normalizeHostKey(%q) = %q, %s; want %q", k, got, r, keyA)
		}
	}
	for _, k := range []string{"", keyA + " a b", "x " + keyA, keyA + "\n", " " + keyA, keyRSA, "ssh-ed25519\t" + keyA[12:], keyA + "  a.b_c+d-e@f", keyA + " ", "ssh-ed25519  " + keyA[12:]} {
		if _, r := normalizeHostKey(k); r == "" {
			t.Errorf("normalizeHostKey(%q) succeeded", k)
		}
	}
}

func TestFindSelf(t *testing.T) {
	f := mustParse(t, y(
		"apiVersion: nixpeer/v1",
		"hosts:",
		"  - {name: stage, address: stage.example.com, serve: {}}",
		"  - {name: prod, address: www.example.com}",
		"  - {name: www, address: 192.0.2.9}",
	))
	f.Filename = "/etc/nixpeer/desired.yaml"
	tests := []struct {
		name      string
		flag      string
		hostnames []string
		want      string // host name, or words the error must hold
		wantErr   bool
	}{
		{"flag", "prod", []string{"stage"}, "prod", false},
		{"flag unknown", "nope", nil, `no host is named "nope"; hosts in the file: stage (stage.example.com), prod (www.example.com), www (192.0.2.9)`, true},
		{"hostname is name", "", []string{"stage"}, "stage", false},
		{"fqdn is address", "", []string{"", "STAGE.example.com."}, "stage", false},
		{"ip address", "", []string{"192.0.2.9"}, "www", false},
		{"short label fallback", "", []string{"stage.internal.example"}, "stage", false},
		{"same name and address", "", []string{"stage", "stage.example.com"}, "stage", false},
		{"ambiguous", "", []string{"www.example.com", "www"}, "match several hosts (prod, www); pass --host", true},
		{"no match", "", []string{"laptop", "laptop.home"}, "none of this machine's names (laptop, laptop.home) is the name or address of a host; pass --host with one of: stage (stage.example.com)", true},
		{"no hostnames", "", []string{"", " "}, "pass --host with one of: stage", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := f.FindSelf(tc.flag, tc.hostnames...)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("FindSelf = %s, want error", h.Name)
				}
				if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), f.Filename) {
					t.Errorf("error %q\n does not say %q and the file name", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("FindSelf: %v", err)
			}
			if h.Name != tc.want {
				t.Errorf("FindSelf = %s, want %s", h.Name, tc.want)
			}
		})
	}
}

func TestHostAndConsumers(t *testing.T) {
	f := mustParse(t, y(
		"apiVersion: nixpeer/v1",
		"hosts:",
		"  - {name: c, address: c.example.com, substituteFrom: [a, b]}",
		"  - {name: a, address: a.example.com, serve: {}}",
		"  - {name: b, address: b.example.com, serve: {}, substituteFrom: [a]}",
		"  - {name: d, address: d.example.com}",
	))
	if h := f.Host("b"); h == nil || h.Address != "b.example.com" {
		t.Errorf("Host(b) = %+v", h)
	}
	if h := f.Host("x"); h != nil {
		t.Errorf("Host(x) = %+v, want nil", h)
	}
	names := func(hs []*Host) []string {
		var out []string
		for _, h := range hs {
			out = append(out, h.Name)
		}
		return out
	}
	for name, want := range map[string][]string{"a": {"c", "b"}, "b": {"c"}, "c": nil, "d": nil, "x": nil} {
		if diff := cmp.Diff(want, names(f.Consumers(name))); diff != "" {
			t.Errorf("Consumers(%s) mismatch (-want +got):\n%s", name, diff)
		}
	}
}

func TestHash(t *testing.T) {
	base := mustParse(t, tutorial).Hash()
	if len(base) != 64 {
		t.Fatalf("Hash = %q, want 64 hex digits", base)
	}
	same := map[string]string{
		"reordered keys, hosts and comments": `# staging and production
hosts:
  - substituteFrom:
      - yourapp-stage   # from staging
    address: yourapp.com
    name: yourapp
  - serve: {}
    name: yourapp-stage
    address: stage.yourapp.com
apiVersion: nixpeer/v1
`,
		"flow style": `{apiVersion: nixpeer/v1, hosts: [{name: yourapp-stage, address: stage.yourapp.com, serve: {}}, {name: yourapp, address: yourapp.com, substituteFrom: [yourapp-stage]}]}`,
		"defaults written out": `apiVersion: "nixpeer/v1"
trust: approve
hosts:
  - name: yourapp-stage
    address: stage.yourapp.com
    peerPort: 7722
    sshPort: 22
    platform: nixos
    apply: [systemctl, restart, nix-daemon.service]
    serve: {protocol: ssh, keyName: stage.yourapp.com, signClosure: /run/current-system}
  - name: 'yourapp'
    address: yourapp.com
    substituteFrom: [yourapp-stage]
`,
		"no trust line, CRLF": strings.ReplaceAll(strings.Replace(tutorial, "trust: approve         # optional\n", "", 1), "\n", "\r\n"),
	}
	for name, in := range same {
		if got := mustParse(t, in).Hash(); got != base {
			t.Errorf("%s: Hash changed", name)
		}
	}
	different := map[string]string{
		"peerPort":      strings.Replace(tutorial, "    address: yourapp.com\n", "    address: yourapp.com\n    peerPort: 7723\n", 1),
		"address":       strings.Replace(tutorial, "address: yourapp.com", "address: yourapp.org", 1),
		"name":          strings.ReplaceAll(tutorial, "yourapp-stage", "yourapp-staging"),
		"protocol":      strings.Replace(tutorial, "serve: {}", "serve: {protocol: ssh-ng}", 1),
		"apply":         strings.Replace(tutorial, "    address: yourapp.com\n", "    address: yourapp.com\n    apply: []\n", 1),
		"platform":      strings.Replace(tutorial, "    address: yourapp.com\n", "    address: yourapp.com\n    platform: nix\n", 1),
		"no substitute": strings.Replace(tutorial, "    substituteFrom: [yourapp-stage]\n", "", 1),
	}
	// trust: pinned needs both keys; the keys alone are one more change.
	keys := strings.Replace(strings.Replace(tutorial,
		"    serve: {}", "    hostKey: "+keyA+"\n    serve: {}", 1),
		"    address: yourapp.com\n", "    address: yourapp.com\n    hostKey: "+keyB+"\n", 1)
	different["host keys"] = keys
	different["trust"] = strings.Replace(keys, "trust: approve", "trust: pinned", 1)
	different["trust tofu"] = strings.Replace(tutorial, "trust: approve", "trust: tofu", 1)
	seen := map[string]string{base: "base"}
	for name, in := range different {
		got := mustParse(t, in).Hash()
		if prev, dup := seen[got]; dup {
			t.Errorf("%s: same Hash as %s", name, prev)
		}
		seen[got] = name
	}

	// Explicit [] on nixos-module is the platform default: same meaning.
	mod := strings.Replace(tutorial, "    address: yourapp.com\n", "    address: yourapp.com\n    platform: nixos-module\n", 1)
	modEmpty := strings.Replace(mod, "platform: nixos-module\n", "platform: nixos-module\n    apply: []\n", 1)
	if mustParse(t, mod).Hash() != mustParse(t, modEmpty).Hash() {
		t.Error("apply: [] on nixos-module hashes differently from its default")
	}
	// substituteFrom order is meaning: it is the substituters' order.
	two := y("apiVersion: nixpeer/v1", "hosts:",
		"  - {name: a, address: a.example.com, serve: {}}",
		"  - {name: b, address: b.example.com, serve: {}}",
		"  - {name: c, address: c.example.com, substituteFrom: [a, b]}")
	if mustParse(t, two).Hash() == mustParse(t, strings.Replace(two, "[a, b]", "[b, a]", 1)).Hash() {
		t.Error("substituteFrom order does not change the hash")
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "desired.yaml")
	if err := os.WriteFile(p, []byte(tutorial), 0o644); err != nil {
		t.Fatal(err)
	}
	f, data, err := Load(p)
	if err != nil || string(data) != tutorial || f.Filename != p || len(f.Hosts) != 2 {
		t.Fatalf("Load = %v, %q, %v", f, data, err)
	}

	_, _, err = Load(filepath.Join(dir, "missing.yaml"))
	var es Errors
	if err == nil || errors.As(err, &es) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load(missing) = %v; want a wrapped not-exist error that is not Errors", err)
	}

	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: nixpeer/v1\nhosts: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err = Load(bad); !errors.As(err, &es) || es[0].File != bad || es[0].Line != 2 {
		t.Errorf("Load(bad) = %v; want Errors naming %s line 2", err, bad)
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, make([]byte, 3*MaxSize), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, data, err = Load(big); !errors.As(err, &es) || !strings.Contains(es[0].Msg, "limit") || len(data) > MaxSize+1 {
		t.Errorf("Load(big) = %d bytes, %v; want the size limit error", len(data), err)
	}
}

func TestExampleConfigsParse(t *testing.T) {
	paths, err := filepath.Glob("../../configs/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 3 {
		t.Fatalf("found %d example configs, want at least tutorial, pinned and plain-nix", len(paths))
	}
	for _, p := range paths {
		f, _, err := Load(p)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if len(f.Hosts) == 0 {
			t.Errorf("%s: no hosts", p)
		}
	}
}

// TestHostileInputs checks that inputs built to make a YAML parser use
// much memory or time are refused quickly.
func TestHostileInputs(t *testing.T) {
	n := MaxSize / 4
	if testing.Short() {
		n = 64 << 10
	}
	inputs := map[string]string{
		"flow sequences": strings.Repeat("[", n),
		"flow mappings":  strings.Repeat("{a: ", n/4),
		"block dashes":   strings.Repeat("- ", n/2),
		"nested keys":    strings.Repeat("a: ", n/3),
		"indented keys":  deepIndent(n),
		"many aliases":   "a: &a [x]\n" + strings.Repeat("b: [*a, *a]\n", n/12),
		"many keys":      strings.Repeat("a: b\n", n/5),
		"many refs":      manyHosts(n),
	}
	for name, in := range inputs {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse("test.yaml", []byte(in)); err == nil {
				t.Fatal("Parse succeeded")
			}
		})
	}
}

// manyHosts returns about n bytes of hosts that each substitute from
// an unknown host, each one error.
func manyHosts(n int) string {
	var b strings.Builder
	b.WriteString("apiVersion: nixpeer/v1\nhosts:\n")
	for i := 0; b.Len() < n; i++ {
		fmt.Fprintf(&b, "  - {name: h%d, address: h%d.example, substituteFrom: [x%d]}\n", i, i, i)
	}
	return b.String()
}

func deepIndent(n int) string {
	var b strings.Builder
	for i := 0; b.Len() < n; i++ {
		b.WriteString(strings.Repeat(" ", i) + "a:\n")
	}
	return b.String()
}

// TestHashCoversEveryField changes each field of File, Host and Serve in
// turn, by reflection, and wants a different hash: a field added later is
// covered without anyone remembering to. Fields tagged json:"-" are only
// the ones listed here, which are not meaning.
func TestHashCoversEveryField(t *testing.T) {
	notMeaning := map[string]bool{"File.Filename": true, "Host.ApplySet": true, "Host.Pos": true, "Serve.Pos": true}
	fresh := func() *File { return mustParse(t, tutorial) }
	base := fresh().Hash()
	check := func(typ string, target func(*File) reflect.Value) {
		v := target(fresh())
		for i := range v.NumField() {
			sf := v.Type().Field(i)
			name := typ + "." + sf.Name
			if sf.Tag.Get("json") == "-" {
				if !notMeaning[name] {
					t.Errorf("%s is left out of the hash (json:\"-\") but is not listed as not meaning", name)
				}
				continue
			}
			f := fresh()
			fv := target(f).Field(i)
			switch fv.Kind() {
			case reflect.String:
				fv.SetString(fv.String() + "x")
			case reflect.Int:
				fv.SetInt(fv.Int() + 1)
			case reflect.Slice:
				elem := reflect.New(fv.Type().Elem()).Elem()
				if elem.Kind() == reflect.Pointer {
					elem = reflect.New(elem.Type().Elem())
				}
				fv.Set(reflect.Append(fv, elem))
			case reflect.Pointer:
				if fv.IsNil() {
					fv.Set(reflect.New(fv.Type().Elem()))
				} else {
					fv.Set(reflect.Zero(fv.Type()))
				}
			default:
				t.Errorf("%s: kind %v not handled by this test", name, fv.Kind())
				continue
			}
			if f.Hash() == base {
				t.Errorf("changing %s does not change the hash", name)
			}
		}
	}
	check("File", func(f *File) reflect.Value { return reflect.ValueOf(f).Elem() })
	check("Host", func(f *File) reflect.Value { return reflect.ValueOf(f.Hosts[0]).Elem() })
	check("Serve", func(f *File) reflect.Value { return reflect.ValueOf(f.Hosts[0].Serve).Elem() })
}

func TestTrustCA(t *testing.T) {
	pinnedCA := strings.Replace(strings.Replace(tutorial, "trust: approve         # optional", "trust: {mode: ca, hostCAs: [\""+keyA+"\"]}", 1),
		"    serve: {}", "    hostKey: "+keyB+"\n    serve: {}", 1)
	if _, err := Parse("d.yaml", []byte(pinnedCA)); err == nil || !strings.Contains(err.Error(), "hostKey is not read with trust mode ca") {
		t.Errorf("a hostKey pin with mode ca: %v; want it refused", err)
	}
	ca := strings.Replace(tutorial, "trust: approve         # optional", "trust: {mode: ca, hostCAs: [\""+keyA+" fleet-ca\", \""+keyB+"\"]}", 1)
	f := mustParse(t, ca)
	if f.Trust != TrustCA || len(f.HostCAs) != 2 || f.HostCAs[0] != keyA || f.HostCAs[1] != keyB {
		t.Fatalf("trust %q, hostCAs %q", f.Trust, f.HostCAs)
	}
	if f := mustParse(t, strings.Replace(tutorial, "trust: approve         # optional", "trust: {mode: tofu}\n", 1)); f.Trust != TrustTOFU {
		t.Fatalf("trust {mode: tofu} = %q", f.Trust)
	}
	for name, c := range map[string]struct{ trust, want string }{
		"ca as a string":     {"trust: ca", "trust ca needs the CAs' public keys"},
		"no hostCAs":         {"trust: {mode: ca}", "trust mode ca needs hostCAs"},
		"hostCAs without ca": {"trust: {mode: approve, hostCAs: [\"" + keyA + "\"]}", "hostCAs is read only with mode: ca"},
		"not a key":          {"trust: {mode: ca, hostCAs: [nonsense]}", "hostCAs entry"},
		"no mode":            {"trust: {hostCAs: [\"" + keyA + "\"]}", "trust has no mode"},
		"unknown mode":       {"trust: {mode: trusting}", "mode \"trusting\" is not one of"},
		"unknown field":      {"trust: {mode: ca, hostCA: [\"" + keyA + "\"]}", "hostCA"},
		"empty hostCAs":      {"trust: {mode: ca, hostCAs: []}", "trust mode ca needs hostCAs"},
	} {
		_, err := Parse("d.yaml", []byte(strings.Replace(tutorial, "trust: approve         # optional", c.trust, 1)))
		if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), "d.yaml:2:") {
			t.Errorf("%s: %v; want an error at line 2 containing %q", name, err, c.want)
		}
	}
}

// TestPinnedPublicKeyNamesTheKey: without keyName, a pinned publicKey
// names the key, not the address.
func TestPinnedPublicKeyNamesTheKey(t *testing.T) {
	pub := "cache.example.com-1:" + strings.Repeat("A", 43) + "="
	f, err := Parse("d.yaml", []byte("apiVersion: nixpeer/v1\nhosts:\n  - {name: a, address: 192.0.2.1, serve: {publicKey: \""+pub+"\"}}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if s := f.Host("a").Serve; s.KeyName != "cache.example.com-1" || s.PublicKey != pub {
		t.Fatalf("serve %+v; want keyName cache.example.com-1 from the pin", s)
	}
}
