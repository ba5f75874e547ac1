// Package state keeps the agent's observed state in bbolt, so that a restart
// picks up where the last run left off: the desired generation, the last good
// desired-state file, the last status, a bounded history of reconcile events,
// and what the agent trusts of its peers.
package state

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"github.com/nixpeer/nixpeer/pkg/safefile"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// MaxEvents bounds the reconcile history; older events are pruned in the
// same transaction that appends a new one.
const MaxEvents = 256

var (
	bucketMeta   = []byte("meta")
	bucketEvents = []byte("events")
	bucketPeers  = []byte("peers")
	bucketQueues = []byte("queues")

	keyGeneration = []byte("generation")
	keyDesired    = []byte("desired")
	keyStatus     = []byte("status")
)

// ErrLocked means another process holds the database.
var ErrLocked = errors.New("state database is held by another process")

// Store is the agent's bbolt database.
type Store struct {
	db *bolt.DB
}

// Desired is the last desired-state file that parsed and validated.
type Desired struct {
	Generation int64  `json:"generation"`
	Hash       string `json:"hash"`
	File       string `json:"file"`
	Content    []byte `json:"content"`
}

// Event is one entry of the reconcile history.
type Event struct {
	Time       time.Time `json:"time"`
	Generation int64     `json:"generation"`
	// Reason and Message are the Ready condition's after the reconcile.
	Reason  string `json:"reason"`
	Message string `json:"message"`
	// Changes says what changed, in words (see status.Changes).
	Changes []string `json:"changes,omitempty"`
	// Wrote lists the files the reconcile wrote.
	Wrote []string `json:"wrote,omitempty"`
}

// Opened says what Open found.
type Opened struct {
	// New is set when there was no database, or only an empty file:
	// nothing was known.
	New bool
	// Damaged says why the database could not be used; it was moved to
	// MovedTo and a new one started (New is then set too).
	Damaged string
	MovedTo string
}

// Open opens (or creates) the database at path, waiting at most timeout for
// another process to let go of it. It checks an existing database before
// use (every page, with bbolt's consistency check; a fault on a truncated
// file or a panic of bbolt on a bad page is caught): a damaged one is
// moved aside as path.damaged-TIME and a new one is started, so that a
// damaged file is never a crash loop. Opened says what happened.
func Open(path string, timeout time.Duration) (*Store, Opened, error) {
	if err := atomicfile.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, Opened{}, fmt.Errorf("create state directory: %w", err)
	}
	var opened Opened
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		opened.New = true
	case err != nil:
		return nil, opened, fmt.Errorf("open state database %s: %w", path, err)
	case !st.Mode().IsRegular():
		opened.Damaged = fmt.Sprintf("it is %s", safefile.Kind(st.Mode()))
	case st.Size() == 0:
		opened.New = true
	}
	if opened.Damaged == "" {
		db, damage, err := openChecked(path, timeout)
		if err != nil {
			return nil, opened, err
		}
		if damage == "" {
			return newStore(db, path, opened)
		}
		opened.Damaged = damage
	}
	opened.New = true
	opened.MovedTo = fmt.Sprintf("%s.damaged-%s", path, time.Now().UTC().Format("20060102T150405Z"))
	if err := os.Rename(path, opened.MovedTo); err != nil {
		return nil, opened, fmt.Errorf("state database %s is damaged (%s) and cannot be moved aside: %w", path, opened.Damaged, err)
	}
	db, damage, err := openChecked(path, timeout)
	if err != nil {
		return nil, opened, err
	}
	if damage != "" {
		return nil, opened, fmt.Errorf("a new state database %s is damaged at once: %s", path, damage)
	}
	return newStore(db, path, opened)
}

// openChecked opens the database and checks it. A damaged database gives
// a reason and no error; its handle is left open if bbolt broke down
// half-way (closing it could wait for a lock the breakdown holds).
func openChecked(path string, timeout time.Duration) (db *bolt.DB, damage string, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			db, damage, err = nil, fmt.Sprintf("bbolt broke down reading it: %v", r), nil
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	switch {
	case errors.Is(err, berrors.ErrTimeout):
		return nil, "", fmt.Errorf("open %s: %w (is another nixpeer agent running with the same state directory?)", path, ErrLocked)
	case err != nil:
		return nil, fmt.Sprintf("it does not open: %v", err), nil
	}
	var problems []string
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			if len(problems) < 3 {
				problems = append(problems, err.Error())
			}
		}
		return nil
	})
	if err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		db.Close()
		return nil, "its consistency check fails: " + strings.Join(problems, "; "), nil
	}
	return db, "", nil
}

