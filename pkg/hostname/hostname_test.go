package hostname

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

func TestCheckAccepts(t *testing.T) {
	for _, tc := range []struct {
		in, canon string
		kind      Kind
	}{
		{"localhost", "localhost", DNSName},
		{"a", "a", DNSName},
		{"A-1.example.COM", "a-1.example.com", DNSName},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", DNSName},
		{"1a.example", "1a.example", DNSName},
		{"a.b1", "a.b1", DNSName},
		{strings.Repeat("a", 63) + ".example", strings.Repeat("a", 63) + ".example", DNSName},
		{strings.Repeat("a.", 126) + "a", strings.Repeat("a.", 126) + "a", DNSName},
		{"192.0.2.1", "192.0.2.1", IPv4},
		{"0.0.0.0", "0.0.0.0", IPv4},
		{"2001:db8::1", "2001:db8::1", IPv6},
		{"2001:DB8:0:0::1", "2001:db8::1", IPv6},
		{"::1", "::1", IPv6},
		{"::", "::", IPv6},
		{"2001:db8::192.0.2.1", "2001:db8::c000:201", IPv6},
	} {
		kind, err := Check(tc.in)
		if err != nil || kind != tc.kind {
			t.Errorf("Check(%q) = %v, %v; want %v", tc.in, kind, err, tc.kind)
		}
		if got, err := Canonical(tc.in); err != nil || got != tc.canon {
			t.Errorf("Canonical(%q) = %q, %v; want %q", tc.in, got, err, tc.canon)
		}
	}
}

func TestCheckRefuses(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		is       error
	}{
		{"", `host "" is empty`, nil},
		{strings.Repeat("a.", 127) + "a", "255 characters long; the limit is 253", nil},
		{"[2001:db8::1]", "has brackets", ErrBrackets},
		{"[2001:db8::1]:22", "has brackets", ErrBrackets},
		{"root@stage", "without a user name", nil},
		{"stage:22", `includes a port; remove ":22"`, ErrPort},
		{"192.0.2.1:2222", `includes a port; remove ":2222"`, ErrPort},
		{"fe80::1%eth0", "IPv6 zone", nil},
		{"::ffff:192.0.2.1", "IPv4-mapped IPv6 address; write the IPv4 address 192.0.2.1", nil},
		{"2001:db8::g", "not a valid IPv6 address", nil},
		{"a:b:c", "not a valid IPv6 address", nil},
		{"stage.example.com.", "remove the trailing dot", nil},
		{"a..b", "empty label", nil},
		{".a", "empty label", nil},
		{strings.Repeat("a", 64) + ".example", "label of 64 characters; the limit is 63", nil},
		{"-a.example", `label "-a" that starts or ends with '-'`, nil},
		{"a-.example", `label "a-" that starts or ends with '-'`, nil},
		{"-oProxyCommand=x", "starts or ends with '-'", nil},
		{"a b", "contains a space", nil},
		{"a_b.example", "contains '_'", nil},
		{"a\nb", `contains '\n'`, nil},
		{"a.example\n", `contains '\n'`, nil},
		{"*.example.com", "contains '*'", nil},
		{"a,b", "contains ','", nil},
		{"${HOST}", "contains '$'", nil},
		{"caf\u00e9.example", "contains 'é'", nil},
		{"\u212a.example", "contains '\u212a'", nil}, // the Kelvin sign, which lowercases to ASCII "k"
		{"caf\xff", "contains '\ufffd'", nil},
		{"192.0.2.300", "looks like an IPv4 address but is not one", nil},
		{"192.0.2.01", "looks like an IPv4 address", nil},
		{"1.2.3", "looks like an IPv4 address", nil},
		{"a.123", "looks like an IPv4 address", nil},
		{"123", "looks like an IPv4 address", nil},
	} {
		kind, err := Check(tc.in)
		var e *Error
		switch {
		case err == nil:
			t.Errorf("Check(%q) = %v, want an error saying %q", tc.in, kind, tc.want)
			continue
		case !errors.As(err, &e) || e.Value != tc.in || e.Reason == "":
			t.Errorf("Check(%q) error %#v is not an *Error holding the value and a reason", tc.in, err)
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("Check(%q) error = %q, want it to say %q", tc.in, err, tc.want)
		case tc.is != nil && !errors.Is(err, tc.is):
			t.Errorf("Check(%q) error %q does not match %v", tc.in, err, tc.is)
		case tc.is == nil && (errors.Is(err, ErrPort) || errors.Is(err, ErrBrackets)):
			t.Errorf("Check(%q) error %q matches ErrPort or ErrBrackets", tc.in, err)
		}
		if _, err := Canonical(tc.in); err == nil {
			t.Errorf("Canonical(%q) accepted it", tc.in)
		}
	}
}

