package bincache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/netutil"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"github.com/nixpeer/nixpeer/pkg/nix"
)

// Priority is the Priority the reader's nix-cache-info gives each cache:
// after cache.nixos.org (40), which keeps serving what it serves, and after
// every SSH peer (priority 0).
const Priority = 41

// cacheInfo is every cache's nix-cache-info, in the bucket and as the
// reader serves it.
var cacheInfo = fmt.Sprintf("StoreDir: /nix/store\nWantMassQuery: 1\nPriority: %d\n", Priority)

// Bounds of the reader.
const (
	// MaxUpstream bounds the requests to object stores at a time; more
	// wait for a turn.
	MaxUpstream = 32
	// maxConns bounds the connections from the host's Nix.
	maxConns   = 256
	copyBuffer = 32 << 10
	// stallTimeout bounds the wait for the store's next bytes.
	stallTimeout = 30 * time.Second
)

// checkRetry paces the checks of a store that could not be reached.
var checkRetry = backoff.Policy{Base: 500 * time.Millisecond, Cap: 10 * time.Second}

// Health is what the reader knows of one cache's store.
type Health struct {
	// Up: the last request or check reached the store. Checked is false
	// until one has.
	Up      bool
	Checked bool
	// Since is when Up last changed; Err why the store is down, and
	// Rejected whether it answered that it refuses this host's
	// credentials.
	Since    time.Time
	Err      string
	Rejected bool
	// Requests served from the store, answered as missing from it, and
	// answered as missing because the store was down.
	Hits, Misses, Down uint64
}

// Reader serves caches to the host's own Nix over loopback HTTP, at
// /CACHE/nix-cache-info, /CACHE/HASH.narinfo and /CACHE/nar/FILE, signing
// its requests to each store with the host's credentials. A path the
// store lacks is a 404; while a store cannot be reached every lookup is
// a 404 at once (a 5xx would have Nix retry for seconds, and disable the
// cache), and the store is checked again in the background until it
// answers. NARs are streamed, never held whole.
type Reader struct {
	log *zap.Logger
	// changed is called when a cache's health changes.
	changed func()
	turns   chan struct{}

	mu     sync.Mutex
	caches map[string]*readCache
	addr   string
	ln     net.Listener
	srv    *http.Server
}

type readCache struct {
	bucket *Bucket
	ctx    context.Context
	stop   context.CancelFunc
	mu     sync.Mutex
	health Health
	// checking: a background check runs; fails counts the requests in a
	// row that failed (the store is down from the second on: one 5xx is
	// not an outage).
	checking             bool
	fails                int
	hits, misses, downed atomic.Uint64
}

// NewReader returns a reader that serves nothing until Configure and
// Listen; changed is called (without locks held) when a cache's health
// changes.
func NewReader(log *zap.Logger, changed func()) *Reader {
	return &Reader{log: log, changed: changed, turns: make(chan struct{}, MaxUpstream), caches: map[string]*readCache{}}
}

// Configure makes the reader serve buckets, by cache name: a cache whose
// bucket is the same object as before keeps its health; a new one is
// checked at once. A nil bucket (no usable credentials) is a cache whose
// nix-cache-info is served, and every lookup a miss.
func (r *Reader) Configure(buckets map[string]*Bucket) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, c := range r.caches {
		if b, ok := buckets[name]; !ok || b != c.bucket {
			c.stop()
			delete(r.caches, name)
		}
	}
	for name, b := range buckets {
		if _, ok := r.caches[name]; ok {
			continue
		}
		ctx, stop := context.WithCancel(context.Background())
		c := &readCache{bucket: b, ctx: ctx, stop: stop}
		r.caches[name] = c
		if b != nil {
			c.checking = true
			go r.check(c)
		}
	}
}

// Listen makes the reader listen on addr ("" to stop listening).
func (r *Reader) Listen(addr string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if addr == r.addr {
		return nil
	}
	if r.srv != nil {
		r.srv.Close()
		r.srv, r.ln, r.addr = nil, nil, ""
	}
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve the caches to Nix: %w", err)
	}
	r.srv = &http.Server{Handler: r, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute, ErrorLog: zap.NewStdLog(r.log)}
	r.ln, r.addr = netutil.LimitListener(ln, maxConns), addr
	go r.srv.Serve(r.ln)
	return nil
}

// Close stops serving and every background check.
func (r *Reader) Close() {
	r.Listen("")
	r.Configure(nil)
}

// Health returns each cache's health, by name.
func (r *Reader) Health() map[string]Health {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]Health, len(r.caches))
	for name, c := range r.caches {
		if c.bucket == nil {
			continue
		}
		c.mu.Lock()
		h := c.health
		c.mu.Unlock()
		h.Hits, h.Misses, h.Down = c.hits.Load(), c.misses.Load(), c.downed.Load()
		out[name] = h
	}
	return out
}

var narinfoRE = regexp.MustCompile(`^[0-9a-df-np-sv-z]{32}\.narinfo$`)

