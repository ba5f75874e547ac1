package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// signatures are the names of the keys that signed path in the machine's
// store (staging's).
func signatures(t *testing.T, path string) []string {
	t.Helper()
	out, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--json", "--sigs", path).Output()
	if err != nil {
		t.Fatalf("nix path-info %s: %v", path, err)
	}
	infos, err := nix.ParsePathInfoJSON(out)
	if err != nil || len(infos) != 1 {
		t.Fatalf("nix path-info %s: %v %s", path, err, out)
	}
	var names []string
	for _, s := range infos[0].Signatures {
		name, _, _ := strings.Cut(s, ":")
		names = append(names, name)
	}
	return names
}

// trustedKeys are the cache keys production's settings trust.
func trustedKeys(t *testing.T, f *fleetRun) []string {
	t.Helper()
	for line := range strings.SplitSeq(string(readFile(t, filepath.Join(f.P, "etc/nix/nixpeer.conf"))), "\n") {
		if v, ok := strings.CutPrefix(line, "extra-trusted-public-keys = "); ok {
			return strings.Fields(v)
		}
	}
	return nil
}

// TestRotateCacheKey rotates staging's signing key with real Nix, sshd and
// both agents: production is stopped when the rotation starts, so it
// holds in Trusting (through a restart of staging's agent) until
// production comes back; then it runs to the end while production fetches
// without a pause, and not one fetch fails. At the end the old key is gone
// from production's settings, kept 0600 on staging, and a path signed
// before the rotation carries the new key's signature. A revoke then drops
// the new key on production within seconds.
func TestRotateCacheKey(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	f := startFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	old := facts(t, f.S).CacheKey.PublicKey
	nonce := strconv.FormatInt(time.Now().UnixNano(), 10)
	before := testenv.BuildPath(t, f.daemon, "nixpeer-rotate-before", "before the rotation "+nonce)
	f.fetch(t, before)

	// Production is away: the rotation waits for it, across a restart of
	// staging's agent, and production still fetches with the old key.
	f.prod.stop()
	if code, out, stderr := runCLI(t, "rotate", "cache-key", "--socket", f.stage.socket); code != 0 || !strings.Contains(out, "generation 2") {
		t.Fatalf("rotate cache-key: exit %d, %s%s", code, out, stderr)
	}
	trusting := func(st status.Status) bool {
		r := st.Rotation
		return r != nil && r.Phase == "Trusting" && slices.Equal(r.WaitingOn, []string{"prod"}) && r.To == "127.0.0.2-g2"
	}
	f.stage.waitFor("rotation waiting for production", trusting)
	if nf := facts(t, f.S).NextCacheKey; nf == nil || !strings.HasPrefix(nf.PublicKey, "127.0.0.2-g2:") {
		t.Fatalf("nixpeer facts shows the next key %+v; want 127.0.0.2-g2", nf)
	}
	if code, _, stderr := runCLI(t, "rotate", "cache-key", "--socket", f.stage.socket); code != 1 || !strings.Contains(stderr, "under way") {
		t.Fatalf("a second rotate while one is under way: exit %d, %s; want a refusal", code, stderr)
	}
	f.stage.stop()
	f.stage = startAgent(t, f.S, f.config, "stage")
	st := f.stage.waitFor("rotation still waiting after a restart, Ready", func(st status.Status) bool { return trusting(st) && ready(st) })
	if !strings.Contains(st.Rotation.Message, "--force") {
		t.Fatalf("rotation message %q does not say how to go on without production", st.Rotation.Message)
	}
	if c := status.Find(st.Conditions, status.CacheKeyReady); c == nil || c.Reason != "RotationTrusting" || !st.Ready {
		t.Fatalf("staging during the rotation: Ready %v, CacheKeyReady %+v; want Ready, the phase as its reason", st.Ready, c)
	}
	if _, out, _ := runCLI(t, "status", "--socket", f.stage.socket); !strings.Contains(out, "Rotation:    127.0.0.2 -> 127.0.0.2-g2: Trusting: waiting for prod") {
		t.Fatalf("nixpeer status does not show the phase and what it waits on:\n%s", out)
	}
	if v, ok := value(scrape(t, f.stage.socket, ""), "nixpeer_cache_key_rotation_phase", "phase", "Trusting", "from", "127.0.0.2", "to", "127.0.0.2-g2"); !ok || v != 1 {
		t.Fatalf("metrics: nixpeer_cache_key_rotation_phase of Trusting = %v, %v; want 1", v, ok)
	}
	f.fetch(t, before)

	// Production is back: it trusts both keys, then staging signs with
	// both, re-signs, and retires the old key, while production fetches.
	stopFetching := f.fetchLoop(t, before)
	f.prod = startAgent(t, f.P, f.config, "prod")
	st = f.stage.waitWithin(2*time.Minute, "rotation done", func(st status.Status) bool {
		return st.Rotation == nil && ready(st) && strings.HasPrefix(facts(t, f.S).CacheKey.PublicKey, "127.0.0.2-g2:")
	})
	f.prod.waitFor("production trusts the new key alone", func(st status.Status) bool {
		k := trustedKeys(t, f)
		return ready(st) && len(k) == 1 && strings.HasPrefix(k[0], "127.0.0.2-g2:")
	})
	fetches, failures := stopFetching()
	if len(failures) > 0 || fetches == 0 {
		t.Fatalf("%d of %d fetches during the rotation failed: %v", len(failures), fetches, failures)
	}
	t.Logf("%d fetches during the rotation, none failed", fetches)

	if _, ok := value(scrape(t, f.stage.socket, ""), "nixpeer_cache_key_rotation_phase", "phase", "Trusting", "from", "127.0.0.2", "to", "127.0.0.2-g2"); ok {
		t.Fatal("metrics: the rotation's phase outlives the rotation")
	}

	// Each phase was an event.
	code, out, _ := runCLI(t, "events", "--socket", f.stage.socket)
	for _, phase := range []string{"RotationMakingKey", "RotationTrusting", "RotationSigningWithBoth", "RotationResigning", "RotationRetiring"} {
		if code != 0 || !strings.Contains(out, phase) {
			t.Errorf("events lack %s:\n%s", phase, out)
		}
	}
	retired := filepath.Join(f.S, "var/lib/nixpeer/keys", nix.RetiredKeyDir, "127.0.0.2.pem")
	if st, err := os.Stat(retired); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("the retired key %s: %v", retired, err)
	}
	if sk, err := nix.ParseSecretKey(string(readFile(t, retired))); err != nil || sk.Public().String() != old {
		t.Fatalf("the retired key is not the old one: %v", err)
	}
	if sigs := signatures(t, before); !slices.Contains(sigs, "127.0.0.2-g2") {
		t.Fatalf("a path signed before the rotation carries %v; want a signature of the new key", sigs)
	}
	f.fetch(t, before)
	after := testenv.BuildPath(t, f.daemon, "nixpeer-rotate-after", "after the rotation "+nonce)
	if sigs := signatures(t, after); !slices.Equal(sigs, []string{"127.0.0.2-g2"}) {
		t.Fatalf("a path built after the rotation carries %v; want the new key's signature alone", sigs)
	}
	f.fetch(t, after)

	// A revoke: production drops the revoked key as soon as it hears, and
	// staging re-signs with a new key what the revoked one signed.
	if code, out, stderr := runCLI(t, "revoke", "cache-key", "--socket", f.stage.socket); code != 0 {
		t.Fatalf("revoke cache-key: exit %d, %s%s", code, out, stderr)
	}
	f.prod.waitWithin(10*time.Second, "production drops the revoked key", func(st status.Status) bool {
		k := trustedKeys(t, f)
		return len(k) == 1 && strings.HasPrefix(k[0], "127.0.0.2-g3:")
	})
	f.stage.waitWithin(time.Minute, "re-signed after the revoke", func(st status.Status) bool {
		return st.Rotation == nil && ready(st) && slices.Contains(signatures(t, after), "127.0.0.2-g3")
	})
	if _, err := os.Stat(filepath.Join(f.S, "var/lib/nixpeer/keys", nix.RetiredKeyDir, "127.0.0.2-g2.revoked.pem")); err != nil {
		t.Fatalf("the revoked key is not kept: %v", err)
	}
	f.prod.waitFor("production Ready", ready)
	f.fetch(t, after)
}

