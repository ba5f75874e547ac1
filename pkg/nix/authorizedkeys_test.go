package nix

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/ssh"
)

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
			got, err := RenderAuthorizedKeys(Protocol(tc.protocol), tc.keys)
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
		if got, err := RenderAuthorizedKeys(Protocol(tc.protocol), tc.keys); err == nil {
			t.Errorf("%s: RenderAuthorizedKeys accepted it:\n%s", tc.name, got)
		}
	}
}
