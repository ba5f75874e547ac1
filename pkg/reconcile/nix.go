package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"github.com/nixpeer/nixpeer/pkg/desired"
	"github.com/nixpeer/nixpeer/pkg/nix"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/sshkeys"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Timeouts of the commands the agent runs.
const (
	ApplyTimeout  = 2 * time.Minute
	VerifyTimeout = 30 * time.Second
	SignTimeout   = 10 * time.Minute
	// outputTail is how much of a command's output the status keeps.
	outputTail = 2048
)

// Records kept in the store.
const (
	recApplied     = "nix/applied"     // settings hash applied and verified live
	recApplyRan    = "nix/applyRan"    // settings hash the apply command last succeeded for
	recSignPending = "nix/signPending" // the closure still needs signing with a new key
)

// nixIncludeLine is what /etc/nix/nix.conf gets on a plain Nix install.
const nixIncludeLine = "!include nixpeer.conf"

// nixosStateNixConf is the file nixpeer's NixOS module includes.
const nixosStateNixConf = "/var/lib/nixpeer/nix.conf"

// PeerKeys is what this host knows, and trusts, of a peer's public keys.
type PeerKeys struct {
	HostKey   ssh.PublicKey // its SSH host key
	ClientKey ssh.PublicKey // the key it fetches from its peers with
	CacheKey  string        // its binary-cache public key, NAME:BASE64
}

// pinnedKeys are the keys of peer that the desired-state file pins.
func pinnedKeys(peer *desired.Host) (PeerKeys, error) {
	var k PeerKeys
	var err error
	if peer.HostKey != "" {
		if k.HostKey, err = sshkeys.ParsePublicLine(peer.HostKey); err != nil {
			return k, fmt.Errorf("hostKey of %s: %w", peer.Name, err)
		}
	}
	if peer.ClientKey != "" {
		if k.ClientKey, err = sshkeys.ParsePublicLine(peer.ClientKey); err != nil {
			return k, fmt.Errorf("clientKey of %s: %w", peer.Name, err)
		}
	}
	if peer.Serve != nil {
		k.CacheKey = peer.Serve.PublicKey
	}
	return k, nil
}

// nixFile is one file of the host's Nix settings.
type nixFile struct {
	path    string
	content []byte
	// daemon: the Nix daemon reads it, so a change needs the apply.
	daemon bool
}

// reconcileServe keeps the binary-cache signing key of a serving host, signs
// the current system once after the key is new, and reports whom it serves.
func (h *Host) reconcileServe(p *pass) error {
	if p.self.Serve == nil {
		return nil
	}
	l := h.cfg.Layout
	pub, res, err := nix.EnsureCacheKey(l.KeysDir, p.self.Serve.KeyName)
	if err != nil {
		p.set(h, status.CacheKeyReady, false, "CacheKeyUnusable", err.Error())
		return fmt.Errorf("binary-cache key: %w", err)
	}
	p.cacheKey = pub.String()
	p.secretKeyFile = filepath.Join(l.KeysDir, nix.SecretKeyFileName)
	p.manage(p.secretKeyFile, res.Created || res.PublicRewritten)
	if res.Created {
		h.log.Info("created the binary-cache signing key", zap.String("publicKey", pub.String()))
		if err := h.cfg.Store.Put(recSignPending, true); err != nil {
			return err
		}
	}
	if pin := p.self.Serve.PublicKey; pin != "" && pin != pub.String() {
		p.set(h, status.CacheKeyReady, false, "CacheKeyMismatch", fmt.Sprintf(
			"the desired state pins serve.publicKey %s, but this host's key is %s (%s): pin this one, or put the pinned key's secret in place",
			pin, pub.String(), filepath.Join(l.KeysDir, nix.PublicKeyFileName)))
		return errors.New("binary-cache key differs from its pin")
	}
	msg := "binary-cache key " + pub.String()
	if note, err := h.signClosure(p); err != nil {
		p.set(h, status.CacheKeyReady, false, "SigningFailed", msg+"; "+err.Error())
		return err
	} else if note != "" {
		msg += "; " + note
	}
	p.set(h, status.CacheKeyReady, true, "KeyPresent", msg)
	return nil
}

