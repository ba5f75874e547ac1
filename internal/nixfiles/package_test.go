package nixfiles

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// packageAttrs evaluates nix/package.nix with buildGoModule returning its
// arguments, so the test sees what the package asks for.
func packageAttrs(t *testing.T) map[string]any {
	t.Helper()
	expr := `let
  lib = {
    fileset = { toSource = a: "src"; unions = l: l; };
    licenses.asl20 = "asl20";
    platforms.linux = [ "x86_64-linux" ];
    optionalString = c: s: if c then s else "";
  };
  stdenv = { buildPlatform.canExecute = p: true; hostPlatform = { }; };
  a = import ` + filepath.Join(absRoot(t), "nix/package.nix") + ` { inherit lib stdenv; buildGoModule = x: x; installShellFiles = "installShellFiles"; };
in { inherit (a) postInstall nativeBuildInputs; license = a.meta.license; }`
	var attrs map[string]any
	if err := json.Unmarshal(nix(t, "nix-instantiate", "--eval", "--strict", "--json", "-E", expr), &attrs); err != nil {
		t.Fatal(err)
	}
	return attrs
}

func absRoot(t *testing.T) string {
	t.Helper()
	r, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestPackageInstallsManPagesAndCompletions: the Nix package names its
// licence, and its postInstall, run by bash with installShellFiles'
// functions recording their arguments, installs both manual pages (which
// exist) and the three completions the binary prints.
func TestPackageInstallsManPagesAndCompletions(t *testing.T) {
	testenv.Require(t, "bash", "go")
	attrs := packageAttrs(t)
	if attrs["license"] != "asl20" {
		t.Errorf("meta.license = %v, want lib.licenses.asl20", attrs["license"])
	}
	if inputs, _ := attrs["nativeBuildInputs"].([]any); !slices.Contains(inputs, any("installShellFiles")) {
		t.Errorf("nativeBuildInputs = %v, want installShellFiles", attrs["nativeBuildInputs"])
	}
	out := t.TempDir()
	if err := os.MkdirAll(filepath.Join(out, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(out, "bin/agent"), "./cmd/agent")
	build.Dir = absRoot(t)
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	log := filepath.Join(t.TempDir(), "installed")
	script := `set -euo pipefail
installManPage() { for p in "$@"; do test -s "$p"; echo "man $p" >> "$LOG"; done; }
installShellCompletion() {
  shift 2 # --cmd nixpeer
  while [ $# -gt 0 ]; do
    script=$(cat "$2") # a pipe: <(nixpeer completion SHELL)
    [[ $script == *nixpeer* && $script == *__complete* ]]
    echo "completion $1" >> "$LOG"
    shift 2
  done
}
` + attrs["postInstall"].(string)
	cmd := exec.Command("bash", "-c", script)
	cmd.Dir = absRoot(t)
	cmd.Env = append(os.Environ(), "out="+out, "LOG="+log)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("postInstall: %v\n%s", err, b)
	}
	got, _ := os.ReadFile(log)
	want := "man docs/man/nixpeer.1\nman docs/man/nixpeer-desired.yaml.5\ncompletion --bash\ncompletion --zsh\ncompletion --fish\n"
	if string(got) != want {
		t.Errorf("postInstall installed:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(out, "bin/nixpeer")); err != nil || strings.Contains(string(got), "agent") {
		t.Errorf("the binary is not $out/bin/nixpeer: %v", err)
	}
}
