// Package msg words values for error messages, the same way everywhere.
package msg

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// limit is the most of a value a message quotes, in bytes.
const limit = 60

// Quote quotes s for a message, cut at a rune boundary when it is long so
// that one message stays one readable line.
func Quote(s string) string {
	if len(s) <= limit {
		return strconv.Quote(s)
	}
	cut := limit
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q... (%d bytes)", s[:cut], len(s))
}

// FirstBad describes the first rune of s that is not in allowed ("a space"
// or the quoted rune), or returns "" when every rune is allowed.
func FirstBad(s, allowed string) string {
	for _, r := range s {
		if !strings.ContainsRune(allowed, r) {
			if r == ' ' {
				return "a space"
			}
			return strconv.QuoteRune(r)
		}
	}
	return ""
}
