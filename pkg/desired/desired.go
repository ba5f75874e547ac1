// Package desired reads the desired-state file that every nixpeer agent of
// a fleet shares: which hosts there are, how to reach them, which ones
// serve their Nix store over SSH and which substitute from which.
//
// Parsing is strict: every unknown or duplicated field, wrong type, value
// out of range or inconsistency between hosts is an Error with the file,
// line and column and what would be right, and values are restricted to
// syntaxes that can be written into ssh_config, known_hosts, nix.conf or
// Nix files without quoting. Defaults are filled in after parsing, so the
// rest of nixpeer reads plain values.
package desired

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/safefile"
)

// APIVersion is the only apiVersion this package reads.
const APIVersion = "nixpeer/v1"

// Trust says how an agent trusts a peer's SSH host key.
type Trust string

const (
	// TrustApprove (the default) trusts a peer's host key that is pinned
	// in the file, or that an operator approved on this host (`nixpeer
	// trust approve`); any other key awaits approval and nothing is
	// written for the peer meanwhile.
	TrustApprove Trust = "approve"
	// TrustTOFU trusts a peer's host key on first use: whoever answers
	// first at the peer's address. Only when written explicitly.
	TrustTOFU Trust = "tofu"
	// TrustPinned requires a hostKey for every host that serves a peer
	// or substitutes from one.
	TrustPinned Trust = "pinned"
	// TrustCA trusts a peer's host key that an SSH host certificate,
	// signed by one of the file's hostCAs and valid now, names for the
	// peer's name or address.
	TrustCA Trust = "ca"
)

// Platform says how a host's Nix settings are managed.
type Platform string

const (
	// PlatformNixOS: the agent writes Nix settings on a NixOS host (the
	// default).
	PlatformNixOS Platform = "nixos"
	// PlatformNixOSModule: the agent writes a NixOS module file that the
	// host's configuration imports.
	PlatformNixOSModule Platform = "nixos-module"
	// PlatformNix: Nix on another Linux distribution.
	PlatformNix Platform = "nix"
)

// Defaults filled in when a field is absent.
const (
	DefaultPeerPort        = 7722
	DefaultSSHPort         = 22
	DefaultNixOSModuleFile = "/etc/nixos/nixpeer.nix"
	DefaultSignClosure     = "/run/current-system"
	DefaultCachePort       = 7723
	DefaultRegion          = "us-east-1"
)

// DefaultApply returns the command run after the agent changes Nix
// settings when a host sets no apply: restarting nix-daemon for nixos and
// nix, nothing (an empty list) for nixos-module, whose file takes effect
// at the next nixos-rebuild.
func DefaultApply(p Platform) []string {
	if p == PlatformNixOSModule {
		return []string{}
	}
	return []string{"systemctl", "restart", "nix-daemon.service"}
}

// File is a parsed and validated desired-state file, defaults filled in.
type File struct {
	// Filename is the name the file was parsed under, for messages.
	Filename   string `json:"-"`
	APIVersion string
	Trust      Trust
	// HostCAs are, with trust mode ca, the public keys ("ssh-ed25519
	// BASE64") of the CAs whose host certificates are trusted.
	HostCAs []string `json:",omitempty"`
	// Caches are the binary caches on object stores, in file order.
	Caches []*Cache `json:",omitempty"`
	// Hosts are in file order.
	Hosts []*Host
}

