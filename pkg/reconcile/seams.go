package reconcile

import (
	"context"
	"fmt"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/bincache"
	"github.com/nixpeer/nixpeer/pkg/command"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/peering"
	"github.com/nixpeer/nixpeer/pkg/probe"
)

// The side effects of a pass sit behind these small interfaces, so that
// the pass can be tested with fakes; the daemon gives the real ones.

// Nix is what the agent asks of Nix and of the host's apply command.
type Nix interface {
	// ShowConfig returns Nix's effective settings (nix show-config).
	ShowConfig(ctx context.Context) (map[string]string, error)
	// SignClosure signs the closure of storePath with the secret key in
	// keyFile.
	SignClosure(ctx context.Context, keyFile, storePath string) error
	// Resign adds a signature of the key in keyFile to every path with a
	// good signature of the key from (NAME:BASE64), with ultimateOnly of
	// those built here; it returns how many it signed.
	Resign(ctx context.Context, keyFile, from string, ultimateOnly bool) (int, error)
	// Apply runs the host's apply command and returns the tail of its
	// output.
	Apply(ctx context.Context, argv []string) (string, error)
}

// Prober checks that a peer serves its store over SSH to this host.
type Prober interface {
	Probe(ctx context.Context, t probe.Target) (probe.Result, error)
}

// Watches are the watches of peers peering keeps, and what each knows.
type Watches interface {
	// Sync makes the watches those of targets.
	Sync(targets []peering.Target) error
	// Get returns what is known right now of the peer watched as t;
	// false while it is not watched so (see peering.Manager.Get).
	Get(t peering.Target) (peering.State, bool)
	// SetIdentity gives the key the watches authenticate with.
	SetIdentity(hostKey ssh.Signer)
	// Turn waits for a turn to probe the sshd of peer name, given by its
	// agent over the watch, and returns the function that ends it.
	Turn(ctx context.Context, name string) (func(), error)
}

// Port is this host's peer port.
type Port interface {
	// Ensure makes it listen on addr with hostKey, presenting cert (a
	// host certificate of hostKey) too when it is not nil.
	Ensure(addr string, hostKey ssh.Signer, cert *ssh.Certificate) error
	// Publish gives peers f from now on.
	Publish(f peer.Facts)
}

// Caches is the binary-cache tier (bincache.Tier): the reader of the
// caches this host reads, the publisher of those it publishes to.
type Caches interface {
	Ensure(c bincache.Config) error
	Health() map[string]bincache.Health
	Publishing() map[string]bincache.PublishStats
	// Resign brings a key rotation to the buckets published to (see
	// bincache.Tier.Resign).
	Resign(ctx context.Context, keyFile, from string, revoked bool) (int, error)
}

// SystemNix is the machine's Nix: the nix command (with env added, for
// example NIX_CONF_DIR under --root) and the apply command, each run in a
// process group of its own that is killed when its context ends.
func SystemNix(env []string) Nix { return systemNix{&nix.CLI{Env: env}} }

// systemNix has nix.CLI's ShowConfig, SignClosure and Resign.
type systemNix struct{ *nix.CLI }

func (s systemNix) Apply(ctx context.Context, argv []string) (string, error) {
	res, err := command.Run(ctx, argv, nil)
	out := command.Tail(append(res.Stdout, res.Stderr...), outputTail)
	if err != nil {
		return out, fmt.Errorf("%w; output: %s", err, out)
	}
	return out, nil
}

// SSHProber probes peers with the Go probe (pkg/probe).
type SSHProber struct{}

// Probe runs probe.Probe.
func (SSHProber) Probe(ctx context.Context, t probe.Target) (probe.Result, error) {
	return probe.Probe(ctx, t)
}
