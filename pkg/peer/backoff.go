package peer

import "time"

// Defaults of Backoff.
const (
	DefaultBackoffBase = 200 * time.Millisecond
	DefaultBackoffCap  = 30 * time.Second
	DefaultResetAfter  = 30 * time.Second
)

// Backoff is Watch's reconnect policy: exponential, capped and jittered.
// Zero fields take the defaults.
type Backoff struct {
	// Base is the longest wait after the first failure.
	Base time.Duration
	// Cap bounds every wait.
	Cap time.Duration
	// ResetAfter: a connection that lived this long ends the run of
	// failures, as does one that delivered a document.
	ResetAfter time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Base <= 0 {
		b.Base = DefaultBackoffBase
	}
	if b.Cap <= 0 {
		b.Cap = DefaultBackoffCap
	}
	if b.Cap < b.Base {
		b.Cap = b.Base
	}
	if b.ResetAfter <= 0 {
		b.ResetAfter = DefaultResetAfter
	}
	return b
}

// Delay returns the wait after the n-th failure in a row (n ≥ 1): with
// d = min(Base·2^(n-1), Cap), a value in [d/2, d) chosen by r in [0, 1).
func (b Backoff) Delay(n int, r float64) time.Duration {
	b = b.withDefaults()
	d := b.Base
	for i := 1; i < n && d < b.Cap; i++ {
		d *= 2
	}
	d = min(d, b.Cap)
	r = min(max(r, 0), 1)
	half := d / 2
	return min(half+time.Duration(r*float64(d-half)), d-1)
}

// Resets reports whether a connection that lived for lived, and delivered
// a document or not, ends the run of failures.
func (b Backoff) Resets(lived time.Duration, delivered bool) bool {
	return delivered || lived >= b.withDefaults().ResetAfter
}
