package debpkg

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// copyrightFile is the package's DEP-5 copyright file, relative to this
// package's directory.
var copyrightFile = filepath.Join("..", "..", "packaging", "deb", "copyright")

// copyrightArches are the GOARCHes whose linked modules the copyright file
// must name: scripts/deb.sh builds for the machine it runs on, and the set
// differs between architectures (klauspost/cpuid only on amd64 and arm64).
var copyrightArches = []string{"amd64", "arm64"}

// TestCopyrightNamesEveryLinkedModule fails when a Go module linked into
// /usr/bin/nixpeer (./cmd/agent) has no "Files: MODULE/*" stanza in
// packaging/deb/copyright. It asks the go tool which modules the program
// links, as scripts/deb.sh builds it (CGO_ENABLED=0), for each of
// copyrightArches.
func TestCopyrightNamesEveryLinkedModule(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		testenv.Require(t, "go")
		t.Fatalf("go not found in PATH: %v", err)
	}
	d := readCopyright(t)
	var modules []string
	for _, arch := range copyrightArches {
		for _, m := range linkedModules(t, goTool, arch) {
			if !slices.Contains(modules, m) {
				modules = append(modules, m)
			}
		}
	}
	if len(modules) == 0 {
		t.Fatal("go list found no module linked into ./cmd/agent besides the main module")
	}
	patterns := d.filesPatterns()
	var missing []string
	for _, m := range modules {
		if !covered(m, patterns) {
			missing = append(missing, m)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%s has no \"Files: MODULE/*\" stanza for these modules linked into ./cmd/agent; add one each, with the copyright holders and licence from the module's LICENSE (and NOTICE):\n  %s",
			copyrightFile, strings.Join(missing, "\n  "))
	}
}

// TestCopyrightIsDEP5 checks the syntax of packaging/deb/copyright as
// https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/ wants
// it: a header paragraph with Format, then Files paragraphs each with
// Copyright and License, then stand-alone License paragraphs, each with
// its full text, for every licence the Files paragraphs name.
func TestCopyrightIsDEP5(t *testing.T) {
	d := readCopyright(t)
	if err := d.check(); err != nil {
		t.Fatalf("%s: %v", copyrightFile, err)
	}
}

func TestCovered(t *testing.T) {
	patterns := []string{"go/*", "golang.org/x/net/*", "github.com/cespare/xxhash/*", "gopkg.in/ini.v1/*", "github.com/minio/md5-simd/block8_amd64.s", "github.com/klauspost/*"}
	for _, c := range []struct {
		module string
		want   bool
	}{
		{"golang.org/x/net", true},
		{"golang.org/x/text", false},
		{"github.com/cespare/xxhash/v2", true},
		{"github.com/cespare/xxhash", true},
		{"gopkg.in/ini.v1", true},
		{"github.com/minio/md5-simd", false},
		{"github.com/klauspost/compress", false}, // a pattern must name the module
		{"github.com/cespare/xxhash/v2/extra", false},
	} {
		if got := covered(c.module, patterns); got != c.want {
			t.Errorf("covered(%q) = %v, want %v", c.module, got, c.want)
		}
	}
}

// linkedModules lists the modules, but the main one, whose packages
// ./cmd/agent links when built for linux/arch without cgo.
func linkedModules(t *testing.T, goTool, arch string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, goTool, "list", "-deps",
		"-f", "{{with .Module}}{{if not .Main}}{{.Path}}{{end}}{{end}}",
		"github.com/nixpeer/nixpeer/cmd/agent")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps ./cmd/agent (GOARCH=%s): %v\n%s", arch, err, stderr.String())
	}
	var modules []string
	for m := range strings.FieldsSeq(string(out)) {
		if !slices.Contains(modules, m) {
			modules = append(modules, m)
		}
	}
	return modules
}

// majorSuffix is a module path's major version suffix, /v2 and above.
var majorSuffix = regexp.MustCompile(`/v[2-9][0-9]*$|/v[1-9][0-9]+$`)

// covered says whether a Files pattern names module: "MODULE/*", or the
// module path without its major version suffix ("github.com/cespare/xxhash/*"
// for github.com/cespare/xxhash/v2). A broader pattern does not count: a
// new module must be looked at, not fall under a neighbour's licence.
func covered(module string, patterns []string) bool {
	return slices.Contains(patterns, module+"/*") ||
		slices.Contains(patterns, majorSuffix.ReplaceAllString(module, "")+"/*")
}

// field is one field of a DEP-5 paragraph: its name, its first line's
// value and its continuation lines, leading space removed.
type field struct {
	name  string
	value string
	more  []string
	line  int
}

type paragraph struct {
	fields []field
	line   int
}

func (p paragraph) get(name string) (field, bool) {
	for _, f := range p.fields {
		if strings.EqualFold(f.name, name) {
			return f, true
		}
	}
	return field{}, false
}

type dep5 struct {
	paragraphs []paragraph
}

func readCopyright(t *testing.T) dep5 {
	t.Helper()
	b, err := os.ReadFile(copyrightFile)
	if err != nil {
		t.Fatalf("read the copyright file: %v", err)
	}
	d, err := parseDEP5(string(b))
	if err != nil {
		t.Fatalf("%s: %v", copyrightFile, err)
	}
	return d
}

var fieldName = regexp.MustCompile(`^([!-9;-~][!-9;-~]*):(.*)$`)