// Host is one host of the fleet.
type Host struct {
	// Name is a lowercase DNS label, unique in the file.
	Name string
	// Address is how peers reach the host: a DNS name or an IPv4 or IPv6
	// address (no brackets), unique in the file.
	Address string
	// PeerPort is the agent's peer port.
	PeerPort int
	// SSHPort is the host's SSH port.
	SSHPort int
	// CachePort is the loopback port where the agent serves the caches
	// the host reads to its own Nix; 0 when it reads none.
	CachePort int `json:",omitempty"`
	// HostKey is a pin of the host's SSH host key as "ssh-ed25519
	// BASE64", or "" when none is given.
	HostKey string
	// ClientKey is a pin of the SSH client key the host fetches with, as
	// "ssh-ed25519 BASE64", or "" (then peering tells it).
	ClientKey string
	Platform  Platform
	// Apply is the command (argv) run after the agent changes Nix
	// settings; empty means write files only. When the file gives none,
	// it is DefaultApply(Platform) and ApplySet is false.
	Apply    []string `json:",omitempty"`
	ApplySet bool     `json:"-"`
	// SSHDReload is the command (argv) that has sshd read its host key
	// again, run when the agent rotates the host key; none by default.
	SSHDReload []string `json:",omitempty"`
	// NixOSModuleFile is where a nixos-module host's module is written.
	NixOSModuleFile string
	// Serve is non-nil when the host shares its Nix store over SSH.
	Serve *Serve
	// SubstituteFrom names the hosts this host substitutes from, in
	// file order; each of them serves.
	SubstituteFrom []string `json:",omitempty"`
	// ReadCaches names the caches this host substitutes from, in file
	// order (substituteFrom lists them after the hosts).
	ReadCaches []string `json:",omitempty"`
	// Pos is where the host's entry starts in the file.
	Pos Pos `json:"-"`
}

// Serve is how a host shares its Nix store.
type Serve struct {
	Protocol nix.Protocol
	// KeyName is the binary-cache signing key's name; it defaults to
	// the name of a pinned PublicKey, else the host's address.
	KeyName string
	// KeyGeneration is the generation of the signing key the host is to
	// sign with (1, the default, is the first): raising it rotates the
	// key, see nix.GenerationName.
	KeyGeneration int
	// PublicKey is a pin of the binary-cache public key, NAME:BASE64, or
	// "" (then peering tells it).
	PublicKey string
	// SignClosure is the closure signed once after the key is created,
	// and published once to the caches of PublishTo.
	SignClosure string
	// PublishTo names the caches the host uploads what it builds to.
	PublishTo []string `json:",omitempty"`
	// Pos is where the serve mapping starts in the file.
	Pos Pos `json:"-"`
}

// Parse parses and validates a desired-state file. filename is used only
// in messages. On failure the error is an Errors listing every problem
// found, sorted by position. Parse never panics.
func Parse(filename string, data []byte) (f *File, err error) {
	el := &errorList{file: filename}
	defer func() {
		if r := recover(); r != nil {
			f = nil
			err = Errors{{File: filename, Line: 1, Col: 1,
				Msg: fmt.Sprintf("internal error while parsing (please report it with the file): %v", r)}}
		}
	}()
	root := parseYAML(el, data)
	if root == nil {
		return nil, el.result()
	}
	f, hosts := decodeFile(el, root)
	if f != nil {
		checkHosts(el, f, hosts)
	}
	if err := el.result(); err != nil {
		return nil, err
	}
	f.Filename = filename
	return f, nil
}

// Load reads the file at path with ReadFile and parses it. It also returns
// the bytes read, so a caller can tell what changed. A file that cannot be
// read is a plain error; a file that does not parse is an Errors.
func Load(path string) (*File, []byte, error) {
	data, _, err := ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	f, err := Parse(path, data) // nil on failure
	return f, data, err
}

