package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/probe"
)

// peerStore asks the stores of this host's peers about paths.
type peerStore struct {
	cli    *nix.CLI
	layout layout.Layout
	file   *desired.File // nil: every peer is asked through the nix CLI
}

// infos asks the store behind the substituter URL u (the peer's) which of
// paths it holds, and what it says of them. Over the ssh protocol that is
// one QueryPathInfos (one round trip), with this host's client key and the
// host key the URL pins; over ssh-ng, the nix CLI (one connection).
func (s peerStore) infos(ctx context.Context, u string, paths []string) (map[string]nix.PathInfo, error) {
	parsed, err := url.Parse(u)
	if err != nil || parsed.Scheme != "ssh" || s.file == nil {
		return s.cli.RemotePathInfos(ctx, u, paths)
	}
	host := hostAt(s.file, parsed.Hostname())
	key := nix.PinnedHostKeys([]byte(u))[parsed.Hostname()]
	if host == nil || key == nil {
		return s.cli.RemotePathInfos(ctx, u, paths)
	}
	raw, err := os.ReadFile(s.layout.ClientKey)
	if err != nil {
		return nil, fmt.Errorf("read this host's client key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(raw)
	if err != nil {
		return nil, fmt.Errorf("parse this host's client key %s: %w", s.layout.ClientKey, err)
	}
	got, err := probe.QueryPathInfos(ctx, probe.Target{Address: host.Address, Port: host.SSHPort, Protocol: nix.ProtocolSSH,
		Signer: signer, HostKey: key, Timeout: 2 * time.Minute}, paths)
	if err != nil {
		return nil, fmt.Errorf("ask %s: %w", host.Name, err)
	}
	out := make(map[string]nix.PathInfo, len(got))
	for p, i := range got {
		out[p] = nix.PathInfo{Path: i.Path, NarHash: i.NarHash, NarSize: i.NarSize, References: i.References, Signatures: i.Sigs}
	}
	return out, nil
}

// hostAt is the host of f at address, or nil.
func hostAt(f *desired.File, address string) *desired.Host {
	for _, h := range f.Hosts {
		if h.Address == address {
			return h
		}
	}
	return nil
}
