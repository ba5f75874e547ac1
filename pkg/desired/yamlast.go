package desired

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/lexer"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
	"github.com/nixpeer/nixpeer/internal/msg"
)

// MaxSize is the largest desired-state file Parse accepts, in bytes.
const MaxSize = 1 << 20

// maxDepth bounds how deeply collections may nest. A valid file nests four
// deep (file, hosts, host, serve or a list); the bound keeps the YAML
// parser, whose cost grows with the square of the depth, from being made
// to use gigabytes by a hostile or broken file.
const maxDepth = 32

// maxMapEntries bounds the entries of one block mapping, for the same
// reason: the parser's cost grows with the square of that number.
const maxMapEntries = 64

// parseYAML checks the raw bytes, parses them with goccy/go-yaml and
// returns the body of the one document, after rejecting YAML features the
// file does not use (anchors, aliases, tags, merge keys, explicit keys,
// directives, several documents). On failure it adds errors to el and
// returns nil.
func parseYAML(el *errorList, data []byte) ast.Node {
	if len(data) > MaxSize {
		el.add(Pos{1, 1}, "file is %d bytes; the limit is %d bytes (1 MiB), and a desired-state file is normally a few KiB", len(data), MaxSize)
		return nil
	}
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	if p, msg := checkText(data); msg != "" {
		el.add(p, "%s", msg)
		return nil
	}
	tokens := lexer.Tokenize(string(data))
	if tk, msg := checkShape(tokens); tk != nil {
		el.add(tokenPos(tk), "%s", msg)
		return nil
	}
	f, err := parser.Parse(tokens, 0, parser.AllowDuplicateMapKey())
	if err != nil {
		addSyntaxError(el, err)
		return nil
	}
	var bodies []ast.Node
	for _, doc := range f.Docs {
		if doc == nil || doc.Body == nil {
			continue
		}
		if _, ok := doc.Body.(*ast.DirectiveNode); ok {
			el.add(posOf(doc.Body), "YAML directives (%%YAML, %%TAG) are not supported; remove the line")
			return nil
		}
		bodies = append(bodies, doc.Body)
	}
	switch len(bodies) {
	case 0:
		el.add(Pos{1, 1}, "file has no content; it must be a mapping that starts with \"apiVersion: %s\" and lists hosts:", APIVersion)
		return nil
	case 1:
	default:
		el.add(posOf(bodies[1]), "a second YAML document starts here; a desired-state file is one document: remove the \"---\" and what follows, or merge it into the first")
		return nil
	}
	if !checkPlainYAML(el, bodies[0]) {
		return nil
	}
	return bodies[0]
}

// checkText rejects invalid UTF-8 and control characters other than tab,
// newline and carriage return, which YAML does not allow either.
func checkText(data []byte) (Pos, string) {
	line, col := 1, 1
	for i := 0; i < len(data); {
		r, n := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && n <= 1:
			return Pos{line, col}, "file is not valid UTF-8 here; save it as UTF-8 text"
		case r == '\n':
			line, col = line+1, 0
		case r == '\t' || r == '\r':
		case r < 0x20 || (r >= 0x7f && r < 0xa0) || r == 0xfeff:
			return Pos{line, col}, fmt.Sprintf("file contains the control character %U here; remove it", r)
		}
		i += n
		col++
	}
	return Pos{}, ""
}

