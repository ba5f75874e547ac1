package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/nixpeer/nixpeer/internal/demo"
	"github.com/nixpeer/nixpeer/internal/launch"
	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// cacheFleet is staging publishing to a cache on a real SeaweedFS, and
// production reading it after staging.
type cacheFleet struct {
	*fleetRun
	weed      *launch.Weed
	cachePort int
}

// startCacheFleet starts SeaweedFS with a bucket, both agents with their
// credentials, and staging's sshd; it waits until both are Ready.
func startCacheFleet(t testing.TB) *cacheFleet {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	w := testenv.StartWeed(t, "127.0.0.1")
	if err := w.MakeBucket("nix"); err != nil {
		t.Fatal(err)
	}
	f := &cacheFleet{fleetRun: prepareFleet(t, 22, "ssh"), weed: w, cachePort: testenv.FreePort(t, "127.0.0.1")}
	conf, err := os.ReadFile(f.config)
	if err != nil {
		t.Fatal(err)
	}
	withCache := strings.Replace(string(conf), "hosts:\n", fmt.Sprintf("caches:\n  - name: fleet\n    s3: {endpoint: %q, bucket: nix}\nhosts:\n", w.Endpoint), 1)
	withCache = strings.Replace(withCache, "    serve:\n", "    serve:\n      publishTo: [fleet]\n", 1)
	withCache = strings.Replace(withCache, "    substituteFrom: [stage]\n", fmt.Sprintf("    substituteFrom: [stage, fleet]\n    cachePort: %d\n", f.cachePort), 1)
	if err := os.WriteFile(f.config, []byte(withCache), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, root := range []string{f.S, f.P} {
		writeCredentials(t, root, w.AccessKey, w.SecretKey)
	}
	// Production builds in stores of its own (--store DIR), whose
	// builders see only what the sandbox paths give them.
	testenv.WriteNixConf(t, filepath.Join(f.P, "etc/nix"), "extra-sandbox-paths = /bin /lib /lib64 /usr")
	f.started = time.Now()
	f.stage = startAgent(t, f.S, f.config, "stage")
	f.prod = startAgent(t, f.P, f.config, "prod")
	f.startSSHD(t)
	f.stage.waitFor("staging Ready", ready)
	st := f.prod.waitFor("production Ready", ready)
	c := cacheStatus(t, st, "fleet")
	if !c.Read || !c.Reachable || c.Credentials != "ok" || c.URL != fmt.Sprintf("http://127.0.0.1:%d/fleet", f.cachePort) {
		t.Fatalf("production's cache: %+v", c)
	}
	return f
}

func writeCredentials(t testing.TB, root, key, secret string) {
	dir := filepath.Join(root, "var/lib/nixpeer/caches")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	creds := fmt.Sprintf("[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n", key, secret)
	if err := os.WriteFile(filepath.Join(dir, "fleet.credentials"), []byte(creds), 0o600); err != nil {
		t.Fatal(err)
	}
}

func cacheStatus(t testing.TB, st status.Status, name string) status.Cache {
	t.Helper()
	for _, c := range st.Caches {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no cache %s in status %+v", name, st.Caches)
	return status.Cache{}
}

// buildOnStaging builds a closure of n paths on staging's nix-daemon and
// returns its top path.
func (f *cacheFleet) buildOnStaging(t testing.TB, n int) string {
	t.Helper()
	return f.build(t, demo.ClosureExpr(n, 0, strconv.FormatInt(time.Now().UnixNano(), 36)))
}

// build builds expr on staging's nix-daemon and returns its path.
func (f *cacheFleet) build(t testing.TB, expr string) string {
	t.Helper()
	cmd := exec.Command("nix-build", "--no-out-link", "-E", expr)
	cmd.Env = append(launch.CleanNixEnv(os.Environ()), f.daemon.Env()...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("build on staging: %v\n%s", err, stderr.String())
	}
	if strings.Contains(stderr.String(), "nixpeer publish-hook:") {
		t.Fatalf("the post-build hook failed to queue what was built:\n%s", stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestCacheTier: production asks for a closure of 100 paths before
// staging built it (a miss, which Nix would remember for an hour); staging
// builds it, and its post-build hook has its agent upload it to a real
// S3-compatible store (SeaweedFS). With staging's agent and sshd stopped,
// production fetches the whole closure from the bucket through its agent,
// signatures checked, nothing built. Then production builds the closure's
// expression in a store of its own and the object store is killed while
// it fetches: the build falls back to building the rest, without one
// retry, and production's status says the store is down.
func TestCacheTier(t *testing.T) {
	f := startCacheFleet(t)
	expr := demo.ClosureExpr(100, 0, strconv.FormatInt(time.Now().UnixNano(), 36))
	top := f.outPath(t, expr)
	if out, err := f.prodNix(t.TempDir(), "nix-store", "-r", top); err == nil {
		t.Fatalf("production fetched %s before anyone built it:\n%s", top, out)
	}
	if got := f.build(t, expr); got != top {
		t.Fatalf("staging built %s, want %s", got, top)
	}
	waitPublished(t, f.stage, 100)
	st := f.stage.waitFor("staging's status", reconciled)
	if c := cacheStatus(t, st, "fleet"); !c.Publish || c.Error != "" || c.Credentials != "ok" {
		t.Fatalf("staging's cache: %+v", c)
	}

	// Staging goes away entirely; production's miss of a minute ago is
	// not remembered.
	f.stagingGone(t)
	store := t.TempDir()
	out, err := f.prodNix(store, "nix-store", "-r", top)
	if err != nil {
		conf, _ := os.ReadFile(filepath.Join(f.P, "etc/nix/nixpeer.conf"))
		t.Fatalf("production could not fetch from the cache: %v\n%s\nnixpeer.conf:\n%s", err, out, conf)
	}
	paths, err := exec.Command("nix-store", "--store", store, "-qR", top).Output()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(strings.Fields(string(paths))); n != 100 {
		t.Fatalf("production holds %d paths of the closure, want 100", n)
	}
	if got := strings.Count(out, "copying path"); got != 100 {
		t.Fatalf("production copied %d paths, want 100:\n%s", got, out)
	}
	st = f.prod.waitFor("production's status", reconciled)
	t.Logf("production's cache: %+v", cacheStatus(t, st, "fleet"))
	if _, out, _ := runCLI(t, "status", "--socket", f.prod.socket); !strings.Contains(out, "fleet  read http://127.0.0.1:") || !strings.Contains(out, "reachable") {
		t.Fatalf("nixpeer status does not show the cache:\n%s", out)
	}
	if v, ok := value(scrape(t, f.prod.socket, ""), "nixpeer_cache_lookups_total", "cache", "fleet", "result", "hit"); !ok || v < 200 {
		t.Fatalf("metrics: nixpeer_cache_lookups_total hit = %v, %v; want at least 200", v, ok)
	}

	// The store goes away while production builds the closure's
	// expression, fetching it. Production builds in the machine's own
	// store (newer Nix builds in a store of another directory only in a
	// sandbox, which cannot run here), so staging's copy goes first.
	closure := strings.Fields(string(paths))
	del := exec.Command("nix-store", append([]string{"--delete"}, closure...)...)
	del.Env = append(launch.CleanNixEnv(os.Environ()), f.daemon.Env()...)
	if out, err := del.CombinedOutput(); err != nil {
		t.Fatalf("forget staging's build of the closure: %v\n%s", err, out)
	}
	type result struct {
		out string
		err error
	}
	done := make(chan result, 1)
	go func() {
		cmd := exec.Command("nix-build", "--no-out-link", "-E", expr)
		cmd.Env = append(launch.CleanNixEnv(os.Environ()), "NIX_CONF_DIR="+filepath.Join(f.P, "etc/nix"), "NIX_REMOTE=local")
		out, err := cmd.CombinedOutput()
		done <- result{string(out), err}
	}()
	testenv.WaitFor(t, 60*time.Second, time.Millisecond, "production fetching", func() error {
		for _, p := range closure {
			if _, err := os.Lstat(p); err == nil {
				return nil
			}
		}
		return errors.New("no path of the closure in the store yet")
	})
	if err := f.weed.Stop(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("production's build with the store gone mid-fetch: %v\n%s", r.err, r.out)
	}
	// Nix had the narinfos, and set out to copy: each NAR it no longer
	// gets is built instead.
	tried, built := strings.Count(r.out, "copying path"), strings.Count(r.out, "building '")
	if tried == 0 || built == 0 || strings.Contains(r.out, "retrying") {
		t.Fatalf("the store gone mid-fetch: %d copies from the cache begun, %d paths built (want some of each, and no retry):\n%s", tried, built, r.out)
	}
	t.Logf("the store gone mid-fetch: %d copies from the cache begun, %d paths built", tried, built)
	st = f.prod.waitFor("production says the store is down", func(st status.Status) bool {
		c := status.Find(st.Conditions, status.CachesReady)
		return c != nil && c.Status == status.True && c.Reason == "Degraded" && !cacheStatus(t, st, "fleet").Reachable &&
			slices.ContainsFunc(st.Warnings, func(w string) bool { return strings.Contains(w, "its store cannot be reached") })
	})
	if !st.Ready {
		t.Fatalf("production is not Ready while only the cache's store is down: %+v", st.Conditions)
	}
	t.Logf("CachesReady: %+v", condition(t, st, status.CachesReady))
	if v, ok := value(scrape(t, f.prod.socket, ""), "nixpeer_cache_reachable", "cache", "fleet"); !ok || v != 0 {
		t.Fatalf("metrics: nixpeer_cache_reachable = %v, %v; want 0", v, ok)
	}
}

// stagingGone stops staging's agent and sshd, and waits until production's
// live settings no longer have staging as a substituter.
func (f *cacheFleet) stagingGone(t testing.TB) {
	f.stage.stop()
	f.sshd.Stop(t)
	f.prod.waitWithin(30*time.Second, "production withdrew staging", func(st status.Status) bool {
		c := status.Find(st.Conditions, status.NixSettingsApplied)
		return c != nil && c.Status == status.True && st.ObservedGeneration == st.Generation &&
			!strings.Contains(string(readFile(t, filepath.Join(f.P, "etc/nix/nixpeer.conf"))), "ssh://")
	})
}

// prodNix runs a Nix command on a store of its own (store, a directory)
// with production's settings, and returns what it printed.
func (f *cacheFleet) prodNix(store string, argv ...string) (string, error) {
	cmd := exec.Command(argv[0], append([]string{"--store", store}, argv[1:]...)...)
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+filepath.Join(f.P, "etc/nix"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// outPath is the output path of expr, without building or writing
// anything.
func (f *cacheFleet) outPath(t testing.TB, expr string) string {
	out, err := exec.Command("nix-instantiate", "--eval", "--readonly-mode", "-E", "("+expr+").outPath").Output()
	if err != nil {
		t.Fatalf("nix-instantiate: %v", err)
	}
	return strings.Trim(strings.TrimSpace(string(out)), `"`)
}

// waitPublished waits until a's agent has published at least n paths to
// the cache fleet (uploaded or found there) and none waits, as its metrics
// say.
func waitPublished(t testing.TB, a *agent, n int) {
	t.Helper()
	testenv.WaitFor(t, 60*time.Second, 20*time.Millisecond, "the closure published", func() error {
		m := scrape(t, a.socket, "")
		queued, _ := value(m, "nixpeer_cache_publish_queued", "cache", "fleet")
		uploaded, _ := value(m, "nixpeer_cache_published_total", "cache", "fleet", "result", "uploaded")
		present, _ := value(m, "nixpeer_cache_published_total", "cache", "fleet", "result", "present")
		if queued != 0 || uploaded+present < float64(n) {
			return fmt.Errorf("%v queued, %v uploaded, %v present", queued, uploaded, present)
		}
		return nil
	})
}

// minioClient is a client of the tests' SeaweedFS at host.
func minioClient(host, key, secret string) (*minio.Client, error) {
	return minio.New(host, &minio.Options{Creds: credentials.NewStaticV4(key, secret, ""), Region: "us-east-1"})
}

// bucketNarInfos returns the narinfos in the test's bucket, by key.
func (f *cacheFleet) bucketNarInfos(t *testing.T) map[string]nix.NarInfo {
	t.Helper()
	u, _ := url.Parse(f.weed.Endpoint)
	c, err := minioClient(u.Host, f.weed.AccessKey, f.weed.SecretKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	out := map[string]nix.NarInfo{}
	for obj := range c.ListObjects(ctx, "nix", minio.ListObjectsOptions{}) {
		if obj.Err != nil {
			t.Fatal(obj.Err)
		}
		if !strings.HasSuffix(obj.Key, ".narinfo") {
			continue
		}
		o, err := c.GetObject(ctx, "nix", obj.Key, minio.GetObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(o)
		o.Close()
		if err != nil {
			t.Fatal(err)
		}
		ni, err := nix.ParseNarInfo(data)
		if err != nil {
			t.Fatalf("%s: %v\n%s", obj.Key, err, data)
		}
		out[obj.Key] = ni
	}
	return out
}

// TestCacheTierRotation: a rotation of staging's cache key reaches the
// bucket. Production reads the cache only after it trusts both keys;
// every narinfo gets a signature of the new key before production drops
// the old one, and production, trusting the new key alone, fetches the
// closure from the bucket with staging gone.
func TestCacheTierRotation(t *testing.T) {
	f := startCacheFleet(t)
	top := f.buildOnStaging(t, 10)
	waitPublished(t, f.stage, 10)
	if code, out, stderr := runCLI(t, "rotate", "cache-key", "--socket", f.stage.socket); code != 0 {
		t.Fatalf("rotate cache-key: exit %d, %s%s", code, out, stderr)
	}
	f.stage.waitWithin(2*time.Minute, "rotation done", func(st status.Status) bool {
		return st.Rotation == nil && ready(st) && strings.HasPrefix(facts(t, f.S).CacheKey.PublicKey, "127.0.0.2-g2:")
	})
	newKey, err := nix.ParsePublicKey(facts(t, f.S).CacheKey.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	infos := f.bucketNarInfos(t)
	if len(infos) < 10 {
		t.Fatalf("%d narinfos in the bucket, want at least 10", len(infos))
	}
	for key, ni := range infos {
		if !slices.ContainsFunc(ni.Sigs, func(s string) bool { return newKey.Verify(ni.Fingerprint(), s) }) {
			t.Errorf("%s carries no good signature of the new key %s: %q", key, newKey.Name(), ni.Sigs)
		}
	}
	f.prod.waitFor("production trusts the new key alone", func(st status.Status) bool {
		k := trustedKeys(t, f.fleetRun)
		return ready(st) && len(k) == 1 && k[0] == newKey.String()
	})
	f.stagingGone(t)
	if out, err := f.prodNix(t.TempDir(), "nix-store", "-r", top); err != nil || strings.Count(out, "copying path") != 10 {
		t.Fatalf("production, trusting the new key alone, fetched from the cache: %v\n%s", err, out)
	}

	// Production's credentials: readable by others, then refused by the
	// store. Each is named, and no secret reaches the status.
	creds := filepath.Join(f.P, "var/lib/nixpeer/caches/fleet.credentials")
	for _, c := range []struct {
		reason, credentials string
		change              func()
	}{
		{"CredentialsLoose", "loose", func() { os.Chmod(creds, 0o644) }},
		{"CredentialsRejected", "rejected", func() {
			writeCredentials(t, f.P, f.weed.AccessKey, "not-the-secret")
			os.Chmod(creds, 0o600)
		}},
	} {
		c.change()
		runCLI(t, "reconcile", "--socket", f.prod.socket)
		st := f.prod.waitFor("production says "+c.reason, func(st status.Status) bool {
			cond := status.Find(st.Conditions, status.CachesReady)
			return cond != nil && cond.Status == status.False && cond.Reason == c.reason && cacheStatus(t, st, "fleet").Credentials == c.credentials
		})
		if _, out, _ := runCLI(t, "status", "--json", "--socket", f.prod.socket); strings.Contains(out, f.weed.SecretKey) {
			t.Fatalf("the status shows the secret:\n%s", out)
		}
		t.Logf("%s: %s", c.reason, condition(t, st, status.CachesReady).Message)
	}
}

// TestCredentialsWatched: production's agent, alone (the host that
// publishes to its cache does not run, so nothing else wakes it), takes
// its cache's credentials as an operator writes them, loose, then fixed:
// no reconcile is asked, and the resync (5 minutes) is far off.
func TestCredentialsWatched(t *testing.T) {
	testenv.Require(t, "nix")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
	testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
	config := writeConfig(t, fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
caches:
  - {name: fleet, s3: {endpoint: "http://127.0.0.1:%d", bucket: nix}}
hosts:
  - {name: stage, address: 127.0.0.2, peerPort: %d, platform: nix, apply: ["true"], serve: {publishTo: [fleet]}}
  - {name: prod, address: 127.0.0.3, peerPort: %d, platform: nix, apply: ["true"], cachePort: %d, substituteFrom: [fleet]}
`, testenv.FreePort(t, "127.0.0.1"), peerPortOf("127.0.0.2"), peerPortOf("127.0.0.3"), testenv.FreePort(t, "127.0.0.1")))
	prod := startAgent(t, root, config, "prod")
	credentials := func(want string) {
		t.Helper()
		prod.waitFor("credentials "+want, func(st status.Status) bool {
			return len(st.Caches) == 1 && st.Caches[0].Credentials == want
		})
	}
	credentials("missing")
	// Its first passes are over once the settings are live: from then on
	// only a trigger wakes it.
	prod.waitFor("the Nix settings live", func(st status.Status) bool {
		c := status.Find(st.Conditions, status.NixSettingsApplied)
		return c != nil && c.Status == status.True
	})
	writeCredentials(t, root, "key", "secret")
	creds := filepath.Join(root, "var/lib/nixpeer/caches/fleet.credentials")
	if err := os.Chmod(creds, 0o644); err != nil {
		t.Fatal(err)
	}
	credentials("loose")
	if err := os.Chmod(creds, 0o600); err != nil {
		t.Fatal(err)
	}
	credentials("ok")
}
