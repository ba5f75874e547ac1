package nix

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEnsureInclude(t *testing.T) {
	const inc = "!include nixpeer.conf"
	const moved = includeMovedComment + "\n"
	for _, tc := range []struct {
		name, in, want string
		changed        bool
	}{
		{"empty", "", inc + "\n", true},
		{"appended", "sandbox = false\n", "sandbox = false\n" + inc + "\n", true},
		{"no final newline", "sandbox = false", "sandbox = false\n" + inc + "\n", true},
		{"already last", "a = b\n" + inc + "\n", "a = b\n" + inc + "\n", false},
		{"last without newline", "a = b\n" + inc, "a = b\n" + inc, false},
		{"last, comments and blanks after", "a = b\n" + inc + "\n\n# note\n  \n", "a = b\n" + inc + "\n\n# note\n  \n", false},
		{"last, with surrounding blanks", "a = b\n  " + inc + "  \n", "a = b\n  " + inc + "  \n", false},
		{"moved", inc + "\nsubstituters = https://x\n", "substituters = https://x\n" + moved + inc + "\n", true},
		{"moved, no final newline", inc + "\nsubstituters = https://x", "substituters = https://x\n" + moved + inc + "\n", true},
		{"moved twice is stable", "substituters = https://x\n" + moved + inc + "\n", "substituters = https://x\n" + moved + inc + "\n", false},
		{"moved again, old comment dropped", "a = b\n" + moved + inc + "\nc = d\n", "a = b\nc = d\n" + moved + inc + "\n", true},
		{"duplicate before the last one", inc + "\na = b\n" + inc + "\n", "a = b\n" + inc + "\n", true},
		{"setting after a comment marker", inc + "\nfallback = false # user\n", "fallback = false # user\n" + moved + inc + "\n", true},
		{"other include after", inc + "\n!include other.conf\n", "!include other.conf\n" + moved + inc + "\n", true},
		{"crlf kept", "a = b\r\nc = d\r\n", "a = b\r\nc = d\r\n" + inc + "\r\n", true},
		{"crlf moved", inc + "\r\na = b\r\n", "a = b\r\n" + includeMovedComment + "\r\n" + inc + "\r\n", true},
		{"crlf, no final newline", "a = b\r\nc = d", "a = b\r\nc = d\r\n" + inc + "\r\n", true},
		{"bytes kept", "\tweird   =  spacing\t\n#x\n\xff\xfe = 1\n", "\tweird   =  spacing\t\n#x\n\xff\xfe = 1\n" + inc + "\n", true},
		{"similar line is not ours", "include nixpeer.conf\n!include nixpeer.conf.bak\n", "include nixpeer.conf\n!include nixpeer.conf.bak\n" + inc + "\n", true},
		{"only blank lines", "\n\n", "\n\n" + inc + "\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed := EnsureInclude([]byte(tc.in), inc)
			if diff := cmp.Diff(tc.want, string(got)); diff != "" {
				t.Errorf("content mismatch (-want +got):\n%s", diff)
			}
			if changed != tc.changed {
				t.Errorf("changed = %v, want %v", changed, tc.changed)
			}
			again, changed := EnsureInclude(got, inc)
			if changed || string(again) != string(got) {
				t.Errorf("second call changed the file again:\n%q", again)
			}
		})
	}
}

func TestEnsureIncludeRefusesNonLines(t *testing.T) {
	for _, line := range []string{"", "  ", "!include a\nsubstituters =", "a\rb", "# just a comment"} {
		in := []byte("a = b\n")
		got, changed := EnsureInclude(in, line)
		if changed || string(got) != string(in) {
			t.Errorf("EnsureInclude(_, %q) = %q, %v; want the input unchanged", line, got, changed)
		}
	}
}

func TestEnsureIncludeFollowsLastLineEnding(t *testing.T) {
	in := "a = b\r\nc = d\n"
	got, _ := EnsureInclude([]byte(in), "!include x")
	if string(got) != in+"!include x\n" {
		t.Errorf("got %q, want the LF of the last line", got)
	}
}
