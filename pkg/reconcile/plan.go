package reconcile

import (
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/bincache"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Timeouts and intervals of the work a plan asks for.
const (
	ApplyTimeout  = 2 * time.Minute
	VerifyTimeout = 30 * time.Second
	SignTimeout   = 10 * time.Minute
	// ReloadTimeout bounds sshdReload, run within a pass, and
	// ReloadListenWait the wait for sshd to listen again after it.
	ReloadTimeout    = 30 * time.Second
	ReloadListenWait = 5 * time.Second
	ProbeTimeout     = 5 * time.Second
	// TurnWait bounds the wait for a turn to probe a peer's sshd.
	TurnWait = 2 * time.Minute
	// ReverifyPending is how often a host whose settings wait for the
	// operator's deploy (no apply command) checks whether they are live.
	ReverifyPending = time.Minute
	// ProbeRefresh is how often the sshd of a peer whose agent cannot be
	// reached is probed again while it serves: nothing else would tell
	// when it stops.
	ProbeRefresh = 5 * time.Second
	// ConnectedReprobe is how often the sshd of a peer in use is probed
	// while its agent answers: its sshd may stop, or port 22 alone be
	// closed, while its agent runs.
	ConnectedReprobe = 30 * time.Second
	// CheckedReprobe replaces ConnectedReprobe for a peer whose agent
	// checks its own sshd and says so in its facts: a stopped sshd is
	// then known at once, and the probe only guards the way from this
	// host (a firewall, a route), so that a serving host with hundreds
	// of consumers gets a probe every few seconds, not dozens a second.
	CheckedReprobe = 10 * time.Minute
	// DefaultSSHDCheckInterval is how often a serving host probes its own
	// sshd (see peer.ServeCheck).
	DefaultSSHDCheckInterval = 30 * time.Second
	// SSHConnectTimeout bounds ssh's connect to a peer (ssh config block).
	SSHConnectTimeout = 5 * time.Second
	// outputTail is how much of a command's output the status keeps.
	outputTail = 2048
)

// The circuit breaker of a substituter: a peer that went dark FlapTrips
// times within FlapWindow is used again only FlapHold after it last went
// dark, doubling with every further trip up to FlapHoldMax, so that a
// flapping peer cannot cause an apply (a nix-daemon restart) storm.
const (
	FlapWindow  = 10 * time.Minute
	FlapTrips   = 3
	FlapHold    = 30 * time.Second
	FlapHoldMax = 10 * time.Minute
)

// soon asks the loop to run the next pass at once: this pass changed
// something that it could not observe itself (a key it created).
const soon = time.Millisecond

// Job slots and store records.
const (
	slotApply          = "apply"
	slotSign           = "sign"
	slotResign         = "resign"
	recRotation        = "cacheKey/rotation" // rotationRequest
	recHostKeyRotation = "hostKey/rotation"  // hostKeyRequest
	recSSHDReloaded    = "hostKey/sshdReloaded"
	recResigned        = "cacheKey/resigned" // resignRecord
	recApplied         = "nix/applied"       // hash of the Nix settings verified live
	recSignedWith      = "nix/signedWith"    // cache public key the closure was signed with
	// recVerified holds, by peer, what its last passing probe verified:
	// a dark peer that served this host counts as settled.
	recVerified = "peers/verified"
	// recTrips holds, by peer, when its substituter was withdrawn for its
	// health within FlapWindow: the breaker's memory, across restarts.
	recTrips = "peers/trips"
)

func probeSlot(peer string) string { return "probe/" + peer }

// Plan is what a pass will do and report, derived from an Observation
// alone: the bytes of every managed file, the work to start, every
// condition.
type Plan struct {
	// Resources are in the order they act; each owns its files and its
	// condition.
	Resources []*Resource
	// PeerStatus is the status of every peer.
	PeerStatus []status.Peer
	// Warnings are what is wrong without keeping the host from Ready.
	Warnings []string
	// Stores are the stores of the peers this host fetches from whose
	// keys are known.
	Stores []PeerStore
	Probes []probeRequest
	// Trips are the peers whose substituter this pass withdraws because
	// they went dark.
	Trips []string
	// Requeue is when the next pass is due without any event, 0 for the
	// resync timer.
	Requeue time.Duration
	// watchesOnly: the plan only syncs the watches; Reconcile acts on
	// it, then observes and plans again.
	watchesOnly bool

	// Serve is what the serving side planned (its consumers and its
	// own sshd's check, for the facts); CacheKeyRotation the signing
	// key's rotation (its status, the next key for the facts).
	Serve            serving
	CacheKeyRotation rotationPlan
	// TrustedLive are the peers' cache keys the live Nix settings trust,
	// for the facts.
	TrustedLive []string
	// HostKeyRotation is the host key's rotation: its status, the next
	// key and its handover proof for the facts. AcceptedHostKeys are the
	// next host keys of peers this host accepted.
	HostKeyRotation  hostKeyRotation
	AcceptedHostKeys []string
	// Caches are the caches the host reads or publishes to, for status.
	Caches []status.Cache
}

// Resource is one thing on the host: its files, keys and work, and the
// condition it reports when it acts as planned.
type Resource struct {
	// Type is the condition type; "" for a resource that has none (a
	// clean-up after a role the host no longer has).
	Type string
	// Needs are the types of the resources whose action must succeed in
	// this pass before this one acts.
	Needs []string
	Keys  []keyWant
	Dirs  []dirWant
	Files []fileWant
	// Records are written to the store once the resource acted.
	Records []record
	Apply   *applyRequest
	Sign    *signRequest
	Resign  *resignRequest
	// Reload is run once the keys are in place: sshd reads the host key
	// again, and the pass ends once it shows ReloadKey.
	Reload    []string
	ReloadKey ssh.PublicKey
	// Listen is where the peer port listens, with the host key.
	Listen string
	// Tier is what the binary-cache tier does; nil to leave it.
	Tier *bincache.Config
	// Watch is the watches of peers to keep, nil to leave them.
	Watch *watchWant
	// Requeue is when the resource's plan is due again without any
	// event (a retry, a re-check); 0 for none.
	Requeue time.Duration
	// Status, Reason and Message are the condition when the resource
	// acts as planned.
	Status  bool
	Reason  string
	Message string
	// Failed marks a condition that is a failure of this pass (an apply
	// that failed, a file that cannot be read, a key that does not match
	// the desired state), not a wait: the loop retries it with backoff.
	Failed bool
}

type keyKind int

const (
	keyClient keyKind = iota
	keyHost
	keyCache
	// keyHostPromote makes the next host key the host key
	// (sshkeys.PromoteNext).
	keyHostPromote
	// keyRemoveNext removes the next cache key of the keys directory
	// path, kept as revoked when revoked (nix.RemoveNextKey).
	keyRemoveNext
	// keyPromote makes the next cache key of the keys directory path the
	// current one (nix.PromoteNextKey).
	keyPromote
)

// keyWant asks for a key to be created where missing, or repaired.
type keyWant struct {
	kind keyKind
	path string // the key, or for a cache key its directory
	name string // comment, or the cache key's name
	// revoked: a promotion or removal keeps the key as revoked.
	revoked bool
}

// watchWant is the watches of peers a pass keeps, and the key they
// authenticate with (nil: as it is).
type watchWant struct {
	targets  []peering.Target
	identity ssh.Signer
}

type dirWant struct {
	path string
	mode fs.FileMode
}

// fileWant is the content a managed file must have. A zero mode keeps the
// mode of an existing file (a file people share keeps theirs) and gives a
// new one 0644. Missing directories above it are made with dirMode (0755
// when zero), whatever the umask; with ownDir its directory is the agent's
// own and is kept at dirMode even when it exists.
type fileWant struct {
	path    string
	content []byte
	mode    fs.FileMode
	dirMode fs.FileMode
	ownDir  bool
}

type record struct {
	key   string
	value any
}

// appliedRecord says which settings were verified live, by an apply that
// began at At.
type appliedRecord struct {
	Hash string    `json:"hash"`
	At   time.Time `json:"at"`
	// SigningWith are the secret key files, Trusted the peers' public
	// keys, of the settings verified live.
	SigningWith []string `json:"signingWith,omitempty"`
	Trusted     []string `json:"trusted,omitempty"`
}

// key is what the job is for: the settings and the apply command (a
// fixed command is tried at once, not after the old one's backoff).
func (r *applyRequest) key() string { return r.hash + " " + strings.Join(r.argv, "\x00") }

// applyRequest is the apply-and-verify job for one version of the Nix
// settings.
type applyRequest struct {
	hash      string
	argv      []string
	settings  nix.Settings
	withdrawn []string
	// hint explains settings not live on NixOS without the module.
	hint string
}

type signRequest struct {
	key             string
	keyFile, target string
}

type probeRequest struct {
	peer   string
	tuple  string
	target probe.Target
	// self: the host checks its own sshd (no turn to wait for).
	self bool
}

// planner is what every resource's plan reads and nothing changes: the
// observation, this host's entry and the keys this host trusts. What a
// resource works out for another is a result it returns, passed on by
// plan as a parameter.
type planner struct {
	o    *Observation
	self *desired.Host
	file *desired.File
	// keys are the trusted public keys of every host in the file.
	keys map[string]peerKeys
}

// plan derives what a pass does from what it observed. It does no I/O.
func plan(o *Observation) *Plan {
	p := &Plan{}
	valid := &Resource{Type: status.DesiredStateValid}
	p.Resources = append(p.Resources, valid, storeResource(o.StoreOpened, o.Layout))
	switch {
	case o.File == nil:
		valid.Reason, valid.Message = o.FileProblem.Reason, o.FileProblem.Message
		return p
	case o.Self == nil:
		valid.Reason, valid.Message = "HostNotFound", o.SelfErr
		return p
	case o.FileProblem != nil:
		valid.Reason, valid.Message = o.FileProblem.Reason, o.FileProblem.Message
	default:
		valid.Status, valid.Reason = true, "Valid"
		valid.Message = fmt.Sprintf("%s is valid (generation %d)", o.File.Filename, o.Generation)
	}
	keys, err := learnKeys(o)
	if err != nil {
		valid.Status, valid.Reason, valid.Message = false, "InvalidKey", err.Error()
		return p
	}
	pl := &planner{o: o, self: o.Self, file: o.File, keys: keys}

	// The data flow of a pass: each resource from the observation and
	// the results of those before it that it takes as parameters.
	// The peer port listens before the watches start: a peer that one of
	// them wakes (see peering.Manager.Poke) connects back at once.
	peerPort := pl.planPeerPort()
	watches := pl.planWatches()
	if o.WatchesBehind {
		// Nothing is planned from peers not watched as the file says
		// now (it could drop a consumer that a restarted watch knows
		// again at once): this plan only syncs the watches, and the
		// pass plans again from what they know.
		p.Resources, p.watchesOnly = append(p.Resources, peerPort, watches), true
		return p
	}
	ownKeys, hostKeys := pl.planKeys()
	knownHosts := pl.planKnownHosts()
	cacheKey, rotation := pl.planCacheKey()
	subs := pl.planSubstituters()
	trust := planTrust(subs.peers, o.Peers)
	subsReady := pl.planSubstitutersReady(subs.verdicts)
	verified := pl.planVerified(subs.verified)
	serve := pl.planServe()
	caches, cacheNix, cacheStatus, cacheWarnings := pl.planCaches(rotation.signWith)
	settings, settingsPlanned := pl.planNixSettings(rotation.signWith, subs.verdicts, serve.consumers, cacheNix)

	for _, r := range []*Resource{ownKeys, peerPort, watches, knownHosts, cacheKey, trust, serve.resource, caches, settings, subsReady, verified} {
		if r != nil {
			p.Resources = append(p.Resources, r)
		}
	}
	p.PeerStatus, p.Probes, p.Stores = subs.peers, append(subs.probes, serve.probes...), subs.stores
	p.Serve, p.CacheKeyRotation, p.Caches = serve, rotation, cacheStatus
	// Told only while a peer rotates its key: older agents refuse the
	// field.
	peerRotates := slices.ContainsFunc(o.Self.SubstituteFrom, func(name string) bool { return pl.keys[name].NextCacheKey != "" }) ||
		slices.ContainsFunc(publishersOf(o.File, o.Self), func(h *desired.Host) bool { return pl.keys[h.Name].NextCacheKey != "" })
	if peerRotates {
		p.TrustedLive = o.Applied.Trusted
		for _, rec := range settings.Records {
			if a, ok := rec.value.(appliedRecord); ok {
				p.TrustedLive = a.Trusted
			}
		}
	}
	p.AcceptedHostKeys, p.HostKeyRotation = acceptedHostKeys(o, knownHosts, settings), hostKeys
	if serve.warning != "" {
		p.Warnings = append(p.Warnings, serve.warning)
	}
	p.Warnings = append(p.Warnings, cacheWarnings...)
	if o.File.Trust == desired.TrustTOFU && len(subs.peers) > 0 {
		p.Warnings = append(p.Warnings, tofuWarning)
	}
	if settingsPlanned {
		p.Trips = subs.trips // withdrawn only by settings that are written
	}
	// Stored once the settings resource acted.
	if trips, changed := tripsRecord(o, p.Trips); changed {
		settings.Records = append(settings.Records, record{recTrips, trips})
	}
	p.Requeue = subs.requeue
	if rotation.awaitsLive && settings.Status {
		p.Requeue = soon // live in this pass: the rotation goes on at once
	}
	for _, r := range p.Resources {
		p.Requeue = earliest(p.Requeue, r.Requeue)
	}
	return p
}

// storeResource reports what the state store was like at the start: a
// damaged one was moved aside and a new one started, with trust rebuilt
// from the managed files.
func storeResource(opened state.Opened, l layout.Layout) *Resource {
	r := &Resource{Type: status.StateStoreReady, Status: true, Reason: "Sound", Message: l.Database + " is sound"}
	switch {
	case opened.Damaged != "":
		r.Reason = "Recovered"
		r.Message = fmt.Sprintf("%s was damaged (%s); it was moved to %s and a new one started: trust in peers is rebuilt from this host's known_hosts and Nix settings, the rest is observed anew",
			l.Database, opened.Damaged, opened.MovedTo)
	case opened.New:
		r.Reason, r.Message = "New", l.Database+" was started at this agent's start"
	}
	return r
}

// tofuWarning is the warning of a host whose file says trust: tofu.
const tofuWarning = "trust: tofu: peers' host keys are trusted on first use, vouched for by nobody (whoever answers first at a peer's address is trusted); pin them (nixpeer trust pending --yaml) or use trust: approve"

// earliest is the sooner of two requeues (0: none); a requeue of less
// than soon is soon.
func earliest(a, b time.Duration) time.Duration {
	if b == 0 {
		return a
	}
	b = max(b, soon)
	if a == 0 || b < a {
		return b
	}
	return a
}
