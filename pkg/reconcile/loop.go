package reconcile

import (
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixpeer/nixpeer/pkg/backoff"
	"go.uber.org/zap"
)

// Reconciler brings the host to its desired state once. It returns when
// the next pass is due without an event (0: at the resync).
type Reconciler interface {
	Reconcile(ctx context.Context) (time.Duration, error)
}

// Loop runs a Reconciler whenever it is triggered, when the pass before
// asked to run again, and at the resync. Triggers that come while a pass
// runs collapse into one more pass right after it.
type Loop struct {
	log     *zap.Logger
	rec     Reconciler
	trigger chan struct{} // holds at most one pending trigger
	jitter  func() float64
	resync  time.Duration

	busySince atomic.Int64 // unix nanoseconds; 0 while idle
	firstOnce sync.Once
	first     chan struct{}
}

// Retry is the wait after failed passes, jittered so that hosts that
// failed together do not retry together.
var Retry = backoff.Policy{Base: 100 * time.Millisecond, Cap: 2 * time.Minute}

// NewLoop returns a loop that resyncs every resync.
func NewLoop(log *zap.Logger, rec Reconciler, resync time.Duration) *Loop {
	return &Loop{log: log, rec: rec, resync: resync, trigger: make(chan struct{}, 1), jitter: rand.Float64, first: make(chan struct{})}
}

// Trigger asks for a reconcile; it never blocks.
func (l *Loop) Trigger(reason string) {
	l.log.Debug("reconcile triggered", zap.String("reason", reason))
	select {
	case l.trigger <- struct{}{}:
	default: // one is pending already
	}
}

// FirstDone is closed once the first reconcile has run, whatever its result.
func (l *Loop) FirstDone() <-chan struct{} { return l.first }

// Healthy reports whether the worker is idle or has been busy for less
// than maxBusy: the systemd watchdog pings only while it is. Long work
// (apply, signing, probes) runs beside the loop, so a pass is short.
func (l *Loop) Healthy(maxBusy time.Duration) bool {
	since := l.busySince.Load()
	return since == 0 || time.Since(time.Unix(0, since)) < maxBusy
}

// Run runs passes until ctx ends, the first one at once.
func (l *Loop) Run(ctx context.Context) {
	next := time.NewTimer(0)
	defer next.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.trigger:
		case <-next.C:
		}
		l.busySince.Store(time.Now().UnixNano())
		due, err := l.rec.Reconcile(ctx)
		l.busySince.Store(0)
		l.firstOnce.Do(func() { close(l.first) })
		if ctx.Err() != nil {
			return
		}
		wait := l.resync
		if due > 0 && due < wait {
			wait = due
		}
		if err != nil {
			failures++
			// Work that is due sooner (a probe, a hold-down's end) is not
			// held up by an unrelated failure.
			wait = min(wait, Retry.Jittered(failures, l.jitter()))
			l.log.Warn("reconcile failed; will retry", zap.Error(err), zap.Duration("retryIn", wait), zap.Int("failures", failures))
		} else {
			failures = 0
		}
		next.Reset(wait)
	}
}
