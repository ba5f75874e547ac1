package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/probe"
	"github.com/nixpeer/nixpeer/pkg/reconcile"
)

// pathInfos asks the store of a peer which of paths it holds, and what it
// says of them. Over the ssh protocol that is one QueryPathInfos (one
// round trip), with this host's client key and the host key the agent
// trusts for the peer; over ssh-ng, the nix CLI with the peer's
// substituter URL (one connection).
func pathInfos(ctx context.Context, cli *nix.CLI, s reconcile.PeerStore, paths []string) (map[string]nix.PathInfo, error) {
	if s.Target.Protocol != nix.ProtocolSSH {
		return cli.RemotePathInfos(ctx, s.URL, paths)
	}
	t := s.Target
	t.Timeout = 2 * time.Minute
	got, err := probe.QueryPathInfos(ctx, t, paths)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", s.Name, err)
	}
	return got, nil
}

// storeAt is the peer's store whose substituter URL is u (by meaning: Nix
// prints the URLs it uses its own way), asked as the agent reaches it; for
// another store, one with just the URL, asked through the nix CLI.
func storeAt(stores []reconcile.PeerStore, u string) reconcile.PeerStore {
	for _, s := range stores {
		if nix.SameStoreURL(s.URL, u) {
			return s
		}
	}
	return reconcile.PeerStore{URL: u}
}
