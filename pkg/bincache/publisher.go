package bincache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"github.com/nixpeer/nixpeer/pkg/nix"
)

// PublishNix is what the publisher asks of the local Nix.
type PublishNix interface {
	// ClosureInfos returns the closures of paths, each path after its
	// references.
	ClosureInfos(ctx context.Context, paths []string) ([]nix.PathInfo, error)
	// Dump writes the NAR of path to w.
	Dump(ctx context.Context, path string, w io.Writer) error
	// Outputs returns the outputs of derivations.
	Outputs(ctx context.Context, drvs []string) ([]string, error)
	// PathInfos returns, by path, what the store says of those of paths
	// it holds.
	PathInfos(ctx context.Context, paths []string) (map[string]nix.PathInfo, error)
}

// Queue is the publisher's durable queue: state.Store.
type Queue interface {
	Enqueue(queue string, items []string) error
	Queued(queue string, n int) ([]string, int, error)
	Dequeue(queue string, items []string) error
}

// Target is a cache a host publishes to.
type Target struct {
	// Bucket is nil while the host has no usable credentials: paths are
	// queued, not uploaded.
	Bucket *Bucket
	// KeyFiles are the secret keys every narinfo is signed with.
	KeyFiles []string
}

// PublishStats is what the publisher did for one cache since the agent
// started.
type PublishStats struct {
	// Queued is how many paths wait in the queue.
	Queued int
	// Uploaded were uploaded, Present found in the bucket already.
	Uploaded, Present uint64
	// Err is the last attempt's failure, "" after a success; Failures
	// counts the attempts that failed in a row.
	Err      string
	Failures int
}

// batch is how many queued paths one attempt takes; their closures are
// uploaded together.
const batch = 200

// publishRetry paces the attempts after a failure.
var publishRetry = backoff.Policy{Base: time.Second, Cap: 2 * time.Minute}

// Publisher uploads, for each cache a host publishes to, the closures of
// the paths queued for it: each NAR, compressed with zstd, before its
// narinfo, signed with the host's keys; a path whose narinfo is in the
// bucket already is not uploaded again. The queue is durable, so a
// restart goes on where it stopped.
type Publisher struct {
	nix     PublishNix
	queue   Queue
	tmpDir  string
	log     *zap.Logger
	changed func()
	wake    chan struct{}

	// batch is held while a batch uploads: a re-signing of the buckets
	// waits for it, so that no narinfo signed with keys of before it is
	// uploaded after it read the bucket.
	batch sync.Mutex

	mu      sync.Mutex
	targets map[string]*pubTarget
}

type pubTarget struct {
	Target
	stats PublishStats
	// known are the narinfos seen in the bucket, by hash part.
	known map[string]bool
	// infoDone: nix-cache-info is in the bucket.
	infoDone bool
	retryAt  time.Time
}

// NewPublisher returns a publisher with nothing to do until Configure;
// changed is called when its stats change what status says.
func NewPublisher(n PublishNix, q Queue, tmpDir string, log *zap.Logger, changed func()) *Publisher {
	return &Publisher{nix: n, queue: q, tmpDir: tmpDir, log: log, changed: changed, wake: make(chan struct{}, 1), targets: map[string]*pubTarget{}}
}

func queueName(cache string) string { return "publish/" + cache }

// Configure sets the caches published to, by name. A target a batch
// holds is never changed under it: a change makes a new one, which keeps
// what was seen in the bucket only when the bucket is the same.
func (p *Publisher) Configure(targets map[string]Target) {
	p.mu.Lock()
	for name := range p.targets {
		if _, ok := targets[name]; !ok {
			delete(p.targets, name)
		}
	}
	for name, t := range targets {
		old := p.targets[name]
		switch {
		case old == nil:
			p.targets[name] = &pubTarget{Target: t, known: map[string]bool{}}
		case old.Bucket != t.Bucket || !slices.Equal(old.KeyFiles, t.KeyFiles):
			nt := &pubTarget{Target: t, known: map[string]bool{}, stats: old.stats, retryAt: old.retryAt}
			if old.Bucket == t.Bucket {
				nt.known, nt.infoDone = old.known, old.infoDone
			}
			p.targets[name] = nt
		}
	}
	p.mu.Unlock()
	p.poke()
}

