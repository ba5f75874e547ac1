package sshconfig

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"

	"github.com/google/go-cmp/cmp"

	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/managedblock"
)

// block returns the managed block holding ls and the closing "Host *".
func block(ls ...string) string {
	return managedblock.BeginLine + "\n" + strings.Join(ls, "\n") + "\nHost *\n" + managedblock.EndLine + "\n"
}

func TestRender(t *testing.T) {
	user := "# my settings\r\n" +
		"ServerAliveInterval 30\n" +
		"\n" +
		"Host other.example   \t\n" +
		"  User bob\r\n" +
		"caf\xe9\xff\n" +
		"last line without newline"
	one := []Peer{{Address: "127.0.0.2", Port: 2222, ConnectTimeout: 5 * time.Second}}
	oneBlock := block("Host 127.0.0.2", "  Port 2222", "  ConnectTimeout 5", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2")
	tests := []struct {
		name     string
		existing string
		peers    []Peer
		want     string
	}{
		{
			name:  "empty file gets the block",
			peers: one,
			want:  oneBlock,
		},
		{
			name:     "block goes on top, everything else untouched",
			existing: user,
			peers:    one,
			want:     oneBlock + user,
		},
		{
			name:     "no peers, no block: unchanged",
			existing: user,
			want:     user,
		},
		{
			name:     "existing block replaced in place",
			existing: "a\n" + block("Host old.example", "  ConnectTimeout 1", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2") + "b\r\nc",
			peers:    one,
			want:     "a\n" + oneBlock + "b\r\nc",
		},
		{
			name:     "no peers removes the block",
			existing: "a\n" + block("Host old.example", "  ConnectTimeout 1", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2") + "b",
			want:     "a\nb",
		},
		{
			name: "port 22 has no Port line; timeouts round up to whole seconds, at least 1",
			peers: []Peer{
				{Address: "a.example", Port: 22, ConnectTimeout: 5 * time.Second},
				{Address: "b.example", Port: 22, ConnectTimeout: 1500 * time.Millisecond},
				{Address: "c.example", Port: 22, ConnectTimeout: time.Nanosecond},
				{Address: "d.example", Port: 22},
			},
			want: block(
				"Host a.example", "  ConnectTimeout 5", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host b.example", "  ConnectTimeout 2", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host c.example", "  ConnectTimeout 1", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host d.example", "  ConnectTimeout 1", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
			),
		},
		{
			name: "sorted and deduplicated; addresses written as given, since ssh matches them as typed",
			peers: []Peer{
				{Address: "stage.example.com", Port: 2222, ConnectTimeout: 5 * time.Second},
				{Address: "stage.example.com", Port: 2222, ConnectTimeout: 4500 * time.Millisecond},
				{Address: "Stage.Example.COM", Port: 2222, ConnectTimeout: 5 * time.Second},
				{Address: "2001:DB8:0:0::1", Port: 22, ConnectTimeout: 3 * time.Second},
				{Address: "::1", Port: 65535, ConnectTimeout: 3 * time.Second},
				{Address: "127.0.0.2", Port: 1, ConnectTimeout: 3 * time.Second},
			},
			want: block(
				"Host 127.0.0.2", "  Port 1", "  ConnectTimeout 3", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host 2001:DB8:0:0::1", "  ConnectTimeout 3", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host ::1", "  Port 65535", "  ConnectTimeout 3", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host Stage.Example.COM", "  Port 2222", "  ConnectTimeout 5", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
				"Host stage.example.com", "  Port 2222", "  ConnectTimeout 5", "  ConnectionAttempts 1", "  ServerAliveInterval 5", "  ServerAliveCountMax 2",
			),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.existing)
			got, err := Render(in, tt.peers)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Render (-want +got):\n%s", diff)
			}
			if string(in) != tt.existing {
				t.Errorf("Render modified its input")
			}
			if again, err := Render(got, tt.peers); err != nil || !bytes.Equal(again, got) {
				t.Errorf("Render is not idempotent: err=%v\n%q\n%q", err, got, again)
			}
		})
	}
}

