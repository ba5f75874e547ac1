package msg

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestQuote(t *testing.T) {
	if got := Quote(`a"b`); got != `"a\"b"` {
		t.Errorf("Quote short = %s", got)
	}
	long := strings.Repeat("é", 40) // 80 bytes
	got := Quote(long)
	if !strings.HasSuffix(got, "... (80 bytes)") || !utf8.ValidString(got) || strings.Count(got, "é") != 30 {
		t.Errorf("Quote long = %s", got)
	}
}

func TestFirstBad(t *testing.T) {
	for s, want := range map[string]string{"abc": "", "ab c": "a space", "a$b": "'$'", "aé": "'é'"} {
		if got := FirstBad(s, "abc"); got != want {
			t.Errorf("FirstBad(%q) = %q, want %q", s, got, want)
		}
	}
}