// ServeHTTP answers the host's Nix.
func (r *Reader) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		http.Error(w, "read only", http.StatusMethodNotAllowed)
		return
	}
	name, key, _ := strings.Cut(strings.TrimPrefix(req.URL.Path, "/"), "/")
	r.mu.Lock()
	c := r.caches[name]
	r.mu.Unlock()
	if c == nil {
		http.NotFound(w, req)
		return
	}
	switch {
	case key == "nix-cache-info":
		w.Header().Set("Content-Type", "text/x-nix-cache-info")
		io.WriteString(w, cacheInfo)
		return
	case narinfoRE.MatchString(key), nix.NarURLRE.MatchString(key):
	default:
		http.NotFound(w, req)
		return
	}
	if c.bucket == nil || !c.up() {
		c.downed.Add(1)
		http.Error(w, "the object store of cache "+name+" cannot be reached", http.StatusNotFound)
		return
	}
	select {
	case r.turns <- struct{}{}:
		defer func() { <-r.turns }()
	case <-req.Context().Done():
		return
	}
	// A store that stops sending mid-body ends the request after
	// stallTimeout, not after Nix's own timeout of minutes, and gives
	// back its turn.
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()
	stall := time.AfterFunc(stallTimeout, cancel)
	defer stall.Stop()
	if req.Method == http.MethodHead {
		size, err := c.bucket.Size(ctx, key)
		if !r.answerErr(w, req, c, err) {
			c.hits.Add(1)
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		}
		return
	}
	body, size, err := c.bucket.Get(ctx, key)
	if r.answerErr(w, req, c, err) {
		return
	}
	defer body.Close()
	c.hits.Add(1)
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	if strings.HasSuffix(key, ".narinfo") {
		w.Header().Set("Content-Type", "text/x-nix-narinfo")
	} else {
		w.Header().Set("Content-Type", "application/x-nix-nar")
	}
	buf := make([]byte, copyBuffer)
	for {
		n, err := body.Read(buf)
		stall.Reset(stallTimeout)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return // Nix went away
			}
		}
		if err == io.EOF {
			return
		}
		if err != nil {
			if req.Context().Err() == nil {
				// The store went away mid-stream: the short body (less
				// than its Content-Length) fails the download, and Nix
				// falls back.
				r.down(c, err, false)
			}
			return
		}
	}
}

// answerErr answers a failed request to the store, and reports whether
// there was one.
func (r *Reader) answerErr(w http.ResponseWriter, req *http.Request, c *readCache, err error) bool {
	if err == nil || errors.Is(err, ErrNotFound) {
		r.answered(c, false)
	}
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrNotFound):
		c.misses.Add(1)
		http.NotFound(w, req)
	case req.Context().Err() != nil:
	default:
		c.mu.Lock()
		c.fails++
		out := c.fails >= 2 || errors.Is(err, ErrRejected)
		c.mu.Unlock()
		if out {
			r.down(c, err, false)
		}
		c.downed.Add(1)
		http.Error(w, "the object store cannot be reached", http.StatusNotFound)
	}
	return true
}

func (c *readCache) up() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.health.Up || !c.health.Checked
}

// answered records that the store answered a request (byCheck: the
// background check, which then ends), and tells when that is news
// (before its first check ended too).
func (r *Reader) answered(c *readCache, byCheck bool) {
	c.mu.Lock()
	news := !c.health.Up || !c.health.Checked
	if news {
		c.health = Health{Up: true, Checked: true, Since: time.Now()}
	}
	if byCheck {
		c.checking = false
	} else {
		c.fails = 0
	}
	c.mu.Unlock()
	if news {
		r.log.Info("cache store answers", zap.String("cache", c.bucket.Cache))
		r.changed()
	}
}

// down records that the store cannot be reached (byCheck: says the
// background check), tells when that is news (to the check, a change of
// whether it refuses the credentials is too), and starts a background
// check unless one runs.
func (r *Reader) down(c *readCache, err error, byCheck bool) {
	rejected := errors.Is(err, ErrRejected)
	c.mu.Lock()
	news := c.health.Up || !c.health.Checked || byCheck && c.health.Rejected != rejected
	if news {
		c.health = Health{Checked: true, Since: time.Now()}
	}
	c.health.Err, c.health.Rejected = err.Error(), rejected
	start := !c.checking // false for the check itself
	c.checking = true
	c.mu.Unlock()
	if news {
		text := "cache store cannot be reached: its lookups are answered as misses until it answers again"
		if byCheck {
			text = "cache store cannot be reached"
		}
		r.log.Warn(text, zap.String("cache", c.bucket.Cache), zap.Error(err))
		r.changed()
	}
	if start {
		go r.check(c)
	}
}

// check checks the store until it answers, waiting longer after each
// failure, then records it up.
func (r *Reader) check(c *readCache) {
	for n := 1; ; n++ {
		ctx, cancel := context.WithTimeout(c.ctx, headerTimeout)
		err := c.bucket.Check(ctx)
		cancel()
		if c.ctx.Err() != nil {
			return
		}
		if err == nil {
			r.answered(c, true)
			return
		}
		r.down(c, err, true)
		select {
		case <-c.ctx.Done():
			return
		case <-time.After(checkRetry.Delay(n)):
		}
	}
}