func TestRenderRejectsBadPeers(t *testing.T) {
	ok := func(addr string) Peer { return Peer{Address: addr, Port: 22, ConnectTimeout: time.Second} }
	tests := []struct {
		name string
		p    Peer
		want string
	}{
		{"empty address", ok(""), `host "" is empty`},
		{"space", ok("a b"), `host "a b" contains a space`},
		{"tab", ok("a\tb"), `contains '\t'`},
		{"newline injecting a line", ok("a.example\n  ProxyCommand evil"), `contains '\n'`},
		{"trailing newline", ok("a.example\n"), `contains '\n'`},
		{"carriage return", ok("a.example\r"), `contains '\r'`},
		{"wildcard *", ok("*.example.com"), "contains '*'"},
		{"wildcard ?", ok("a?.example"), "contains '?'"},
		{"negation", ok("!a.example"), "contains '!'"},
		{"double quote", ok(`"a.example"`), `contains '"'`},
		{"single quote", ok("'a.example'"), `contains '\''`},
		{"comma", ok("a,b"), "contains ','"},
		{"leading hyphen", ok("-oProxyCommand=x"), "starts or ends with '-'"},
		{"leading hyphen label", ok("-a.example"), "starts or ends with '-'"},
		{"hash", ok("a#b"), "contains '#'"},
		{"equals", ok("a=b"), "contains '='"},
		{"user part", ok("nix-ssh@a.example"), "without a user name"},
		{"host with port", ok("a.example:2222"), "includes a port"},
		{"bracketed ipv6", ok("[::1]"), "without [ ]"},
		{"ipv6 zone", ok("fe80::1%eth0"), "IPv6 zone"},
		{"numeric tld", ok("1.2.3"), "looks like an IPv4 address"},
		{"non-ASCII that lowercases to ASCII", ok("\u212a.example"), "contains '\u212a'"},
		{"port 0", Peer{Address: "a.example", Port: 0}, "port 0 is out of range"},
		{"port -22", Peer{Address: "a.example", Port: -22}, "port -22 is out of range"},
		{"port 65536", Peer{Address: "a.example", Port: 65536}, "port 65536 is out of range"},
		{"negative timeout", Peer{Address: "a.example", Port: 22, ConnectTimeout: -time.Second}, "negative"},
		{"timeout too long for ssh", Peer{Address: "a.example", Port: 22, ConnectTimeout: (1 << 31) * time.Second}, "longer than ssh takes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Render([]byte("x\n"), []Peer{ok("ok.example"), tt.p})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Render error = %v, want it to contain %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), "peer 1") {
				t.Errorf("error %q does not say which peer", err)
			}
			if out != nil {
				t.Errorf("Render returned output with an error")
			}
		})
	}
}

func TestRenderLongestTimeout(t *testing.T) {
	out, err := Render(nil, []Peer{{Address: "a.example", Port: 22, ConnectTimeout: (1<<31 - 1) * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "\n  ConnectTimeout 2147483647\n") {
		t.Errorf("Render = %q, want ConnectTimeout 2147483647", out)
	}
}

func TestRenderRejectsConflictingPeers(t *testing.T) {
	for _, other := range []Peer{
		{Address: "a.example", Port: 2222, ConnectTimeout: 5 * time.Second},
		{Address: "a.example", Port: 22, ConnectTimeout: 6 * time.Second},
	} {
		peers := []Peer{{Address: "a.example", Port: 22, ConnectTimeout: 5 * time.Second}, other}
		out, err := Render(nil, peers)
		if err == nil || !strings.Contains(err.Error(), "host a.example is given twice with different settings") {
			t.Errorf("Render(%v) error = %v, want a conflict", peers, err)
		}
		if out != nil {
			t.Errorf("Render returned output with an error")
		}
	}
}

func TestRenderMalformedBlock(t *testing.T) {
	peers := []Peer{{Address: "a.example", Port: 22, ConnectTimeout: time.Second}}
	for _, tt := range []struct{ name, existing, want string }{
		{"BEGIN without END", "x\n" + managedblock.BeginLine + "\ny\n", "line 2: BEGIN marker of the nixpeer managed block has no END"},
		{"END without BEGIN", "x\n" + managedblock.EndLine + "\n", "line 2: END marker of the nixpeer managed block without a BEGIN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, ps := range [][]Peer{peers, nil} {
				out, err := Render([]byte(tt.existing), ps)
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Errorf("Render error = %v, want it to contain %q", err, tt.want)
				}
				if out != nil {
					t.Errorf("Render returned output with an error")
				}
			}
		})
	}
}

