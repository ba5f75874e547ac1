package desired

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/pkg/nix"
)

// FuzzParse checks that Parse never panics and that whatever it accepts
// satisfies the strict syntax rules, so nothing unsafe reaches the files
// nixpeer writes. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(tutorial))
	f.Add([]byte(with("    substituteFrom: [stage]", "    apply: []")))
	for i, v := range []string{"web1", keyA + " root@x", "/run/x", "2001:db8::1", "a\nb", `a"b`, "${x}", "a:b", "-x", "/a/../b"} {
		for slot := range len(slotDefaults()) {
			f.Add(append([]byte{byte(slot + i*len(slotDefaults()))}, v...))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		parseAndCheck(t, data)
		// The bytes again as a value of a valid file, so that the
		// validators see arbitrary strings: the first byte chooses the
		// value and whether it is written raw or quoted.
		if len(data) > 0 && len(data) <= 4<<10 {
			parseAndCheck(t, []byte(slotDoc(data[0], string(data[1:]))))
		}
	})
}

// slotTemplate is a valid file whose values are placeholders @NAME@.
const slotTemplate = `apiVersion: nixpeer/v1
trust: @TRUST@
hosts:
  - name: @NAME@
    address: @ADDR@
    hostKey: @KEY@
    serve: {protocol: @PROTO@, keyName: @KEYNAME@, publicKey: @PUBKEY@, signClosure: @CLOSURE@}
  - name: prod
    address: prod.example.com
    hostKey: ` + keyB + `
    clientKey: @CLIENTKEY@
    platform: @PLATFORM@
    nixosModuleFile: @MODFILE@
    apply: [@CMD@, @ARG@]
    substituteFrom: [@SUB@]
`

// slotDefaults are the valid values of slotTemplate's placeholders.
func slotDefaults() map[string]string {
	return map[string]string{
		"@TRUST@": "pinned", "@NAME@": "stage", "@ADDR@": "stage.example.com", "@KEY@": keyA,
		"@PROTO@": "ssh", "@KEYNAME@": "stage-1", "@CLOSURE@": "/run/current-system",
		"@PLATFORM@": "nixos-module", "@MODFILE@": "/etc/nixos/nixpeer.nix",
		"@CMD@": "systemctl", "@ARG@": "restart", "@SUB@": "stage",
		"@CLIENTKEY@": keyC, "@PUBKEY@": "stage-1:TmfUqrhoHiNzhab59HWozBohZi/pSee8ZfBqPsu5leA=",
	}
}

// renderSlot returns slotTemplate with val for slot (and for the
// substituteFrom entry that names the host, when slot is the name) and
// the defaults elsewhere.
func renderSlot(slot, val string) string {
	var pairs []string
	for k, d := range slotDefaults() {
		if k == slot || (slot == "@NAME@" && k == "@SUB@") {
			d = val
		}
		pairs = append(pairs, k, d)
	}
	return strings.NewReplacer(pairs...).Replace(slotTemplate)
}

// slotDoc returns slotTemplate with v as the value that choice picks,
// written raw or, when choice's high bit is set, quoted.
func slotDoc(choice byte, v string) string {
	slots := slices.Sorted(maps.Keys(slotDefaults()))
	slot := slots[int(choice&0x7f)%len(slots)]
	if choice&0x80 != 0 {
		quoted, _ := json.Marshal(v)
		v = string(quoted)
	}
	return renderSlot(slot, v)
}

// parseAndCheck parses data and checks the result: well-formed errors, or
// a File whose values all pass the strict checks.
func parseAndCheck(t *testing.T, data []byte) {
	t.Helper()
	start := time.Now()
	file, err := Parse("fuzz.yaml", data)
	// Parse is linear in practice (about 1 s per MiB); a small input that
	// takes long has found a slow path in the YAML parser to bound.
	if d := time.Since(start); len(data) < 64<<10 && d > 2*time.Second {
		t.Fatalf("Parse of %d bytes took %v", len(data), d)
	}
	if err != nil {
		if file != nil {
			t.Fatal("Parse returned both a File and an error")
		}
		var es Errors
		if !errors.As(err, &es) || len(es) == 0 {
			t.Fatalf("error %T %v is not a non-empty Errors", err, err)
		}
		for _, e := range es {
			if e.File != "fuzz.yaml" || e.Line < 1 || e.Col < 1 || e.Msg == "" {
				t.Fatalf("malformed error %+v", e)
			}
			if strings.Contains(e.Msg, "internal error") {
				t.Fatalf("Parse panicked: %v", e)
			}
		}
		return
	}
	checkFile(t, file)
	again, err := Parse("fuzz.yaml", data)
	if err != nil || again.Hash() != file.Hash() {
		t.Fatalf("second Parse differs: %v", err)
	}
}

func TestSlottedTemplateIsValid(t *testing.T) {
	for slot, d := range slotDefaults() {
		quoted, _ := json.Marshal(d)
		for _, doc := range []string{renderSlot(slot, d), renderSlot(slot, string(quoted))} {
			f, err := Parse("slot.yaml", []byte(doc))
			if err != nil {
				t.Fatalf("template does not parse: %v\n%s", err, doc)
			}
			checkFile(t, f)
		}
	}
}