func (p *Publisher) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Enqueue queues paths for every cache published to.
func (p *Publisher) Enqueue(paths []string) error {
	for _, path := range paths {
		if !nix.IsStorePath(path) {
			return fmt.Errorf("%q is not a store path", path)
		}
	}
	p.mu.Lock()
	names := slices.Collect(maps.Keys(p.targets))
	p.mu.Unlock()
	if len(names) == 0 {
		return errors.New("this host publishes to no cache")
	}
	for _, name := range names {
		if err := p.queue.Enqueue(queueName(name), paths); err != nil {
			return err
		}
	}
	p.poke()
	return nil
}

// Stats returns what the publisher did, by cache.
func (p *Publisher) Stats() map[string]PublishStats {
	p.mu.Lock()
	out := make(map[string]PublishStats, len(p.targets))
	for name, t := range p.targets {
		out[name] = t.stats
	}
	p.mu.Unlock()
	for name, s := range out { // the store outside the lock
		if _, total, err := p.queue.Queued(queueName(name), 0); err == nil {
			s.Queued = total
			out[name] = s
		}
	}
	return out
}

// Run uploads until ctx ends.
func (p *Publisher) Run(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		next := p.round(ctx)
		if ctx.Err() != nil {
			return
		}
		timer.Reset(next)
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-timer.C:
		}
	}
}

// round takes one batch of every cache whose turn it is, and returns when
// the next round is due without a wake-up.
func (p *Publisher) round(ctx context.Context) time.Duration {
	next := time.Hour
	p.mu.Lock()
	names := slices.Collect(maps.Keys(p.targets))
	p.mu.Unlock()
	for _, name := range names {
		p.mu.Lock()
		t := p.targets[name]
		p.mu.Unlock()
		if t == nil || t.Bucket == nil || len(t.KeyFiles) == 0 {
			// Nothing is uploaded unsigned: a narinfo in the bucket is
			// never uploaded again.
			continue
		}
		if wait := time.Until(t.retryAt); wait > 0 {
			next = min(next, wait)
			continue
		}
		p.batch.Lock()
		more, err := p.publishBatch(ctx, name, t)
		p.batch.Unlock()
		if ctx.Err() != nil {
			return 0
		}
		p.mu.Lock()
		before := t.stats.Err
		if err != nil {
			t.stats.Err = err.Error()
			t.stats.Failures++
			t.retryAt = time.Now().Add(publishRetry.Delay(t.stats.Failures))
			next = min(next, publishRetry.Delay(t.stats.Failures))
		} else {
			t.stats.Err, t.stats.Failures = "", 0
		}
		p.mu.Unlock()
		if err != nil {
			p.log.Warn("publish to cache failed; retrying later", zap.String("cache", name), zap.Error(err))
		}
		if (err != nil) != (before != "") {
			p.changed()
		}
		if more > 0 {
			next = 0
		}
	}
	return next
}

// publishBatch uploads the closures of one batch of the queue of cache
// and dequeues them; it returns how many paths remain queued after it,
// -1 when the queue was empty.
func (p *Publisher) publishBatch(ctx context.Context, cache string, t *pubTarget) (int, error) {
	q := queueName(cache)
	items, total, err := p.queue.Queued(q, batch)
	if err != nil || len(items) == 0 {
		return -1, err
	}
	queued := items
	items, err = p.outputsOf(ctx, cache, items)
	if err != nil {
		return total, err
	}
	infos, err := p.nix.ClosureInfos(ctx, items)
	if err != nil {
		// One path gone from the store (collected) fails the whole
		// query: ask for each, and drop the ones that are gone.
		var valid []string
		for _, it := range items {
			if _, err := p.nix.ClosureInfos(ctx, []string{it}); err == nil {
				valid = append(valid, it)
			} else if strings.Contains(err.Error(), "is not valid") {
				p.log.Info("not publishing a path that is no longer in the store", zap.String("cache", cache), zap.String("path", it))
			} else {
				return total, err
			}
		}
		items = valid
		if len(items) == 0 {
			return total - len(queued), p.queue.Dequeue(q, queued)
		}
		if infos, err = p.nix.ClosureInfos(ctx, items); err != nil {
			return total, err
		}
	}
	if len(t.KeyFiles) == 0 {
		return total, errors.New("no signing key to sign with")
	}
	keys := make([]nix.SecretKey, 0, len(t.KeyFiles))
	for _, f := range t.KeyFiles {
		k, err := nix.ReadSecretKeyFile(f)
		if err != nil {
			return total, fmt.Errorf("the signing key: %w", err)
		}
		keys = append(keys, k)
	}
	p.mu.Lock()
	infoDone := t.infoDone
	p.mu.Unlock()
	if !infoDone {
		if err := p.cacheInfo(ctx, t.Bucket); err != nil {
			return total, err
		}
		p.mu.Lock()
		t.infoDone = true
		p.mu.Unlock()
	}
	for _, info := range infos {
		h := nix.HashPart(info.Path)
		if t.known[h] {
			continue
		}
		_, err := t.Bucket.Size(ctx, h+".narinfo")
		switch {
		case err == nil:
			p.count(t, func(s *PublishStats) { s.Present++ })
		case errors.Is(err, ErrNotFound):
			if err := p.upload(ctx, t.Bucket, info, keys); err != nil {
				return total, fmt.Errorf("upload %s: %w", info.Path, err)
			}
			p.count(t, func(s *PublishStats) { s.Uploaded++ })
		default:
			return total, err
		}
		if len(t.known) > 1<<20 {
			clear(t.known)
		}
		t.known[h] = true
	}
	if err := p.queue.Dequeue(q, queued); err != nil {
		return total, err
	}
	return total - len(queued), nil
}

