package main

import (
	"cmp"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// version is set by packagers (-ldflags "-X main.version=1.2.3") whose
// builds carry no VCS information, such as Nix's buildGoModule.
var version = ""

// versionString is what "nixpeer version" prints: the module version, the
// VCS revision and time of the build (with "+dirty" for a modified tree)
// and the Go version, from the binary's build information.
func versionString(info *debug.BuildInfo, ok bool) string {
	if !ok {
		return "nixpeer " + cmp.Or(version, "unknown")
	}
	v := cmp.Or(version, info.Main.Version, "(devel)")
	var rev, at, dirty string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	parts := []string{"nixpeer " + v}
	if rev != "" {
		parts = append(parts, "revision "+rev+dirty)
	}
	if at != "" {
		parts = append(parts, "committed "+at)
	}
	parts = append(parts, info.GoVersion)
	return strings.Join(parts, ", ")
}

func cmdVersion(stdout io.Writer) {
	info, ok := debug.ReadBuildInfo()
	fmt.Fprintln(stdout, versionString(info, ok))
}
