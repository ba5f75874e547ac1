package testenv

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

func TestStartWeed(t *testing.T) {
	w := StartWeed(t, "127.0.0.1")
	if err := w.MakeBucket("cache"); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(w.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	client, err := minio.New(u.Host, &minio.Options{Creds: credentials.NewStaticV4(w.AccessKey, w.SecretKey, "")})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	body := []byte("StoreDir: /nix/store\n")
	if _, err := client.PutObject(ctx, "cache", "nix-cache-info", bytes.NewReader(body), int64(len(body)),
		minio.PutObjectOptions{ContentType: "text/x-nix-cache-info"}); err != nil {
		t.Fatalf("put: %v", err)
	}
	obj, err := client.GetObject(ctx, "cache", "nix-cache-info", minio.GetObjectOptions{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	got, err := io.ReadAll(obj)
	obj.Close()
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, body) {
		t.Errorf("got %q, want %q", got, body)
	}

	// Without credentials: refused.
	for _, path := range []string{"/cache/nix-cache-info", "/cache", "/"} {
		resp, err := http.Get(w.Endpoint + path)
		if err != nil {
			t.Fatalf("anonymous GET %s: %v", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous GET %s: status %s, want 403 or 401", path, resp.Status)
		}
	}
}
