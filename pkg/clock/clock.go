// Package clock is the time source the agent's parts are given, so that
// tests can drive time (with testing/synctest or a fake) instead of sleeping.
//
// A Clock only tells the time and runs functions later; Since, NewTimer
// and NewTicker build the rest on those two methods, so that any Clock
// has them.
package clock

import (
	"sync"
	"time"
)

// Clock tells the time and runs functions later.
type Clock interface {
	Now() time.Time
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a pending AfterFunc call.
type Timer interface {
	Stop() bool
}

// Real is the wall clock.
type Real struct{}

// Now returns the current time.
func (Real) Now() time.Time { return time.Now() }

// AfterFunc calls f in its own goroutine after d.
func (Real) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// Since returns the time elapsed on c since t.
func Since(c Clock, t time.Time) time.Duration { return c.Now().Sub(t) }

// ChanTimer sends the time on C once, after its duration on its clock,
// like a time.Timer that is never reset.
type ChanTimer struct {
	C <-chan time.Time
	t Timer
}

// NewTimer returns a ChanTimer that fires after d on c.
func NewTimer(c Clock, d time.Duration) *ChanTimer {
	ch := make(chan time.Time, 1)
	return &ChanTimer{C: ch, t: c.AfterFunc(d, func() { ch <- c.Now() })}
}

// Stop keeps the timer from firing; it reports whether it did so (false
// when the timer fired already).
func (t *ChanTimer) Stop() bool { return t.t.Stop() }

// Ticker sends the time on C every period of its clock. Like
// time.Ticker, it drops ticks for a reader that falls behind: C holds at
// most one.
type Ticker struct {
	C <-chan time.Time

	c      Clock
	d      time.Duration
	ch     chan time.Time
	mu     sync.Mutex
	t      Timer
	closed bool
}

// NewTicker returns a Ticker whose first tick comes d from now on c, and
// each next one d after the previous. d must be positive.
func NewTicker(c Clock, d time.Duration) *Ticker {
	if d <= 0 {
		panic("clock: non-positive interval for NewTicker")
	}
	ch := make(chan time.Time, 1)
	t := &Ticker{C: ch, c: c, d: d, ch: ch}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.t = c.AfterFunc(d, t.tick)
	return t
}

func (t *Ticker) tick() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	select {
	case t.ch <- t.c.Now():
	default:
	}
	t.t = t.c.AfterFunc(t.d, t.tick)
}

// Stop ends the ticks; C is not closed.
func (t *Ticker) Stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closed = true
	t.t.Stop()
}
