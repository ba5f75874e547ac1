// Package workqueue is the reconcile loop's queue, after client-go's: a key
// added again before it is processed is processed once; a key added while it
// is being processed is processed again afterwards; failures are retried with
// per-key exponential backoff and a cap.
package workqueue

import (
	"sync"
	"time"

	"github.com/nixpeer/nixpeer/pkg/clock"
)

// Queue is a deduplicating FIFO of string keys.
type Queue struct {
	// Jitter, when set, returns a number in [0, 1) that places each
	// retry in [backoff/2, backoff): hosts that failed together do not
	// retry together. Set it before use.
	Jitter func() float64

	clock      clock.Clock
	base, max  time.Duration
	mu         sync.Mutex
	cond       *sync.Cond
	order      []string
	dirty      map[string]bool
	processing map[string]bool
	failures   map[string]int
	timers     map[string]pending
	shutdown   bool
}

// New returns a queue whose retries wait base·2^n, at most max.
func New(c clock.Clock, base, max time.Duration) *Queue {
	q := &Queue{
		clock: c, base: base, max: max,
		dirty:      map[string]bool{},
		processing: map[string]bool{},
		failures:   map[string]int{},
		timers:     map[string]pending{},
	}
	q.cond = sync.NewCond(&q.mu)
	return q
}

// Add enqueues key now.
func (q *Queue) Add(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.addLocked(key)
}

func (q *Queue) addLocked(key string) {
	if q.shutdown || q.dirty[key] {
		return
	}
	q.dirty[key] = true
	if q.processing[key] {
		return // Done puts it back
	}
	q.order = append(q.order, key)
	q.cond.Signal()
}

// pending is a delayed add.
type pending struct {
	due   time.Time
	timer clock.Timer
}

// AddAfter enqueues key after d. Of two delayed adds of one key, the sooner
// wins.
func (q *Queue) AddAfter(key string, d time.Duration) {
	if d <= 0 {
		q.Add(key)
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.shutdown {
		return
	}
	due := q.clock.Now().Add(d)
	if p, ok := q.timers[key]; ok {
		if !p.due.After(due) {
			return
		}
		p.timer.Stop()
	}
	var t clock.Timer
	t = q.clock.AfterFunc(d, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		if p, ok := q.timers[key]; ok && p.timer == t {
			delete(q.timers, key)
		}
		q.addLocked(key)
	})
	q.timers[key] = pending{due: due, timer: t}
}

// AddRateLimited enqueues key after its backoff, which doubles with each
// failure since the last Forget. It returns the wait.
func (q *Queue) AddRateLimited(key string) time.Duration {
	q.mu.Lock()
	n := q.failures[key]
	q.failures[key] = n + 1
	q.mu.Unlock()
	d := q.base
	for i := 0; i < n && d < q.max; i++ {
		d *= 2
	}
	if d > q.max {
		d = q.max
	}
	if q.Jitter != nil {
		d = d/2 + time.Duration(q.Jitter()*float64(d/2))
	}
	q.AddAfter(key, d)
	return d
}

// Forget resets key's backoff after a success.
func (q *Queue) Forget(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.failures, key)
}

// Failures is how many times key failed since the last Forget.
func (q *Queue) Failures(key string) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.failures[key]
}

// Get blocks until a key is ready or the queue shuts down (then ok is false).
// The caller must call Done(key) when it has processed it.
func (q *Queue) Get() (key string, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.order) == 0 && !q.shutdown {
		q.cond.Wait()
	}
	if len(q.order) == 0 {
		return "", false
	}
	key, q.order = q.order[0], q.order[1:]
	q.processing[key] = true
	delete(q.dirty, key)
	return key, true
}

// Done marks key processed; if it was added meanwhile, it is queued again.
func (q *Queue) Done(key string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.processing, key)
	if q.dirty[key] {
		q.order = append(q.order, key)
		q.cond.Signal()
	}
}

// ShutDown stops the queue: pending timers are cancelled and Get returns
// false once the queue is drained.
func (q *Queue) ShutDown() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.shutdown = true
	for k, p := range q.timers {
		p.timer.Stop()
		delete(q.timers, k)
	}
	q.cond.Broadcast()
}

// Len is the number of keys waiting.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.order)
}
