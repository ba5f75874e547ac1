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
	return `"` + nixEscaper.Replace(s) + `"`
}

var nixEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\r", `\r`, "\t", `\t`, "${", `\${`)
