package main

import (
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

func TestCompleteCandidates(t *testing.T) {
	config := filepath.Join(t.TempDir(), "desired.yaml")
	if err := os.WriteFile(config, []byte("apiVersion: nixpeer/v1\nhosts:\n  - {name: stage, address: 127.0.0.2, serve: {}}\n  - {name: prod, address: 127.0.0.3, substituteFrom: [stage]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		words []string
		want  []string
		files bool
	}{
		{[]string{"sta"}, []string{"status"}, false},
		{[]string{"tr"}, []string{"trust"}, false},
		{[]string{"status", "--ro"}, []string{"--root"}, false},
		{[]string{"status", "--fl"}, []string{"--fleet"}, false},
		{[]string{"trust", "ap"}, []string{"approve"}, false},
		{[]string{"trust", "pending", "--y"}, []string{"--yaml"}, false},
		{[]string{"validate", "--config", config, "--host", ""}, []string{"stage", "prod"}, false},
		{[]string{"validate", "--config", config, "--host", "p"}, []string{"prod"}, false},
		{[]string{"run", "--config", ""}, nil, true},
		{[]string{"completion", ""}, []string{"bash", "zsh", "fish"}, false},
		{[]string{"plan", ""}, nil, true},
		{[]string{"plan", "/nix/store/x", "--"}, nil, true}, // no flag after an argument
		{[]string{"trust", "approve", "stage", ""}, nil, false},
		{[]string{"trust", "reset", "x", "--"}, nil, false},
		{[]string{"validate", "--config=" + config, "--host=p"}, []string{"--host=prod"}, false},
		{[]string{"validate", "-config", config, "-host", ""}, []string{"stage", "prod"}, false},
		{[]string{"validate", "--config", "=", config, "--host", "="}, []string{"--host=stage", "--host=prod"}, false}, // as bash splits it
		{[]string{"run", "--config=/et"}, nil, true},
		{[]string{"nonsense", ""}, nil, false},
	} {
		got, files := complete(c.words)
		if diff := cmp.Diff(c.want, got); diff != "" || files != c.files {
			t.Errorf("complete(%q): files %v (want %v), candidates (-want +got):\n%s", c.words, files, c.files, diff)
		}
	}
}

// TestEveryFlagIsCompleted: the completions follow the flags each command
// defines, so a flag added to a command is offered without more code.
func TestEveryFlagIsCompleted(t *testing.T) {
	for _, c := range commands {
		words := append(strings.Fields(c.name), "--")
		got, _ := complete(words)
		n := 0
		flagsOf(c).VisitAll(func(f *flag.Flag) {
			n++
			if !slices.Contains(got, "--"+f.Name) {
				t.Errorf("nixpeer %s --<TAB> does not offer --%s: %v", c.name, f.Name, got)
			}
		})
		if c.name == "run" && n < 5 {
			t.Errorf("nixpeer run has %d flags, as flagsOf found them; want its --config, --host, --root and more", n)
		}
	}
}

// TestBashCompletion loads "nixpeer completion bash" in bash and completes
// as bash does on <TAB>.
func TestBashCompletion(t *testing.T) {
	testenv.Require(t, "bash")
	bin := binary(t)
	script := filepath.Join(t.TempDir(), "nixpeer.bash")
	code, out, errText := runCLI(t, "completion", "bash")
	if code != 0 {
		t.Fatalf("nixpeer completion bash: exit %d: %s", code, errText)
	}
	if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
		t.Fatal(err)
	}
	tab := func(words ...string) []string {
		t.Helper()
		cmd := exec.Command("bash", "--norc", "--noprofile", "-c",
			`source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _nixpeer; printf '%s\n' "${COMPREPLY[@]}"`,
			"bash", script, bin)
		cmd.Args = append(cmd.Args, words...)
		got, err := cmd.Output()
		if err != nil {
			t.Fatalf("bash completing %q: %v", words, err)
		}
		return strings.Fields(string(got))
	}
	if got := tab("sta"); !slices.Equal(got, []string{"status"}) {
		t.Errorf("nixpeer sta<TAB> = %q, want status", got)
	}
	if got := tab("status", "--ro"); !slices.Equal(got, []string{"--root"}) {
		t.Errorf("nixpeer status --ro<TAB> = %q, want --root", got)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "desired.yaml"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if got := tab("run", "--config", filepath.Join(dir, "des")); !slices.Equal(got, []string{filepath.Join(dir, "desired.yaml")}) {
		t.Errorf("nixpeer run --config DIR/des<TAB> = %q, want the file", got)
	}
	config := filepath.Join(dir, "fleet.yaml")
	if err := os.WriteFile(config, []byte("apiVersion: nixpeer/v1\nhosts:\n  - {name: stage, address: 127.0.0.2, serve: {}}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// nixpeer validate --config=FILE --host=<TAB>, as bash splits it.
	if got := tab("validate", "--config", "=", config, "--host", "="); !slices.Equal(got, []string{"stage"}) {
		t.Errorf("nixpeer validate --config=FILE --host=<TAB> = %q, want stage", got)
	}
}

// TestZshAndFishCompletionsParse: zsh and fish read their scripts without
// a syntax error, and fish completes with its own "complete -C".
func TestZshAndFishCompletionsParse(t *testing.T) {
	testenv.Require(t, "zsh", "fish")
	for _, sh := range []string{"zsh", "fish"} {
		code, out, errText := runCLI(t, "completion", sh)
		if code != 0 {
			t.Fatalf("nixpeer completion %s: exit %d: %s", sh, code, errText)
		}
		script := filepath.Join(t.TempDir(), "nixpeer."+sh)
		if err := os.WriteFile(script, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(sh, "-n", script).CombinedOutput(); err != nil {
			t.Errorf("%s -n: %v\n%s", sh, err, out)
		}
	}
	bindir := t.TempDir()
	if err := os.Symlink(binary(t), filepath.Join(bindir, "nixpeer")); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("fish", "--no-config", "-c", `nixpeer completion fish | source; complete -C "nixpeer sta"; complete -C "nixpeer status --ro"`)
	cmd.Env = append(os.Environ(), "PATH="+bindir+":"+os.Getenv("PATH"))
	out, err := cmd.Output()
	if got := strings.Fields(string(out)); err != nil || !slices.Equal(got, []string{"status", "--root"}) {
		t.Errorf("fish completing nixpeer sta, nixpeer status --ro: %q, %v; want status, --root", got, err)
	}
}

// FuzzComplete: whatever the shell passes, completion ends without a
// panic, and every candidate it offers continues the word being completed.
func FuzzComplete(f *testing.F) {
	f.Add("status\x00--ro")
	f.Add("trust\x00approve\x00--socket=/x\x00")
	f.Add("validate\x00--config\x00=\x00/nonexistent\x00--host\x00=")
	f.Add("\x00")
	f.Fuzz(func(t *testing.T, line string) {
		words := strings.Split(line, "\x00")
		cands, _ := complete(words)
		cur := joinEquals(words)
		last := ""
		if len(cur) > 0 {
			last = cur[len(cur)-1]
		}
		for _, c := range cands {
			if !strings.HasPrefix(c, last) {
				t.Fatalf("complete(%q) offers %q, which does not continue %q", words, c, last)
			}
		}
	})
}
