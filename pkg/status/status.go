// Package status holds what an agent reports about its host: Kubernetes-style
// conditions, generations and peers. The daemon fills it, the socket serves it
// as JSON, and `nixpeer status` prints it.
package status

import (
	"slices"
	"time"
)

// ConditionStatus is True, False or Unknown.
type ConditionStatus string

// The three condition statuses.
const (
	True    ConditionStatus = "True"
	False   ConditionStatus = "False"
	Unknown ConditionStatus = "Unknown"
)

// Condition types the agent reports. Ready summarizes all the others.
const (
	Ready             = "Ready"
	DesiredStateValid = "DesiredStateValid"
	KeysReady         = "KeysReady"
	KnownHostsReady   = "KnownHostsReady"
	// A serving host's binary-cache signing key.
	CacheKeyReady = "CacheKeyReady"
	// A serving host: sshd can hand its consumers to nix-ssh.
	ServeReady = "ServeReady"
	// The Nix settings are written, applied and live.
	NixSettingsApplied = "NixSettingsApplied"
	// A fetching host has every peer as a substituter.
	SubstitutersReady = "SubstitutersReady"
	// The agent's peer port listens.
	PeerPortReady = "PeerPortReady"
	// No peer offers a host key that is refused.
	PeersTrusted = "PeersTrusted"
	// The state store (state.db) is sound, or was started afresh.
	StateStoreReady = "StateStoreReady"
	// The caches on object stores that the host reads or publishes to
	// are reachable with its credentials, and publishing keeps up.
	CachesReady = "CachesReady"
)

// Cache is where a host stands with one cache on an object store. Its
// counts are in the metrics (nixpeer_cache_*), not here: a status changes
// only when something an operator acts on does.
type Cache struct {
	Name string `json:"name"`
	// Read: the host reads the cache through its agent, at URL.
	// Publish: the host uploads what it builds to it.
	Read    bool   `json:"read,omitempty"`
	URL     string `json:"url,omitempty"`
	Publish bool   `json:"publish,omitempty"`
	// Credentials is "ok", "missing", "loose" (readable by others),
	// "invalid", or "rejected" (the store refuses them), for the host's
	// credentials file at CredentialsFile.
	Credentials     string `json:"credentials"`
	CredentialsFile string `json:"credentialsFile"`
	// Reachable: the last request or check of the store reached it
	// (read caches); Since when that last changed.
	Reachable bool      `json:"reachable"`
	Since     time.Time `json:"since,omitzero"`
	// Error is the last failure to reach the store or to publish.
	Error string `json:"error,omitempty"`
}

// PeerState is where peering with a peer stands.
type PeerState string

// Peer states, in the order production goes through them for a peer it
// fetches from; a consumer, a reader or a publisher is WaitingForFacts,
// HostKeyRefused or KeysKnown.
const (
	// PeerWaitingForFacts: its agent has not told, over a trusted
	// connection, what this host needs to know.
	PeerWaitingForFacts PeerState = "WaitingForFacts"
	// PeerHostKeyRefused: it offers a host key that is not trusted.
	PeerHostKeyRefused PeerState = "HostKeyRefused"
	// PeerWaitingForKnownHosts: root's known_hosts could not be written.
	PeerWaitingForKnownHosts PeerState = "WaitingForKnownHosts"
	// PeerWaitingForAuthorization: it has not let this host's client key
	// in yet.
	PeerWaitingForAuthorization PeerState = "WaitingForAuthorization"
	// PeerProbing: the probe of its sshd is under way.
	PeerProbing PeerState = "Probing"
	// PeerProbeFailed: its agent answers, but its sshd does not serve
	// this host.
	PeerProbeFailed PeerState = "ProbeFailed"
	// PeerServing: verified serving; it is a substituter.
	PeerServing PeerState = "Serving"
	// PeerUnreachable: it served this host, and went dark; its
	// substituter is withdrawn until it answers again.
	PeerUnreachable PeerState = "Unreachable"
	// PeerKeysKnown: a consumer whose client key is known, a reader whose
	// trusted cache keys are, a publisher whose cache key is.
	PeerKeysKnown PeerState = "KeysKnown"
)

// Trust is how a peer's SSH host key is trusted.
type Trust string

// Trust of a peer's host key.
const (
	TrustPinned    Trust = "pinned"    // hostKey in the desired-state file
	TrustTOFU      Trust = "tofu"      // trusted on first use, remembered
	TrustApproved  Trust = "approved"  // approved by an operator on this host, remembered
	TrustCertified Trust = "certified" // an SSH host certificate of a CA the file names
	TrustNone      Trust = "none"      // not trusted yet
)

// Peer roles.
const (
	RoleSubstituter = "substituter"
	RoleConsumer    = "consumer"
	// RoleReader reads a cache this host publishes to (and fetches
	// nothing from it over SSH); RolePublisher publishes to a cache this
	// host reads (and is not one of its substituters).
	RoleReader    = "reader"
	RolePublisher = "publisher"
)

