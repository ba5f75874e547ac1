package nix

import (
	"bytes"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSubstituterURL(t *testing.T) {
	hk := testSSHKey(t, 7)
	b64 := base64.StdEncoding.EncodeToString([]byte(testSSHKeyLine(hk)))
	esc := strings.NewReplacer("+", "%2B", "=", "%3D").Replace(b64)
	for _, tc := range []struct{ protocol, address, want string }{
		{"ssh", "10.0.0.2", "ssh://nix-ssh@10.0.0.2?ssh-key=/var/lib/nixpeer/ssh/id_ed25519&base64-ssh-public-host-key=" + esc},
		{"ssh-ng", "staging.example.org", "ssh-ng://nix-ssh@staging.example.org?ssh-key=/var/lib/nixpeer/ssh/id_ed25519&base64-ssh-public-host-key=" + esc},
		{"ssh", "fd00::2", "ssh://nix-ssh@[fd00::2]?ssh-key=/var/lib/nixpeer/ssh/id_ed25519&base64-ssh-public-host-key=" + esc},
	} {
		got, err := SubstituterURL(Protocol(tc.protocol), tc.address, 22, "/var/lib/nixpeer/ssh/id_ed25519", hk, 0)
		if err != nil {
			t.Fatalf("SubstituterURL(%s, %s, 0): %v", tc.protocol, tc.address, err)
		}
		if got != tc.want {
			t.Errorf("SubstituterURL(%s, %s, 0) =\n%s\nwant\n%s", tc.protocol, tc.address, got, tc.want)
		}
	}
	got, err := SubstituterURL("ssh", "h", 2222, "/k+x", hk, 0)
	if err != nil || !strings.Contains(got, "ssh-key=/k%2Bx&") || strings.Contains(got, "2222") {
		t.Errorf("SubstituterURL with a + in the path and port 2222 = %q, %v", got, err)
	}
}

func TestSubstituterURLRefuses(t *testing.T) {
	hk := testSSHKey(t, 7)
	for _, tc := range []struct {
		name, protocol, address, path string
		port                          int
		want                          string
	}{
		{"protocol", "http", "h", "/k", 22, "protocol"},
		{"empty address", "ssh", "", "/k", 22, `host "" is empty`},
		{"address with port", "ssh", "h:22", "/k", 22, `host "h:22" includes a port`},
		{"address with user", "ssh", "root@h", "/k", 22, "without a user name"},
		{"address with space", "ssh", "h x", "/k", 22, `host "h x" contains a space`},
		{"address not quite IPv4", "ssh", "10.0.0.256", "/k", 22, "looks like an IPv4 address"},
		{"address IPv4-mapped", "ssh", "::ffff:10.0.0.2", "/k", 22, "IPv4-mapped"},
		{"zone", "ssh", "fe80::1%eth0", "/k", 22, "zone"},
		{"port 0", "ssh", "h", "/k", 0, "port"},
		{"port too big", "ssh", "h", "/k", 65536, "port"},
		{"relative path", "ssh", "h", "k", 22, "not absolute"},
		{"unclean path", "ssh", "h", "/a/../k", 22, "not clean"},
		{"trailing slash", "ssh", "h", "/a/", 22, "not clean"},
		{"path with space", "ssh", "h", "/a b", 22, "character"},
		{"path with quote", "ssh", "h", `/a"b`, 22, "character"},
		{"path with interpolation", "ssh", "h", "/a${b}", 22, "character"},
		{"path with newline", "ssh", "h", "/a\nb", 22, "character"},
		{"path with ampersand", "ssh", "h", "/a&b=c", 22, "character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SubstituterURL(Protocol(tc.protocol), tc.address, tc.port, tc.path, hk, 0)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("SubstituterURL = %q, %v; want an error about %q", got, err, tc.want)
			}
		})
	}
	if _, err := SubstituterURL("ssh", "h", 22, "/k", testECDSAKey(t), 0); err == nil {
		t.Error("SubstituterURL accepted an ecdsa host key")
	}
	// No host key: none pinned (trust: ca), the URL still valid.
	if u, err := SubstituterURL("ssh", "h", 22, "/k", nil, 0); err != nil || strings.Contains(u, "base64-ssh-public-host-key") || ValidateSubstituter(u) != nil {
		t.Errorf("SubstituterURL without a host key = %q, %v; want one that pins none", u, err)
	}
}

