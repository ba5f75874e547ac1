package nix

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
)

// BenchmarkResign1000 builds a closure of 1,000 paths through a
// nix-daemon that signs them with a key of its own, then times Resign:
// finding them (nix path-info --all --sigs) and signing them with another
// key (nix store sign, in batches), as a rotation's Resigning phase does.
//
//	sudo go test -run '^$' -bench Resign1000 -benchtime 1x -count 3 ./pkg/nix/
func BenchmarkResign1000(b *testing.B) {
	testenv.RequireRoot(b)
	testenv.Require(b, "nix", "nix-daemon", "nix-build")
	nonce := fmt.Sprint(time.Now().UnixNano())
	dir := b.TempDir()
	oldName := "bench-resign-" + nonce
	oldKey, _, err := EnsureCacheKey(filepath.Join(dir, "old"), oldName)
	if err != nil {
		b.Fatal(err)
	}
	if _, _, err := EnsureCacheKey(filepath.Join(dir, "new"), oldName+"-g2"); err != nil {
		b.Fatal(err)
	}
	conf := filepath.Join(dir, "conf")
	os.MkdirAll(conf, 0o755)
	testenv.WriteNixConf(b, conf, "secret-key-files = "+filepath.Join(dir, "old", SecretKeyFileName))
	d := testenv.StartNixDaemon(b, conf)
	expr := fmt.Sprintf(`let mk = i: derivation { name = "nixpeer-resign-%s-${toString i}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ${toString i} > $out" ]; };
in derivation { name = "nixpeer-resign-%s"; system = builtins.currentSystem; builder = "/bin/sh"; deps = builtins.genList mk 999; args = [ "-c" "echo $deps > $out" ]; }`, nonce, nonce)
	build := exec.Command("nix-build", "--no-out-link", "-j", "8", "-E", expr)
	build.Env = append(os.Environ(), d.Env()...)
	if out, err := build.CombinedOutput(); err != nil {
		b.Fatalf("build the closure: %v\n%s", err, out)
	}
	cli := &CLI{Env: []string{"NIX_CONF_DIR=" + conf}}
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		n, err := cli.Resign(context.Background(), filepath.Join(dir, "new", SecretKeyFileName), oldKey.String(), false)
		if err != nil {
			b.Fatal(err)
		}
		if n != 1000 {
			b.Fatalf("re-signed %d paths; want the 1,000 of the closure", n)
		}
		b.ReportMetric(time.Since(start).Seconds(), "s/1000paths")
	}
	b.ReportMetric(0, "ns/op")
}
