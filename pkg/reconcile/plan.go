package reconcile

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/hostname"
	"github.com/nixpeer/nixpeer/pkg/knownhosts"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/sshconfig"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Timeouts and intervals of the work a plan asks for.
const (
	ApplyTimeout  = 2 * time.Minute
	VerifyTimeout = 30 * time.Second
	SignTimeout   = 10 * time.Minute
	ProbeTimeout  = 5 * time.Second
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
	slotApply     = "apply"
	slotSign      = "sign"
	recApplied    = "nix/applied"    // hash of the Nix settings verified live
	recSignedWith = "nix/signedWith" // cache public key the closure was signed with
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
	Peers     []status.Peer
	Probes    []probeRequest
	// ServeCheck is the result of this serving host's last check of its
	// own sshd, for its facts; nil when there is none.
	ServeCheck *peer.ServeCheck
	// Trips are the peers whose substituter this pass withdraws because
	// they went dark.
	Trips []string
	// Requeue is when the next pass is due without any event, 0 for the
	// resync timer.
	Requeue time.Duration

	// Consumers are the client keys a serving host lets in, for its
	// facts; Authorized is the resource that writes them where sshd
	// reads them (nil on nixos-module, where the deploy does).
	Consumers  []consumerKey
	Authorized *Resource
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
	// Listen is where the peer port listens, with the host key.
	Listen string
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
)