// checkShape returns the first token at which the file stops looking like
// a desired-state file in a way that would make the YAML parser slow, and
// what is wrong there; or nil. Flow collections are counted exactly; block
// collections are estimated from the columns of their indicators.
func checkShape(tokens token.Tokens) (*token.Token, string) {
	type level struct{ col, keys int }
	flow := 0
	var block []level // the open block collections, by column
	var prev *token.Token
	for _, tk := range tokens {
		if tk == nil || tk.Position == nil || tk.Type == token.CommentType || tk.Type == token.SpaceType {
			continue
		}
		col, at, isKey := 0, tk, false
		switch tk.Type {
		case token.SequenceStartType, token.MappingStartType:
			flow++
		case token.SequenceEndType, token.MappingEndType:
			if flow > 0 {
				flow--
			}
		case token.DocumentHeaderType, token.DocumentEndType:
			flow, block = 0, block[:0]
		case token.SequenceEntryType, token.MappingKeyType:
			col = tk.Position.Column
		case token.MappingValueType:
			col, isKey = tk.Position.Column, true
			if prev != nil && prev.Position.Line == tk.Position.Line {
				col, at = prev.Position.Column, prev // the key
			}
		}
		if col > 0 && flow == 0 {
			for len(block) > 0 && block[len(block)-1].col > col {
				block = block[:len(block)-1]
			}
			if len(block) == 0 || block[len(block)-1].col < col {
				block = append(block, level{col: col})
			}
			if isKey {
				top := &block[len(block)-1]
				if top.keys++; top.keys > maxMapEntries {
					return at, fmt.Sprintf("more than %d fields in one mapping; a host has at most %d fields: check the indentation here", maxMapEntries, len(hostFields))
				}
			}
		}
		if flow+len(block) > maxDepth {
			return tk, fmt.Sprintf("collections nest more than %d levels deep here; a desired-state file nests at most 4 levels (file, hosts, host, serve or list)", maxDepth)
		}
		prev = tk
	}
	return nil, ""
}

// addSyntaxError turns a goccy/go-yaml error into a positioned Error.
func addSyntaxError(el *errorList, err error) {
	p, msg := Pos{1, 1}, err.Error()
	var ye yaml.Error
	if errors.As(err, &ye) {
		msg = ye.GetMessage()
		if tk := ye.GetToken(); tk != nil {
			p = tokenPos(tk)
		}
	}
	el.add(p, "YAML syntax error: %s; check the indentation, colons and quotes here (see configs/tutorial.yaml for the expected layout)", msg)
}

func tokenPos(tk *token.Token) Pos {
	if tk == nil || tk.Position == nil {
		return Pos{1, 1}
	}
	return Pos{max(tk.Position.Line, 1), max(tk.Position.Column, 1)}
}

// posOf returns where a node starts: for a block mapping its first key,
// for anything else its first token.
func posOf(n ast.Node) Pos {
	switch n := n.(type) {
	case nil:
		return Pos{1, 1}
	case *ast.MappingNode:
		if n == nil {
			return Pos{1, 1}
		}
		if !n.IsFlowStyle && len(n.Values) > 0 && n.Values[0] != nil && n.Values[0].Key != nil {
			return posOf(n.Values[0].Key)
		}
		return tokenPos(n.Start)
	case *ast.MappingValueNode:
		if n == nil || n.Key == nil {
			return Pos{1, 1}
		}
		return posOf(n.Key)
	case *ast.DocumentNode:
		if n == nil || n.Body == nil {
			return Pos{1, 1}
		}
		return posOf(n.Body)
	}
	return tokenPos(n.GetToken())
}

// checkPlainYAML walks the whole tree and rejects the YAML features a
// desired-state file does not use, so that what a reader sees is all there
// is. It reports whether the tree is plain.
func checkPlainYAML(el *errorList, root ast.Node) bool {
	n0 := len(el.errs)
	var walk func(n ast.Node)
	walk = func(n ast.Node) {
		switch n := n.(type) {
		case *ast.MappingNode:
			for _, v := range n.Values {
				walk(v)
			}
		case *ast.MappingValueNode:
			walk(n.Key)
			walk(n.Value)
		case *ast.SequenceNode:
			for _, v := range n.Values {
				walk(v)
			}
		case *ast.AnchorNode:
			el.add(posOf(n), "YAML anchors (&name) are not supported; write the value out in full")
		case *ast.AliasNode:
			el.add(posOf(n), "YAML aliases (*name) are not supported; write the value out in full")
		case *ast.TagNode:
			tag := "!tag"
			if n.Start != nil && n.Start.Value != "" {
				tag = n.Start.Value
			}
			el.add(posOf(n), "YAML tags (%s) are not supported; remove the tag and write the plain value", tag)
		case *ast.MergeKeyNode:
			el.add(posOf(n), "YAML merge keys (<<) are not supported; write the fields out in full")
		case *ast.MappingKeyNode:
			el.add(posOf(n), "explicit YAML keys (? key) are not supported; write \"key: value\"")
		case *ast.DirectiveNode:
			el.add(posOf(n), "YAML directives are not supported; remove the line")
		}
	}
	walk(root)
	return len(el.errs) == n0
}

