package workqueue

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/nixpeer/nixpeer/pkg/clock"
)

func TestDuplicatesCollapse(t *testing.T) {
	q := New(clock.Real{}, time.Millisecond, time.Second)
	q.Add("host")
	q.Add("host")
	q.Add("peer/a")
	if q.Len() != 2 {
		t.Fatalf("Len = %d, want 2", q.Len())
	}
	k, _ := q.Get()
	if k != "host" {
		t.Fatalf("first key %q, want host", k)
	}
}

func TestAddWhileProcessingRunsAgainAfterDone(t *testing.T) {
	q := New(clock.Real{}, time.Millisecond, time.Second)
	q.Add("host")
	k, _ := q.Get()
	q.Add(k)
	q.Add(k)
	if q.Len() != 0 {
		t.Fatalf("key queued while still processing: Len = %d", q.Len())
	}
	q.Done(k)
	if q.Len() != 1 {
		t.Fatalf("after Done: Len = %d, want 1", q.Len())
	}
}

func TestBackoffDoublesCapsAndResets(t *testing.T) {
	q := New(clock.Real{}, 5*time.Millisecond, 40*time.Millisecond)
	var got []time.Duration
	for i := 0; i < 6; i++ {
		got = append(got, q.AddRateLimited("host"))
	}
	want := []time.Duration{5, 10, 20, 40, 40, 40}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("backoff %d = %v, want %v (all: %v)", i, got[i], want[i]*time.Millisecond, got)
		}
	}
	q.Forget("host")
	if d := q.AddRateLimited("host"); d != 5*time.Millisecond {
		t.Fatalf("after Forget: %v, want 5ms", d)
	}
}

func TestAddAfterFiresAtItsTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := New(clock.Real{}, time.Second, time.Minute)
		start := time.Now()
		q.AddAfter("host", 3*time.Second)
		q.AddAfter("host", time.Hour) // a later one does not replace the sooner
		q.AddAfter("other", time.Hour)
		q.AddAfter("other", time.Second) // a sooner one replaces the later
		k, ok := q.Get()
		if !ok || k != "other" || time.Since(start) != time.Second {
			t.Fatalf("first key %q after %v, want other after 1s", k, time.Since(start))
		}
		q.Done(k)
		k, ok = q.Get()
		if !ok || k != "host" || time.Since(start) != 3*time.Second {
			t.Fatalf("second key %q after %v, want host after 3s", k, time.Since(start))
		}
		q.Done(k)
		q.ShutDown()
		if _, ok := q.Get(); ok {
			t.Fatal("Get after ShutDown returned a key")
		}
	})
}

func TestJitterPlacesRetriesInTheUpperHalfOfTheBackoff(t *testing.T) {
	q := New(clock.Real{}, time.Second, time.Minute)
	defer q.ShutDown()
	for _, c := range []struct {
		r    float64
		want time.Duration
	}{{0, 500 * time.Millisecond}, {0.5, 1500 * time.Millisecond}, {0.999, 3998 * time.Millisecond}} {
		q.Jitter = func() float64 { return c.r }
		got := q.AddRateLimited("k")
		if got.Round(time.Millisecond) != c.want {
			t.Errorf("jitter %v: wait %v, want %v", c.r, got, c.want)
		}
	}
}