// stanza is what the block says for one host.
type stanza struct{ port, timeout int }

// expect works out, independently of Render's own normalization (only the
// address check is shared), what the block must say for peers, or ok false
// when Render must refuse them.
func expect(peers []Peer) (want map[string]stanza, ok bool) {
	want = map[string]stanza{}
	for _, p := range peers {
		addr := p.Address
		_, err := hostname.Check(addr)
		if err != nil || strings.ContainsFunc(addr, func(r rune) bool { return r > 0x7e }) || p.Port < 1 || p.Port > 65535 || p.ConnectTimeout < 0 || p.ConnectTimeout > (1<<31-1)*time.Second {
			return nil, false
		}
		secs := int((p.ConnectTimeout + time.Second - 1) / time.Second)
		s := stanza{port: p.Port, timeout: max(secs, 1)}
		if old, dup := want[addr]; dup && old != s {
			return nil, false
		}
		want[addr] = s
	}
	return want, true
}

// parseBlock reads the block Render wrote, strictly: "Host ADDRESS", an
// optional "  Port N" (N not 22), "  ConnectTimeout N", the aliveLines, repeated with
// addresses in increasing order, then "Host *" as the last line.
func parseBlock(lines []managedblock.Line) (map[string]stanza, error) {
	got := map[string]stanza{}
	if len(lines) == 0 {
		return got, nil
	}
	if last := lines[len(lines)-1].Text; last != "Host *" {
		return nil, fmt.Errorf("last line %q, want \"Host *\"", last)
	}
	number := func(l, prefix string, lo int) (int, error) {
		s, ok := strings.CutPrefix(l, prefix)
		n, err := strconv.Atoi(s)
		if !ok || err != nil || strconv.Itoa(n) != s || n < lo {
			return 0, fmt.Errorf("line %q, want %q and a number >= %d", l, prefix, lo)
		}
		return n, nil
	}
	prev := ""
	ls := lines[:len(lines)-1]
	for len(ls) > 0 {
		addr, ok := strings.CutPrefix(ls[0].Text, "Host ")
		if !ok || addr == "" || strings.ContainsAny(addr, " \t\r\n*?!\"'\\,#=@[]%") || strings.HasPrefix(addr, "-") {
			return nil, fmt.Errorf("line %q, want \"Host ADDRESS\" with a plain address", ls[0].Text)
		}
		if _, err := hostname.Check(addr); err != nil {
			return nil, fmt.Errorf("address %q: %v", addr, err)
		}
		if addr <= prev {
			return nil, fmt.Errorf("address %q after %q: not sorted and unique", addr, prev)
		}
		prev = addr
		ls = ls[1:]
		s := stanza{port: 22}
		if len(ls) > 0 && strings.HasPrefix(ls[0].Text, "  Port ") {
			p, err := number(ls[0].Text, "  Port ", 1)
			if err != nil || p == 22 || p > 65535 {
				return nil, fmt.Errorf("line %q: bad port (%v)", ls[0].Text, err)
			}
			s.port = p
			ls = ls[1:]
		}
		if len(ls) == 0 {
			return nil, fmt.Errorf("host %s has no ConnectTimeout line", addr)
		}
		t, err := number(ls[0].Text, "  ConnectTimeout ", 1)
		if err != nil {
			return nil, err
		}
		s.timeout = t
		ls = ls[1:]
		for _, want := range aliveLines {
			if len(ls) == 0 || ls[0].Text != want {
				return nil, fmt.Errorf("host %s: want %q after ConnectTimeout", addr, want)
			}
			ls = ls[1:]
		}
		got[addr] = s
	}
	return got, nil
}

