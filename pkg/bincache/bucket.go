package bincache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/nixpeer/nixpeer/pkg/desired"
)

// ErrNotFound is matched by the error for an object the bucket does not
// hold.
var ErrNotFound = errors.New("not in the bucket")

// ErrRejected is matched by the error for a request the store refused for
// its credentials (wrong, expired, without the permission, or a clock far
// off).
var ErrRejected = errors.New("the store refused this host's credentials")

// rejections are the S3 error codes of ErrRejected.
var rejections = []string{"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired", "RequestTimeTooSkewed", "AllAccessDisabled"}

// Bucket is one cache's bucket, reached with one host's credentials.
type Bucket struct {
	// Cache is the cache's name, for messages.
	Cache  string
	client *minio.Client
	bucket string
}

// Timeouts of requests to the object store: a store that does not answer
// is known within seconds, not minutes.
const (
	dialTimeout   = 3 * time.Second
	headerTimeout = 10 * time.Second
)

// Open returns the bucket of cache at loc, reached with c.
func Open(cache string, loc desired.S3Bucket, c Credentials) (*Bucket, error) {
	u, err := url.Parse(loc.Endpoint)
	if err != nil {
		return nil, fmt.Errorf("cache %s: endpoint: %w", cache, err)
	}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   dialTimeout,
		ResponseHeaderTimeout: headerTimeout,
		MaxIdleConns:          64,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		DisableCompression:    true,
	}
	client, err := minio.New(u.Host, &minio.Options{
		Creds:     credentials.NewStaticV4(c.AccessKeyID, c.SecretAccessKey, c.SessionToken),
		Secure:    u.Scheme == "https",
		Region:    loc.Region,
		Transport: tr,
		// A failed request is the reader's to answer at once, and the
		// publisher's to retry later.
		MaxRetries: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("cache %s: %w", cache, err)
	}
	return &Bucket{Cache: cache, client: client, bucket: loc.Bucket}, nil
}

// Get opens the object key, with one request; the caller closes it. The
// error matches ErrNotFound when the bucket holds no such object.
func (b *Bucket) Get(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	body, info, _, err := minio.Core{Client: b.client}.GetObject(ctx, b.bucket, key, minio.GetObjectOptions{})
	if err != nil {
		return nil, 0, b.wrap(key, err)
	}
	return body, info.Size, nil
}

// Size returns the size of the object key; the error matches ErrNotFound
// when there is none.
func (b *Bucket) Size(ctx context.Context, key string) (int64, error) {
	st, err := b.client.StatObject(ctx, b.bucket, key, minio.StatObjectOptions{})
	if err != nil {
		return 0, b.wrap(key, err)
	}
	return st.Size, nil
}

// Put stores size bytes of r as the object key.
func (b *Bucket) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	_, err := b.client.PutObject(ctx, b.bucket, key, r, size, minio.PutObjectOptions{ContentType: contentType, DisableMultipart: size < 64<<20})
	return b.wrap(key, err)
}

// Check says whether the store can be reached and answers this host:
// a HEAD of the cache's nix-cache-info, which needs no permission beyond
// reading objects (a missing one counts as an answer).
func (b *Bucket) Check(ctx context.Context) error {
	_, err := b.client.StatObject(ctx, b.bucket, "nix-cache-info", minio.StatObjectOptions{})
	if err = b.wrap("nix-cache-info", err); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	return nil
}

// wrap names the cache and the object in err (nil stays nil), and makes
// it match ErrNotFound or ErrRejected where it is one.
func (b *Bucket) wrap(key string, err error) error {
	if err == nil {
		return nil
	}
	resp := minio.ToErrorResponse(err)
	switch {
	case resp.Code == "NoSuchKey" || resp.StatusCode == http.StatusNotFound && resp.Code != "NoSuchBucket":
		return fmt.Errorf("cache %s: %s: %w", b.Cache, key, ErrNotFound)
	case slices.Contains(rejections, resp.Code) || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusUnauthorized:
		return fmt.Errorf("cache %s: %s: %w (%s)", b.Cache, key, ErrRejected, cmp.Or(resp.Code, resp.Message, http.StatusText(resp.StatusCode)))
	}
	return fmt.Errorf("cache %s: %s: %w", b.Cache, key, err)
}

// NarInfos calls f with the key of every narinfo in the bucket.
func (b *Bucket) NarInfos(ctx context.Context, f func(key string) error) error {
	for obj := range b.client.ListObjects(ctx, b.bucket, minio.ListObjectsOptions{}) {
		if obj.Err != nil {
			return fmt.Errorf("cache %s: list: %w", b.Cache, obj.Err)
		}
		if strings.HasSuffix(obj.Key, ".narinfo") && !strings.Contains(obj.Key, "/") {
			if err := f(obj.Key); err != nil {
				return err
			}
		}
	}
	return nil
}
