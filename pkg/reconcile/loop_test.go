package reconcile

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/zap"
)

// scripted fails its first failures calls and records when each call ran.
type scripted struct {
	mu       sync.Mutex
	failures int
	calls    []time.Time
	block    chan struct{} // when non-nil, each call waits on it
	requeue  time.Duration // what a successful call returns
}

func (s *scripted) Reconcile(ctx context.Context) (time.Duration, error) {
	if s.block != nil {
		<-s.block
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, time.Now())
	if len(s.calls) <= s.failures {
		return 0, errors.New("boom")
	}
	return s.requeue, nil
}

func (s *scripted) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

func TestFailuresBackOffExponentiallyThenResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &scripted{failures: 4}
		ctx, cancel := context.WithCancel(context.Background())
		l := NewLoop(zap.NewNop(), rec, time.Hour)
		l.jitter = func() float64 { return 0 } // the bottom of each range: exact times
		start := time.Now()
		go l.Run(ctx)
		time.Sleep(10 * time.Minute) // fake time: the bubble advances it at once
		synctest.Wait()
		cancel()
		synctest.Wait()

		// start; retries after 50ms, 100ms, 200ms, 400ms (the bottom of
		// [d/2, d) for d = 100ms·2^n); then success and no more calls
		// within the hour of resync.
		want := []time.Duration{0, 50 * time.Millisecond, 150 * time.Millisecond, 350 * time.Millisecond, 750 * time.Millisecond}
		if rec.count() != len(want) {
			t.Fatalf("%d calls, want %d", rec.count(), len(want))
		}
		for i, w := range want {
			if got := rec.calls[i].Sub(start); got != w {
				t.Errorf("call %d at %v, want %v", i, got, w)
			}
		}
	})
}

func TestResyncTimerIsTheSafetyNet(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &scripted{}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		l := NewLoop(zap.NewNop(), rec, time.Minute)
		go l.Run(ctx)
		time.Sleep(3*time.Minute + time.Second)
		synctest.Wait()
		if n := rec.count(); n != 4 {
			t.Fatalf("%d reconciles in 3m with a 1m resync, want 4 (start + 3)", n)
		}
	})
}

func TestTriggersDuringAReconcileCollapseIntoOne(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &scripted{block: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		l := NewLoop(zap.NewNop(), rec, time.Hour)
		go l.Run(ctx)
		synctest.Wait() // the first reconcile is running (blocked)
		if !l.Healthy(time.Minute) {
			t.Fatal("a reconcile running for no time is unhealthy")
		}
		for i := 0; i < 10; i++ {
			l.Trigger("burst")
		}
		rec.block <- struct{}{}
		rec.block <- struct{}{}
		synctest.Wait()
		select {
		case <-l.FirstDone():
		default:
			t.Fatal("FirstDone not closed after the first reconcile")
		}
		if n := rec.count(); n != 2 {
			t.Fatalf("%d reconciles, want 2: the first and one for the burst", n)
		}
		time.Sleep(2 * time.Minute) // the worker is idle, so it stays healthy
		if !l.Healthy(time.Minute) {
			t.Fatal("an idle loop is unhealthy")
		}
		l.Trigger("stuck")
		synctest.Wait()
		time.Sleep(2 * time.Minute) // now a reconcile is stuck for 2m
		if l.Healthy(time.Minute) {
			t.Fatal("a reconcile stuck for 2m counts as healthy with a 1m watchdog")
		}
		close(rec.block)
	})
}

func TestRequeueComesBeforeTheResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := &scripted{requeue: 10 * time.Second}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		l := NewLoop(zap.NewNop(), rec, time.Hour)
		go l.Run(ctx)
		time.Sleep(35 * time.Second)
		synctest.Wait()
		if n := rec.count(); n != 4 {
			t.Fatalf("%d reconciles in 35s with a 10s requeue, want 4 (start + 3)", n)
		}
	})
}