// checkRender asserts the properties Render must have for any input.
func checkRender(t *testing.T, existing []byte, peers []Peer) {
	t.Helper()
	orig := bytes.Clone(existing)
	out, err := Render(existing, peers)
	if !bytes.Equal(existing, orig) {
		t.Fatalf("Render modified its input")
	}
	if err != nil && out != nil {
		t.Fatalf("Render returned output with an error")
	}
	want, valid := expect(peers)
	if !valid {
		if err == nil {
			t.Fatalf("Render accepted peers it must refuse: %+v\n%q", peers, out)
		}
		return
	}
	// Conservative: existing holds no marker line if it lacks this text.
	noMarkers := !bytes.Contains(existing, []byte("nixpeer managed block"))
	if err != nil {
		if noMarkers {
			t.Fatalf("Render(%q, %v) failed on a file without markers: %v", existing, peers, err)
		}
		if _, lerr := managedblock.Lines(existing); lerr == nil {
			t.Fatalf("Render failed (%v) on valid peers and a well-formed block", err)
		}
		return
	}
	if again, err := Render(out, peers); err != nil || !bytes.Equal(again, out) {
		t.Fatalf("Render not idempotent: err=%v\n%q\n%q", err, out, again)
	}
	lines, err := managedblock.Lines(out)
	if err != nil {
		t.Fatalf("Lines(Render(x, p)): %v\n%q", err, out)
	}
	got, err := parseBlock(lines)
	if err != nil {
		t.Fatalf("block of Render(x, %+v): %v\n%q", peers, err, out)
	}
	if diff := cmp.Diff(want, got, cmp.AllowUnexported(stanza{})); diff != "" {
		t.Fatalf("block of Render(x, %+v) (-want +got):\n%s", peers, diff)
	}
	removed, err := Render(out, nil)
	if err != nil {
		t.Fatalf("Render(Render(x, p), nil): %v", err)
	}
	if noMarkers {
		blockOnly, err := Render(nil, peers)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out, append(blockOnly, existing...)) {
			t.Fatalf("Render(x, p) is not block+x:\n%q", out)
		}
		if !bytes.Equal(removed, existing) {
			t.Fatalf("Render(Render(x, p), nil) = %q, want %q", removed, existing)
		}
		return
	}
	stripped, err := Render(existing, nil)
	if err != nil || !bytes.Equal(removed, stripped) {
		t.Fatalf("Render(Render(x, p), nil) = %q, want Render(x, nil) = %q (err %v)", removed, stripped, err)
	}
}

// FuzzRender feeds arbitrary file content and peers built from addresses
// (split at '|', at most 8) and nums, three bytes per peer: the port (big
// endian; 22 where missing) and the connect timeout in quarter seconds (a
// signed byte; 0 where missing). Its seeds are in testdata/fuzz/FuzzRender.
func FuzzRender(f *testing.F) {
	f.Fuzz(func(t *testing.T, existing []byte, addrs string, nums []byte) {
		var peers []Peer
		if addrs != "" {
			for i, a := range strings.Split(addrs, "|") {
				if i == 8 {
					break
				}
				p := Peer{Address: a, Port: 22}
				if 3*i+1 < len(nums) {
					p.Port = int(nums[3*i])<<8 | int(nums[3*i+1])
				}
				if 3*i+2 < len(nums) {
					p.ConnectTimeout = time.Duration(int8(nums[3*i+2])) * 250 * time.Millisecond
				}
				peers = append(peers, p)
			}
		}
		checkRender(t, existing, peers)
	})
}

// alive adds the keepalive and attempt bounds the block sets for a peer.
func alive(set map[string]string) map[string]string {
	set["connectionattempts"], set["serveraliveinterval"], set["serveralivecountmax"] = "1", "5", "2"
	return set
}

// sshClient returns the path of ssh; testenv.Require skips the test where it
// is missing, or fails it on CI, where it must be installed.
func sshClient(t *testing.T) string {
	t.Helper()
	testenv.Require(t, "ssh")
	p, err := testenv.LookPath("ssh")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// effective returns the options "ssh -G -F path dest" prints, one
// "keyword value" line each, without connecting anywhere.
func effective(t *testing.T, ssh, path, dest string) []string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(ssh, "-G", "-F", path, dest)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("ssh -G -F %s %s: %v\n%s", path, dest, err, stderr.Bytes())
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

// option returns the value of keyword in ssh -G output, or "" without it.
func option(lines []string, keyword string) string {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, keyword+" "); ok {
			return v
		}
	}
	return ""
}