func newStore(db *bolt.DB, path string, opened Opened) (*Store, Opened, error) {
	err := db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketMeta, bucketEvents, bucketPeers, bucketQueues} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, opened, fmt.Errorf("create buckets in %s: %w", path, err)
	}
	return &Store{db: db}, opened, nil
}

// Close releases the database.
func (s *Store) Close() error { return s.db.Close() }

// NextDesired returns the record of a desired state that parsed and
// validated, with its generation: the stored one when the meaning (hash)
// is unchanged, one more when it changed. It writes nothing; isNew reports
// whether the record differs from the stored one, and SaveStatus then
// stores it, with the status that describes it, in one transaction.
func (s *Store) NextDesired(file string, content []byte, hash string) (d Desired, isNew bool, err error) {
	var gen uint64
	var cur *Desired
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		gen = u64(b.Get(keyGeneration))
		if raw := b.Get(keyDesired); raw != nil {
			return json.Unmarshal(raw, &cur)
		}
		return nil
	})
	if err != nil {
		return Desired{}, false, fmt.Errorf("read last good desired state: %w", err)
	}
	if cur != nil && cur.Hash == hash {
		return *cur, false, nil
	}
	return Desired{Generation: int64(gen) + 1, Hash: hash, File: file, Content: content}, true, nil
}

// Desired returns the last good desired state, or nil if there is none.
func (s *Store) Desired() (*Desired, error) {
	var d *Desired
	if _, err := s.getJSON(bucketMeta, keyDesired, &d); err != nil {
		return nil, fmt.Errorf("read last good desired state: %w", err)
	}
	return d, nil
}

// Pass is what one reconcile pass stores.
type Pass struct {
	// Records are the agent's own records to put, by key (see Get), such
	// as which Nix settings were last applied.
	Records map[string]any
	// Status is the host's status; nil leaves the stored one.
	Status *status.Status
	// Event is appended to the history (pruned to MaxEvents); nil for
	// none.
	Event *Event
	// Desired is a new desired state (see NextDesired); nil for none.
	Desired *Desired
}

// Commit stores what a pass stores, in one transaction: one commit.
func (s *Store) Commit(p Pass) error {
	type kv struct{ key, raw []byte } // a nil key: the event
	var puts []kv
	var err error
	enc := func(key []byte, v any, what string) {
		if err != nil {
			return
		}
		raw, e := json.Marshal(v)
		if e != nil {
			err = fmt.Errorf("save: encode %s: %w", what, e)
		}
		puts = append(puts, kv{key, raw})
	}
	for _, k := range slices.Sorted(maps.Keys(p.Records)) {
		enc([]byte("rec/"+k), p.Records[k], k)
	}
	if p.Status != nil {
		enc(keyStatus, p.Status, "status")
	}
	if p.Desired != nil {
		enc(keyDesired, p.Desired, "desired state")
		puts = append(puts, kv{keyGeneration, be(uint64(p.Desired.Generation))})
	}
	if p.Event != nil {
		enc(nil, p.Event, "event")
	}
	if err != nil {
		return err
	}
	return wrap(s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketMeta)
		for _, p := range puts {
			if p.key == nil {
				return appendEvent(tx, p.raw) // last
			}
			if err := b.Put(p.key, p.raw); err != nil {
				return err
			}
		}
		return nil
	}), "save")
}

// SaveStatus stores the host's last status, the new desired state it
// describes (d, when not nil: see NextDesired), and appends ev to the
// history, in one commit.
func (s *Store) SaveStatus(st status.Status, ev Event, d *Desired) error {
	return s.Commit(Pass{Status: &st, Event: &ev, Desired: d})
}

