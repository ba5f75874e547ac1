package nix

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// nixStringTable holds strings that are hard to put in a Nix string.
var nixStringTable = []string{
	"", "plain", "${x}", "a${b}c", `\`, `\\`, `"`, `\"`, "$", "$$", "$${x}", "$$${x}", "x$", "$\\",
	"''", "'''", "''${x}", `''\n`, "a\nb", "\r\n", "\r", "\t", "{", "}", "${", "$\"", "\\${x}",
	"é ünïcödé", "#comment", "/nix/store/abc-x", "ssh-ed25519 AAAA", "a\x01b\x7f",
}

func TestNixStringRoundTripsThroughNix(t *testing.T) {
	requireNix(t, "nix-instantiate")
	var expr strings.Builder
	expr.WriteString("[\n")
	for _, s := range nixStringTable {
		expr.WriteString("  " + NixString(s) + "\n")
	}
	expr.WriteString("]\n")
	file := filepath.Join(t.TempDir(), "strings.nix")
	if err := os.WriteFile(file, []byte(expr.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runProgram(t, nixEnv(t), "nix-instantiate", "--eval", "--strict", "--json", file)
	var got []string
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("nix-instantiate printed %q: %v", out, err)
	}
	if diff := cmp.Diff(nixStringTable, got); diff != "" {
		t.Fatalf("Nix reads back other strings (-want +got):\n%s", diff)
	}
}

func TestNixStringUnescapesInGo(t *testing.T) {
	for _, s := range nixStringTable {
		lit := NixString(s)
		got, err := nixUnescape(lit)
		if err != nil || got != s {
			t.Errorf("nixUnescape(NixString(%q)) = %q, %v", s, got, err)
		}
		if strings.ContainsAny(lit, "\n\r") {
			t.Errorf("NixString(%q) = %q spans lines", s, lit)
		}
	}
	// The unescaper itself must see interpolation and early ends.
	for _, bad := range []string{`"${x}"`, `"a"b"`, `"a`, `a"`, `"\"`} {
		if _, err := nixUnescape(bad); err == nil {
			t.Errorf("nixUnescape(%q) accepted it", bad)
		}
	}
}

// nixUnescape reads a Nix double-quoted string literal the way the Nix
// lexer (2.8, src/libexpr/lexer.l and unescapeStr) does, and fails on
// anything but one literal without interpolation.
func nixUnescape(lit string) (string, error) {
	if len(lit) < 2 || lit[0] != '"' {
		return "", errors.New("no opening quote")
	}
	var b strings.Builder
	for i := 1; i < len(lit); i++ {
		switch c := lit[i]; {
		case c == '"':
			if i != len(lit)-1 {
				return "", fmt.Errorf("string ends at offset %d, before the end", i)
			}
			return b.String(), nil
		case c == '\\':
			if i+1 >= len(lit) {
				return "", errors.New("backslash at the end")
			}
			i++
			switch lit[i] {
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(lit[i])
			}
		case c == '$' && i+1 < len(lit) && lit[i+1] == '{':
			return "", fmt.Errorf("interpolation at offset %d", i)
		case c == '$' && i+1 < len(lit) && lit[i+1] == '$':
			// "$$" is two literal dollars: the second one cannot start
			// an interpolation (lexer rule \$[^{"\\]).
			b.WriteString("$$")
			i++
		case c == '\r':
			// Nix turns a raw CR, or CR LF, into LF.
			b.WriteByte('\n')
			if i+1 < len(lit) && lit[i+1] == '\n' {
				i++
			}
		default:
			b.WriteByte(c)
		}
	}
	return "", errors.New("no closing quote")
}
