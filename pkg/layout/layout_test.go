package layout

import "testing"

func TestRootPrefixesEveryDefaultPath(t *testing.T) {
	l := New("/tmp/r", "", "")
	for name, got := range map[string]string{
		"state": l.StateDir, "socket": l.Socket, "db": l.Database, "client key": l.ClientKey,
		"host key": l.HostKey, "known_hosts": l.KnownHosts, "ssh config": l.SSHConfig,
	} {
		if len(got) < 7 || got[:7] != "/tmp/r/" {
			t.Errorf("%s = %s, not under the root", name, got)
		}
	}
	m := New("", "/srv/state", "/run/x.sock")
	if m.HostKey != "/etc/ssh/ssh_host_ed25519_key" || m.Database != "/srv/state/state.db" || m.Socket != "/run/x.sock" {
		t.Fatalf("no root: %+v", m)
	}
}