// Condition follows the Kubernetes API conventions: LastTransitionTime
// changes only when Status flips.
type Condition struct {
	Type               string          `json:"type"`
	Status             ConditionStatus `json:"status"`
	Reason             string          `json:"reason"`
	Message            string          `json:"message"`
	LastTransitionTime time.Time       `json:"lastTransitionTime"`
}

// Peer is what this host knows of another host it fetches from or serves.
type Peer struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// Role is "substituter" for a host this one fetches from, "consumer" for
	// one that fetches from this host.
	Role string `json:"role"`
	// Trust is how its host key is trusted.
	Trust              Trust  `json:"trust"`
	HostKeyFingerprint string `json:"hostKeyFingerprint,omitempty"`
	// RefusedHostKeyFingerprint is the host key the peer offers while it
	// is refused (Reason says why: HostKeyChanged, HostKeyMismatch,
	// HostKeyNotPinned, HostKeyNotApproved); HostKeyFingerprint is then
	// the trusted one, if any.
	RefusedHostKeyFingerprint string `json:"refusedHostKeyFingerprint,omitempty"`
	// PendingHostKey is the key ("ssh-ed25519 BASE64") that awaits an
	// operator's approval (Reason HostKeyNotApproved).
	PendingHostKey string `json:"pendingHostKey,omitempty"`
	Reason         string `json:"reason,omitempty"`
	// State is where peering with it stands (see PeerState).
	State   PeerState `json:"state"`
	Message string    `json:"message,omitempty"`
	// Connected is set while a watch of its agent is open.
	Connected bool `json:"connected"`
	// FactsAt is when its agent last told something new.
	FactsAt *time.Time `json:"factsAt,omitempty"`
	// Since is when its agent's connection last came up or went down.
	Since *time.Time `json:"since,omitempty"`
}

// Rotation is where a rotation of the binary-cache signing key stands.
type Rotation struct {
	// Phase is MakingKey, Trusting, SigningWithBoth, Resigning,
	// Retiring or Revoking.
	Phase string `json:"phase"`
	// From is the name of the key being replaced, To of its successor.
	From string `json:"from"`
	To   string `json:"to"`
	// WaitingOn are the consumers that do not trust the next key yet.
	WaitingOn []string `json:"waitingOn,omitempty"`
	Message   string   `json:"message"`
}

// File is a file the agent manages on this host.
type File struct {
	Path      string    `json:"path"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// Status is the host's whole report.
type Status struct {
	Host               string      `json:"host"`
	ConfigFile         string      `json:"configFile"`
	Ready              bool        `json:"ready"`
	Generation         int64       `json:"generation"`
	ObservedGeneration int64       `json:"observedGeneration"`
	Conditions         []Condition `json:"conditions"`
	Peers              []Peer      `json:"peers"`
	Files              []File      `json:"files,omitempty"`
	LastError          string      `json:"lastError,omitempty"`
	// Warnings say what is wrong without keeping the host from Ready.
	Warnings []string `json:"warnings,omitempty"`
	// Rotation is the rotation of this serving host's binary-cache key
	// under way; absent when none is.
	Rotation *Rotation `json:"rotation,omitempty"`
	// HostKeyRotation is the rotation of this host's SSH host key under
	// way (From and To are fingerprints); absent when none is.
	HostKeyRotation *Rotation `json:"hostKeyRotation,omitempty"`
	// Caches are the caches on object stores the host reads or
	// publishes to.
	Caches        []Cache   `json:"caches,omitempty"`
	LastReconcile time.Time `json:"lastReconcile"`
}

// Carry returns c with the transition time of the condition of its type
// in prev when its status did not flip, now otherwise: LastTransitionTime
// changes only when Status flips.
func Carry(prev []Condition, c Condition, now time.Time) Condition {
	c.LastTransitionTime = now
	if old := Find(prev, c.Type); old != nil && old.Status == c.Status && !old.LastTransitionTime.IsZero() {
		c.LastTransitionTime = old.LastTransitionTime
	}
	return c
}

// Find returns the condition of type t, or nil.
func Find(conds []Condition, t string) *Condition {
	if i := slices.IndexFunc(conds, func(c Condition) bool { return c.Type == t }); i >= 0 {
		return &conds[i]
	}
	return nil
}

// Clone returns a deep copy of s; an empty list stays an empty list (a
// JSON [], not null).
func (s Status) Clone() Status {
	s.Conditions = slices.Clone(s.Conditions)
	s.Peers = slices.Clone(s.Peers)
	s.Files = slices.Clone(s.Files)
	s.Warnings = slices.Clone(s.Warnings)
	s.Caches = slices.Clone(s.Caches)
	for _, r := range []**Rotation{&s.Rotation, &s.HostKeyRotation} {
		if *r != nil {
			c := **r
			c.WaitingOn = slices.Clone(c.WaitingOn)
			*r = &c
		}
	}
	return s
}