// signClosure signs the current system closure with a new key: paths built
// before the key existed carry no signature of it, and production would
// build them again. It runs until it succeeds once.
func (h *Host) signClosure(p *pass) (string, error) {
	var pending bool
	if _, err := h.cfg.Store.Get(recSignPending, &pending); err != nil || !pending {
		return "", err
	}
	closure := p.self.Serve.SignClosure
	target, err := filepath.EvalSymlinks(h.cfg.Layout.In(closure))
	if errors.Is(err, os.ErrNotExist) {
		h.log.Info("no system closure to sign", zap.String("path", closure))
		return "no " + closure + " to sign", h.cfg.Store.Put(recSignPending, false)
	}
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", closure, err)
	}
	if h.cfg.Layout.Root != "" {
		// Under a root the link points into the real store.
		if rel, err := filepath.Rel(h.cfg.Layout.Root, target); err == nil && !strings.HasPrefix(rel, "..") {
			target = "/" + rel
		}
	}
	ctx, cancel := context.WithTimeout(p.ctx, SignTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nix", "--extra-experimental-features", "nix-command",
		"store", "sign", "--key-file", p.secretKeyFile, "-r", target).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("sign %s with the new key: %v: %s", closure, err, tail(out))
	}
	h.log.Info("signed the system closure with the new key", zap.String("path", target))
	return "signed the closure of " + closure, h.cfg.Store.Put(recSignPending, false)
}

// reconcileNix writes the host's Nix settings where its platform wants them,
// applies them once per change, and confirms they are live.
func (h *Host) reconcileNix(p *pass) error {
	self, l := p.self, h.cfg.Layout
	var s nix.Settings
	var modSettings nix.ModuleSettings
	var waiting []string
	if p.secretKeyFile != "" {
		s.SecretKeyFiles = []string{p.secretKeyFile}
	}
	// Whom this host lets in, first: its facts tell the consumers even
	// when something below fails.
	var consumerKeys []ssh.PublicKey
	var served, unserved []string
	for _, c := range p.file.Consumers(self.Name) {
		if k := p.peerKeys[c.Name].ClientKey; k != nil {
			consumerKeys = append(consumerKeys, k)
			served = append(served, c.Name)
			p.authorized = append(p.authorized, peer.AuthorizedFact{Host: c.Name, Fingerprint: ssh.FingerprintSHA256(k)})
		} else {
			unserved = append(unserved, c.Name)
		}
	}

	var probeErrs []error
	for _, name := range self.SubstituteFrom {
		peer := p.file.Host(name)
		c, err := h.substituter(p, peer, p.peer(name))
		if err != nil {
			probeErrs = append(probeErrs, fmt.Errorf("peer %s: %w", name, err))
		}
		if c == nil {
			waiting = append(waiting, name+": "+p.peer(name).Message)
			continue
		}
		hostKey, err := sshkeys.ParsePublicLine(c.HostKey)
		if err != nil {
			return fmt.Errorf("substituter %s: %w", name, err)
		}
		u, err := nix.SubstituterURL(c.Protocol, c.Address, c.SSHPort, l.ClientKey, hostKey)
		if err != nil {
			p.set(h, status.NixSettingsApplied, false, "InvalidPeer", err.Error())
			return fmt.Errorf("substituter %s: %w", name, err)
		}
		s.Substituters = append(s.Substituters, u)
		s.TrustedPublicKeys = append(s.TrustedPublicKeys, c.CacheKey)
		modSettings.KnownHosts = append(modSettings.KnownHosts, nix.KnownHost{
			Name: name, HostNames: []string{knownHostName(peer)}, PublicKey: hostKey})
	}
	if err := h.saveConfigured(p); err != nil {
		return err
	}
	s.Fallback = len(self.SubstituteFrom) > 0

	files, err := h.nixFiles(p, s, modSettings, consumerKeys)
	if err != nil {
		p.set(h, status.NixSettingsApplied, false, "RenderFailed", err.Error())
		return err
	}
	sum := sha256.New()
	for _, f := range files {
		changed, err := writeManaged(f.path, f.content)
		if err != nil {
			p.set(h, status.NixSettingsApplied, false, "WriteFailed", err.Error())
			return err
		}
		p.manage(f.path, changed)
		if f.daemon {
			fmt.Fprintf(sum, "%s\x00%s\x00", f.path, f.content)
		}
	}
	hash := hex.EncodeToString(sum.Sum(nil))
	h.markApplied(p)

	if self.Serve != nil {
		h.reportServe(p, served, unserved)
	}
	if err := h.applyAndVerify(p, s, hash); err != nil {
		return err
	}
	if len(waiting) > 0 {
		p.set(h, status.SubstitutersReady, false, "WaitingForPeer", strings.Join(waiting, "; "))
	} else if len(self.SubstituteFrom) > 0 {
		p.set(h, status.SubstitutersReady, true, "Configured",
			fmt.Sprintf("substitutes from %s, with fallback to building locally", strings.Join(self.SubstituteFrom, ", ")))
	}
	return errors.Join(probeErrs...)
}

