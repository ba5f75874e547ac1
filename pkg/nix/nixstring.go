package nix

import "strings"

// NixString returns s as a Nix double-quoted string literal: `\` and `"`
// are escaped, `$` is escaped where a `{` follows it (so `${` never starts an
// interpolation), and newline, carriage return and tab become \n, \r and \t
// (Nix would turn a raw carriage return into a newline). Every other byte is
// kept as it is.
//
// A Nix string cannot hold a NUL byte: the Nix lexer ends the string there.
// The renderers of this package refuse such values before they get here;
// NixString is their second line of defence, not their validation.
func NixString(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 2)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\\`)
		case '"':
			b.WriteString(`\"`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '$':
			if i+1 < len(s) && s[i+1] == '{' {
				b.WriteString(`\$`)
			} else {
				b.WriteByte('$')
			}
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String()
}
