package desired

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Pos is a 1-based line and column in the desired-state file.
type Pos struct {
	Line, Col int
}

// String returns "LINE:COL".
func (p Pos) String() string { return fmt.Sprintf("%d:%d", p.Line, p.Col) }

// Error is one problem found in a desired-state file, at a position.
type Error struct {
	File      string
	Line, Col int
	Msg       string
}

// Error returns "FILE:LINE:COL: Msg".
func (e Error) Error() string {
	return fmt.Sprintf("%s:%d:%d: %s", e.File, e.Line, e.Col, e.Msg)
}

// Errors is every problem found in a desired-state file, sorted by
// position. Parse returns it as its error; use errors.As to get it back.
type Errors []Error

// Error returns one "FILE:LINE:COL: Msg" line per problem.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// maxErrors bounds how many errors one Parse reports: past that, a file is
// not what its author meant and more lines would only hide the first ones.
const maxErrors = 100

// errorList collects errors while a file is checked.
type errorList struct {
	file string
	errs Errors
}

func (l *errorList) add(p Pos, format string, args ...any) {
	l.errs = append(l.errs, Error{File: l.file, Line: p.Line, Col: p.Col, Msg: fmt.Sprintf(format, args...)})
}

// result returns the collected errors sorted by position (stable, so errors
// at the same position keep the order they were found in), capped at
// maxErrors, or nil when there are none.
func (l *errorList) result() error {
	if len(l.errs) == 0 {
		return nil
	}
	es := append(Errors(nil), l.errs...)
	slices.SortStableFunc(es, func(a, b Error) int {
		return cmp.Or(cmp.Compare(a.Line, b.Line), cmp.Compare(a.Col, b.Col))
	})
	if len(es) > maxErrors {
		more := len(es) - maxErrors
		last := es[maxErrors]
		es = append(es[:maxErrors], Error{File: l.file, Line: last.Line, Col: last.Col,
			Msg: fmt.Sprintf("too many errors: %d more not shown; fix the ones above and run again", more)})
	}
	return es
}