// parseDEP5 splits text into paragraphs (separated by blank lines) of
// fields ("Name: value", continued by lines starting with a space or a
// tab).
func parseDEP5(text string) (dep5, error) {
	var d dep5
	var p *paragraph
	for i, line := range strings.Split(text, "\n") {
		n := i + 1
		if strings.TrimSpace(line) == "" {
			if line != "" {
				return d, lineErr(n, "a blank line with spaces: an empty line ends the paragraph, \" .\" is an empty line of a field")
			}
			p = nil
			continue
		}
		if strings.HasSuffix(line, " ") || strings.HasSuffix(line, "\t") {
			return d, lineErr(n, "trailing white space")
		}
		if line[0] == ' ' || line[0] == '\t' {
			if p == nil || len(p.fields) == 0 {
				return d, lineErr(n, "a continuation line outside a field")
			}
			f := &p.fields[len(p.fields)-1]
			f.more = append(f.more, strings.TrimLeft(line, " \t"))
			continue
		}
		m := fieldName.FindStringSubmatch(line)
		if m == nil {
			return d, lineErr(n, "neither \"Field: value\" nor a continuation line (starting with a space): "+line)
		}
		if p == nil {
			d.paragraphs = append(d.paragraphs, paragraph{line: n})
			p = &d.paragraphs[len(d.paragraphs)-1]
		}
		if _, dup := p.get(m[1]); dup {
			return d, lineErr(n, "field "+m[1]+" twice in one paragraph")
		}
		p.fields = append(p.fields, field{name: m[1], value: strings.TrimSpace(m[2]), line: n})
	}
	return d, nil
}

func lineErr(n int, msg string) error {
	return fmt.Errorf("line %d: %s", n, msg)
}

// filesPatterns lists the patterns of every Files paragraph.
func (d dep5) filesPatterns() []string {
	var patterns []string
	for _, p := range d.paragraphs {
		if f, ok := p.get("Files"); ok {
			patterns = append(patterns, strings.Fields(strings.Join(append([]string{f.value}, f.more...), " "))...)
		}
	}
	return patterns
}

// licenceNames splits a License field's first line ("Expat and
// BSD-3-Clause", "GPL-2+ or Artistic") into short names.
func licenceNames(value string) []string {
	var names []string
	for and := range strings.SplitSeq(value, " and ") {
		for or := range strings.SplitSeq(and, " or ") {
			if n := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(or), ",")); n != "" {
				names = append(names, n)
			}
		}
	}
	return names
}

func (d dep5) check() error {
	if len(d.paragraphs) == 0 {
		return lineErr(1, "no paragraph")
	}
	head := d.paragraphs[0]
	if f, ok := head.get("Format"); !ok || f.value != "https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/" {
		return lineErr(head.line, "the header paragraph needs Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/")
	}
	if _, ok := head.get("Files"); ok {
		return lineErr(head.line, "the header paragraph has a Files field")
	}
	used := map[string]int{}       // licence short name -> line of a Files paragraph naming it without its text
	texts := map[string]bool{}     // licence short names whose text is given
	standalone := map[string]int{} // licence short name -> line of its stand-alone paragraph
	seenStandalone := false
	seenFiles := false
	for _, p := range d.paragraphs[1:] {
		files, isFiles := p.get("Files")
		lic, hasLicense := p.get("License")
		if !hasLicense || lic.value == "" {
			return lineErr(p.line, "a paragraph without a License short name")
		}
		if slices.Contains(lic.more, "") {
			return lineErr(lic.line, "an empty continuation line in License (write \" .\")")
		}
		if !isFiles {
			if len(p.fields) != 1 && !(len(p.fields) == 2 && strings.EqualFold(p.fields[1].name, "Comment")) {
				return lineErr(p.line, "a stand-alone License paragraph with other fields than License (and Comment)")
			}
			if len(lic.more) == 0 {
				return lineErr(p.line, "stand-alone License "+lic.value+" without its text")
			}
			if _, dup := standalone[lic.value]; dup {
				return lineErr(p.line, "stand-alone licence "+lic.value+" given twice")
			}
			standalone[lic.value] = p.line
			texts[lic.value] = true
			seenStandalone = true
			continue
		}
		if seenStandalone {
			return lineErr(p.line, "a Files paragraph after the stand-alone License paragraphs")
		}
		// The last matching paragraph applies to a file: "Files: *" comes
		// first, so that the others override it.
		if !seenFiles && (files.value != "*" || len(files.more) != 0) {
			return lineErr(p.line, "the first Files paragraph must be \"Files: *\"")
		}
		seenFiles = true
		if files.value == "" {
			return lineErr(files.line, "Files: the first pattern belongs on the Files line")
		}
		if c, ok := p.get("Copyright"); !ok || c.value == "" {
			return lineErr(p.line, "a Files paragraph without Copyright")
		}
		for _, name := range licenceNames(lic.value) {
			if len(lic.more) > 0 {
				texts[name] = true
			} else if _, ok := used[name]; !ok {
				used[name] = p.line
			}
		}
		for _, f := range p.fields {
			switch strings.ToLower(f.name) {
			case "files", "copyright", "license", "comment":
			default:
				return lineErr(f.line, "an unknown field in a Files paragraph: "+f.name)
			}
		}
	}
	for name, line := range used {
		if !texts[name] {
			return lineErr(line, "licence "+name+" has no stand-alone License paragraph with its text")
		}
	}
	for name, line := range standalone {
		if _, ok := used[name]; !ok {
			return lineErr(line, "stand-alone licence "+name+" is named by no Files paragraph")
		}
	}
	return nil
}
