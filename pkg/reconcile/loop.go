package reconcile

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/pkg/clock"
	"github.com/nixpeer/nixpeer/pkg/workqueue"
)

// hostKey is the queue key of the whole-host reconcile: every trigger
// enqueues it, so bursts of triggers collapse into one pass.
const hostKey = "host"

// Reconciler brings the host to its desired state once. It returns when
// the next pass is due without an event (0: at the resync).
type Reconciler interface {
	Reconcile(ctx context.Context) (time.Duration, error)
}

// Loop runs a Reconciler from a work queue.
type Loop struct {
	log    *zap.Logger
	clock  clock.Clock
	rec    Reconciler
	queue  *workqueue.Queue
	resync time.Duration

	busySince atomic.Int64 // unix nanoseconds; 0 while idle
	firstOnce sync.Once
	first     chan struct{}
}

// Backoff bounds of failed reconciles: each retry waits a random time in
// [d/2, d) for d = BackoffBase·2^n, at most BackoffMax.
const (
	BackoffBase = 100 * time.Millisecond
	BackoffMax  = 2 * time.Minute
)

// NewLoop returns a loop that resyncs every resync.
func NewLoop(log *zap.Logger, c clock.Clock, rec Reconciler, resync time.Duration) *Loop {
	q := workqueue.New(c, BackoffBase, BackoffMax)
	q.Jitter = rand.Float64
	return &Loop{log: log, clock: c, rec: rec, resync: resync, queue: q, first: make(chan struct{})}
}

// Trigger asks for a reconcile; it never blocks.
func (l *Loop) Trigger(reason string) {
	l.log.Debug("reconcile triggered", zap.String("reason", reason))
	l.queue.Add(hostKey)
}

// FirstDone is closed once the first reconcile has run, whatever its result.
func (l *Loop) FirstDone() <-chan struct{} { return l.first }

// Healthy reports whether the worker is idle or has been busy for less
// than maxBusy: the systemd watchdog pings only while it is. Long work
// (apply, signing, probes) runs beside the loop, so a pass is short.
func (l *Loop) Healthy(maxBusy time.Duration) bool {
	since := l.busySince.Load()
	return since == 0 || l.clock.Now().Sub(time.Unix(0, since)) < maxBusy
}

// Run processes the queue until ctx ends. It triggers the first reconcile.
func (l *Loop) Run(ctx context.Context) {
	go func() {
		<-ctx.Done()
		l.queue.ShutDown()
	}()
	l.Trigger("start")
	for {
		key, ok := l.queue.Get()
		if !ok {
			return
		}
		l.busySince.Store(l.clock.Now().UnixNano())
		next, err := l.rec.Reconcile(ctx)
		l.busySince.Store(0)
		l.firstOnce.Do(func() { close(l.first) })
		switch {
		case err != nil && ctx.Err() == nil:
			wait := l.queue.AddRateLimited(key)
			if next > 0 && next < wait {
				// Work that is due sooner (a probe, a hold-down's end)
				// is not held up by an unrelated failure.
				l.queue.AddAfter(key, next)
				wait = next
			}
			l.log.Warn("reconcile failed; will retry", zap.Error(err), zap.Duration("retryIn", wait),
				zap.Int("failures", l.queue.Failures(key)))
		default:
			l.queue.Forget(key)
			if next <= 0 || next > l.resync {
				next = l.resync
			}
			l.queue.AddAfter(key, next)
		}
		l.queue.Done(key)
	}
}
