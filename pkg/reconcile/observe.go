package reconcile

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/bincache"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/safefile"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/state"
)

// platform is the platform of this host; only for an observation with a
// Self.
func (o *Observation) platform() platform { return platformOf(o.Self.Platform) }

// Observation is everything one pass knows: read once, at its start, and
// never carried into the next pass.
type Observation struct {
	Now    time.Time
	Layout layout.Layout

	// File is the desired state in force (the last good one), nil when
	// there is none; Generation is its generation.
	File       *desired.File
	Generation int64
	// FileProblem says why the file on disk is not in force, nil when
	// it is.
	FileProblem *Problem
	// StoreOpened says what the state store was like at the start.
	StoreOpened state.Opened
	// NewDesired is the record of a desired state not stored yet.
	NewDesired *state.Desired
	// Self is this host's entry in File, nil when not found (SelfErr).
	Self    *desired.Host
	SelfErr string
	// HostCAs are the CAs of trust: ca, nil in another mode.
	HostCAs []ssh.PublicKey

	ClientKey, HostKey KeyObs
	// NextHostKey is the key a host key rotation hands the host over to
	// (sshkeys.NextSuffix); HostKeyRequest the operator's request, and
	// SSHDReloaded the fingerprint of the host key sshd was last told to
	// read (sshdReload).
	NextHostKey    KeyObs
	HostKeyRequest hostKeyRequest
	SSHDReloaded   string
	// HostCert is the host certificate beside the host key (KEY-cert.pub),
	// nil when there is none or HostCertErr says why it is not usable.
	HostCert    *ssh.Certificate
	HostCertErr error
	// KeysDirMode is the mode of the directory of the private keys (0
	// when it is missing).
	KeysDirMode fs.FileMode
	CacheKey    CacheKeyObs

	// Files holds every file a pass may write or read, by path.
	Files map[string]FileObs
	// Executable is the agent's own program (for the post-build hook).
	Executable string
	// CacheCreds are the credentials of each cache the host reads or
	// publishes to, by name; CacheHealth and Publishing what the cache
	// tier knows of them now.
	CacheCreds  map[string]credsObs
	CacheHealth map[string]bincache.Health
	Publishing  map[string]bincache.PublishStats
	// Consumers are the consumers nix-ssh's authorized keys (the agent's
	// own file) let in, by name, with the host keys trusted for them.
	Consumers map[string]nix.AuthorizedKey

	// Peers is what peering knows of each host in File, by name.
	Peers map[string]peering.State
	// Watches are the peers this host keeps a watch open to, as the
	// desired state and its own files say now; nil while it has no host
	// key to authenticate with (this pass makes it). Act syncs them.
	Watches []peering.Target
	// WatchesBehind: a peer is not watched as the desired state says now
	// (a new peer, a pin that changed, the agent just started): what is
	// known of it is not known yet.
	WatchesBehind bool
	// Probes are the probe slots of the peers this host fetches from,
	// and of this host's check of its own sshd (by its own name).
	Probes map[string]jobState
	// SSHDCheckInterval is how often a serving host checks its own sshd;
	// negative when it does not.
	SSHDCheckInterval time.Duration
	// Verified is, by peer, what its last passing probe verified;
	// VerifiedUnreadable says the record could not be read (it is
	// written anew).
	Verified           map[string]string
	VerifiedUnreadable bool
	// Trips are when each peer's substituter was last withdrawn because
	// the peer went dark (newest last, within FlapWindow).
	Trips map[string][]time.Time

	// Apply is the apply-and-verify slot; Applied the Nix settings last
	// verified live, and when the apply that did it began.
	Apply   jobState
	Applied appliedRecord
	// Sign is the signing slot; SignedWith the binary-cache public key
	// the closure was last signed with; SignTarget the store path the
	// closure link points to ("" when there is none; SignTargetErr when
	// it cannot be resolved).
	Sign          jobState
	SignedWith    string
	SignTarget    string
	SignTargetErr string
	// NextCacheKey is the key a rotation replaces CacheKey with (see
	// nix.NextKeyDir); Missing when none is under way. Rotation is what
	// the operator asked for, Resigned what re-signing is owed or done,
	// Resign the re-signing slot.
	NextCacheKey CacheKeyObs
	Rotation     rotationRequest
	Resigned     resignRecord
	Resign       jobState

	// NixSSHUser says what is wrong with the user sshd hands Nix clients
	// to, "" when nothing is.
	NixSSHUser string
}

// Problem is a condition's reason and message.
type Problem struct {
	Reason, Message string
}

// KeyObs is an SSH key as found on disk.
type KeyObs struct {
	Key sshkeys.Key
	// Err says why the key file is unusable.
	Err     error
	State   sshkeys.Inspection
	ModTime time.Time
}

// Usable reports whether the key can be used in this pass.
func (k KeyObs) Usable() bool { return k.Err == nil && !k.State.Missing && k.Key.Signer != nil }

// CacheKeyObs is the binary-cache signing key as found on disk.
type CacheKeyObs struct {
	nix.CacheKeyState
	Err     error
	ModTime time.Time
}

