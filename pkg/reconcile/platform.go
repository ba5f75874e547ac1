package reconcile

import (
	"bytes"
	"fmt"
	"os/user"
	"path/filepath"
	"slices"

	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/layout"
	"github.com/nixpeer/nixpeer/pkg/nix"
)

// platform is what differs between the ways a host's Nix is managed
// (desired.Platform): where its files are, which of them a pass manages,
// how its Nix settings are written. Everything else is the same.
type platform interface {
	// managed are the files a pass of self reads, and the only ones it
	// may write (act refuses any other).
	managed(l layout.Layout, self *desired.Host) []string
	// authorizedKeys is the file the agent writes for nix-ssh's logins,
	// which sshd reads; "" where the operator's deploy writes it (see
	// authorizedApplied).
	authorizedKeys(l layout.Layout) string
	// settingsFile is the file that holds the host's substituters.
	settingsFile(l layout.Layout, self *desired.Host) string
	// nixFiles renders the Nix settings into the platform's files, from
	// the files as observed; consumers are those a serving host lets in.
	nixFiles(o *Observation, s nix.Settings, m nix.ModuleSettings, consumers []nix.AuthorizedKey) ([]fileWant, error)
	// notLive explains settings that cannot become live as the host is
	// set up; "" when nothing stands in their way.
	notLive(o *Observation) string
	// nixSSHUser says what is wrong with the user sshd hands Nix clients
	// to, looked up in the machine's own user database (even under
	// --root: sshd runs on the machine); "" when nothing is, or when the
	// operator's deploy makes the user.
	nixSSHUser() string
}

// observedFiles are the files a pass of self reads, and the only ones it
// may write: its platform's, and the cache tier's (cacheFiles).
func observedFiles(l layout.Layout, self *desired.Host) []string {
	return append(platformOf(self.Platform).managed(l, self), cacheFiles(l, self)...)
}

// platformOf returns the platform p names; an unknown one (which the
// desired-state parser refuses) is plain Nix.
func platformOf(p desired.Platform) platform {
	switch p {
	case desired.PlatformNixOS:
		return nixOS{}
	case desired.PlatformNixOSModule:
		return nixOSModule{}
	}
	return plainNix{}
}

// nixSSHUser is the user sshd hands Nix clients to.
const nixSSHUser = "nix-ssh"

// nixIncludeLine is what /etc/nix/nix.conf gets on a plain Nix install.
const nixIncludeLine = "!include nixpeer.conf"

// nixosStateNixConf is the file nixpeer's NixOS module includes.
const nixosStateNixConf = "/var/lib/nixpeer/nix.conf"

// plainNix is Nix on another Linux distribution: the agent writes
// nixpeer.conf, includes it from nix.conf, and writes nix-ssh's keys.
type plainNix struct{}

func (plainNix) managed(l layout.Layout, _ *desired.Host) []string {
	return []string{l.KnownHosts, l.SSHConfig, l.NixpeerConf, l.NixConf, filepath.Join(l.AuthorizedKeysDir, nixSSHUser)}
}
func (plainNix) authorizedKeys(l layout.Layout) string {
	return filepath.Join(l.AuthorizedKeysDir, nixSSHUser)
}
func (plainNix) settingsFile(l layout.Layout, _ *desired.Host) string { return l.NixpeerConf }
func (plainNix) notLive(*Observation) string                          { return "" }

func (plainNix) nixFiles(o *Observation, s nix.Settings, _ nix.ModuleSettings, _ []nix.AuthorizedKey) ([]fileWant, error) {
	l := o.Layout
	conf, err := nix.RenderNixConf(s)
	if err != nil {
		return nil, err
	}
	existing := o.Files[l.NixConf]
	if existing.Err != nil {
		return nil, existing.Err
	}
	withInclude, _ := nix.EnsureInclude(existing.Content, nixIncludeLine)
	return []fileWant{{path: l.NixpeerConf, content: conf, dirMode: 0o755},
		{path: l.NixConf, content: withInclude, dirMode: 0o755}}, nil
}