// field is one key: value entry of a mapping.
type field struct {
	key    string
	keyPos Pos
	value  ast.Node
}

// fieldSet is the decoded entries of a mapping, keyed by name.
type fieldSet struct {
	pos    Pos
	fields map[string]field
}

// mapping decodes n as a mapping whose keys must be among allowed. what
// names the mapping in messages ("host entry", "serve"). It reports
// unknown and duplicated keys; ok is false when n is not a mapping.
func mapping(el *errorList, n ast.Node, what, example string, allowed []string) (fs fieldSet, ok bool) {
	m, isMap := n.(*ast.MappingNode)
	if !isMap || m == nil {
		el.add(posOf(n), "%s must be a mapping of field: value, not %s; for example %s", what, describe(n), example)
		return fieldSet{}, false
	}
	fs = fieldSet{pos: posOf(m), fields: map[string]field{}}
	for _, mv := range m.Values {
		if mv == nil {
			continue
		}
		kp := posOf(mv.Key)
		ks, isStr := mv.Key.(*ast.StringNode)
		if !isStr || ks == nil {
			el.add(kp, "field name %s in %s is not a name; allowed fields: %s", keyText(mv.Key), what, strings.Join(allowed, ", "))
			continue
		}
		k := ks.Value
		if prev, dup := fs.fields[k]; dup {
			el.add(kp, "duplicate field %s in %s (first set at %s); keep only one", msg.Quote(k), what, prev.keyPos)
			continue
		}
		if !slices.Contains(allowed, k) {
			el.add(kp, "unknown field %s in %s%s; allowed fields: %s", msg.Quote(k), what, didYouMean(k, allowed), strings.Join(allowed, ", "))
			continue
		}
		fs.fields[k] = field{key: k, keyPos: kp, value: mv.Value}
	}
	return fs, true
}

func keyText(n ast.Node) string {
	if n == nil {
		return `""`
	}
	if tk := n.GetToken(); tk != nil {
		return msg.Quote(tk.Value)
	}
	return msg.Quote(n.String())
}

// describe names the YAML kind of a node for "must be X, not Y" messages.
func describe(n ast.Node) string {
	switch n := n.(type) {
	case nil, *ast.NullNode:
		return "empty"
	case *ast.MappingNode:
		return "a mapping"
	case *ast.SequenceNode:
		return "a list"
	case *ast.StringNode:
		if n == nil {
			return "a string"
		}
		return fmt.Sprintf("the string %s", msg.Quote(n.Value))
	case *ast.LiteralNode:
		return "a multi-line block string (| or >)"
	case *ast.IntegerNode, *ast.FloatNode, *ast.InfinityNode, *ast.NanNode:
		return "the number " + tokenText(n)
	case *ast.BoolNode:
		return "the boolean " + tokenText(n)
	}
	return "a " + n.Type().String()
}

func tokenText(n ast.Node) string {
	if tk := n.GetToken(); tk != nil {
		return msg.Quote(tk.Value)
	}
	return "?"
}

// didYouMean returns ` (did you mean "X"?)` for the entry X of list
// closest to s when it is close enough to be a likely typo, else "".
func didYouMean(s string, list []string) string {
	best, bestD := "", 3
	if len(s) > 64 || len(list) > 200 {
		return "" // keep a file with many hosts and many typos linear
	}
	for _, c := range list {
		d := editDistance(strings.ToLower(s), strings.ToLower(c))
		if d < bestD && d <= max(1, len(c)/3) {
			best, bestD = c, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	row := make([]int, len(b)+1)
	for j := range row {
		row[j] = j
	}
	for i := 1; i <= len(a); i++ {
		prevDiag := row[0]
		row[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur := min(row[j]+1, row[j-1]+1, prevDiag+cost)
			prevDiag, row[j] = row[j], cur
		}
	}
	return row[len(b)]
}
