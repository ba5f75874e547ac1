package testenv

import (
	"net"
	"os/exec"
	"sync"
	"testing"
)

// Dark makes the loopback address drop every packet sent to it, as a host
// that is down or behind a firewall does (not "connection refused"): an
// iptables rule `INPUT -d ADDRESS -j DROP`. The returned function takes
// the rule away again; the end of the test does too. Give the dark host an
// address of its own (127.0.0.12, ...): every packet to it is dropped,
// whoever sends it.
func Dark(t testing.TB, address string) (light func()) {
	t.Helper()
	RequireRoot(t)
	Require(t, "iptables")
	if ip := net.ParseIP(address); ip == nil || !ip.IsLoopback() || ip.Equal(net.IPv4(127, 0, 0, 1)) {
		t.Fatalf("testenv: Dark(%q): want a loopback address other than 127.0.0.1", address)
	}
	prog := must(LookPath("iptables"))(t)
	rule := []string{"INPUT", "-d", address, "-j", "DROP"}
	if out, err := exec.Command(prog, append([]string{"-w", "-I"}, rule...)...).CombinedOutput(); err != nil {
		t.Fatalf("testenv: iptables -I %v: %v\n%s", rule, err, out)
	}
	var once sync.Once
	light = func() {
		once.Do(func() {
			if out, err := exec.Command(prog, append([]string{"-w", "-D"}, rule...)...).CombinedOutput(); err != nil {
				t.Errorf("testenv: iptables -D %v: %v\n%s", rule, err, out)
			}
		})
	}
	t.Cleanup(light)
	return light
}