// FileObs is a file as found on disk.
type FileObs struct {
	Exists  bool
	Content []byte
	Mode    fs.FileMode
	ModTime time.Time
	// Err says why the file cannot be read: not a regular file, too
	// large, unreadable.
	Err error
}

// observe reads everything the pass needs, and writes nothing.
func (h *Host) observe() *Observation {
	l := h.cfg.Layout
	o := &Observation{Now: time.Now(), Layout: l, StoreOpened: h.cfg.StoreOpened}
	h.observeDesired(o)
	if o.File == nil {
		return o
	}
	self, err := o.File.FindSelf(h.cfg.HostName, h.cfg.Hostnames...)
	if err != nil {
		o.SelfErr = err.Error()
		return o
	}
	o.Self = self
	o.HostCAs = hostCAs(o.File)

	o.ClientKey = inspectKey("client key", l.ClientKey)
	o.HostKey = inspectKey("host key", l.HostKey)
	o.HostKeyRequest = readRecord[hostKeyRequest](h, recHostKeyRotation)
	o.NextHostKey = KeyObs{State: sshkeys.Inspection{Missing: true}}
	if _, err := os.Lstat(l.HostKey + sshkeys.NextSuffix); err == nil || o.HostKeyRequest.From != "" {
		o.NextHostKey = inspectKey("next host key", l.HostKey+sshkeys.NextSuffix)
	}
	o.SSHDReloaded = readRecord[string](h, recSSHDReloaded)
	if o.HostKey.Usable() {
		o.HostCert, o.HostCertErr = sshkeys.ReadHostCert(l.HostKey+"-cert.pub", o.HostKey.Key.Public)
	}
	if st, err := os.Lstat(l.KeysDir); err == nil && st.IsDir() {
		o.KeysDirMode = st.Mode().Perm()
	}
	if self.Serve != nil {
		ks, err := nix.InspectCacheKey(l.KeysDir)
		if derr := checkDir(l.KeysDir); derr != nil {
			err = derr
		}
		o.CacheKey = CacheKeyObs{CacheKeyState: ks, Err: err, ModTime: modTime(filepath.Join(l.KeysDir, nix.SecretKeyFileName))}
		next := filepath.Join(l.KeysDir, nix.NextKeyDir)
		ks, err = nix.InspectCacheKey(next)
		o.NextCacheKey = CacheKeyObs{CacheKeyState: ks, Err: err, ModTime: modTime(filepath.Join(next, nix.SecretKeyFileName))}
	}

	o.Files = map[string]FileObs{}
	for _, p := range observedFiles(l, self) {
		o.Files[p] = readObserved(p)
	}
	o.Executable = h.cfg.Executable
	if names := cachesUsed(self); len(names) > 0 {
		o.CacheCreds = map[string]credsObs{}
		for _, name := range names {
			c, err := bincache.ReadCredentials(l.CacheCredentials(name), os.Geteuid())
			o.CacheCreds[name] = credsObs{c, err}
		}
	}
	if h.cfg.Caches != nil {
		o.CacheHealth, o.Publishing = h.cfg.Caches.Health(), h.cfg.Caches.Publishing()
	}
	if path := o.platform().authorizedKeys(l); path != "" {
		o.Consumers = nix.RememberedConsumers(o.Files[path].Content)
	}

	// A peer is known as watched for the desired state now: a watch
	// made for an older one (a pin that left the file) counts as none.
	// They authenticate with this host's key from their first connection
	// on (a peer tells its known peers whom it lets in): while the key is
	// still to be made, there are none.
	if !o.HostKey.State.Missing || o.HostKey.Err != nil {
		o.Watches = watchTargets(o.File, self, o.HostCAs, remembered(o))
	}
	o.Peers = map[string]peering.State{}
	o.Probes = map[string]jobState{}
	o.Trips = map[string][]time.Time{}
	for _, t := range o.Watches {
		st, ok := h.cfg.Watches.Get(t)
		if !ok {
			o.WatchesBehind = true
			continue
		}
		o.Peers[t.Name] = st
	}
	trips := readRecord[map[string][]time.Time](h, recTrips)
	for _, name := range self.SubstituteFrom {
		o.Probes[name] = h.jobs.get(probeSlot(name))
		if len(trips[name]) > 0 {
			o.Trips[name] = trips[name]
		}
	}

	if _, err := h.cfg.Store.Get(recVerified, &o.Verified); err != nil || o.Verified == nil {
		if err != nil {
			h.log.Warn("unreadable record in the state store; peers count as never verified until probed again", zap.String("record", recVerified), zap.Error(err))
			o.VerifiedUnreadable = true
		}
		o.Verified = map[string]string{}
	}
	o.SSHDCheckInterval = cmp.Or(h.cfg.SSHDCheckInterval, DefaultSSHDCheckInterval)
	o.Apply = h.jobs.get(slotApply)
	o.Applied = readRecord[appliedRecord](h, recApplied)
	if self.Serve != nil {
		o.Probes[self.Name] = h.jobs.get(probeSlot(self.Name))
		o.Sign = h.jobs.get(slotSign)
		o.SignedWith = readRecord[string](h, recSignedWith)
		o.SignTarget, o.SignTargetErr = h.resolveClosure(self.Serve.SignClosure)
		o.Rotation = readRecord[rotationRequest](h, recRotation)
		o.Resigned = readRecord[resignRecord](h, recResigned)
		o.Resign = h.jobs.get(slotResign)
		o.NixSSHUser = h.users.check(o.platform(), o.Now)
	}
	return o
}

