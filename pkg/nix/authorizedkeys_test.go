package nix

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

// plain are keys let in with no consumer named.
func plain(keys ...ssh.PublicKey) []AuthorizedKey {
	out := make([]AuthorizedKey, len(keys))
	for i, k := range keys {
		out[i] = AuthorizedKey{Key: k}
	}
	return out
}

func TestRenderAuthorizedKeys(t *testing.T) {
	a, b := testSSHKey(t, 1), testSSHKey(t, 2)
	la, lb := testSSHKeyLine(a), testSSHKeyLine(b)
	first, second := la, lb
	if lb < la {
		first, second = lb, la
	}
	for _, tc := range []struct {
		name, protocol string
		keys           []ssh.PublicKey
		want           string
	}{
		{"none", "ssh", nil, authorizedKeysHeader},
		{"ssh sorted and deduplicated", "ssh", []ssh.PublicKey{b, a, b},
			authorizedKeysHeader +
				`command="nix-store --serve",restrict ` + first + "\n" +
				`command="nix-store --serve",restrict ` + second + "\n"},
		{"ssh-ng", "ssh-ng", []ssh.PublicKey{a},
			authorizedKeysHeader + `command="nix-daemon --stdio",restrict ` + la + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := RenderAuthorizedKeys(Protocol(tc.protocol), plain(tc.keys...))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, string(got)); diff != "" {
				t.Errorf("mismatch (-want +got):\n%s", diff)
			}
			// Every key line parses as an authorized key with its options.
			for _, line := range strings.Split(strings.TrimSuffix(string(got), "\n"), "\n") {
				if strings.HasPrefix(line, "#") {
					continue
				}
				_, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(line))
				if err != nil || len(rest) != 0 || len(opts) != 2 || opts[1] != "restrict" {
					t.Errorf("line %q: options %q, rest %q, err %v", line, opts, rest, err)
				}
			}
		})
	}
	for _, tc := range []struct {
		name, protocol string
		keys           []ssh.PublicKey
	}{
		{"unknown protocol", "ssh-ng\ncommand", []ssh.PublicKey{a}},
		{"empty protocol", "", []ssh.PublicKey{a}},
		{"ecdsa key", "ssh", []ssh.PublicKey{a, testECDSAKey(t)}},
		{"nil key", "ssh", []ssh.PublicKey{nil}},
	} {
		if got, err := RenderAuthorizedKeys(Protocol(tc.protocol), plain(tc.keys...)); err == nil {
			t.Errorf("%s: RenderAuthorizedKeys accepted it:\n%s", tc.name, got)
		}
	}
}

// TestRememberedConsumers: the consumers' host keys written as comments are
// read back, by name; a line of another shape names nobody.
func TestRememberedConsumers(t *testing.T) {
	client, prodHost, otherHost := testSSHKey(t, 1), testSSHKey(t, 2), testSSHKey(t, 3)
	content, err := RenderAuthorizedKeys(ProtocolSSH, []AuthorizedKey{
		{Key: client, Host: "prod", HostKey: prodHost}, {Key: testSSHKey(t, 4)}, {Key: testSSHKey(t, 5), Host: "web-1", HostKey: otherHost}})
	if err != nil {
		t.Fatal(err)
	}
	got := RememberedConsumers(append(content, "ssh-ed25519 AAAA nixpeer:evil:zz\n"...))
	if len(got) != 2 || !bytes.Equal(got["prod"].HostKey.Marshal(), prodHost.Marshal()) || !bytes.Equal(got["prod"].Key.Marshal(), client.Marshal()) ||
		!bytes.Equal(got["web-1"].HostKey.Marshal(), otherHost.Marshal()) {
		t.Fatalf("RememberedConsumers = %v", got)
	}
	if _, err := RenderAuthorizedKeys(ProtocolSSH, []AuthorizedKey{{Key: client, Host: "Bad Name", HostKey: prodHost}}); err == nil {
		t.Error("a host name that is not a label was written")
	}
	if _, err := RenderAuthorizedKeys(ProtocolSSH, []AuthorizedKey{{Key: client, Host: "prod", HostKey: testECDSAKey(t)}}); err == nil {
		t.Error("an ECDSA host key was written")
	}
}
