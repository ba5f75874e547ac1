package clock

import (
	"testing"
	"testing/synctest"
	"time"
)

func TestSince(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := Real{}.Now()
		time.Sleep(3 * time.Second)
		if d := Since(Real{}, start); d != 3*time.Second {
			t.Fatalf("Since = %v, want 3s", d)
		}
	})
}

func TestTimerFiresOnceAfterItsDuration(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		tm := NewTimer(Real{}, time.Minute)
		at := <-tm.C
		if d := at.Sub(start); d != time.Minute {
			t.Fatalf("fired after %v, want 1m", d)
		}
		if tm.Stop() {
			t.Error("Stop of a fired timer reported that it stopped it")
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case <-tm.C:
			t.Fatal("a timer fired twice")
		default:
		}
	})
}

func TestTimerStopped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		tm := NewTimer(Real{}, time.Minute)
		time.Sleep(time.Second)
		if !tm.Stop() {
			t.Fatal("Stop of a pending timer reported that it had fired")
		}
		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case <-tm.C:
			t.Fatal("a stopped timer fired")
		default:
		}
	})
}

func TestTickerTicksEveryPeriodAndDropsForASlowReader(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		tk := NewTicker(Real{}, time.Second)
		for i := 1; i <= 3; i++ {
			if d := (<-tk.C).Sub(start); d != time.Duration(i)*time.Second {
				t.Fatalf("tick %d after %v, want %ds", i, d, i)
			}
		}
		// A reader away for 10.5 periods finds one tick, then the next
		// on the beat.
		time.Sleep(10*time.Second + time.Second/2)
		if d := (<-tk.C).Sub(start); d != 4*time.Second {
			t.Fatalf("tick kept for a slow reader is from %v, want the first one missed (4s)", d)
		}
		if d := (<-tk.C).Sub(start); d != 14*time.Second {
			t.Fatalf("tick after a slow read at %v, want 14s", d)
		}
		tk.Stop()
		time.Sleep(time.Hour)
		synctest.Wait()
		select {
		case <-tk.C:
			t.Fatal("a stopped ticker ticked")
		default:
		}
	})
}

func TestTickerRefusesNonPositivePeriod(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Fatal("NewTicker(0) did not panic")
		}
	}()
	NewTicker(Real{}, 0)
}