// TestRotateCacheKeyThroughCrashes kills staging's agent (SIGKILL) again
// and again while a rotation runs, at growing delays after each start, so
// that it dies in one phase or another: every restart resumes from what is
// on disk, in the facts and in state.db, and the rotation ends as it would
// have, with production fetching from staging at the end.
func TestRotateCacheKeyThroughCrashes(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	f := startFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	path := testenv.BuildPath(t, f.daemon, "nixpeer-rotate-crash", "before the rotation "+strconv.FormatInt(time.Now().UnixNano(), 10))
	if code, out, stderr := runCLI(t, "rotate", "cache-key", "--socket", f.stage.socket); code != 0 {
		t.Fatalf("rotate cache-key: exit %d, %s%s", code, out, stderr)
	}
	keys := filepath.Join(f.S, "var/lib/nixpeer/keys")
	done := func() bool {
		_, err := os.Stat(filepath.Join(keys, nix.RetiredKeyDir, "127.0.0.2.pem"))
		return err == nil
	}
	crashes := 0
	for delay := 5 * time.Millisecond; !done() && delay < 5*time.Second; delay *= 2 {
		f.stage.kill9()
		crashes++
		f.stage = startAgent(t, f.S, f.config, "stage")
		time.Sleep(delay) // a crash at a growing point of the rotation, not a wait for it
	}
	st := f.stage.waitWithin(time.Minute, "rotation done after the crashes", func(st status.Status) bool {
		return done() && st.Rotation == nil && ready(st)
	})
	t.Logf("%d crashes", crashes)
	if c := status.Find(st.Conditions, status.CacheKeyReady); c == nil || c.Reason != "KeyPresent" || !strings.HasPrefix(facts(t, f.S).CacheKey.PublicKey, "127.0.0.2-g2:") {
		t.Fatalf("after the crashes: CacheKeyReady %+v, key %s; want the 127.0.0.2-g2 key in place", c, facts(t, f.S).CacheKey.PublicKey)
	}
	// A crash right after the promotion's last rename may leave its
	// directory, empty.
	if left, err := os.ReadDir(filepath.Join(keys, nix.NextKeyDir)); len(left) > 0 {
		t.Fatalf("the next key's directory keeps %v (%v)", left, err)
	}
	if sigs := signatures(t, path); !slices.Contains(sigs, "127.0.0.2-g2") {
		t.Fatalf("a path signed before the rotation carries %v; want a signature of the new key", sigs)
	}
	f.prod.waitFor("production trusts the new key alone", func(st status.Status) bool {
		k := trustedKeys(t, f)
		return ready(st) && len(k) == 1 && strings.HasPrefix(k[0], "127.0.0.2-g2:")
	})
	f.fetch(t, path)
}
