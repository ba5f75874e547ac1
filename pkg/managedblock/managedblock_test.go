package managedblock

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// wrap returns a block holding ls, as Render writes it.
func wrap(ls ...string) string {
	return BeginLine + "\n" + strings.Join(ls, "\n") + "\n" + EndLine + "\n"
}

func TestRender(t *testing.T) {
	user := "# mine\r\n\n  trailing blanks \t\ncaf\xe9\xff\nno newline"
	tests := []struct {
		name     string
		existing string
		lines    []string
		want     string
	}{
		{"empty file gets the block", "", []string{"a", "b"}, wrap("a", "b")},
		{"block goes on top", user, []string{"a"}, wrap("a") + user},
		{"no lines, no block: unchanged", user, nil, user},
		{"empty lines are no block", user, []string{}, user},
		{"blank and indented lines are kept", "", []string{"", "  x"}, wrap("", "  x")},
		{"existing block replaced in place", "a\n" + wrap("old") + "b\r\nc", []string{"new"}, "a\n" + wrap("new") + "b\r\nc"},
		{"no lines removes the block", "a\n" + wrap("old") + "b", nil, "a\nb"},
		{"block at the end without final newline", "a\n" + strings.TrimSuffix(wrap("old"), "\n"), []string{"x"}, "a\n" + wrap("x")},
		{
			"markers with CRLF, blanks and edited tails are recognised",
			"a\r\n  " + BeginLine + " (edited) \r\nold\r\n" + EndLine + "\t\r\nb\r\n",
			[]string{"x"},
			"a\r\n" + wrap("x") + "b\r\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := []byte(tt.existing)
			got, err := Render(in, tt.lines)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, string(got)); diff != "" {
				t.Errorf("Render (-want +got):\n%s", diff)
			}
			if string(in) != tt.existing {
				t.Errorf("Render modified its input")
			}
			if again, err := Render(got, tt.lines); err != nil || !bytes.Equal(again, got) {
				t.Errorf("Render is not idempotent: err=%v\n%q\n%q", err, got, again)
			}
		})
	}
}

func TestRenderRefusesBadLines(t *testing.T) {
	for _, tt := range []struct {
		name string
		line string
		want string
	}{
		{"newline", "a\nb", "line break"},
		{"carriage return", "a\rb", "line break"},
		{"BEGIN marker", BeginLine, "marker"},
		{"END marker", "  " + EndLine + " x", "marker"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := Render([]byte("x\n"), []string{"ok", tt.line})
			if err == nil || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "block line 2") {
				t.Fatalf("Render error = %v, want one naming block line 2 and %q", err, tt.want)
			}
			if out != nil {
				t.Errorf("Render returned output with an error")
			}
		})
	}
}

func TestMalformedBlock(t *testing.T) {
	tests := []struct {
		name, existing, wantErr string
	}{
		{"BEGIN without END", "x\n" + BeginLine + "\ny\n", "line 2: BEGIN marker of the nixpeer managed block has no END"},
		{"END without BEGIN", "x\ny\n" + EndLine + "\n", "line 3: END marker of the nixpeer managed block without a BEGIN"},
		{"two BEGINs", BeginLine + "\nx\n" + BeginLine + "\n" + EndLine + "\n", "line 3: second BEGIN marker"},
		{"two blocks", wrap("a") + "x\n" + wrap("b"), "line 5: a second nixpeer managed block; the first begins at line 1"},
		{"edited BEGIN marker alone", "# BEGIN nixpeer managed block (edited)\n", "line 1: BEGIN marker"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, ls := range [][]string{{"a"}, nil} {
				out, err := Render([]byte(tt.existing), ls)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Render error = %v, want it to contain %q", err, tt.wantErr)
				}
				if out != nil {
					t.Errorf("Render returned output with an error")
				}
			}
			if _, err := Lines([]byte(tt.existing)); err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Lines error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
	// Marker text that does not start its line is not a marker.
	if out, err := Render([]byte("x # BEGIN nixpeer managed block\n"), nil); err != nil || string(out) != "x # BEGIN nixpeer managed block\n" {
		t.Errorf("Render(marker text mid-line) = %q, %v", out, err)
	}
}

func TestLines(t *testing.T) {
	got, err := Lines([]byte("a\nb\r\n" + BeginLine + "\r\none\r\n\n  two \t\n" + EndLine + "\nc"))
	if err != nil {
		t.Fatal(err)
	}
	want := []Line{{4, "one"}, {5, ""}, {6, "  two \t"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Lines (-want +got):\n%s", diff)
	}
	for _, in := range []string{"", "no block\n", "a\n" + BeginLine + "\n" + EndLine + "\n"} {
		if got, err := Lines([]byte(in)); got != nil || err != nil {
			t.Errorf("Lines(%q) = %v, %v; want nil, nil", in, got, err)
		}
	}
}
