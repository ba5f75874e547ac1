// Package backoff is the agent's one retry policy: a wait that doubles
// with each failure in a row from Base up to Cap, spread by jitter where
// many hosts could otherwise retry together.
package backoff

import "time"

// Policy is an exponential backoff, capped.
type Policy struct {
	// Base is the wait after the first failure.
	Base time.Duration
	// Cap bounds every wait; below Base it is Base.
	Cap time.Duration
}

// Delay returns the wait after the n-th failure in a row (n ≥ 1; less
// counts as 1): min(Base·2^(n-1), Cap).
func (p Policy) Delay(n int) time.Duration {
	limit := max(p.Cap, p.Base)
	d := p.Base
	for i := 1; i < n && d < limit; i++ {
		d *= 2
	}
	return min(d, limit)
}

// Jittered returns a wait in [d/2, d) for d = Delay(n), placed by r in
// [0, 1) (values outside are clamped).
func (p Policy) Jittered(n int, r float64) time.Duration {
	d := p.Delay(n)
	if d <= 0 {
		return 0
	}
	r = min(max(r, 0), 1)
	half := d / 2
	return min(half+time.Duration(r*float64(d-half)), d-1)
}