// replaced returns lines with the value of each keyword in set replaced.
func replaced(lines []string, set map[string]string) []string {
	out := make([]string, len(lines))
	for i, l := range lines {
		k, _, _ := strings.Cut(l, " ")
		if v, ok := set[k]; ok {
			l = k + " " + v
		}
		out[i] = l
	}
	return out
}

// TestSSHReadsBlock checks with the real ssh client that the block sets
// port and timeout for the peers and nothing else: every other option,
// including the user's global ones written before any Host line of theirs,
// comes out as it did before the block was added.
func TestSSHReadsBlock(t *testing.T) {
	ssh := sshClient(t)
	path := filepath.Join(t.TempDir(), "config")
	user := "# my settings\n" +
		"ServerAliveInterval 30\n" +
		"\n" +
		"Host 127.0.0.2\n" +
		"  Port 3333\n" +
		"  User alice\n" +
		"Host other.example\n" +
		"  User bob\n"
	if err := os.WriteFile(path, []byte(user), 0o644); err != nil {
		t.Fatal(err)
	}
	dests := []string{"127.0.0.2", "nix-ssh@127.0.0.2", "Stage.EXAMPLE.com", "::1", "127.0.0.3", "other.example"}
	before := map[string][]string{}
	for _, d := range dests {
		before[d] = effective(t, ssh, path, d)
	}

	peers := []Peer{
		{Address: "127.0.0.2", Port: 2222, ConnectTimeout: 5 * time.Second},
		{Address: "Stage.EXAMPLE.com", Port: 22, ConnectTimeout: 1500 * time.Millisecond},
		{Address: "::1", Port: 2200},
	}
	if err := renderTo(path, peers); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dest string
		set  map[string]string // what the block changes; nil: nothing
	}{
		{"127.0.0.2", alive(map[string]string{"port": "2222", "connecttimeout": "5"})},
		{"nix-ssh@127.0.0.2", alive(map[string]string{"port": "2222", "connecttimeout": "5"})},
		{"Stage.EXAMPLE.com", alive(map[string]string{"connecttimeout": "2"})},
		{"::1", alive(map[string]string{"port": "2200", "connecttimeout": "1"})},
		{"127.0.0.3", nil},
		{"other.example", nil},
	} {
		got := effective(t, ssh, path, c.dest)
		want := replaced(before[c.dest], c.set)
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("ssh -G %s (-want +got):\n%s", c.dest, diff)
		}
		if v := option(got, "serveraliveinterval"); c.set == nil && v != "30" {
			t.Errorf("ssh -G %s: serveraliveinterval %q, want the user's global 30", c.dest, v)
		}
	}
	// Spot checks of the values themselves, not only of the differences.
	managed := effective(t, ssh, path, "127.0.0.2")
	for k, v := range map[string]string{"port": "2222", "connecttimeout": "5", "user": "alice"} {
		if got := option(managed, k); got != v {
			t.Errorf("ssh -G 127.0.0.2: %s %q, want %q", k, got, v)
		}
	}
	if got := option(effective(t, ssh, path, "nix-ssh@127.0.0.2"), "user"); got != "nix-ssh" {
		t.Errorf("ssh -G nix-ssh@127.0.0.2: user %q, want nix-ssh", got)
	}
	if got := option(effective(t, ssh, path, "127.0.0.3"), "port"); got != "22" {
		t.Errorf("ssh -G 127.0.0.3: port %q, want 22", got)
	}

	if err := renderTo(path, nil); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(path); string(got) != user {
		t.Errorf("removing the block did not give the user's file back:\n%q", got)
	}
}

// renderTo renders the managed block into the file at path, as the agent's
// act step does with what Render returns.
func renderTo(path string, v []Peer) error {
	existing, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	out, err := Render(existing, v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, out, 0o644)
}