func (plainNix) nixSSHUser() string {
	const fix = "useradd --system --gid nix-users --shell /bin/bash --home-dir /var/empty --password '*' nix-ssh"
	u, err := user.Lookup(nixSSHUser)
	if err != nil {
		return "user nix-ssh does not exist; create it: " + fix
	}
	g, err := user.LookupGroup("nix-users")
	if err != nil {
		return "group nix-users does not exist: is Nix installed with its daemon (Debian: apt-get install nix-bin)?"
	}
	gids, err := u.GroupIds()
	if err != nil || !slices.Contains(gids, g.Gid) {
		return "user nix-ssh is not in group nix-users, so it cannot reach the Nix daemon: usermod -a -G nix-users nix-ssh"
	}
	return ""
}

// nixOS is a NixOS host whose configuration imports nixpeer's module once:
// the agent writes the state directory's nix.conf (included by the
// module) and nix-ssh's keys; nothing needs a rebuild.
type nixOS struct{}

func (nixOS) managed(l layout.Layout, _ *desired.Host) []string {
	return []string{l.KnownHosts, l.SSHConfig, l.StateNixConf, l.NixConf, filepath.Join(l.StateAuthorizedKeysDir, nixSSHUser)}
}
func (nixOS) authorizedKeys(l layout.Layout) string {
	return filepath.Join(l.StateAuthorizedKeysDir, nixSSHUser)
}
func (nixOS) settingsFile(l layout.Layout, _ *desired.Host) string { return l.StateNixConf }

func (nixOS) nixFiles(o *Observation, s nix.Settings, _ nix.ModuleSettings, _ []nix.AuthorizedKey) ([]fileWant, error) {
	conf, err := nix.RenderNixConf(s)
	if err != nil {
		return nil, err
	}
	return []fileWant{{path: o.Layout.StateNixConf, content: conf, dirMode: 0o755}}, nil
}

// notLive: nix.conf does not include nixpeer's file (the module is not
// imported, or the host not rebuilt since).
func (nixOS) notLive(o *Observation) string {
	l := o.Layout
	conf := o.Files[l.NixConf].Content
	if bytes.Contains(conf, []byte("!include "+nixosStateNixConf)) || bytes.Contains(conf, []byte("!include "+l.StateNixConf)) {
		return ""
	}
	return fmt.Sprintf("%s has no line %q: import nixpeer's NixOS module (nix/module.nix, or the flake's nixosModules.default) and set services.nixpeer.enable = true, or add nix.extraOptions = \"!include %s\"; then rebuild once",
		l.NixConf, "!include "+nixosStateNixConf, nixosStateNixConf)
}

func (nixOS) nixSSHUser() string {
	if _, err := user.Lookup(nixSSHUser); err != nil {
		return "user nix-ssh does not exist: nixpeer's NixOS module sets nix.sshServe.enable = true on a serving host; is it imported and services.nixpeer.enable set?"
	}
	return ""
}

// nixOSModule is a NixOS host whose deploy applies a module file the
// agent writes: the settings and nix-ssh's keys (nix.sshServe.keys) take
// effect at the next nixos-rebuild.
type nixOSModule struct{}

func (nixOSModule) managed(l layout.Layout, self *desired.Host) []string {
	return []string{l.KnownHosts, l.SSHConfig, l.In(self.NixOSModuleFile), filepath.Join(l.AuthorizedKeysDir, nixSSHUser)}
}
func (nixOSModule) authorizedKeys(layout.Layout) string { return "" }
func (nixOSModule) settingsFile(l layout.Layout, self *desired.Host) string {
	return l.In(self.NixOSModuleFile)
}
func (nixOSModule) notLive(*Observation) string { return "" }
func (nixOSModule) nixSSHUser() string          { return "" }

func (nixOSModule) nixFiles(o *Observation, s nix.Settings, m nix.ModuleSettings, consumers []nix.AuthorizedKey) ([]fileWant, error) {
	self := o.Self
	m.Settings = s
	if self.Serve != nil {
		m.Serve, m.Protocol = true, self.Serve.Protocol
		for _, c := range consumers {
			m.ServeKeys = append(m.ServeKeys, c.Key)
		}
	}
	mod, err := nix.RenderModule(m)
	if err != nil {
		return nil, err
	}
	return []fileWant{{path: o.Layout.In(self.NixOSModuleFile), content: mod, dirMode: 0o755}}, nil
}
