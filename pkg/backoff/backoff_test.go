package backoff

import (
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	p := Policy{Base: 200 * time.Millisecond, Cap: 30 * time.Second}
	for n, want := range map[int]time.Duration{
		-1: 200 * time.Millisecond, 0: 200 * time.Millisecond, 1: 200 * time.Millisecond,
		2: 400 * time.Millisecond, 8: 25600 * time.Millisecond, 9: 30 * time.Second,
		1000: 30 * time.Second, // no overflow
	} {
		if got := p.Delay(n); got != want {
			t.Errorf("Delay(%d) = %v, want %v", n, got, want)
		}
	}
	if got := (Policy{Base: time.Second}).Delay(5); got != time.Second {
		t.Errorf("Delay with Cap below Base = %v, want Base", got)
	}
}

func TestJittered(t *testing.T) {
	p := Policy{Base: 200 * time.Millisecond, Cap: 30 * time.Second}
	for _, n := range []int{1, 2, 3, 8, 9, 1000} {
		d := p.Delay(n)
		if got := p.Jittered(n, 0); got != d/2 {
			t.Errorf("Jittered(%d, 0) = %v, want %v", n, got, d/2)
		}
		if got := p.Jittered(n, 0.5); got != d/2+d/4 {
			t.Errorf("Jittered(%d, 0.5) = %v, want %v", n, got, d/2+d/4)
		}
		for _, r := range []float64{0.999999999, 1, 2, -1, 0.25} {
			if got := p.Jittered(n, r); got < d/2 || got >= d {
				t.Errorf("Jittered(%d, %v) = %v, want in [%v, %v)", n, r, got, d/2, d)
			}
		}
	}
	if got := (Policy{}).Jittered(1, 0.5); got != 0 {
		t.Errorf("no wait, jittered: %v, want 0", got)
	}
}
