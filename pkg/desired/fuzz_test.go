package desired

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

// FuzzParse checks that Parse never panics and that whatever it accepts
// satisfies the strict syntax rules, so nothing unsafe reaches the files
// nixpeer writes. The seed corpus is in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(tutorial))
	f.Add([]byte(with("    substituteFrom: [stage]", "    apply: []")))
	f.Fuzz(func(t *testing.T, data []byte) {
		file, err := Parse("fuzz.yaml", data)
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
	})
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
	if f.APIVersion != APIVersion || (f.Trust != TrustTOFU && f.Trust != TrustPinned) || len(f.Hosts) == 0 {
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
		if h.HostKey != "" {
			if k, r := normalizeHostKey(h.HostKey); r != "" || k != h.HostKey || strings.Count(k, " ") != 1 {
				t.Fatalf("host %q: hostKey %q is not normalized: %s", h.Name, h.HostKey, r)
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
			if checkKeyName(s.KeyName) != "" || checkAbsPath(s.SignClosure) != "" || (s.Protocol != ProtocolSSH && s.Protocol != ProtocolSSHNG) {
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