func TestErrorQuotesLongValuesShort(t *testing.T) {
	long := strings.Repeat("x", 5000)
	_, err := Check(long)
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), "5000 bytes") {
		t.Errorf("Check(5000 bytes) error = %q, want a short one that gives the length", err)
	}
}

func TestCheckLabel(t *testing.T) {
	for _, s := range []string{"a", "0", "123", "web-1", "a-b-c", strings.Repeat("a", 63)} {
		if err := CheckLabel(s); err != nil {
			t.Errorf("CheckLabel(%q) = %v", s, err)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", `host "" is empty`},
		{strings.Repeat("a", 64), "64 characters long; the limit is 63"},
		{"Web_1", "has upper-case letters"},
		{"web_1", "contains '_'"},
		{"-web", "starts or ends with '-'"},
		{"web-", "starts or ends with '-'"},
		{"a.b", "contains '.'"},
		{"a${b}", "contains '$'"},
		{"a b", "contains a space"},
		{"stage\nevil", `contains '\n'`},
	} {
		err := CheckLabel(tc.in)
		var e *Error
		if err == nil || !errors.As(err, &e) || e.Value != tc.in || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckLabel(%q) = %v, want an *Error saying %q", tc.in, err, tc.want)
		}
	}
}

func TestParseWithPort(t *testing.T) {
	for _, tc := range []struct {
		in, host string
		port     int
	}{
		{"stage.example.com", "stage.example.com", 22},
		{"Stage.example.com", "Stage.example.com", 22},
		{"10.0.0.2", "10.0.0.2", 22},
		{"fd00::3", "fd00::3", 22},
		{"[10.0.0.2]:2222", "10.0.0.2", 2222},
		{"[::1]:22", "::1", 22},
		{"[stage.example.com]:1", "stage.example.com", 1},
		{"[h]:65535", "h", 65535},
	} {
		host, port, err := ParseWithPort(tc.in)
		if err != nil || host != tc.host || port != tc.port {
			t.Errorf("ParseWithPort(%q) = %q, %d, %v; want %q, %d", tc.in, host, port, err, tc.host, tc.port)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"", "is empty"},
		{"h:22", "includes a port"},
		{"[h]", "neither HOST nor [HOST]:PORT"},
		{"[h]22", "neither HOST nor [HOST]:PORT"},
		{"[h]:", `port "" is not a number from 1 to 65535`},
		{"[h]:0", `port "0" is not a number`},
		{"[h]:022", `port "022" is not a number`},
		{"[h]:+22", `port "+22" is not a number`},
		{"[h]:65536", "port 65536 is not a number from 1 to 65535"},
		{"[h]:222222", `port "222222" is not a number`},
		{"[h]:22 ", `port "22 " is not a number`},
		{"[h x]:22", `host "[h x]:22": host "h x" contains a space`},
		{"[]:22", `host "" is empty`},
		{"[[::1]]:22", "has brackets"},
		{"[fe80::1%eth0]:22", "IPv6 zone"},
	} {
		if _, _, err := ParseWithPort(tc.in); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseWithPort(%q) error = %v, want it to say %q", tc.in, err, tc.want)
		}
	}
}

