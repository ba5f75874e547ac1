package peer

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nixpeer/nixpeer/pkg/nix"
)

// FactsVersion is the version of the Facts document this package writes
// and the only one it accepts.
const FactsVersion = 1

// MaxDocumentSize bounds one encoded document, newline excluded.
const MaxDocumentSize = 1 << 20

// ErrInvalidFacts is wrapped by every error about a document a peer sent
// that is not valid JSON, not this version, or refused by Validate.
var ErrInvalidFacts = errors.New("invalid facts")

// ErrDocumentTooLarge is wrapped by the error about a document (a line)
// longer than MaxDocumentSize.
var ErrDocumentTooLarge = errors.New("document too large")

// Facts is what an agent tells its peers about its host. It holds public
// values only.
type Facts struct {
	// Version is FactsVersion.
	Version int `json:"version"`
	// Name is the host's name in the desired-state file (a DNS label).
	Name string `json:"name"`
	// Address is how peers reach the host: a DNS name or an IP address,
	// without port or brackets.
	Address string `json:"address"`
	// Generation is the generation of the desired state the agent holds.
	Generation int64 `json:"generation"`
	// ObservedGeneration is the generation its current status describes.
	ObservedGeneration int64 `json:"observedGeneration"`
	// Ready is the agent's summary Ready condition.
	Ready bool `json:"ready"`
	// HostKeys are sshd's public host keys as "ssh-ed25519 BASE64" lines,
	// without comment. There is at least one.
	HostKeys []string `json:"hostKeys"`
	// ClientKey is the public key the agent fetches from its peers with,
	// as "ssh-ed25519 BASE64"; empty while the host has no usable one.
	ClientKey string `json:"clientKey"`
	// NextHostKey is, during a rotation of the host's SSH host key, the
	// key that replaces the first of HostKeys, "ssh-ed25519 BASE64";
	// NextHostKeyProof is the current key's signature handing the host
	// over to it (sshkeys.HandoverProof). Peers that trust the current
	// key trust the next one on its word.
	NextHostKey      string `json:"nextHostKey,omitempty"`
	NextHostKeyProof string `json:"nextHostKeyProof,omitempty"`
	// AcceptedHostKeys are the next host keys of its peers that the host
	// accepted (and writes where its ssh reads them): a host rotating its
	// key waits for all of its peers to list it.
	AcceptedHostKeys []string `json:"acceptedHostKeys,omitempty"`
	// TrustedCacheKeys are the binary-cache public keys of its peers that
	// the host's Nix settings trust, live: verified since they were
	// written. A serving host in a key rotation waits for them.
	TrustedCacheKeys []string `json:"trustedCacheKeys,omitempty"`
	// Serve is set when the host shares its Nix store.
	Serve *ServeFacts `json:"serve,omitempty"`
}

// ServeFacts describes how a host shares its Nix store.
type ServeFacts struct {
	// Protocol is ssh (nix-store --serve) or ssh-ng (nix-daemon --stdio).
	Protocol nix.Protocol `json:"protocol"`
	// CacheKey is the binary-cache public key, "NAME:BASE64" of 32 bytes.
	CacheKey string `json:"cacheKey"`
	// NextCacheKey is, during a key rotation, the key that replaces
	// CacheKey: consumers trust both until it does.
	NextCacheKey string `json:"nextCacheKey,omitempty"`
	// Authorized lists the client keys the host lets in.
	Authorized []AuthorizedFact `json:"authorized"`
	// Check is what the host's agent found when it last probed its own
	// sshd as a consumer does; nil before the first check, or where the
	// agent does not write nix-ssh's authorized keys (it cannot let
	// itself in there).
	Check *ServeCheck `json:"check,omitempty"`
}

// ServeCheck is the result of a serving host's probe of its own sshd.
// It changes only when the result does: consumers act on it at once (a
// host whose sshd stopped is withdrawn), and need not probe it often.
type ServeCheck struct {
	// Serving is set when the probe passed.
	Serving bool `json:"serving"`
	// Reason says why it failed, in a few lowercase words ("refused",
	// "timeout", "wrong protocol", ...); empty when Serving.
	Reason string `json:"reason,omitempty"`
}

// AuthorizedFact is one client key a serving host lets in.
type AuthorizedFact struct {
	// Host is the name of the host the key belongs to.
	Host string `json:"host"`
	// Fingerprint is the key's SHA256 fingerprint, "SHA256:..." as
	// ssh-keygen -l prints it.
	Fingerprint string `json:"fingerprint"`
	// Applied is set once the key is written where sshd reads it, not
	// just decided.
	Applied bool `json:"applied"`
}

// encodeFacts validates f and returns it as one JSON line with its
// trailing newline.
func encodeFacts(f Facts) ([]byte, error) {
	if err := f.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(f)
	if err != nil {
		return nil, fmt.Errorf("encode facts: %w", err)
	}
	if len(b) > MaxDocumentSize {
		return nil, fmt.Errorf("encode facts: %w: %d bytes, the limit is %d", ErrDocumentTooLarge, len(b), MaxDocumentSize)
	}
	return append(b, '\n'), nil
}

// DecodeFacts decodes one document strictly and validates it: a single
// JSON object of at most MaxDocumentSize bytes (surrounding white space
// allowed), version FactsVersion, only known field names spelled exactly,
// no field twice, and values Validate accepts. Errors wrap ErrInvalidFacts
// or ErrDocumentTooLarge; they never quote key material.
func DecodeFacts(data []byte) (Facts, error) {
	if len(data) > MaxDocumentSize {
		return Facts{}, fmt.Errorf("%w: %d bytes, the limit is %d", ErrDocumentTooLarge, len(data), MaxDocumentSize)
	}
	var head struct {
		Version *int `json:"version"`
	}
	if err := json.Unmarshal(data, &head); err != nil {
		return Facts{}, fmt.Errorf("%w: not a JSON object: %v", ErrInvalidFacts, err)
	}
	switch {
	case head.Version == nil:
		return Facts{}, fmt.Errorf("%w: no version", ErrInvalidFacts)
	case *head.Version != FactsVersion:
		return Facts{}, fmt.Errorf("%w: version %d is not supported; this agent reads version %d", ErrInvalidFacts, *head.Version, FactsVersion)
	}
	if err := checkKeys(data); err != nil {
		return Facts{}, fmt.Errorf("%w: %v", ErrInvalidFacts, err)
	}
	// json.Unmarshal above refused data after the document.
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f Facts
	if err := dec.Decode(&f); err != nil {
		return Facts{}, fmt.Errorf("%w: %v", ErrInvalidFacts, err)
	}
	if err := f.Validate(); err != nil {
		return Facts{}, fmt.Errorf("%w: %v", ErrInvalidFacts, err)
	}
	return f, nil
}
