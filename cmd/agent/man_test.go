package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cpuguy83/go-md2man/v2/md2man"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// The manual pages are docs/man/*.md rendered by go-md2man, nixpeer(1)'s
// COMMANDS from the command table and each command's own flags. The
// rendered pages are checked in (the .deb and the Nix package install
// them); TestManPagesAreCurrent fails when one is stale. To render them
// again:
//
//	NIXPEER_UPDATE_MAN=1 go test -run TestManPagesAreCurrent ./cmd/agent

const manDir = "../../docs/man"

// commandsMarkdown is the COMMANDS section of nixpeer(1).
func commandsMarkdown(cmds []cliCommand, flags func(cliCommand) *flag.FlagSet) string {
	var b strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&b, "### nixpeer %s", c.name)
		if c.args != "" {
			fmt.Fprintf(&b, " %s", c.args)
		}
		fmt.Fprintf(&b, "\n%s.\n\n", strings.ToUpper(c.summary[:1])+c.summary[1:])
		flags(c).VisitAll(func(f *flag.Flag) {
			placeholder, usage := flag.UnquoteUsage(f)
			if isSwitch(f) {
				fmt.Fprintf(&b, "**--%s**\n", f.Name)
			} else {
				fmt.Fprintf(&b, "**--%s** *%s*\n", f.Name, strings.ToUpper(placeholder))
			}
			if !slices.Contains([]string{"", "false", "0", "0s", "[]"}, f.DefValue) {
				usage += " (default: " + f.DefValue + ")"
			}
			fmt.Fprintf(&b, ":   %s\n\n", strings.ReplaceAll(usage, "*", `\*`))
		})
	}
	return b.String()
}

// manPages renders every page, by file name.
func manPages(t *testing.T, flags func(cliCommand) *flag.FlagSet) map[string][]byte {
	t.Helper()
	pages := map[string][]byte{}
	for _, name := range []string{"nixpeer.1", "nixpeer-desired.yaml.5"} {
		src, err := os.ReadFile(filepath.Join(manDir, name+".md"))
		if err != nil {
			t.Fatal(err)
		}
		src = bytes.Replace(src, []byte("{{COMMANDS}}"), []byte(commandsMarkdown(commands, flags)), 1)
		pages[name] = md2man.Render(src)
	}
	return pages
}

func TestManPagesAreCurrent(t *testing.T) {
	for name, want := range manPages(t, flagsOf) {
		path := filepath.Join(manDir, name)
		if os.Getenv("NIXPEER_UPDATE_MAN") != "" {
			if err := os.WriteFile(path, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s is not what docs/man/%s.md and the commands' flags render (%v); render it again: NIXPEER_UPDATE_MAN=1 go test -run TestManPagesAreCurrent ./cmd/agent", path, name, err)
		}
	}
}

// TestManPageFollowsTheFlags: every flag of every command is in nixpeer(1),
// and a flag added to a command shows up in the page rendered anew.
func TestManPageFollowsTheFlags(t *testing.T) {
	page := string(manPages(t, flagsOf)["nixpeer.1"])
	for _, c := range commands {
		if !strings.Contains(page, "nixpeer "+c.name) {
			t.Errorf("nixpeer(1) has no section for nixpeer %s", c.name)
		}
		flagsOf(c).VisitAll(func(f *flag.Flag) {
			if !strings.Contains(page, `\fB--`+f.Name+`\fP`) {
				t.Errorf("nixpeer(1) does not name --%s of nixpeer %s", f.Name, c.name)
			}
		})
	}
	withNew := func(c cliCommand) *flag.FlagSet {
		fs := flagsOf(c)
		if c.name == "status" {
			fs.Bool("brand-new-flag", false, "a flag added since the page was rendered")
		}
		return fs
	}
	if page := string(manPages(t, withNew)["nixpeer.1"]); !strings.Contains(page, `\fB--brand-new-flag\fP`) || !strings.Contains(page, "a flag added since the page was rendered") {
		t.Error("a flag added to nixpeer status is not in the page rendered anew")
	}
}

// TestManPagesRender: man itself renders both pages, without a warning.
func TestManPagesRender(t *testing.T) {
	testenv.Require(t, "man")
	for _, name := range []string{"nixpeer.1", "nixpeer-desired.yaml.5"} {
		cmd := exec.Command("man", "--warnings", "-l", filepath.Join(manDir, name))
		cmd.Env = append(os.Environ(), "MANPAGER=cat", "MANWIDTH=80", "LC_ALL=C.UTF-8")
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil || stderr.Len() > 0 {
			t.Fatalf("man -l %s: %v\n%s", name, err, stderr.String())
		}
		for _, want := range []string{"NAME", "SEE ALSO", strings.TrimSuffix(strings.TrimSuffix(name, ".1"), ".5")} {
			if !strings.Contains(string(out), want) {
				t.Errorf("man -l %s: no %q in\n%s", name, want, out)
			}
		}
	}
}