// keyWant asks for a key to be created where missing, or repaired.
type keyWant struct {
	kind keyKind
	path string // the key, or for a cache key its directory
	name string // comment, or the cache key's name
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

type consumerKey struct {
	host string
	key  ssh.PublicKey
}

// planner holds what plan works out along the way.
type planner struct {
	o    *Observation
	p    *Plan
	self *desired.Host
	file *desired.File
	// keys are the trusted public keys of every host in the file.
	keys map[string]peerKeys
	// verdicts say, for each peer this host fetches from, whether it is
	// a substituter in this pass.
	verdicts map[string]verdict
	// verified are the probes to record, by peer: the verified record
	// of the peers this host fetches from, as it is after the pass.
	verified map[string]string
	// cacheKeyOnDisk: a serving host has a usable signing key (whatever
	// its name), so the Nix settings may name its file.
	cacheKeyOnDisk bool
}

// peerKeys is what this host knows, and trusts, of a peer's public keys.
type peerKeys struct {
	HostKey   ssh.PublicKey
	ClientKey ssh.PublicKey
	CacheKey  string // NAME:BASE64
	// CacheKeyRefused says why the cache key a peer published is not
	// taken: its name is not the host's keyName.
	CacheKeyRefused string
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
	pl := &planner{o: o, p: p, self: o.Self, file: o.File, verdicts: map[string]verdict{}, verified: map[string]string{}}
	if err := pl.learnKeys(); err != nil {
		valid.Status, valid.Reason, valid.Message = false, "InvalidKey", err.Error()
		return p
	}
	pl.planKeys()
	pl.planPeering()
	pl.planKnownHosts()
	pl.planCacheKey()
	pl.planSubstituters()
	pl.planServe()
	pl.planNixSettings()
	pl.planSubstitutersReady()
	pl.planVerified()
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

func (pl *planner) add(r *Resource) *Resource {
	pl.p.Resources = append(pl.p.Resources, r)
	return r
}

// requeue makes the next pass due within d.
func (pl *planner) requeue(d time.Duration) {
	if d <= 0 {
		d = soon
	}
	if pl.p.Requeue == 0 || d < pl.p.Requeue {
		pl.p.Requeue = d
	}
}

// learnKeys gathers the keys of every host: the pins of the file, and
// what each peer's agent told over a trusted connection (a pin wins).
func (pl *planner) learnKeys() error {
	pl.keys = map[string]peerKeys{}
	for _, h := range pl.file.Hosts {
		k, err := pinnedKeys(h)
		if err != nil {
			return err
		}
		st := pl.o.Peers[h.Name]
		if k.HostKey == nil {
			k.HostKey = st.HostKey
		}
		if f := st.Facts; f != nil {
			if k.ClientKey == nil && f.ClientKey != "" {
				k.ClientKey, _ = sshkeys.ParsePublicLine(f.ClientKey) // validated with the facts
			}
			if k.CacheKey == "" && f.Serve != nil && h.Serve != nil {
				// Nix keeps one trusted key per name: a peer publishing a
				// key under another host's name would stand in for it.
				if name, _, _ := strings.Cut(f.Serve.CacheKey, ":"); name == h.Serve.KeyName {
					k.CacheKey = f.Serve.CacheKey
				} else {
					k.CacheKeyRefused = fmt.Sprintf("it publishes a binary-cache key named %q, not its keyName %q; the key is not trusted", name, h.Serve.KeyName)
				}
			}
		}
		pl.keys[h.Name] = k
	}
	return nil
}

// pinnedKeys are the keys of a host that the desired-state file pins.
func pinnedKeys(h *desired.Host) (peerKeys, error) {
	var k peerKeys
	var err error
	if h.HostKey != "" {
		if k.HostKey, err = sshkeys.ParsePublicLine(h.HostKey); err != nil {
			return k, fmt.Errorf("hostKey of %s: %w", h.Name, err)
		}
	}
	if h.ClientKey != "" {
		if k.ClientKey, err = sshkeys.ParsePublicLine(h.ClientKey); err != nil {
			return k, fmt.Errorf("clientKey of %s: %w", h.Name, err)
		}
	}
	if h.Serve != nil {
		k.CacheKey = h.Serve.PublicKey
	}
	return k, nil
}

// planKeys keeps the host's SSH client key (which it fetches from peers
// with) and its SSH host key, and the private keys' directory at 0700.
func (pl *planner) planKeys() {
	o, l := pl.o, pl.o.Layout
	r := pl.add(&Resource{Type: status.KeysReady})
	if o.KeysDirMode != 0 && o.KeysDirMode != 0o700 {
		r.Dirs = append(r.Dirs, dirWant{path: l.KeysDir, mode: 0o700})
	}
	var problems, created []string
	for _, k := range []struct {
		obs          KeyObs
		kind         keyKind
		what, reason string
		path, name   string
	}{
		{o.ClientKey, keyClient, "client key", "ClientKeyUnusable", l.ClientKey, "nixpeer@" + pl.self.Name},
		{o.HostKey, keyHost, "host key", "HostKeyUnusable", l.HostKey, "root@" + pl.self.Name},
	} {
		switch {
		case k.obs.Err != nil:
			if r.Reason == "" {
				r.Reason = k.reason
			}
			problems = append(problems, k.obs.Err.Error())
		case k.obs.State.NeedsWork():
			r.Keys = append(r.Keys, keyWant{kind: k.kind, path: k.path, name: k.name})
			if k.obs.State.Missing {
				created = append(created, k.what)
			}
		}
	}
	switch {
	case len(problems) > 0:
		r.Message, r.Failed = strings.Join(problems, "; "), true
	case len(created) > 0:
		// Used from the next pass on, once it is read back.
		r.Reason, r.Message = "KeyCreated", "creating the "+strings.Join(created, " and the ")
		pl.requeue(soon)
	default:
		r.Status, r.Reason = true, "KeysPresent"
		r.Message = fmt.Sprintf("client key %s, host key %s", o.ClientKey.Key.Fingerprint(), o.HostKey.Key.Fingerprint())
	}
}

// planPeering keeps the peer port listening with the host key.
func (pl *planner) planPeering() {
	r := pl.add(&Resource{Type: status.PeerPortReady})
	if pl.o.HostKey.Usable() {
		r.Listen = peering.ListenAddr(pl.self.Address, pl.self.PeerPort)
		r.Status, r.Reason, r.Message = true, "Listening", "peers reach this agent at "+r.Listen
	} else {
		r.Reason, r.Message = "NoHostKey", "the peer port needs this host's SSH host key; see KeysReady"
	}
}

// watchTargets are the peers self keeps a watch open to: those it
// fetches from, and those that fetch from it, with the host keys this
// host's managed files remember of them.
func watchTargets(file *desired.File, self *desired.Host, remembered map[string]ssh.PublicKey) []peering.Target {
	var targets []peering.Target
	from := localIP(self.Address)
	add := func(h *desired.Host) {
		pins, _ := pinnedKeys(h) // validated with the file
		targets = append(targets, peering.Target{Name: h.Name, Address: h.Address, Pin: pins.HostKey,
			PinsRequired: file.Trust == desired.TrustPinned, Approve: file.Trust == desired.TrustApprove, Addr: peerAddr(h), Remembered: remembered[h.Name], From: from, Self: self.Name})
	}
	seen := map[string]bool{}
	for _, name := range self.SubstituteFrom {
		add(file.Host(name))
		seen[name] = true
	}
	for _, c := range file.Consumers(self.Name) {
		if !seen[c.Name] {
			add(c)
		}
	}
	return targets
}

// localIP is address when it is a loopback IP literal: an agent on one of
// several loopback addresses dials its peers from its own, so that each
// sees who connects. Other addresses leave the choice to the system.
func localIP(address string) net.IP {
	if ip := net.ParseIP(address); ip != nil && ip.IsLoopback() {
		return ip
	}
	return nil
}

func peerAddr(h *desired.Host) string {
	return net.JoinHostPort(h.Address, strconv.Itoa(h.PeerPort))
}

// planKnownHosts keeps the managed blocks of root's known_hosts (the
// trusted host key of every peer this host fetches from) and of root's
// ssh config (each peer's port, and bounds on connecting to it).
func (pl *planner) planKnownHosts() {
	o, l := pl.o, pl.o.Layout
	r := pl.add(&Resource{Type: status.KnownHostsReady})
	var entries []knownhosts.Entry
	var peers []sshconfig.Peer
	var unknown []string
	for _, name := range pl.self.SubstituteFrom {
		h := pl.file.Host(name)
		peers = append(peers, sshconfig.Peer{Address: h.Address, Port: h.SSHPort, ConnectTimeout: SSHConnectTimeout})
		if key := pl.keys[name].HostKey; key != nil {
			entries = append(entries, knownhosts.Entry{Host: h.Address, Port: h.SSHPort, Key: key})
		} else {
			unknown = append(unknown, name)
		}
	}
	for _, f := range []struct {
		path   string
		render func([]byte) ([]byte, error)
	}{
		{l.KnownHosts, func(b []byte) ([]byte, error) { return knownhosts.Render(b, entries) }},
		{l.SSHConfig, func(b []byte) ([]byte, error) { return sshconfig.Render(b, peers) }},
	} {
		obs := o.Files[f.path]
		if obs.Err != nil {
			r.Reason, r.Message, r.Failed = "Unreadable", obs.Err.Error(), true
			r.Files = nil
			return
		}
		content, err := f.render(obs.Content)
		if err != nil {
			r.Reason, r.Message, r.Failed = "MalformedFile", fmt.Sprintf("%s: %v; fix or remove the nixpeer managed block by hand", f.path, err), true
			r.Files = nil
			return
		}
		r.Files = append(r.Files, fileWant{path: f.path, content: content, dirMode: 0o700})
	}
	r.Status, r.Reason = true, "UpToDate"
	r.Message = fmt.Sprintf("%d peer entries in %s", len(entries), l.KnownHosts)
	if len(unknown) > 0 {
		r.Message += "; host key not known yet: " + strings.Join(unknown, ", ")
	}
}

// planCacheKey keeps a serving host's binary-cache signing key, and signs
// the current system closure with a key it has not been signed with:
// paths built before the key existed carry no signature of it.
func (pl *planner) planCacheKey() {
	serve := pl.self.Serve
	if serve == nil {
		return
	}
	o, l := pl.o, pl.o.Layout
	ck := o.CacheKey
	r := pl.add(&Resource{Type: status.CacheKeyReady})
	secret := filepath.Join(l.KeysDir, nix.SecretKeyFileName)
	switch {
	case ck.Err != nil:
		r.Reason, r.Message, r.Failed = "CacheKeyUnusable", ck.Err.Error(), true
		return
	case ck.Missing:
		r.Keys = []keyWant{{kind: keyCache, path: l.KeysDir, name: serve.KeyName}}
		r.Reason, r.Message = "KeyCreated", "creating the binary-cache signing key "+serve.KeyName
		pl.requeue(soon)
		return
	}
	pl.cacheKeyOnDisk = true
	switch {
	case ck.Name != serve.KeyName:
		r.Reason, r.Failed = "KeyNameMismatch", true
		r.Message = fmt.Sprintf("the signing key %s is named %q, but serve.keyName is %q: set keyName back to %q, "+
			"or move the key away (mv %s %s.old) to have a new one made (every host that trusts the old key then needs the new one); "+
			"until then the Nix settings stay as they are, signing with the old key",
			secret, ck.Name, serve.KeyName, ck.Name, secret, secret)
		return
	case serve.PublicKey != "" && serve.PublicKey != ck.Public.String():
		r.Reason, r.Failed = "CacheKeyMismatch", true
		r.Message = fmt.Sprintf("the desired state pins serve.publicKey %s, but this host's key is %s (%s): pin this one, or put the pinned key's secret in place",
			serve.PublicKey, ck.Public.String(), filepath.Join(l.KeysDir, nix.PublicKeyFileName))
		return
	}
	if ck.NeedsRepair {
		r.Keys = []keyWant{{kind: keyCache, path: l.KeysDir, name: serve.KeyName}}
	}
	pub := ck.Public.String()
	msg := "binary-cache key " + pub
	r.Status, r.Reason, r.Message = true, "KeyPresent", msg
	if o.SignedWith == pub {
		return
	}
	closure := serve.SignClosure
	switch {
	case o.SignTargetErr != "":
		r.Status, r.Reason, r.Message, r.Failed = false, "SigningFailed", msg+"; "+o.SignTargetErr, true
		return
	case o.SignTarget == "":
		r.Records = []record{{recSignedWith, pub}}
		r.Message = msg + "; no " + closure + " to sign"
		return
	}
	key := pub + " " + o.SignTarget
	s := o.Sign
	switch {
	case s.Running:
		r.Status, r.Reason = false, "SigningClosure"
		r.Message = fmt.Sprintf("%s; signing the closure of %s with it (since %s)", msg, closure, s.RunningSince.UTC().Format(time.RFC3339))
		return
	case s.done(key) && s.Err == "":
		r.Records = []record{{recSignedWith, pub}}
		r.Message = msg + "; signed the closure of " + closure
		return
	case s.failed(key):
		r.Status, r.Reason, r.Failed = false, "SigningFailed", true
		r.Message = fmt.Sprintf("%s; sign the closure of %s: %s", msg, closure, s.Err)
		if due := s.Ended.Add(scaled(jobRetry.Delay(s.Failures), spread(pl.self.Name))); o.Now.Before(due) {
			pl.requeue(due.Sub(o.Now))
			return
		}
	default:
		r.Status, r.Reason = false, "SigningClosure"
		r.Message = fmt.Sprintf("%s; signing the closure of %s with it", msg, closure)
	}
	r.Sign = &signRequest{key: key, keyFile: secret, target: o.SignTarget}
}

// planServe lets in exactly the client keys of a serving host's consumers
// (that their agents report, or the file pins), where sshd reads them for
// nix-ssh. A host that no longer serves lets nobody in.
func (pl *planner) planServe() {
	o, self := pl.o, pl.self
	path := o.platform().authorizedKeys(o.Layout)
	if self.Serve == nil {
		if path != "" && o.Files[path].Exists {
			content, _ := nix.RenderAuthorizedKeys(nix.ProtocolSSH, nil)
			pl.p.Authorized = pl.add(&Resource{Files: []fileWant{authorizedKeysFile(path, content)}, Status: true})
		}
		return
	}
	r := &Resource{Type: status.ServeReady}
	var keys []nix.AuthorizedKey
	var served, waiting []string
	for _, c := range pl.file.Consumers(self.Name) {
		k := pl.keys[c.Name]
		if r, ok := o.Consumers[c.Name]; ok && k.ClientKey == nil && k.HostKey != nil && bytes.Equal(r.HostKey.Marshal(), k.HostKey.Marshal()) {
			// Its agent has told nothing since state.db was lost: the
			// client key let in with the host key trusted for it stays.
			k.ClientKey = r.Key
		}
		if k.ClientKey == nil || k.HostKey == nil {
			waiting = append(waiting, c.Name)
			continue
		}
		// With the host key trusted for it: remembered outside state.db.
		keys = append(keys, nix.AuthorizedKey{Key: k.ClientKey, Host: c.Name, HostKey: k.HostKey})
		served = append(served, c.Name)
		pl.p.Consumers = append(pl.p.Consumers, consumerKey{host: c.Name, key: k.ClientKey})
	}
	if path != "" && o.SSHDCheckInterval >= 0 && o.ClientKey.Usable() {
		keys = append(keys, nix.AuthorizedKey{Key: o.ClientKey.Key.Public}) // for its own check
	}
	if path != "" {
		obs := o.Files[path]
		content, err := nix.RenderAuthorizedKeys(self.Serve.Protocol, keys)
		switch {
		case obs.Err != nil:
			pl.add(r)
			r.Reason, r.Message, r.Failed = "Unreadable", obs.Err.Error(), true
			return
		case err != nil:
			pl.add(r)
			r.Reason, r.Message, r.Failed = "RenderFailed", err.Error(), true
			return
		}
		r.Files = []fileWant{authorizedKeysFile(path, content)}
		pl.p.Authorized = r
	}
	pl.add(r)
	if o.NixSSHUser != "" {
		r.Reason, r.Message, r.Failed = "NixSSHUserMissing", o.NixSSHUser, true
		return
	}
	r.Status, r.Reason = true, "Serving"
	r.Message = "serves " + cmp.Or(strings.Join(served, ", "), "nobody yet") + " over " + string(self.Serve.Protocol)
	if len(waiting) > 0 {
		r.Message += "; waiting for the client key of " + strings.Join(waiting, ", ")
	}
	pl.planSSHDCheck(r, path)
}

// planSSHDCheck has a serving host probe its own sshd as its consumers
// do, with its own client key (which planServe lets in), every
// SSHDCheckInterval. ServeReady and the host's facts say what it found:
// consumers withdraw a host whose sshd stopped at once, and need not
// probe it often. Where the operator's deploy writes nix-ssh's keys the
// host cannot let itself in, and its consumers probe it as often as
// before.
func (pl *planner) planSSHDCheck(r *Resource, path string) {
	o, self := pl.o, pl.self
	if path == "" || o.SSHDCheckInterval < 0 || !o.ClientKey.Usable() || !o.HostKey.Usable() {
		return
	}
	if !keysIn(o.Files[path].Content)[string(o.ClientKey.Key.Public.Marshal())] {
		// Written by this pass: checked from the next.
		r.Status, r.Reason = false, "CheckingSSHD"
		r.Message += "; its own sshd is checked once its key is let in"
		return
	}
	tuple := strings.Join([]string{"self", string(self.Serve.Protocol), hostname.Bracket(self.Address), strconv.Itoa(self.SSHPort),
		o.ClientKey.Key.Fingerprint(), o.HostKey.Key.Fingerprint()}, " ")
	pr := o.Probes[self.Name]
	check := func() {
		if o.Apply.Running {
			// The apply may restart nix-daemon: checked once it ends
			// (its end starts a pass).
			return
		}
		pl.p.Probes = append(pl.p.Probes, probeRequest{peer: self.Name, tuple: tuple, self: true, target: probe.Target{
			Address: self.Address, Port: self.SSHPort, Protocol: self.Serve.Protocol, Signer: o.ClientKey.Key.Signer,
			HostKey: o.HostKey.Key.Public, Timeout: ProbeTimeout, From: localIP(self.Address)}})
	}
	if !pr.done(tuple) {
		if !pr.Running {
			check()
		}
		// Not Ready before its own sshd has been seen to serve.
		r.Status, r.Reason = false, "CheckingSSHD"
		r.Message += "; checking its own sshd"
		return
	}
	every := o.SSHDCheckInterval
	if pr.Err != "" {
		every = min(every, jobRetry.Delay(pr.Failures))
	}
	next := pr.Ended.Add(scaled(every, spread(self.Name+" sshd")))
	if now, after := due(o.Now, next); now {
		check()
	} else {
		pl.requeue(after)
	}
	if pr.Err == "" {
		pl.p.ServeCheck = &peer.ServeCheck{Serving: true}
		r.Message += fmt.Sprintf("; its own sshd serves (checked every %v)", o.SSHDCheckInterval)
		return
	}
	if !pr.Passed.IsZero() {
		// Consumers are told once it served: until then, an sshd still
		// starting (or one never set up) is for their own probes to find.
		pl.p.ServeCheck = &peer.ServeCheck{Reason: pr.Reason}
	}
	r.Status, r.Reason = false, "SSHDNotServing"
	r.Message = fmt.Sprintf("its own sshd does not serve nix-ssh (%s); its consumers withdraw it until it does; checked again from %s",
		pr.Err, next.UTC().Format(time.RFC3339))
}

// keysIn returns the keys of an authorized_keys file, by their wire
// form, up to the first line that does not parse.
func keysIn(content []byte) map[string]bool {
	present := map[string]bool{}
	for rest := content; len(rest) > 0; {
		k, _, _, next, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			break
		}
		present[string(k.Marshal())] = true
		rest = next
	}
	return present
}

// authorizedKeysFile is nix-ssh's authorized keys file, which sshd reads
// as nix-ssh: the file 0644 in a directory of the agent's that is 0755,
// whatever the agent's umask.
func authorizedKeysFile(path string, content []byte) fileWant {
	return fileWant{path: path, content: content, mode: 0o644, dirMode: 0o755, ownDir: true}
}

// planNixSettings writes the host's Nix settings where its platform wants
// them, and has them applied and verified live once per change.
func (pl *planner) planNixSettings() {
	o, self, l := pl.o, pl.self, pl.o.Layout
	r := pl.add(&Resource{Type: status.NixSettingsApplied, Needs: []string{status.KeysReady}})
	var s nix.Settings
	var m nix.ModuleSettings
	if self.Serve != nil {
		if !pl.cacheKeyOnDisk {
			r.Reason = "WaitingForCacheKey"
			r.Message = "the Nix settings stay as they are until the signing key is usable; see CacheKeyReady"
			pl.p.Trips = nil // nothing is withdrawn
			return
		}
		s.SecretKeyFiles = []string{filepath.Join(l.KeysDir, nix.SecretKeyFileName)}
		r.Needs = append(r.Needs, status.CacheKeyReady)
	}
	var withdrawn []string
	for _, name := range self.SubstituteFrom {
		v := pl.verdicts[name]
		if v.url == "" {
			continue
		}
		if !v.Use {
			withdrawn = append(withdrawn, v.url)
			continue
		}
		h, k := pl.file.Host(name), pl.keys[name]
		s.Substituters = append(s.Substituters, v.url)
		s.TrustedPublicKeys = append(s.TrustedPublicKeys, k.CacheKey)
		m.KnownHosts = append(m.KnownHosts, nix.KnownHost{Name: name, HostNames: []string{hostname.WithPort(h.Address, h.SSHPort)}, PublicKey: k.HostKey})
	}
	if len(s.Substituters) > 0 {
		r.Needs = append(r.Needs, status.KnownHostsReady)
	}
	s.Fallback = len(self.SubstituteFrom) > 0

	var serveKeys []ssh.PublicKey
	for _, c := range pl.p.Consumers {
		serveKeys = append(serveKeys, c.key)
	}
	files, err := o.platform().nixFiles(o, s, m, serveKeys)
	if err != nil {
		r.Reason, r.Message, r.Failed = "RenderFailed", err.Error(), true
		pl.p.Trips = nil
		return
	}
	for _, f := range files {
		if err := o.Files[f.path].Err; err != nil {
			r.Reason, r.Message, r.Failed = "Unreadable", err.Error(), true
			pl.p.Trips = nil
			return
		}
	}
	r.Files = files
	sum := sha256.New()
	// Settings count as applied only by an apply that began after they
	// were last written: a file changed behind the agent's back and
	// written back is applied again.
	var written time.Time
	for _, f := range files {
		fmt.Fprintf(sum, "%s\x00%s\x00", f.path, f.content)
		obs := o.Files[f.path]
		if !obs.Exists && len(f.content) > 0 || obs.Exists && !bytes.Equal(obs.Content, f.content) {
			written = o.Now // this pass writes it
		} else if obs.ModTime.After(written) {
			written = obs.ModTime
		}
	}
	hash := hex.EncodeToString(sum.Sum(nil))
	if o.Applied.Hash == hash && !o.Applied.At.Before(written) {
		r.Status, r.Reason, r.Message = true, "Applied", "the Nix settings are live"
		return
	}
	req := &applyRequest{hash: hash, argv: self.Apply, settings: s, withdrawn: withdrawn, hint: o.platform().notLive(o)}
	a := o.Apply
	key := req.key()
	if a.done(key) && a.Started.Before(written) {
		a = jobState{Running: a.Running, RunningKey: a.RunningKey} // about older files
	}
	switch {
	case a.Running:
		r.Reason, r.Message = "Applying", "applying the Nix settings"
		if a.RunningKey != key {
			r.Message = "waiting for the apply of an earlier change to end"
		}
		return
	case a.done(key) && a.Err == "" && len(a.Missing) == 0:
		r.Records = []record{{recApplied, appliedRecord{Hash: hash, At: a.Started}}}
		r.Status, r.Reason, r.Message = true, "Applied", "the Nix settings are live"
		return
	case a.done(key) && a.Err == "":
		// Written, not live, and no apply command: the operator's deploy
		// applies them.
		r.Reason = "ApplyPending"
		r.Message = "the settings are written; they take effect when your deploy applies them (not live yet: " + strings.Join(a.Missing, "; ") + ")"
		if due := a.Ended.Add(ReverifyPending); o.Now.Before(due) {
			pl.requeue(due.Sub(o.Now))
			return
		}
	case a.failed(key):
		r.Reason, r.Message, r.Failed = a.Reason, a.Err, true
		if due := a.Ended.Add(scaled(jobRetry.Delay(a.Failures), spread(self.Name))); o.Now.Before(due) {
			pl.requeue(due.Sub(o.Now))
			return
		}
	default:
		r.Reason, r.Message = "Applying", "applying the Nix settings"
		if len(self.Apply) == 0 {
			r.Reason, r.Message = "Verifying", "checking whether the settings are live"
		}
	}
	r.Apply = req
}

// planSubstitutersReady sums up the peers a fetching host substitutes
// from: Ready while each serves, or went dark after it served (its
// substituter withdrawn; builds go on locally).
func (pl *planner) planSubstitutersReady() {
	if len(pl.self.SubstituteFrom) == 0 {
		return
	}
	r := pl.add(&Resource{Type: status.SubstitutersReady, Needs: []string{status.NixSettingsApplied}})
	var using, dark, waiting []string
	for _, name := range pl.self.SubstituteFrom {
		v := pl.verdicts[name]
		switch {
		case !v.Ready:
			waiting = append(waiting, name+": "+v.Message)
		case v.Use:
			using = append(using, name)
		default:
			dark = append(dark, name)
		}
	}
	if len(waiting) > 0 {
		r.Reason, r.Message = "WaitingForPeer", strings.Join(waiting, "; ")
		return
	}
	r.Status, r.Reason = true, "Configured"
	r.Message = "substitutes from " + cmp.Or(strings.Join(using, ", "), "nobody yet") + ", with fallback to building locally"
	if len(dark) > 0 {
		r.Reason = "PeerUnreachable"
		r.Message += "; unreachable, substituter withdrawn: " + strings.Join(dark, ", ")
	}
}

// planVerified records what the passing probes of this pass verified,
// and forgets the peers this host no longer fetches from.
func (pl *planner) planVerified() {
	next := map[string]string{}
	for _, name := range pl.self.SubstituteFrom {
		if t, ok := pl.o.Verified[name]; ok {
			next[name] = t
		}
	}
	for name, t := range pl.verified {
		next[name] = t
	}
	if !maps.Equal(next, pl.o.Verified) || pl.o.VerifiedUnreadable {
		pl.add(&Resource{Status: true, Records: []record{{recVerified, next}}})
	}
}

// facts is what this host tells its peers, from a finished pass.
func factsOf(o *Observation, p *Plan, st status.Status, authorizedApplied func(ssh.PublicKey) bool) (peer.Facts, bool) {
	if o.Self == nil || !o.HostKey.Usable() {
		return peer.Facts{}, false
	}
	f := peer.Facts{Version: peer.FactsVersion, Name: o.Self.Name, Address: o.Self.Address,
		Generation: st.Generation, ObservedGeneration: st.ObservedGeneration, Ready: st.Ready,
		HostKeys: []string{o.HostKey.Key.AuthorizedLine()}}
	if o.ClientKey.Usable() {
		f.ClientKey = o.ClientKey.Key.AuthorizedLine()
	}
	if o.Self.Serve != nil && o.CacheKey.Err == nil && !o.CacheKey.Missing {
		f.Serve = &peer.ServeFacts{Protocol: o.Self.Serve.Protocol, CacheKey: o.CacheKey.Public.String(),
			Authorized: []peer.AuthorizedFact{}, Check: p.ServeCheck}
		for _, c := range p.Consumers {
			f.Serve.Authorized = append(f.Serve.Authorized, peer.AuthorizedFact{Host: c.host,
				Fingerprint: ssh.FingerprintSHA256(c.key), Applied: authorizedApplied(c.key)})
		}
	}
	return f, true
}
