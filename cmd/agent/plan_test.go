package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

func TestParseDryRun(t *testing.T) {
	out := `these 2 derivations will be built:
  /nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a.drv
  /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b.drv
this path will be fetched (0.01 MiB download, 0.05 MiB unpacked):
  /nix/store/cccccccccccccccccccccccccccccccc-c
don't know how to build these paths:
  /nix/store/dddddddddddddddddddddddddddddddd-d
warning: something else
  /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-not-a-list-item
`
	want := &dryRun{
		Build:    []string{"/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a.drv", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b.drv"},
		Fetch:    []fetch{{Path: "/nix/store/cccccccccccccccccccccccccccccccc-c"}},
		Unknown:  []string{"/nix/store/dddddddddddddddddddddddddddddddd-d"},
		Download: "0.01 MiB download, 0.05 MiB unpacked",
	}
	if diff := cmp.Diff(want, parseDryRun(out)); diff != "" {
		t.Fatalf("(-want +got):\n%s", diff)
	}
	if p := parseDryRun(""); len(p.Build) != 0 || len(p.Fetch) != 0 || p.Build == nil {
		t.Fatalf("nothing to do: %+v", p)
	}
}

// TestParseDryRunAcrossNixVersions: the dry run as each real Nix printed it
// (pkg/nix/testdata/nixversions/VERSION/dry-run.txt, captured by
// capture.sh there): one derivation to build, three paths to fetch.
func TestParseDryRunAcrossNixVersions(t *testing.T) {
	files, _ := filepath.Glob("../../pkg/nix/testdata/nixversions/2.*/dry-run.txt")
	if len(files) < 3 {
		t.Fatalf("want the output of at least 3 Nix versions, found %q", files)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		p := parseDryRun(string(raw))
		var fetched []string
		for _, x := range p.Fetch {
			fetched = append(fetched, x.Path[len("/nix/store/")+33:])
		}
		if len(p.Build) != 1 || !strings.HasSuffix(p.Build[0], "-top.drv") || !slices.Equal(fetched, []string{"a", "b", "c"}) || p.Download == "" {
			t.Errorf("%s: parsed %+v", f, p)
		}
	}
}

// TestPlan: for a closure staging has built, production's plan fetches
// every path from staging and builds nothing (exit 0); for a derivation
// nobody has built, it would build it here (exit 4).
func TestPlan(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "nix-instantiate", "sshd")
	testenv.RequireNixSSHUser(t)
	f := startFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	n := nonce()
	expr := fmt.Sprintf(`let mk = name: deps: derivation { inherit name deps; system = builtins.currentSystem; builder = "/bin/sh";
	  args = [ "-c" "echo %s $name > $out; for d in $deps; do echo $d >> $out; done" ]; };
	in mk "nixpeer-plan-top" (builtins.genList (i: mk "nixpeer-plan-${toString i}" [ ]) 4)`, n)
	build := exec.Command("nix-build", "--no-out-link", "-E", expr)
	build.Env = append(build.Environ(), f.daemon.Env()...)
	raw, err := build.Output()
	if err != nil {
		t.Fatalf("build on staging: %v", err)
	}
	top := strings.TrimSpace(string(raw))

	// Production's own store lacks the closure; staging has it.
	store := filepath.Join(t.TempDir(), "prod-store")
	code, out, errText := runCLI(t, "plan", "--socket", f.prod.socket, "--store", store, "--json", top)
	var p dryRun
	if err := json.Unmarshal([]byte(out), &p); code != 0 || err != nil {
		t.Fatalf("plan of a closure staging built: exit %d, %v\n%s%s", code, err, out, errText)
	}
	if len(p.Fetch) != 5 || len(p.Build) != 0 {
		t.Fatalf("plan: %d to fetch, %d to build; want 5 and 0:\n%s", len(p.Fetch), len(p.Build), out)
	}
	for _, fe := range p.Fetch {
		if fe.Peer != "stage" || fe.NarSize == 0 {
			t.Fatalf("%s would come from %q (%s), want stage:\n%s", fe.Path, fe.Peer, fe.Substituter, out)
		}
	}
	code, text, _ := runCLI(t, "plan", "--socket", f.prod.socket, "--store", store, top)
	if code != 0 || !strings.Contains(text, "Would fetch 5 paths") || !strings.Contains(text, "from stage (ssh://nix-ssh@127.0.0.2)") || !strings.Contains(text, "Nothing would be built here.") {
		t.Fatalf("plan as text: exit %d\n%s", code, text)
	}

	// A derivation nobody built: production would build it.
	inst := exec.Command("nix-instantiate", "-E", fmt.Sprintf(`derivation { name = "nixpeer-plan-lacking-%s"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }`, strings.ReplaceAll(n, ".", "-")))
	inst.Env = append(inst.Environ(), f.daemon.Env()...)
	raw, err = inst.Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	drv := strings.TrimSpace(string(raw))
	code, text, errText = runCLI(t, "plan", "--socket", f.prod.socket, drv)
	if code != exitWouldBuild || !strings.Contains(text, "Would build 1 derivations here:\n  "+drv) {
		t.Fatalf("plan of a derivation nobody built: exit %d, want 4\n%s%s", code, text, errText)
	}
}

// FuzzParseDryRun: whatever Nix prints, the parse keeps only store paths
// under the headers it knows, and never panics.
func FuzzParseDryRun(f *testing.F) {
	f.Add("these 2 derivations will be built:\n  /nix/store/a.drv\nthis path will be fetched (1 MiB download):\n  /nix/store/c\n")
	f.Add("don't know how to build these paths:\n  /nix/store/d\n")
	f.Fuzz(func(t *testing.T, out string) {
		p := parseDryRun(out)
		for _, list := range [][]string{p.Build, p.Unknown} {
			for _, s := range list {
				if !strings.HasPrefix(s, "/nix/store/") || strings.ContainsAny(s, " \n") {
					t.Fatalf("kept %q", s)
				}
			}
		}
		for _, fe := range p.Fetch {
			if !strings.HasPrefix(fe.Path, "/nix/store/") {
				t.Fatalf("kept %q", fe.Path)
			}
		}
	})
}
