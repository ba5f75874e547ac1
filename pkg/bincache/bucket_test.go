package bincache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/desired"
)

// TestBucketAndReader runs the bucket and the reader against a real
// S3-compatible store (SeaweedFS): objects come back whole, with their
// size, from one request each; a missing one is ErrNotFound, refused
// credentials ErrRejected; the reader serves nix-cache-info, narinfos and
// NARs to Nix, 404 for what is missing or not a cache's file, and, once
// the store is gone, a 404 at once for every lookup.
func TestBucketAndReader(t *testing.T) {
	w := testenv.StartWeed(t, "127.0.0.1")
	if err := w.MakeBucket("nix"); err != nil {
		t.Fatal(err)
	}
	loc := desired.S3Bucket{Endpoint: w.Endpoint, Bucket: "nix", Region: "us-east-1"}
	b, err := Open("fleet", loc, Credentials{AccessKeyID: w.AccessKey, SecretAccessKey: w.SecretKey})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, size := range []int{0, 10, 511, 512, 600, 100000} {
		data := bytes.Repeat([]byte{'x'}, size)
		key := fmt.Sprintf("nar/%d.nar", size)
		if err := b.Put(ctx, key, bytes.NewReader(data), int64(size), "application/x-nix-nar"); err != nil {
			t.Fatal(err)
		}
		r, n, err := b.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil || n != int64(size) || !bytes.Equal(got, data) {
			t.Fatalf("%s: size %d, %d bytes back (%v), equal %v", key, n, len(got), err, bytes.Equal(got, data))
		}
	}
	if _, _, err := b.Get(ctx, "nope.narinfo"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a missing object: %v, want ErrNotFound", err)
	}
	if err := b.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	wrong, err := Open("fleet", loc, Credentials{AccessKeyID: w.AccessKey, SecretAccessKey: "not-the-secret"})
	if err != nil {
		t.Fatal(err)
	}
	if err := wrong.Check(ctx); !errors.Is(err, ErrRejected) {
		t.Fatalf("Check with a wrong secret: %v, want ErrRejected", err)
	}

	// The reader, on a port of its own.
	changed := make(chan struct{}, 16)
	r := NewReader(zap.NewNop(), func() { changed <- struct{}{} })
	defer r.Close()
	r.Configure(map[string]*Bucket{"fleet": b, "nocreds": nil})
	addr := freeAddr(t)
	if err := r.Listen(addr); err != nil {
		t.Fatal(err)
	}
	info := "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 41\n"
	narinfo := "StorePath: /nix/store/" + testHash + "-x\n"
	if err := b.Put(ctx, testHash+".narinfo", bytes.NewReader([]byte(narinfo)), int64(len(narinfo)), "text/x-nix-narinfo"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		method, path string
		code         int
		body         string
	}{
		{"GET", "/fleet/nix-cache-info", 200, info},
		{"GET", "/nocreds/nix-cache-info", 200, info},
		{"GET", "/fleet/" + testHash + ".narinfo", 200, narinfo},
		{"HEAD", "/fleet/" + testHash + ".narinfo", 200, ""},
		{"GET", "/fleet/nar/600.nar", 200, string(bytes.Repeat([]byte{'x'}, 600))},
		{"GET", "/fleet/" + other + ".narinfo", 404, ""},
		{"GET", "/nocreds/" + testHash + ".narinfo", 404, ""},
		{"GET", "/other/nix-cache-info", 404, ""},
		{"GET", "/fleet/../fleet/nar/600.nar", 404, ""},
		{"GET", "/fleet/nar/../nix-cache-info", 404, ""},
		{"PUT", "/fleet/" + testHash + ".narinfo", 405, ""},
	} {
		code, body := request(t, c.method, "http://"+addr+c.path)
		if code != c.code || c.code == 200 && c.method == "GET" && body != c.body {
			t.Errorf("%s %s: %d %q, want %d %q", c.method, c.path, code, body, c.code, c.body)
		}
	}
	if h := r.Health()["fleet"]; !h.Up || !h.Checked || h.Hits < 3 || h.Misses < 1 {
		t.Fatalf("health after the lookups: %+v", h)
	}
	// That it answers is told once, by its first check or by the first
	// lookup that reached it, whichever came first.
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not tell that the store answers")
	}
	select {
	case <-changed:
		t.Fatal("the store answering was told twice")
	default:
	}

	// The store goes away: the first failures are misses, then the cache
	// is down, every lookup a 404 at once, and the change is told.
	if err := w.Stop(); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if code, _ := request(t, "GET", "http://"+addr+"/fleet/"+testHash+".narinfo"); code != 404 {
			t.Fatalf("a lookup with the store gone: %d, want 404", code)
		}
	}
	testenv.WaitFor(t, 10*time.Second, time.Millisecond, "the cache down", func() error {
		if h := r.Health()["fleet"]; h.Up || h.Err == "" {
			return fmt.Errorf("health %+v", h)
		}
		return nil
	})
	select {
	case <-changed:
	default:
		t.Fatal("the reader did not tell that the store's health changed")
	}
	before := r.Health()["fleet"].Down
	start := time.Now()
	if code, _ := request(t, "GET", "http://"+addr+"/fleet/"+testHash+".narinfo"); code != 404 {
		t.Fatalf("a lookup while down: %d, want 404", code)
	}
	if h := r.Health()["fleet"]; h.Down != before+1 {
		t.Fatalf("a lookup while down was not counted as one (%d, then %d; %v)", before, h.Down, time.Since(start))
	}
}

const (
	testHash = "0c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk"
	other    = "1c6h3ccrv9sqxq1hy8z1c1p6wz2zqbyk"
)

func request(t *testing.T, method, url string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
