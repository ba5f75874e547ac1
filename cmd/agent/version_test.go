package main

import (
	"os/exec"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersionString(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
		{Key: "vcs.time", Value: "2026-12-02T09:00:00Z"},
		{Key: "vcs.modified", Value: "true"},
	}}
	for _, c := range []struct {
		name, set string
		info      *debug.BuildInfo
		ok        bool
		want      string
	}{
		{"module and VCS", "", info, true, "nixpeer v1.2.3, revision 0123456789abcdef0123456789abcdef01234567+dirty, committed 2026-12-02T09:00:00Z, go1.26.8"},
		{"set by the packager", "0.9.0", &debug.BuildInfo{GoVersion: "go1.26.8"}, true, "nixpeer 0.9.0, go1.26.8"},
		{"a local build", "", &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"}}, true, "nixpeer (devel), go1.26.8"},
		{"no build information", "", nil, false, "nixpeer unknown"},
	} {
		version = c.set
		if got := versionString(c.info, c.ok); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	version = ""
}

// TestVersionNamesTheRevision: the binary built from this repository
// names the commit it was built from.
func TestVersionNamesTheRevision(t *testing.T) {
	head, err := exec.Command("git", "rev-parse", "HEAD").Output()
	if err != nil {
		t.Skipf("not a git checkout here: %v", err) // a tarball build has no revision to name
	}
	out, err := exec.Command(binary(t), "version").CombinedOutput()
	if err != nil {
		t.Fatalf("nixpeer version: %v\n%s", err, out)
	}
	if want := "revision " + strings.TrimSpace(string(head)); !strings.Contains(string(out), want) || !strings.HasPrefix(string(out), "nixpeer ") {
		t.Fatalf("nixpeer version printed %q, want it to name %q", out, want)
	}
}