// markApplied marks each consumer key that is in the file sshd reads for
// nix-ssh: sshd reads it at every login, so a key there is in effect. On
// nixos-module that file is NixOS's own, made from nix.sshServe.keys when
// the operator's deploy applies the module.
func (h *Host) markApplied(p *pass) {
	if len(p.authorized) == 0 {
		return
	}
	dir := h.cfg.Layout.AuthorizedKeysDir
	if p.self.Platform == desired.PlatformNixOS {
		dir = h.cfg.Layout.StateAuthorizedKeysDir
	}
	content, err := os.ReadFile(filepath.Join(dir, "nix-ssh"))
	if err != nil {
		return
	}
	present := map[string]bool{}
	for rest := content; len(rest) > 0; {
		k, _, _, next, err := ssh.ParseAuthorizedKey(rest)
		if err != nil {
			break // no more keys
		}
		present[string(k.Marshal())] = true
		rest = next
	}
	for i, a := range p.authorized {
		p.authorized[i].Applied = present[string(p.peerKeys[a.Host].ClientKey.Marshal())]
	}
}

// nixFiles renders the Nix files of the host's platform.
func (h *Host) nixFiles(p *pass, s nix.Settings, m nix.ModuleSettings, consumerKeys []ssh.PublicKey) ([]nixFile, error) {
	self, l := p.self, h.cfg.Layout
	protocol := string(desired.ProtocolSSH)
	if self.Serve != nil {
		protocol = string(self.Serve.Protocol)
	}
	var files []nixFile
	authorized := func(dir string) error {
		path := filepath.Join(dir, "nix-ssh")
		if self.Serve == nil {
			if _, err := os.Stat(path); err != nil {
				return nil // never served: nothing to revoke
			}
		}
		content, err := nix.RenderAuthorizedKeys(protocol, consumerKeys)
		if err != nil {
			return err
		}
		files = append(files, nixFile{path: path, content: content})
		return nil
	}
	switch self.Platform {
	case desired.PlatformNix:
		conf, err := nix.RenderNixConf(s)
		if err != nil {
			return nil, err
		}
		existing, err := os.ReadFile(l.NixConf)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read %s: %w", l.NixConf, err)
		}
		withInclude, _ := nix.EnsureInclude(existing, nixIncludeLine)
		files = append(files, nixFile{path: l.NixpeerConf, content: conf, daemon: true},
			nixFile{path: l.NixConf, content: withInclude, daemon: true})
		if err := authorized(l.AuthorizedKeysDir); err != nil {
			return nil, err
		}
	case desired.PlatformNixOS:
		conf, err := nix.RenderNixConf(s)
		if err != nil {
			return nil, err
		}
		files = append(files, nixFile{path: l.StateNixConf, content: conf, daemon: true})
		if err := authorized(l.StateAuthorizedKeysDir); err != nil {
			return nil, err
		}
	case desired.PlatformNixOSModule:
		m.Substituters, m.TrustedPublicKeys, m.Fallback, m.SecretKeyFiles = s.Substituters, s.TrustedPublicKeys, s.Fallback, s.SecretKeyFiles
		if self.Serve != nil {
			m.Serve, m.Protocol, m.ServeKeys = true, protocol, consumerKeys
		}
		mod, err := nix.RenderModule(m)
		if err != nil {
			return nil, err
		}
		files = append(files, nixFile{path: l.In(self.NixOSModuleFile), content: mod, daemon: true})
	}
	return files, nil
}

// reportServe sets ServeReady: whom the host serves, and whether sshd can
// hand their connections to nix-ssh.
func (h *Host) reportServe(p *pass, served, unserved []string) {
	if p.self.Platform != desired.PlatformNixOSModule {
		if problem := checkNixSSHUser(p.self.Platform); problem != "" {
			p.set(h, status.ServeReady, false, "NixSSHUserMissing", problem)
			return
		}
	}
	msg := "serves " + listOrNobody(served) + " over " + string(p.self.Serve.Protocol)
	if len(unserved) > 0 {
		msg += "; waiting for the client key of " + strings.Join(unserved, ", ")
	}
	p.set(h, status.ServeReady, true, "Serving", msg)
}

