package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/desired"
)

func cmdValidate(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("validate")
	config := fs.String("config", DefaultConfig, "desired-state `FILE`")
	host := fs.String("host", "", "show only what the agent would manage on host `NAME`")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	f, _, err := desired.Load(*config)
	if err != nil {
		var list desired.Errors
		if errors.As(err, &list) {
			for _, e := range list {
				fmt.Fprintln(stderr, e.Error())
			}
			return &exitError{code: 1, msg: fmt.Sprintf("%s: %d error(s); nothing would be applied", *config, len(list))}
		}
		return &exitError{code: 1, msg: fmt.Sprintf("nixpeer validate: %v", err)}
	}
	hosts := f.Hosts
	if *host != "" {
		h := f.Host(*host)
		if h == nil {
			return &exitError{code: 1, msg: fmt.Sprintf("%s: no host named %q (hosts: %s)", *config, *host, strings.Join(f.Names(), ", "))}
		}
		hosts = []*desired.Host{h}
	}
	fmt.Fprintf(stdout, "%s: valid (%s, %d hosts, trust %s)\n", *config, f.APIVersion, len(f.Hosts), f.Trust)
	for i := range hosts {
		describeHost(stdout, f, hosts[i])
	}
	return nil
}

// describeHost prints what the agent would manage on h.
func describeHost(w io.Writer, f *desired.File, h *desired.Host) {
	fmt.Fprintf(w, "\nhost %s (%s, platform %s)\n", h.Name, h.Address, h.Platform)
	fmt.Fprintf(w, "  keys: its SSH client key and SSH host key (created once where missing)\n")
	if h.Serve != nil {
		var consumers []string
		for _, c := range f.Consumers(h.Name) {
			consumers = append(consumers, c.Name)
		}
		fmt.Fprintf(w, "  serves: its Nix store over %s (ssh port %d) to %s, signed with binary-cache key %q\n",
			h.Serve.Protocol, h.SSHPort, cmp.Or(strings.Join(consumers, ", "), "no host yet"), h.Serve.KeyName)
	}
	for _, name := range h.SubstituteFrom {
		p := f.Host(name)
		trust := "host key trusted on first use"
		if p.HostKey != "" {
			trust = "host key pinned"
		}
		fmt.Fprintf(w, "  substitutes from: %s at %s (ssh port %d, peer port %d, %s)\n", p.Name, p.Address, p.SSHPort, p.PeerPort, trust)
	}
	if len(h.SubstituteFrom) > 0 || h.Serve != nil {
		apply := "none: files are written and the status says ApplyPending"
		if len(h.Apply) > 0 {
			apply = strings.Join(h.Apply, " ")
		}
		fmt.Fprintf(w, "  apply after a settings change: %s\n", apply)
	}
	fmt.Fprintf(w, "  listens for peers on port %d\n", h.PeerPort)
}