// checkFile re-validates every value of a parsed file with the same
// validators Parse uses, and checks the cross-host rules.
func checkFile(t *testing.T, f *File) {
	t.Helper()
	safe := func(what, s string) {
		t.Helper()
		for _, bad := range []string{`"`, `'`, `\`, "\n", "\r", "\x00", "$", "{", "${", "`"} {
			if strings.Contains(s, bad) {
				t.Fatalf("%s %q contains %q", what, s, bad)
			}
		}
	}
	if f.APIVersion != APIVersion || (f.Trust != TrustApprove && f.Trust != TrustTOFU && f.Trust != TrustPinned) || len(f.Hosts) == 0 {
		t.Fatalf("bad file header %q %q %d hosts", f.APIVersion, f.Trust, len(f.Hosts))
	}
	names := map[string]*Host{}
	for _, h := range f.Hosts {
		if names[h.Name] != nil {
			t.Fatalf("duplicate name %q", h.Name)
		}
		names[h.Name] = h
	}
	for _, h := range f.Hosts {
		for what, s := range map[string]string{"name": h.Name, "address": h.Address, "hostKey": h.HostKey, "nixosModuleFile": h.NixOSModuleFile, "platform": string(h.Platform)} {
			safe(what, s)
		}
		if checkName(h.Name) != "" || checkAddress(h.Address) != "" || checkAbsPath(h.NixOSModuleFile) != "" {
			t.Fatalf("host %+v has an invalid name, address or nixosModuleFile", h)
		}
		if strings.ContainsAny(h.Name+h.Address, " \t") {
			t.Fatalf("host %q: space in name or address", h.Name)
		}
		for what, key := range map[string]string{"hostKey": h.HostKey, "clientKey": h.ClientKey} {
			if key == "" {
				continue
			}
			safe(what, key)
			if k, r := normalizeHostKey(key); r != "" || k != key || strings.Count(k, " ") != 1 {
				t.Fatalf("host %q: %s %q is not normalized: %s", h.Name, what, key, r)
			}
		}
		if h.PeerPort < 1 || h.PeerPort > 65535 || h.SSHPort < 1 || h.SSHPort > 65535 {
			t.Fatalf("host %q: ports %d %d", h.Name, h.PeerPort, h.SSHPort)
		}
		if !slices.Contains([]Platform{PlatformNixOS, PlatformNixOSModule, PlatformNix}, h.Platform) {
			t.Fatalf("host %q: platform %q", h.Name, h.Platform)
		}
		if h.Apply == nil {
			t.Fatalf("host %q: nil Apply", h.Name)
		}
		if !h.ApplySet && !slices.Equal(h.Apply, DefaultApply(h.Platform)) {
			t.Fatalf("host %q: Apply %q is not the default", h.Name, h.Apply)
		}
		for i, a := range h.Apply {
			if checkApplyArg(a, i == 0) != "" || strings.ContainsAny(a, "\x00\n\r") {
				t.Fatalf("host %q: apply %q", h.Name, h.Apply)
			}
		}
		if s := h.Serve; s != nil {
			safe("keyName", s.KeyName)
			safe("signClosure", s.SignClosure)
			safe("publicKey", s.PublicKey)
			if strings.ContainsAny(s.PublicKey, " \t") {
				t.Fatalf("host %q: space in publicKey %q", h.Name, s.PublicKey)
			}
			if checkKeyName(s.KeyName) != "" || checkAbsPath(s.SignClosure) != "" || (s.Protocol != nix.ProtocolSSH && s.Protocol != nix.ProtocolSSHNG) {
				t.Fatalf("host %q: bad serve %+v", h.Name, s)
			}
		}
		for _, n := range h.SubstituteFrom {
			safe("substituteFrom", n)
			if n == h.Name || names[n] == nil || names[n].Serve == nil {
				t.Fatalf("host %q: bad substituteFrom %q", h.Name, n)
			}
			if f.Trust == TrustPinned && (h.HostKey == "" || names[n].HostKey == "") {
				t.Fatalf("host %q: trust pinned without host keys", h.Name)
			}
		}
	}
}

// FuzzLoad reads the desired-state file the way the agent and its
// watcher do (bounded, a regular file only), whatever it holds: Load
// never panics, never returns more than MaxSize+1 bytes, and gives a file
// or an error.
func FuzzLoad(f *testing.F) {
	f.Add([]byte("apiVersion: nixpeer/v1\nhosts:\n  - name: a\n    address: a.example\n"))
	f.Add([]byte("\xef\xbb\xbf"))
	f.Add(bytes.Repeat([]byte("#"), 4096))
	f.Fuzz(func(t *testing.T, content []byte) {
		path := filepath.Join(t.TempDir(), "desired.yaml")
		if err := os.WriteFile(path, content, 0o644); err != nil {
			t.Fatal(err)
		}
		file, data, err := Load(path)
		if len(data) > MaxSize+1 {
			t.Fatalf("Load read %d bytes", len(data))
		}
		if (file == nil) == (err == nil) {
			t.Fatalf("Load gave file %v and error %v", file, err)
		}
	})
}
