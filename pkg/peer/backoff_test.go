package peer

import (
	"testing"
	"time"
)

func TestBackoffDelay(t *testing.T) {
	b := Backoff{} // the defaults: 200ms doubling to 30s
	tests := []struct {
		n        int
		min, max time.Duration // r = 0 gives min; r just below 1 gives nearly max
	}{
		{1, 100 * time.Millisecond, 200 * time.Millisecond},
		{2, 200 * time.Millisecond, 400 * time.Millisecond},
		{3, 400 * time.Millisecond, 800 * time.Millisecond},
		{8, 12800 * time.Millisecond, 25600 * time.Millisecond},
		{9, 15 * time.Second, 30 * time.Second}, // capped
		{10, 15 * time.Second, 30 * time.Second},
		{1000, 15 * time.Second, 30 * time.Second}, // no overflow
	}
	for _, tt := range tests {
		if got := b.Delay(tt.n, 0); got != tt.min {
			t.Errorf("Delay(%d, 0) = %v, want %v", tt.n, got, tt.min)
		}
		if got := b.Delay(tt.n, 0.5); got != tt.min+(tt.max-tt.min)/2 {
			t.Errorf("Delay(%d, 0.5) = %v, want %v", tt.n, got, tt.min+(tt.max-tt.min)/2)
		}
		for _, r := range []float64{0.999999999, 1, 2, -1, 0.25} {
			if got := b.Delay(tt.n, r); got < tt.min || got >= tt.max {
				t.Errorf("Delay(%d, %v) = %v, want in [%v, %v)", tt.n, r, got, tt.min, tt.max)
			}
		}
	}
	custom := Backoff{Base: time.Second, Cap: 3 * time.Second}
	if got := custom.Delay(3, 0); got != 1500*time.Millisecond {
		t.Errorf("custom Delay(3, 0) = %v, want 1.5s (capped at 3s)", got)
	}
}

func TestBackoffResets(t *testing.T) {
	b := Backoff{}
	tests := []struct {
		lived     time.Duration
		delivered bool
		want      bool
	}{
		{0, false, false},
		{time.Second, false, false},
		{29 * time.Second, false, false},
		{30 * time.Second, false, true},
		{time.Millisecond, true, true},
	}
	for _, tt := range tests {
		if got := b.Resets(tt.lived, tt.delivered); got != tt.want {
			t.Errorf("Resets(%v, %v) = %v, want %v", tt.lived, tt.delivered, got, tt.want)
		}
	}
}

// TestBackoffSequence follows the policy as Watch applies it: failures
// grow the wait, a good connection starts over.
func TestBackoffSequence(t *testing.T) {
	b := Backoff{Base: 100 * time.Millisecond, Cap: time.Second, ResetAfter: time.Minute}
	type conn struct {
		lived     time.Duration
		delivered bool
	}
	seq := []conn{{0, false}, {0, false}, {0, false}, {0, false}, {0, false}, {time.Second, true}, {0, false}, {2 * time.Minute, false}}
	want := []time.Duration{50, 100, 200, 400, 500, 50, 100, 50} // ms, with r = 0
	failures := 0
	for i, c := range seq {
		if b.Resets(c.lived, c.delivered) {
			failures = 0
		}
		failures++
		if got := b.Delay(failures, 0); got != want[i]*time.Millisecond {
			t.Errorf("step %d: wait %v, want %v", i, got, want[i]*time.Millisecond)
		}
	}
}