// ReadFile reads the desired-state file at path. It never blocks and never
// reads more than MaxSize+1 bytes: a path that is not a regular file once
// symlinks are followed (a FIFO, /dev/zero, a directory) is refused
// unopened, with an error that says what it is and matches
// safefile.ErrNotRegular.
func ReadFile(path string) ([]byte, fs.FileInfo, error) {
	data, st, err := safefile.Read(path, MaxSize, safefile.Options{})
	if errors.Is(err, safefile.ErrNotRegular) {
		return nil, nil, fmt.Errorf("read desired-state file: %w; it must be a regular file (or a symlink to one)", err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read desired-state file: %w", err)
	}
	return data, st, nil
}

// Host returns the host called name, or nil.
func (f *File) Host(name string) *Host {
	if i := slices.IndexFunc(f.Hosts, func(h *Host) bool { return h.Name == name }); i >= 0 {
		return f.Hosts[i]
	}
	return nil
}

// Cache returns the cache called name, or nil.
func (f *File) Cache(name string) *Cache {
	if i := slices.IndexFunc(f.Caches, func(c *Cache) bool { return c.Name == name }); i >= 0 {
		return f.Caches[i]
	}
	return nil
}

// Publishers returns the hosts that publish to the cache called name, in
// file order.
func (f *File) Publishers(name string) []*Host {
	var out []*Host
	for _, h := range f.Hosts {
		if h.Serve != nil && slices.Contains(h.Serve.PublishTo, name) {
			out = append(out, h)
		}
	}
	return out
}

// Consumers returns the hosts whose SubstituteFrom names name, in file
// order.
func (f *File) Consumers(name string) []*Host {
	var out []*Host
	for _, h := range f.Hosts {
		if slices.Contains(h.SubstituteFrom, name) {
			out = append(out, h)
		}
	}
	return out
}

// FindSelf returns the host this agent runs as. When name (the --host
// flag) is not empty it must be a host's name. Otherwise each of
// hostnames (such as os.Hostname() and the FQDN) is compared,
// case-insensitively and without a trailing dot, with every host's name
// and address; failing that, the first label of each hostname is compared
// with the names. Exactly one host must match.
func (f *File) FindSelf(name string, hostnames ...string) (*Host, error) {
	if name != "" {
		if h := f.Host(name); h != nil {
			return h, nil
		}
		return nil, fmt.Errorf("find this host in %s: no host is named %q; hosts in the file: %s", f.Filename, name, f.hostList())
	}
	var tried []string
	for _, s := range hostnames {
		if s = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(s), ".")); s != "" && !slices.Contains(tried, s) {
			tried = append(tried, s)
		}
	}
	if len(tried) == 0 {
		return nil, fmt.Errorf("find this host in %s: no host name of this machine is known; pass --host with one of: %s", f.Filename, f.hostList())
	}
	full := func(h *Host, s string) bool { return h.Name == s || strings.EqualFold(h.Address, s) }
	short := func(h *Host, s string) bool {
		label, _, _ := strings.Cut(s, ".")
		return h.Name == label
	}
	for _, match := range []func(*Host, string) bool{full, short} {
		var found []*Host
		for _, h := range f.Hosts {
			if slices.ContainsFunc(tried, func(s string) bool { return match(h, s) }) {
				found = append(found, h)
			}
		}
		switch len(found) {
		case 0:
			continue
		case 1:
			return found[0], nil
		default:
			names := make([]string, len(found))
			for i, h := range found {
				names[i] = h.Name
			}
			return nil, fmt.Errorf("find this host in %s: this machine's names (%s) match several hosts (%s); pass --host NAME to choose",
				f.Filename, strings.Join(tried, ", "), strings.Join(names, ", "))
		}
	}
	return nil, fmt.Errorf("find this host in %s: none of this machine's names (%s) is the name or address of a host; pass --host with one of: %s",
		f.Filename, strings.Join(tried, ", "), f.hostList())
}

// hostList lists the hosts as "name (address)" for messages.
func (f *File) hostList() string {
	if len(f.Hosts) == 0 {
		return "(none)"
	}
	parts := make([]string, len(f.Hosts))
	for i, h := range f.Hosts {
		parts[i] = fmt.Sprintf("%s (%s)", h.Name, h.Address)
	}
	return shortList(parts, 50)
}

// hashVersion starts what Hash hashes; a change to the encoding changes it.
const hashVersion = "nixpeer-desired-hash/2\n"

// Hash returns the hex SHA-256 of a canonical encoding of the file's
// meaning: the decoded File itself as JSON (every field but the ones
// tagged "-": the file name, positions, whether apply was written),
// defaults filled in, hosts ordered by name. Comments, layout, key order
// and host order are ignored; substituteFrom and apply keep their order,
// which matters. Two files that mean the same thing have the same hash,
// and a field added to File, Host or Serve is in it without more code.
func (f *File) Hash() string {
	c := *f
	c.Hosts = slices.Clone(f.Hosts)
	slices.SortStableFunc(c.Hosts, func(a, b *Host) int { return strings.Compare(a.Name, b.Name) })
	b, err := json.Marshal(&c)
	if err != nil {
		// Only strings, ints, bools and slices of them: cannot happen.
		panic("desired: hash: " + err.Error())
	}
	sum := sha256.Sum256(append([]byte(hashVersion), b...))
	return hex.EncodeToString(sum[:])
}