// outputsOf replaces the derivations among items (queued by the hook of a
// Nix that gives it no OUT_PATHS) with their outputs; a derivation gone
// from the store is dropped.
func (p *Publisher) outputsOf(ctx context.Context, cache string, items []string) ([]string, error) {
	var paths, drvs []string
	for _, it := range items {
		if strings.HasSuffix(it, ".drv") {
			drvs = append(drvs, it)
		} else {
			paths = append(paths, it)
		}
	}
	if len(drvs) == 0 {
		return paths, nil
	}
	outs, err := p.nix.Outputs(ctx, drvs)
	if err == nil {
		return append(paths, outs...), nil
	}
	for _, d := range drvs {
		outs, err := p.nix.Outputs(ctx, []string{d})
		switch {
		case err == nil:
			paths = append(paths, outs...)
		case strings.Contains(err.Error(), "is not valid"), strings.Contains(err.Error(), "does not exist"):
			p.log.Info("not publishing the outputs of a derivation that is no longer in the store", zap.String("cache", cache), zap.String("derivation", d))
		default:
			return nil, err
		}
	}
	return paths, nil
}

func (p *Publisher) count(t *pubTarget, f func(*PublishStats)) {
	p.mu.Lock()
	f(&t.stats)
	p.mu.Unlock()
}

// cacheInfo puts the bucket's nix-cache-info unless it is there.
func (p *Publisher) cacheInfo(ctx context.Context, b *Bucket) error {
	_, err := b.Size(ctx, "nix-cache-info")
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	return b.Put(ctx, "nix-cache-info", strings.NewReader(cacheInfo), int64(len(cacheInfo)), "text/x-nix-cache-info")
}

// upload compresses the NAR of info into a temporary file, checking it
// against the store's NAR hash, and uploads it, then its narinfo.
func (p *Publisher) upload(ctx context.Context, b *Bucket, info nix.PathInfo, keys []nix.SecretKey) error {
	if err := os.MkdirAll(p.tmpDir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(p.tmpDir, "nar-*.zst")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	fileHash := sha256.New()
	counted := &countingWriter{w: io.MultiWriter(f, fileHash)}
	enc, err := zstd.NewWriter(counted, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	narHash := sha256.New()
	nar := &countingWriter{w: io.MultiWriter(enc, narHash)}
	if err := p.nix.Dump(ctx, info.Path, nar); err != nil {
		enc.Close()
		return err
	}
	if err := enc.Close(); err != nil {
		return err
	}
	want, err := nix.NormalizeNarHash(info.NarHash)
	if err != nil {
		return err
	}
	if got := sumText(narHash); got != want || uint64(nar.n) != info.NarSize {
		return fmt.Errorf("its NAR is %d bytes with hash %s, but the store says %d bytes with hash %s; run nix-store --verify --check-contents", nar.n, got, info.NarSize, want)
	}
	fh := sumText(fileHash)
	url := "nar/" + strings.TrimPrefix(fh, "sha256:") + ".nar.zst"
	ni, err := nix.NarInfoOf(info, url, "zstd", fh, uint64(counted.n))
	if err != nil {
		return err
	}
	for _, k := range keys {
		ni.AddSig(k)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := b.Put(ctx, url, f, counted.n, "application/x-nix-nar"); err != nil {
		return err
	}
	text := ni.Render()
	return b.Put(ctx, nix.HashPart(info.Path)+".narinfo", bytes.NewReader(text), int64(len(text)), "text/x-nix-narinfo")
}

func sumText(h hash.Hash) string { return nix.SHA256Text([32]byte(h.Sum(nil))) }

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	return n, err
}
