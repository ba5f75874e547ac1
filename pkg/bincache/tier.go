package bincache

import (
	"maps"
	"slices"
	"sync"

	"github.com/nixpeer/nixpeer/pkg/desired"
)

// Access is how a host reaches one cache: where, and its credentials.
type Access struct {
	Loc   desired.S3Bucket
	Creds Credentials
}

// PublishTarget is a cache a host publishes to; Access is nil while the
// host has no usable credentials (paths are queued meanwhile).
type PublishTarget struct {
	Access   *Access
	KeyFiles []string
}

// Config is what the tier does on a host: the reader's address and the
// caches it reads, the caches the host publishes to, and the paths
// published once when a cache is first published to by this agent.
type Config struct {
	Listen string
	// Read are the caches read, by name; nil for one without usable
	// credentials (its lookups are misses).
	Read    map[string]*Access
	Publish map[string]PublishTarget
	Initial []string
}

// Tier is a host's binary-cache tier: its reader and its publisher,
// configured by the reconcile loop.
type Tier struct {
	Reader    *Reader
	Publisher *Publisher

	mu      sync.Mutex
	buckets map[string]openBucket
	// initial are the caches whose initial paths were queued;
	// publishing those published to now.
	initial, publishing map[string]bool
}

type openBucket struct {
	access Access
	bucket *Bucket
}

// NewTier returns a tier of r and p.
func NewTier(r *Reader, p *Publisher) *Tier {
	return &Tier{Reader: r, Publisher: p, buckets: map[string]openBucket{}, initial: map[string]bool{}, publishing: map[string]bool{}}
}

// Ensure makes the tier do as c says. A cache whose access is unchanged
// keeps its bucket, and with it its health and what was seen in it.
func (t *Tier) Ensure(c Config) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	// open returns the bucket of a, nil for nil.
	open := func(name string, a *Access) (*Bucket, error) {
		if a == nil {
			return nil, nil
		}
		if b, ok := t.buckets[name]; ok && b.access == *a {
			return b.bucket, nil
		}
		b, err := Open(name, a.Loc, a.Creds)
		if err != nil {
			return nil, err
		}
		t.buckets[name] = openBucket{*a, b}
		return b, nil
	}
	read := map[string]*Bucket{}
	for _, name := range slices.Sorted(maps.Keys(c.Read)) {
		b, err := open(name, c.Read[name])
		if err != nil {
			return err
		}
		read[name] = b
	}
	publish := map[string]Target{}
	for _, name := range slices.Sorted(maps.Keys(c.Publish)) {
		b, err := open(name, c.Publish[name].Access)
		if err != nil {
			return err
		}
		publish[name] = Target{Bucket: b, KeyFiles: c.Publish[name].KeyFiles}
	}
	for name := range t.buckets {
		if read[name] == nil && publish[name].Bucket == nil {
			delete(t.buckets, name)
		}
	}
	clear(t.publishing)
	for name, pt := range publish {
		t.publishing[name] = pt.Bucket != nil
	}
	t.Reader.Configure(read)
	t.Publisher.Configure(publish)
	if err := t.Reader.Listen(c.Listen); err != nil {
		return err
	}
	fresh := false
	for name := range publish {
		fresh = fresh || !t.initial[name]
	}
	if fresh && len(c.Initial) > 0 {
		if err := t.Publisher.Enqueue(c.Initial); err != nil {
			return err
		}
	}
	for name := range publish {
		t.initial[name] = true
	}
	return nil
}

// Health returns what the reader knows of each cache it reads.
func (t *Tier) Health() map[string]Health { return t.Reader.Health() }

// Publishing returns what the publisher did for each cache.
func (t *Tier) Publishing() map[string]PublishStats { return t.Publisher.Stats() }
