package nix

import (
	"bytes"
	"slices"
	"strings"
)

// nixBlanks are the bytes Nix splits nix.conf lines on (tokenizeString).
const nixBlanks = " \t\r\n"

// includeMovedComment is written above the include line when EnsureInclude
// had to move it; EnsureInclude owns this line and the include line only.
const includeMovedComment = "# nixpeer moved its !include here: it must be the last setting, or a later setting such as 'substituters =' would override it."

// EnsureInclude makes sure nix.conf (existing) pulls in the managed fragment
// with includeLine (for example "!include nixpeer.conf") as its LAST setting
// line: a setting after it, such as "substituters = ...", would override
// what the fragment says. It returns the new content and whether it differs.
//
//   - includeLine is found as a line of its own (surrounding spaces, tabs
//     and line endings ignored, as Nix ignores them).
//   - If it is already the last setting line (only blank lines and comments
//     follow), other copies of it, if any, are removed and nothing else moves.
//   - Otherwise every copy is removed and the line is appended at the end,
//     after a comment that says why it was moved.
//   - Every other line is kept byte for byte, CRLF endings included. Lines
//     nixpeer adds end in CRLF when the file's last line ending is CRLF.
//   - If the file does not end with a newline, one is added before the
//     include line: there is no other way to start a new line.
//   - An empty file becomes just the include line.
//
// An includeLine that holds a newline or carriage return, or is blank or a
// comment, is not a setting line: existing is then returned unchanged, with
// false.
func EnsureInclude(existing []byte, includeLine string) ([]byte, bool) {
	includeLine = strings.Trim(includeLine, nixBlanks)
	if strings.ContainsAny(includeLine, "\r\n") || !isSettingLine([]byte(includeLine)) {
		return existing, false
	}
	lines := slices.Collect(bytes.Lines(existing))
	eol := "\n"
	if i := bytes.LastIndexByte(existing, '\n'); i > 0 && existing[i-1] == '\r' {
		eol = "\r\n"
	}
	isInclude := func(l []byte) bool { return string(bytes.Trim(l, nixBlanks)) == includeLine }

	lastSetting := -1
	for i, l := range lines {
		if isSettingLine(l) {
			lastSetting = i
		}
	}
	var out bytes.Buffer
	if lastSetting >= 0 && isInclude(lines[lastSetting]) {
		// In place: drop earlier copies only.
		for i, l := range lines {
			if i == lastSetting || !isInclude(l) {
				out.Write(l)
			}
		}
	} else {
		moved := false
		for _, l := range lines {
			switch {
			case isInclude(l):
				moved = true
			case string(bytes.Trim(l, nixBlanks)) == includeMovedComment:
				// Ours; written again below when needed.
			default:
				out.Write(l)
			}
		}
		if out.Len() > 0 && !bytes.HasSuffix(out.Bytes(), []byte("\n")) {
			out.WriteString(eol)
		}
		if moved {
			out.WriteString(includeMovedComment + eol)
		}
		out.WriteString(includeLine + eol)
	}
	if bytes.Equal(out.Bytes(), existing) {
		return existing, false
	}
	return out.Bytes(), true
}

// isSettingLine reports whether a nix.conf line does something: Nix drops
// everything from '#' on, then ignores a line of only blanks.
func isSettingLine(l []byte) bool {
	if i := bytes.IndexByte(l, '#'); i >= 0 {
		l = l[:i]
	}
	return len(bytes.Trim(l, nixBlanks)) > 0
}