// checkNixSSHUser looks in the machine's own user database (even under
// --root: sshd runs on the machine) for the user sshd hands Nix clients to.
func checkNixSSHUser(platform desired.Platform) string {
	const fix = "useradd --system --gid nix-users --shell /bin/bash --home-dir /var/empty --password '*' nix-ssh"
	u, err := user.Lookup("nix-ssh")
	if err != nil {
		if platform == desired.PlatformNixOS {
			return "user nix-ssh does not exist: nixpeer's NixOS module sets nix.sshServe.enable = true on a serving host; is it imported and services.nixpeer.enable set?"
		}
		return "user nix-ssh does not exist; create it: " + fix
	}
	if platform != desired.PlatformNix {
		return ""
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

// applyAndVerify runs the host's apply command once per change of the
// daemon's settings and confirms they are live. A reconcile that finds them
// applied already runs nothing.
func (h *Host) applyAndVerify(p *pass, s nix.Settings, hash string) error {
	var applied, ran string
	if _, err := h.cfg.Store.Get(recApplied, &applied); err != nil {
		return err
	}
	if applied == hash {
		p.set(h, status.NixSettingsApplied, true, "Applied", "the Nix settings are live")
		return nil
	}
	if _, err := h.cfg.Store.Get(recApplyRan, &ran); err != nil {
		return err
	}
	apply := p.self.Apply
	if len(apply) > 0 && ran != hash {
		out, err := h.runApply(p.ctx, apply)
		if err != nil {
			p.set(h, status.NixSettingsApplied, false, "ApplyFailed",
				fmt.Sprintf("%s: %v; output: %s", strings.Join(apply, " "), err, out))
			return fmt.Errorf("apply: %w", err)
		}
		if err := h.cfg.Store.Put(recApplyRan, hash); err != nil {
			return err
		}
	}
	missing, err := h.verify(p.ctx, s)
	switch {
	case err != nil:
		p.set(h, status.NixSettingsApplied, false, "CannotVerify", err.Error())
		return err
	case len(missing) > 0 && len(apply) == 0:
		p.set(h, status.NixSettingsApplied, false, "ApplyPending",
			"the settings are written; they take effect when your deploy applies them (not live yet: "+strings.Join(missing, "; ")+")")
		return nil
	case len(missing) > 0:
		p.set(h, status.NixSettingsApplied, false, "NotLive", h.notLiveMessage(p, missing))
		return errors.New("nix settings are not live after apply: " + strings.Join(missing, "; "))
	}
	if err := h.cfg.Store.Put(recApplied, hash); err != nil {
		return err
	}
	h.log.Info("nix settings applied and live")
	p.set(h, status.NixSettingsApplied, true, "Applied", "the Nix settings are live")
	return nil
}

// notLiveMessage explains settings that are written but not in effect.
func (h *Host) notLiveMessage(p *pass, missing []string) string {
	msg := strings.Join(missing, "; ")
	if p.self.Platform == desired.PlatformNixOS {
		conf, _ := os.ReadFile(h.cfg.Layout.NixConf)
		if !bytes.Contains(conf, []byte("!include "+nixosStateNixConf)) && !bytes.Contains(conf, []byte("!include "+h.cfg.Layout.StateNixConf)) {
			msg += fmt.Sprintf("; %s has no line %q: import nixpeer's NixOS module (configs/nixos/module.nix) and set services.nixpeer.enable = true, or add nix.extraOptions = \"!include %s\"; then rebuild once",
				h.cfg.Layout.NixConf, "!include "+nixosStateNixConf, nixosStateNixConf)
		}
	}
	return msg
}

// runApply runs the apply command with a timeout and returns the tail of
// its output.
func (h *Host) runApply(ctx context.Context, argv []string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ApplyTimeout)
	defer cancel()
	start := h.cfg.Clock.Now()
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	h.log.Info("ran apply", zap.Strings("command", argv), zap.Duration("took", h.cfg.Clock.Now().Sub(start)),
		zap.Error(err), zap.String("output", tail(out)))
	if ctx.Err() == context.DeadlineExceeded {
		err = fmt.Errorf("timed out after %v", ApplyTimeout)
	}
	return tail(out), err
}

// verify reads Nix's effective configuration and returns the wanted
// settings that are not live.
func (h *Host) verify(ctx context.Context, s nix.Settings) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, VerifyTimeout)
	defer cancel()
	var env []string
	if h.cfg.Layout.Root != "" {
		env = []string{"NIX_CONF_DIR=" + h.cfg.Layout.NixConfDir}
	}
	eff, err := nix.ShowConfig(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("read the effective Nix configuration: %w", err)
	}
	return nix.Live(s, eff), nil
}

// writeManaged writes a managed file (world-readable: nix.conf fragments and
// authorized keys hold no secrets) and its directory.
func writeManaged(path string, content []byte) (bool, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("create directory of %s: %w", path, err)
	}
	mode := os.FileMode(0o644)
	if st, err := os.Stat(path); err == nil {
		mode = st.Mode().Perm() // a file people share (nix.conf) keeps its mode
	}
	return atomicfile.WriteIfChanged(path, content, mode)
}

func knownHostName(peer *desired.Host) string {
	if peer.SSHPort == 22 {
		return peer.Address
	}
	return fmt.Sprintf("[%s]:%d", peer.Address, peer.SSHPort)
}

func listOrNobody(names []string) string {
	if len(names) == 0 {
		return "nobody yet"
	}
	return strings.Join(names, ", ")
}

// tail is the end of a command's output, for the status.
func tail(out []byte) string {
	out = bytes.TrimSpace(out)
	if len(out) > outputTail {
		out = append([]byte("..."), out[len(out)-outputTail:]...)
	}
	return string(out)
}
