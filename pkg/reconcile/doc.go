// Package reconcile is the agent's control loop and the host's resources.
//
// Triggers (the desired-state file, a peer, a job's end, the resync timer)
// only enqueue; one worker runs a pass at a time, and every pass is:
//
//   - observe: read, once, everything the pass needs: the desired state, the
//     keys and every managed file as they are on disk, what peering knows of
//     each peer now, the jobs' results, the store's records (observe.go);
//   - plan: a pure function from that observation to the bytes of every
//     managed file, the work to start (apply and verify, sign, probe) and
//     every condition; a resource whose prerequisite fails plans nothing
//     (plan.go; peers.go holds the substituters' circuit breaker);
//   - act: write only what differs, atomically, resource by resource; a
//     resource whose needed resource failed leaves its files as they are;
//     long work starts as a job beside the loop (act.go, jobs.go);
//   - report: conditions rebuilt from this pass alone, Ready when all are
//     True and nothing failed, the status stored, the facts published
//     (host.go).
package reconcile