// FuzzCheck checks that Check, Canonical, CheckLabel and ParseWithPort
// never panic, refuse with well-formed errors, and accept only values that
// need no quoting and round-trip. The seed corpus is in
// testdata/fuzz/FuzzCheck.
func FuzzCheck(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		kind, err := Check(s)
		canon, cerr := Canonical(s)
		if (err == nil) != (cerr == nil) {
			t.Fatalf("Check(%q) = %v but Canonical = %v", s, err, cerr)
		}
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Value != s || e.Reason == "" || kind != 0 {
				t.Fatalf("Check(%q) = %v, %#v: not an *Error with the value and a reason", s, kind, err)
			}
		} else {
			checkSafe(t, s)
			a, perr := netip.ParseAddr(s)
			switch kind {
			case DNSName:
				if perr == nil || strings.ToLower(s) != canon || strings.Contains(s, ":") {
					t.Fatalf("Check(%q) = DNS name, but it parses as %v or canonicalizes to %q", s, a, canon)
				}
			case IPv4, IPv6:
				if perr != nil || a.Is4() != (kind == IPv4) || a.Zone() != "" || a.Is4In6() || a.String() != canon {
					t.Fatalf("Check(%q) = %v, but netip says %v, %v", s, kind, a, perr)
				}
			default:
				t.Fatalf("Check(%q) = unknown kind %d", s, kind)
			}
			if k2, err := Check(canon); err != nil || k2 != kind {
				t.Fatalf("canonical form %q of %q: %v, %v", canon, s, k2, err)
			}
			if c2, _ := Canonical(canon); c2 != canon {
				t.Fatalf("Canonical is not idempotent: %q -> %q -> %q", s, canon, c2)
			}
		}

		if err := CheckLabel(s); err == nil {
			checkSafe(t, s)
			if len(s) > maxLabelLen || strings.Trim(s, lower+digits+"-") != "" {
				t.Fatalf("CheckLabel accepted %q", s)
			}
		} else if e := (*Error)(nil); !errors.As(err, &e) || e.Value != s || e.Reason == "" {
			t.Fatalf("CheckLabel(%q) error %#v is not an *Error with the value and a reason", s, err)
		}

		host, port, err := ParseWithPort(s)
		if err != nil {
			return
		}
		if _, err := Check(host); err != nil || port < 1 || port > 65535 {
			t.Fatalf("ParseWithPort(%q) = %q, %d: not a host and port", s, host, port)
		}
		if s != host && s != "["+host+"]:"+strconv.Itoa(port) {
			t.Fatalf("ParseWithPort(%q) = %q, %d, which does not write back as the input", s, host, port)
		}
	})
}

// checkSafe fails unless s could be written into an OpenSSH, nix.conf or
// Nix file or a URL without quoting.
func checkSafe(t *testing.T, s string) {
	t.Helper()
	if s == "" || len(s) > maxLen || strings.HasPrefix(s, "-") || strings.Trim(s, alnum+"-.:") != "" {
		t.Fatalf("accepted %q, which is empty, long, starts with '-' or holds a character that needs quoting", s)
	}
}

func TestWithPortRoundTrips(t *testing.T) {
	for _, c := range []struct {
		host string
		port int
		want string
	}{{"a.example", 22, "a.example"}, {"127.0.0.2", 2222, "[127.0.0.2]:2222"}, {"::1", 2200, "[::1]:2200"}} {
		got := WithPort(c.host, c.port)
		if got != c.want {
			t.Errorf("WithPort(%q, %d) = %q, want %q", c.host, c.port, got, c.want)
		}
		if h, p, err := ParseWithPort(got); err != nil || h != c.host || p != c.port {
			t.Errorf("ParseWithPort(%q) = %q, %d, %v", got, h, p, err)
		}
	}
	if Bracket("::1") != "[::1]" || Bracket("10.0.0.1") != "10.0.0.1" {
		t.Error("Bracket")
	}
}
