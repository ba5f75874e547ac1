// Package managedblock keeps one agent-owned block of lines inside a text
// file that people also edit by hand, such as known_hosts or an ssh client
// config:
//
//	# BEGIN nixpeer managed block: do not edit, the agent rewrites it
//	...the lines the agent wants...
//	# END nixpeer managed block
//
// Every byte outside the block is preserved exactly: comments, blank lines,
// CRLF line endings, trailing whitespace, a missing final newline and bytes
// that are not UTF-8. A file without a block gets the block at its top, so
// that removing the block later gives the original bytes back. Both marker
// lines are '#' comments, which the files it is meant for ignore.
//
// The package knows nothing of what the lines mean: callers validate and
// format them, then hand them to Render or Update.
package managedblock

import (
	"bytes"
	"fmt"
	"strings"
)

const (
	// BeginLine is the first line of the block, as Render writes it.
	BeginLine = "# BEGIN nixpeer managed block: do not edit, the agent rewrites it"
	// EndLine is the last line of the block, as Render writes it.
	EndLine = "# END nixpeer managed block"

	// A line is taken for a marker when, with surrounding blanks removed,
	// it starts with one of these, so a marker whose tail was edited is
	// still recognised rather than silently left behind as a stale block.
	beginPrefix = "# BEGIN nixpeer managed block"
	endPrefix   = "# END nixpeer managed block"
)

// Render returns existing with the managed block set to hold lines, each
// written with a "\n" ending. An existing block is replaced in place; with
// no block yet, the block goes at the top of the file. With no lines, the
// block is removed, and a file without a block is returned unchanged.
//
// A malformed block (BEGIN without END, END without BEGIN, a BEGIN inside
// the block, a second block) is an error naming the line, and so is a line
// that holds a line break or would read as a marker. existing is never
// modified; the result does not share its memory.
func Render(existing []byte, lines []string) ([]byte, error) {
	for i, l := range lines {
		if strings.ContainsAny(l, "\r\n") {
			return nil, fmt.Errorf("block line %d %q: holds a line break", i+1, l)
		}
		if markerKind([]byte(l)) != markNone {
			return nil, fmt.Errorf("block line %d %q: reads as a marker of the nixpeer managed block", i+1, l)
		}
	}
	b, err := find(existing)
	if err != nil {
		return nil, err
	}
	var block []byte
	if len(lines) > 0 {
		block = []byte(BeginLine + "\n" + strings.Join(lines, "\n") + "\n" + EndLine + "\n")
	}
	// Without a block, start and end are 0: the block goes at the top.
	out := make([]byte, 0, b.start+len(block)+len(existing)-b.end)
	out = append(out, existing[:b.start]...)
	out = append(out, block...)
	return append(out, existing[b.end:]...), nil
}

// Line is one line inside the managed block of a file.
type Line struct {
	// Number is the line's 1-based number in the whole file.
	Number int
	// Text is the line without its trailing '\r' and '\n' bytes.
	Text string
}

// Lines returns the lines between the markers of the managed block of
// existing, or nil when there is no block or it is empty. A malformed
// block is an error naming the line.
func Lines(existing []byte) ([]Line, error) {
	b, err := find(existing)
	if err != nil || !b.found {
		return nil, err
	}
	var out []Line
	n := b.beginLine
	for l := range bytes.Lines(existing[b.bodyStart:b.bodyEnd]) {
		n++
		out = append(out, Line{Number: n, Text: string(bytes.TrimRight(l, "\r\n"))})
	}
	return out, nil
}

// block locates the managed block in a file. Offsets are byte offsets;
// line numbers are 1-based.
type block struct {
	found      bool
	start, end int // the block, from the start of BEGIN to past END's newline
	bodyStart  int // first byte after the BEGIN line
	bodyEnd    int // first byte of the END line
	beginLine  int
}

func find(data []byte) (block, error) {
	var b block
	inBlock := false
	lineNo, off := 0, 0
	for l := range bytes.Lines(data) {
		lineNo++
		lineStart := off
		off += len(l)
		switch markerKind(l) {
		case markBegin:
			switch {
			case inBlock:
				return block{}, fmt.Errorf("line %d: second BEGIN marker of the nixpeer managed block; the block opened at line %d has no END yet", lineNo, b.beginLine)
			case b.found:
				return block{}, fmt.Errorf("line %d: a second nixpeer managed block; the first begins at line %d", lineNo, b.beginLine)
			}
			inBlock = true
			b.found = true
			b.start, b.bodyStart, b.beginLine = lineStart, off, lineNo
		case markEnd:
			if !inBlock {
				return block{}, fmt.Errorf("line %d: END marker of the nixpeer managed block without a BEGIN before it", lineNo)
			}
			inBlock = false
			b.bodyEnd, b.end = lineStart, off
		}
	}
	if inBlock {
		return block{}, fmt.Errorf("line %d: BEGIN marker of the nixpeer managed block has no END marker", b.beginLine)
	}
	return b, nil
}

type marker int

const (
	markNone marker = iota
	markBegin
	markEnd
)

func markerKind(line []byte) marker {
	t := bytes.Trim(line, " \t\r\n")
	switch {
	case bytes.HasPrefix(t, []byte(beginPrefix)):
		return markBegin
	case bytes.HasPrefix(t, []byte(endPrefix)):
		return markEnd
	}
	return markNone
}
