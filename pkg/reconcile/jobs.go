package reconcile

import (
	"context"
	"hash/fnv"
	"sync"
	"time"

	"github.com/nixpeer/nixpeer/pkg/backoff"
)

// Long work (applying the Nix settings, signing a closure, probing a peer)
// runs as jobs beside the loop: a pass starts a job and ends at once, the
// loop goes on answering status and pinging the watchdog, and the job's end
// triggers the next pass, which observes its result. One job runs per slot
// at a time; a pass that wants another waits for the running one to end.

// jobResult is what a job's function returns.
type jobResult struct {
	// Reason is a condition reason for a failure (ApplyFailed, ...).
	Reason string
	Err    error
	// Output is the tail of a command's output, or a note.
	Output string
	// Missing lists the wanted settings that Nix does not use (verify).
	Missing []string
	// Warning is what the job found that is wrong without failing it.
	Warning string
}

// jobState is what a pass observes of a slot: the job running, if one
// is, and the last one that ended, which stays while the next runs.
type jobState struct {
	// Running is set while a job runs, for RunningKey since RunningSince.
	Running      bool
	RunningKey   string
	RunningSince time.Time

	// Key says what the last ended job was for (a settings hash, a key
	// and path, a probed target); "" when none ended yet.
	Key     string
	Started time.Time
	Ended   time.Time
	Reason  string
	Err     string
	Output  string
	Missing []string
	Warning string
	// Failures counts the failures in a row of jobs with this Key.
	Failures int
	// Passed is when a job with this Key last succeeded; zero when none
	// did in this run.
	Passed time.Time
}

// done reports whether a job for key ended.
func (s jobState) done(key string) bool { return s.Key == key && !s.Ended.IsZero() }

// failed reports whether the last job for key ended with an error.
func (s jobState) failed(key string) bool { return s.done(key) && s.Err != "" }

type jobs struct {
	notify func(reason string)

	mu    sync.Mutex
	slots map[string]jobState
	wg    sync.WaitGroup
}

// get returns the state of slot.
func (j *jobs) get(slot string) jobState {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := j.slots[slot]
	s.Missing = append([]string(nil), s.Missing...)
	return s
}

// start runs fn in slot for key unless a job runs there already; it
// reports whether it started one. fn gets ctx; its end triggers a pass.
func (j *jobs) start(ctx context.Context, slot, key string, fn func(context.Context) jobResult) bool {
	j.mu.Lock()
	s := j.slots[slot]
	if s.Running {
		j.mu.Unlock()
		return false
	}
	started := time.Now()
	s.Running, s.RunningKey, s.RunningSince = true, key, started
	j.slots[slot] = s
	j.wg.Add(1)
	j.mu.Unlock()
	go func() {
		defer j.wg.Done()
		res := fn(ctx)
		j.mu.Lock()
		s := j.slots[slot]
		if s.Key != key {
			s.Failures, s.Passed = 0, time.Time{}
		}
		s.Running, s.RunningKey = false, ""
		s.Key, s.Started, s.Ended = key, started, time.Now()
		s.Reason, s.Output, s.Missing, s.Warning, s.Err = res.Reason, res.Output, res.Missing, res.Warning, ""
		if res.Err != nil {
			s.Err = res.Err.Error()
			s.Failures++
		} else {
			s.Failures, s.Passed = 0, s.Ended
		}
		j.slots[slot] = s
		j.mu.Unlock()
		if ctx.Err() == nil {
			j.notify(slot + " ended")
		}
	}()
	return true
}

// forget drops slots that keep returns false for (peers that left).
func (j *jobs) forget(keep func(slot string) bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for slot, s := range j.slots {
		if !s.Running && !keep(slot) {
			delete(j.slots, slot)
		}
	}
}

// spread is a factor in [0.75, 1) fixed for key (a host, a host and a
// peer): the intervals of a fleet of hosts that failed, or started,
// together are spread out, so that they do not retry in waves.
func spread(key string) float64 {
	h := fnv.New32a()
	h.Write([]byte(key))
	return 0.75 + 0.25*float64(h.Sum32())/(1<<32)
}

// scaled is d times f (1 when f is 0).
func scaled(d time.Duration, f float64) time.Duration {
	if f == 0 {
		return d
	}
	return time.Duration(float64(d) * f)
}

// jobRetry is how long after its end a failed job is retried: 1 s
// doubling with each failure in a row, at most 2 minutes.
var jobRetry = backoff.Policy{Base: time.Second, Cap: 2 * time.Minute}
