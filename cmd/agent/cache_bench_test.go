package main

import (
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"

	"github.com/nixpeer/nixpeer/internal/demo"
	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// fetchClosure fetches top into a new store with production's settings,
// and fails unless n paths were copied.
func (f *cacheFleet) fetchClosure(b *testing.B, top string, n int) {
	store, err := os.MkdirTemp(b.TempDir(), "store")
	if err != nil {
		b.Fatal(err)
	}
	if out, err := f.prodNix(store, "nix-store", "-r", top); err != nil || strings.Count(out, "copying path") != n {
		b.Fatalf("fetch %s: %v\n%s", top, err, out)
	}
}

// BenchmarkCacheFetch is the availability goal of the cache tier: a
// closure of 100 paths fetched into an empty store by production, from
// staging over SSH (ssh), then with staging's agent and sshd stopped,
// from the object store through production's agent (cache).
func BenchmarkCacheFetch(b *testing.B) {
	f := startCacheFleet(b)
	top := f.buildOnStaging(b, 100)
	waitPublished(b, f.stage, 100)
	b.Run("ssh", func(b *testing.B) {
		for b.Loop() {
			f.fetchClosure(b, top, 100)
		}
	})
	f.stagingGone(b)
	b.Run("cache", func(b *testing.B) {
		for b.Loop() {
			f.fetchClosure(b, top, 100)
		}
	})
}

// vmHWM is the peak resident set size of process pid, in MiB.
func vmHWM(b *testing.B, pid int) float64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				b.Fatal(err)
			}
			return float64(kb) / 1024
		}
	}
	b.Fatal("no VmHWM")
	return 0
}

// BenchmarkCacheReaderMemory is the memory goal: production's agent
// serves a NAR of 1 GiB from the object store to a client; peak-RSS-MiB
// is the agent's peak resident set size over its whole life.
func BenchmarkCacheReaderMemory(b *testing.B) {
	f := startCacheFleet(b)
	const size = 1 << 30
	u := strings.TrimPrefix(f.weed.Endpoint, "http://")
	c, err := minioClient(u, f.weed.AccessKey, f.weed.SecretKey)
	if err != nil {
		b.Fatal(err)
	}
	key := "nar/" + strings.Repeat("1", 52) + ".nar"
	if _, err := c.PutObject(b.Context(), "nix", key, io.LimitReader(rand.Reader, size), size, minio.PutObjectOptions{PartSize: 16 << 20}); err != nil {
		b.Fatal(err)
	}
	pid := f.prod.cmd.Process.Pid
	b.SetBytes(size)
	for b.Loop() {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/fleet/%s", f.cachePort, key))
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size || resp.StatusCode != http.StatusOK {
			b.Fatalf("GET %s: %s, %d bytes, %v", key, resp.Status, n, err)
		}
	}
	b.ReportMetric(vmHWM(b, pid), "peak-RSS-MiB")
}

// BenchmarkCacheOutage is the outage goal: production builds a
// derivation with 5 fresh inputs in a store of its own, with no cache
// configured (none), with the cache's object store up but without these
// paths (store-up), and with the store stopped (store-down): the agent
// answers each lookup as a miss at once. The derivations run no work
// (work=0) or a shell loop of about 0.1 s each (work=100000), a stand-in
// for a compiler.
func BenchmarkCacheOutage(b *testing.B) {
	f := startCacheFleet(b)
	// Production's settings then differ from the plain ones by the cache
	// alone: staging is gone, and withdrawn.
	f.stagingGone(b)
	plain := b.TempDir()
	testenv.WriteNixConf(b, plain, "extra-sandbox-paths = /bin /lib /lib64 /usr")
	build := func(b *testing.B, confDir string, work int) {
		store, err := os.MkdirTemp(b.TempDir(), "store")
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command("nix-build", "--store", store, "--no-out-link", "-E", demo.ClosureExpr(6, work, strconv.FormatInt(time.Now().UnixNano(), 36)))
		cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+confDir)
		if out, err := cmd.CombinedOutput(); err != nil || strings.Count(string(out), "building '") != 6 {
			b.Fatalf("build: %v\n%s", err, out)
		}
	}
	prod := filepath.Join(f.P, "etc/nix")
	for _, work := range []int{0, 100000} {
		b.Run(fmt.Sprintf("work=%d/none", work), func(b *testing.B) {
			for b.Loop() {
				build(b, plain, work)
			}
		})
		b.Run(fmt.Sprintf("work=%d/store-up", work), func(b *testing.B) {
			for b.Loop() {
				build(b, prod, work)
			}
		})
	}
	if err := f.weed.Stop(); err != nil {
		b.Fatal(err)
	}
	for _, work := range []int{0, 100000} {
		b.Run(fmt.Sprintf("work=%d/store-down", work), func(b *testing.B) {
			for b.Loop() {
				build(b, prod, work)
			}
		})
	}
	f.prod.waitFor("production says the store is down", func(st status.Status) bool {
		return !cacheStatus(b, st, "fleet").Reachable
	})
	if down, _ := value(scrape(b, f.prod.socket, ""), "nixpeer_cache_lookups_total", "cache", "fleet", "result", "down"); down == 0 {
		b.Fatal("production's agent answered no lookup as a miss for the store being down")
	}
}