func TestValidateSubstituter(t *testing.T) {
	hk := testSSHKey(t, 7)
	good, err := SubstituterURL("ssh", "h", 22, "/k", hk, 0)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.StdEncoding.EncodeToString([]byte(testSSHKeyLine(hk)))
	for _, ok := range []string{
		good,
		"ssh://nix-ssh@h",
		"ssh-ng://nix-ssh@[::1]",
		"ssh://builder@10.1.2.3?ssh-key=/k&priority=30&compress=true&max-connections=4",
		"ssh://nix-ssh@h?base64-ssh-public-host-key=" + b64,
	} {
		if err := ValidateSubstituter(ok); err != nil {
			t.Errorf("ValidateSubstituter(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "https://cache.nixos.org", "ssh://h", "ssh://nix-ssh@", "ssh://nix-ssh@h:22", "ssh://nix-ssh@::1",
		"ssh://nix-ssh@[10.0.0.1]", "ssh://nix-ssh@[::1]:22", "ssh://nix-ssh@h/path", "ssh://Root@h",
		"ssh://nix-ssh@h?ssh-key", "ssh://nix-ssh@h?ssh-key=/a&ssh-key=/b", "ssh://nix-ssh@h?remote-program=sh",
		"ssh://nix-ssh@h?ssh-key=%2Fa%0Ab", "ssh://nix-ssh@h?ssh-key=%zz", "ssh://nix-ssh@h?priority=-1",
		"ssh://nix-ssh@h?compress=yes", "ssh://nix-ssh@h?base64-ssh-public-host-key=AAAA",
		"ssh://nix-ssh@h?base64-ssh-public-host-key=" + base64.StdEncoding.EncodeToString([]byte(testSSHKeyLine(hk)+" comment")),
		"ssh://nix-ssh@h #x", "ssh://nix-ssh@h\nsubstituters = x", `ssh://nix-ssh@h"`, "ssh://nix-ssh@h${x}",
		"ssh://nix-ssh@h#frag", "ssh://nix-ssh@h?ssh-key=/k;rm",
		"ssh://nix-ssh@10.0.0.256", "ssh://nix-ssh@[::ffff:10.0.0.1]", "ssh://nix-ssh@h.",
	} {
		if err := ValidateSubstituter(bad); err == nil {
			t.Errorf("ValidateSubstituter(%q) accepted it", bad)
		}
	}
}

// TestSubstituterURLUnderstoodByNix gives real Nix the URLs and a fake ssh
// program that records how Nix calls it: Nix must decode the percent-encoded
// key path and host key, pass the key with -i and pin exactly this host key.
func TestSubstituterURLUnderstoodByNix(t *testing.T) {
	requireNix(t, "nix")
	dir := t.TempDir()
	log := filepath.Join(dir, "ssh.log")
	fake := "#!/bin/sh\n" +
		"echo \"ARGS $*\" >> " + log + "\n" +
		"for a in \"$@\"; do case \"$a\" in -oUserKnownHostsFile=*) echo \"KNOWN $(cat \"${a#-oUserKnownHostsFile=}\")\" >> " + log + ";; esac; done\n" +
		"exit 1\n"
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bin, "ssh"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	hk := testSSHKey(t, 9)
	env := nixEnv(t, "PATH="+bin+":"+os.Getenv("PATH"))
	for _, tc := range []struct{ protocol, address, sshHost, remote string }{
		{"ssh", "127.0.0.2", "127.0.0.2", "nix-store --serve"},
		{"ssh-ng", "::1", "::1", "nix-daemon --stdio"},
	} {
		os.Remove(log)
		keyPath := "/var/lib/nixpeer/ssh/id+ed25519"
		u, err := SubstituterURL(Protocol(tc.protocol), tc.address, 22, keyPath, hk, 10)
		if err != nil {
			t.Fatal(err)
		}
		// Nix fails to connect (the fake ssh exits 1); only its calls matter,
		// and that it knows every setting of the URL.
		_, err = tryProgram(env, "nix", "store", "ping", "--extra-experimental-features", "nix-command", "--store", u)
		if err != nil && strings.Contains(err.Error(), "unknown setting") {
			t.Errorf("%s: Nix does not know a setting of the URL: %v", u, err)
		}
		b, err := os.ReadFile(log)
		if err != nil {
			t.Fatalf("%s: Nix never ran ssh: %v", u, err)
		}
		got := string(b)
		for _, want := range []string{
			"ARGS nix-ssh@" + tc.sshHost + " ",
			" -i " + keyPath + " ",
			tc.remote,
			"KNOWN " + tc.sshHost + " " + testSSHKeyLine(hk) + "\n",
		} {
			if !strings.Contains(got, want) {
				t.Errorf("%s: ssh calls do not show %q:\n%s", u, want, got)
			}
		}
	}
}

func TestPinnedHostKeys(t *testing.T) {
	a, b := testSSHKey(t, 1), testSSHKey(t, 2)
	ua, err := SubstituterURL(ProtocolSSH, "127.0.0.2", 22, "/k", a, 0)
	if err != nil {
		t.Fatal(err)
	}
	ub, err := SubstituterURL(ProtocolSSHNG, "2001:db8::1", 22, "/k", b, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, content := range []string{
		"extra-substituters = " + ua + " " + ub + "\n",
		"  nix.settings.substituters = [\n    \"" + ua + "\"\n    \"" + ub + "\"\n  ];\n",
	} {
		got := PinnedHostKeys([]byte(content + "garbage ssh://nix-ssh@x?base64-ssh-public-host-key=%%%\n"))
		if len(got) != 2 || !bytes.Equal(got["127.0.0.2"].Marshal(), a.Marshal()) || !bytes.Equal(got["2001:db8::1"].Marshal(), b.Marshal()) {
			t.Fatalf("PinnedHostKeys(%q) = %v", content, got)
		}
	}
}