// observeDesired reads and validates the desired-state file. A file that
// does not parse or validate is not applied: the last good one stays in
// force (report remembers the one a pass used).
func (h *Host) observeDesired(o *Observation) {
	o.File, o.Generation = h.desired, h.generation
	name := h.cfg.ConfigFile
	f, raw, err := h.parsed.load(name)
	if err != nil {
		reason := "Invalid"
		switch {
		case errors.Is(err, os.ErrNotExist):
			reason = "FileMissing"
		case errors.Is(err, safefile.ErrNotRegular):
			reason = "NotARegularFile"
		}
		keep := "no earlier desired state to keep: nothing is managed until it is fixed"
		if h.desired != nil {
			keep = fmt.Sprintf("keeping the last good desired state (generation %d)", h.generation)
		}
		msg := fmt.Sprintf("%s; %s", strings.TrimSpace(err.Error()), keep)
		h.log.Error("desired-state file not applied", zap.String("file", name), zap.String("reason", reason), zap.String("error", err.Error()), zap.String("action", keep))
		o.FileProblem = &Problem{Reason: reason, Message: msg}
		return
	}
	d, isNew, err := h.cfg.Store.NextDesired(name, raw, f.Hash())
	if err != nil {
		o.FileProblem = &Problem{Reason: "StateStoreError", Message: fmt.Sprintf("read the last desired state: %v", err)}
		return
	}
	if isNew {
		// Stored with the status of this pass.
		o.NewDesired = &d
	}
	o.File, o.Generation = f, d.Generation
}

// parsedFile remembers the desired-state file's last content and what
// it parsed to. Every pass reads the file; only new content is parsed
// again, so a pass costs the same whatever the size of the fleet.
type parsedFile struct {
	raw  []byte
	file *desired.File
	err  error
}

// load reads the file at name and parses it unless its content is the
// one parsed last; the result is shared between passes and never changed.
func (p *parsedFile) load(name string) (*desired.File, []byte, error) {
	raw, _, err := desired.ReadFile(name)
	if err != nil {
		return nil, nil, err
	}
	if p.raw == nil || !bytes.Equal(raw, p.raw) {
		f, err := desired.Parse(name, raw)
		*p = parsedFile{raw: raw, file: f, err: err}
	}
	return p.file, raw, p.err
}

// readRecord reads a record of the store. One that cannot be read
// counts as absent: the pass then does again what the record would have
// spared it (apply and verify, sign), and writing the record heals it.
func readRecord[T any](h *Host, key string) T {
	var v T
	if _, err := h.cfg.Store.Get(key, &v); err != nil {
		h.log.Warn("unreadable record in the state store; doing its work again", zap.String("record", key), zap.Error(err))
		return *new(T)
	}
	return v
}

// resolveClosure resolves the closure link a serving host signs.
func (h *Host) resolveClosure(closure string) (string, string) {
	target, err := filepath.EvalSymlinks(h.cfg.Layout.In(closure))
	if errors.Is(err, fs.ErrNotExist) {
		return "", ""
	}
	if err != nil {
		return "", fmt.Sprintf("resolve %s: %v", closure, err)
	}
	if root := h.cfg.Layout.Root; root != "" && root != "/" {
		// Under a root the link points into the real store.
		if rel, err := filepath.Rel(root, target); err == nil && !strings.HasPrefix(rel, "..") {
			target = "/" + rel
		}
	}
	return target, ""
}

func inspectKey(what, path string) KeyObs {
	if err := checkDir(filepath.Dir(path)); err != nil {
		return KeyObs{Err: fmt.Errorf("%s %s: %w", what, path, err)}
	}
	k, st, err := sshkeys.Inspect(what, path)
	return KeyObs{Key: k, State: st, Err: err, ModTime: modTime(path)}
}

// userCheck remembers the last check of the nix-ssh user: looking it up
// costs the name service a group walk. It is done again when /etc/passwd
// or /etc/group change, and at least every userCheckTTL (other sources
// of users change without touching them).
type userCheck struct {
	key     string
	at      time.Time
	problem string
}

const userCheckTTL = time.Minute

func (u *userCheck) check(p platform, now time.Time) string {
	key := fmt.Sprintf("%T", p)
	for _, f := range []string{"/etc/passwd", "/etc/group"} {
		if st, err := os.Stat(f); err == nil {
			key += fmt.Sprintf(" %d.%d", st.ModTime().UnixNano(), st.Size())
		}
	}
	if key != u.key || now.Sub(u.at) >= userCheckTTL || now.Before(u.at) {
		u.key, u.at, u.problem = key, now, p.nixSSHUser()
	}
	return u.problem
}
