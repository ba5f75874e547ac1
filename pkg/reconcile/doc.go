// Package reconcile is the agent's control loop and the host's resources.
//
// Triggers (the desired-state file, a peer, a job's end, the resync timer)
// only wake the loop (loop.go); one pass runs at a time, and every pass is:
//
//   - observe: read, once, everything the pass needs: the desired state, the
//     keys and every managed file as they are on disk (files.go), what
//     peering knows of each peer now, the jobs' results, the store's
//     records (observe.go; targets.go: how each peer is watched and
//     trusted);
//   - plan: a pure function from that observation to the bytes of every
//     managed file, the work to start (apply and verify, sign, probe) and
//     every condition (plan.go). plan() reads as the data flow between the
//     resources: each is a function of the observation and of the results
//     of the resources before it, passed as parameters, and returns its
//     Resource (files, keys, work, condition, when it is due again):
//     keys.go (the SSH keys, the peer port), sshclient.go (known_hosts and
//     ssh config), cachekey.go (the signing key), peers.go and breaker.go
//     (each peer's verdict, the substituters' circuit breaker, trust),
//     serve.go (nix-ssh's keys, the check of its own sshd), caches.go (the
//     binary-cache tier on object stores), nixsettings.go (the Nix
//     settings, applied and verified). A resource whose
//     prerequisite fails plans nothing;
//   - act: write only what differs, atomically, resource by resource; a
//     resource whose needed resource failed leaves its files as they are;
//     long work starts as a job beside the loop (act.go, jobs.go);
//   - report: conditions rebuilt from this pass alone, Ready when all are
//     True and nothing failed, the status stored, the facts published
//     (host.go, facts.go).
//
// What differs between plain Nix, NixOS and a NixOS module file is one
// platform interface (platform.go), with one implementation each.
//
// Adding a managed file touches three places:
//
//  1. the managed list of each platform that has the file, or of every
//     platform (observedFiles, platform.go): observe reads exactly those
//     files, and act refuses to write any other (a file written but not
//     observed would look changed to every pass);
//  2. the resource that renders it, as a fileWant in its Resource.Files
//     (a new plan function in a file of its own, or an existing one);
//  3. plan() (plan.go), where a new resource joins the data flow with the
//     results it needs as parameters.
package reconcile