// LoadStatus returns the last saved status, and false if there is none.
func (s *Store) LoadStatus() (status.Status, bool, error) {
	var st *status.Status
	if _, err := s.getJSON(bucketMeta, keyStatus, &st); err != nil {
		return status.Status{}, false, fmt.Errorf("load status: %w", err)
	}
	if st == nil {
		return status.Status{}, false, nil
	}
	return *st, true, nil
}

// Get decodes the record under key into v and reports whether there was one.
func (s *Store) Get(key string, v any) (bool, error) {
	found, err := s.getJSON(bucketMeta, []byte("rec/"+key), v)
	return found, wrap(err, "load %s", key)
}

// appendEvent adds the encoded event v to the history and prunes it to
// MaxEvents, in the same transaction.
func appendEvent(tx *bolt.Tx, v []byte) error {
	b := tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	if err := b.Put(be(seq), v); err != nil {
		return err
	}
	c := b.Cursor()
	for n := b.Stats().KeyN + 1 - MaxEvents; n > 0; n-- {
		k, _ := c.First()
		if k == nil {
			break
		}
		if err := c.Delete(); err != nil {
			return err
		}
	}
	return nil
}

// Events returns up to n of the newest events, oldest first.
func (s *Store) Events(n int) ([]Event, error) {
	var out []Event
	err := s.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Last(); k != nil && len(out) < n; k, v = c.Prev() {
			var e Event
			if err := json.Unmarshal(v, &e); err != nil {
				return fmt.Errorf("event %d: %w", u64(k), err)
			}
			out = append(out, e)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	slices.Reverse(out)
	return out, nil
}

// PutPeer stores v (JSON-encoded) as what the agent knows of peer name.
func (s *Store) PutPeer(name string, v any) error {
	raw, err := json.Marshal(v)
	if err == nil {
		err = s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPeers).Put([]byte(name), raw) })
	}
	return wrap(err, "save peer %s", name)
}

// GetPeer decodes what is stored of peer name into v and reports whether
// there was anything.
func (s *Store) GetPeer(name string, v any) (bool, error) {
	found, err := s.getJSON(bucketPeers, []byte(name), v)
	return found, wrap(err, "load peer %s", name)
}

// DeletePeer forgets peer name.
func (s *Store) DeletePeer(name string) error {
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketPeers).Delete([]byte(name)) })
	return wrap(err, "delete peer %s", name)
}

// Enqueue adds items to the named queue (a cache's uploads), each once;
// an item queued already keeps its place.
func (s *Store) Enqueue(queue string, items []string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketQueues).CreateBucketIfNotExists([]byte(queue))
		if err != nil {
			return err
		}
		for _, it := range items {
			if b.Get([]byte(it)) == nil {
				if err := b.Put([]byte(it), []byte{}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return wrap(err, "queue %d items for %s", len(items), queue)
}

// Queued returns at most n items of the named queue, in key order, and
// how many it holds in all.
func (s *Store) Queued(queue string, n int) (items []string, total int, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketQueues).Bucket([]byte(queue))
		if b == nil {
			return nil
		}
		total = b.Stats().KeyN
		c := b.Cursor()
		for k, _ := c.First(); k != nil && len(items) < n; k, _ = c.Next() {
			items = append(items, string(k))
		}
		return nil
	})
	if err != nil {
		return nil, 0, fmt.Errorf("read the queue of %s: %w", queue, err)
	}
	return items, total, nil
}

// Dequeue removes items from the named queue.
func (s *Store) Dequeue(queue string, items []string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketQueues).Bucket([]byte(queue))
		if b == nil {
			return nil
		}
		for _, it := range items {
			if err := b.Delete([]byte(it)); err != nil {
				return err
			}
		}
		return nil
	})
	return wrap(err, "dequeue %d items of %s", len(items), queue)
}

// getJSON decodes inside the transaction: json.Unmarshal copies what it
// keeps, so nothing refers to bbolt's memory after the transaction ends.
// found is false on failure.
func (s *Store) getJSON(bucket, key []byte, v any) (found bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucket).Get(key)
		if raw == nil {
			return nil
		}
		found = true
		return json.Unmarshal(raw, v)
	})
	return found && err == nil, err
}

// wrap returns nil for a nil err, else err after what format says.
func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
}

func be(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}
