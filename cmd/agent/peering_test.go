package main

// Tests of peering through the real binary: two agents on loopback
// addresses exchange their keys over their peer ports.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// peerState waits until production's view of staging satisfies cond.
func peerState(a *agent, what string, cond func(status.Peer) bool) status.Status {
	return a.waitFor(what, func(s status.Status) bool {
		for _, p := range s.Peers {
			if p.Name == "stage" && cond(p) {
				return true
			}
		}
		return false
	})
}

func inState(states ...status.PeerState) func(status.Peer) bool {
	return func(p status.Peer) bool {
		for _, s := range states {
			if p.State == s {
				return true
			}
		}
		return false
	}
}

func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestProductionStartedLongBeforeStaging: production waits for a staging
// agent that is not there, without writing a substituter; staging comes
// up, is killed mid-way (after authorizing production, before its sshd
// serves) and restarted; both converge once sshd serves. Then the
// breaker: with staging's agent gone but its sshd serving, production
// keeps the substituter; with sshd gone too, production withdraws it and
// stays Ready; with both back, it uses staging again.
func TestProductionStartedLongBeforeStaging(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "sshd")
	testenv.RequireNixSSHUser(t)
	f := prepareFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	f.prod = startAgent(t, f.P, f.config, "prod")
	st := peerState(f.prod, "production sees staging's agent down", func(p status.Peer) bool {
		return p.State == status.PeerWaitingForFacts && strings.Contains(p.Message, "connection refused")
	})
	if st.Ready {
		t.Fatal("production Ready without its peer")
	}
	conf := filepath.Join(f.P, "etc/nix/nixpeer.conf")
	if bytes.Contains(readFile(t, conf), []byte("ssh://")) {
		t.Fatalf("production uses staging before it was verified:\n%s", readFile(t, conf))
	}

	f.stage = startAgent(t, f.S, f.config, "stage")
	peerState(f.prod, "production authorized, probe failing without sshd", inState(status.PeerProbeFailed))
	f.stage.kill9()
	f.stage = startAgent(t, f.S, f.config, "stage")
	f.startSSHD(t)
	f.stage.waitFor("staging Ready", ready)
	st = f.prod.waitFor("production Ready", ready)
	if st.Peers[0].State != status.PeerServing {
		t.Fatalf("production's peer: %+v", st.Peers[0])
	}
	serving := readFile(t, conf)
	if !bytes.Contains(serving, []byte("ssh://nix-ssh@127.0.0.2?")) {
		t.Fatalf("production's nixpeer.conf lacks the substituter:\n%s", serving)
	}

	f.stage.stop()
	st = peerState(f.prod, "staging's agent gone, its sshd probed", func(p status.Peer) bool {
		return p.State == status.PeerServing && !p.Connected && strings.Contains(p.Message, "sshd serves")
	})
	if !st.Ready || !bytes.Equal(readFile(t, conf), serving) {
		t.Fatalf("production changed while staging's sshd still serves: ready %v\n%s", st.Ready, readFile(t, conf))
	}

	f.sshd.Stop(t)
	st = f.prod.waitFor("staging withdrawn", func(s status.Status) bool {
		return ready(s) && s.Peers[0].State == status.PeerUnreachable && !bytes.Contains(readFile(t, conf), []byte("ssh://"))
	})
	if c := condition(t, st, status.SubstitutersReady); c.Status != status.True || !strings.Contains(c.Message, "withdrawn") {
		t.Fatalf("SubstitutersReady with staging dark: %+v", c)
	}

	f.startSSHD(t)
	f.stage = startAgent(t, f.S, f.config, "stage")
	f.prod.waitFor("staging used again", func(s status.Status) bool {
		return ready(s) && s.Peers[0].State == status.PeerServing && bytes.Equal(readFile(t, conf), serving)
	})
}

// twoAgents starts staging and production without sshd: peering runs up
// to production's probe of the serve endpoint.
func twoAgents(t *testing.T, config string) (f *fleetRun) {
	testenv.Require(t, "nix")
	f = &fleetRun{config: config, S: t.TempDir(), P: t.TempDir()}
	for _, root := range []string{f.S, f.P} {
		os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
		testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
	}
	f.stage = startAgent(t, f.S, f.config, "stage", noSSHDCheck)
	f.prod = startAgent(t, f.P, f.config, "prod")
	peerState(f.prod, "production authorized by staging", inState(status.PeerProbeFailed))
	return f
}

func writeConfig(t testing.TB, content string) string {
	config := filepath.Join(t.TempDir(), "desired.yaml")
	if err := os.WriteFile(config, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return config
}

// TestHostKeyChangeIsRefused: staging comes back with another host key.
// Production refuses it, reports both fingerprints, and changes nothing
// until an operator resets the trust.
func TestHostKeyChangeIsRefused(t *testing.T) {
	testenv.RequireRoot(t) // trust reset is root only
	f := twoAgents(t, writeConfig(t, peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"})))
	old := facts(t, f.S).HostKey
	kh := filepath.Join(f.P, "root/.ssh/known_hosts")
	khBefore, confBefore := readFile(t, kh), readFile(t, filepath.Join(f.P, "etc/nix/nixpeer.conf"))
	if !bytes.Contains(khBefore, []byte(strings.TrimSpace(old.PublicKey))) {
		t.Fatalf("known_hosts lacks staging's key %s:\n%s", old.PublicKey, khBefore)
	}

	f.stage.stop()
	for _, suffix := range []string{"", ".pub"} {
		os.Remove(filepath.Join(f.S, "etc/ssh/ssh_host_ed25519_key"+suffix))
	}
	f.stage = startAgent(t, f.S, f.config, "stage", noSSHDCheck)
	// Its socket answers before its first pass has made the new key.
	var now keyFacts
	testenv.WaitFor(t, 20*time.Second, 5*time.Millisecond, "staging's new host key", func() error {
		if now = facts(t, f.S).HostKey; now.Fingerprint == "" || now.Fingerprint == old.Fingerprint {
			return fmt.Errorf("host key %q", now.Fingerprint)
		}
		return nil
	})
	st := peerState(f.prod, "new host key refused", inState(status.PeerHostKeyRefused))
	p := st.Peers[0]
	if p.Reason != "HostKeyChanged" || p.HostKeyFingerprint != old.Fingerprint || p.RefusedHostKeyFingerprint != now.Fingerprint {
		t.Fatalf("peer status %+v; want HostKeyChanged, trusted %s, refused %s", p, old.Fingerprint, now.Fingerprint)
	}
	if !strings.Contains(p.Message, old.Fingerprint) || !strings.Contains(p.Message, now.Fingerprint) || !strings.Contains(p.Message, "nixpeer trust reset stage") {
		t.Fatalf("message does not name both keys and the way out: %s", p.Message)
	}
	if c := condition(t, st, status.PeersTrusted); c.Status != status.False || c.Reason != "HostKeyChanged" ||
		!strings.Contains(c.Message, now.Fingerprint) || !strings.Contains(c.Message, old.Fingerprint) {
		t.Fatalf("PeersTrusted = %+v; want False, HostKeyChanged, both fingerprints", c)
	}
	if !bytes.Equal(readFile(t, kh), khBefore) || !bytes.Equal(readFile(t, filepath.Join(f.P, "etc/nix/nixpeer.conf")), confBefore) {
		t.Fatal("production changed its files for a peer whose host key changed")
	}

	code, out, stderr := runCLI(t, "trust", "reset", "--socket", f.prod.socket, "stage")
	if code != 0 {
		t.Fatalf("trust reset: exit %d: %s%s", code, out, stderr)
	}
	peerState(f.prod, "new key trusted after the reset", func(p status.Peer) bool {
		return p.HostKeyFingerprint == now.Fingerprint && p.State != status.PeerHostKeyRefused
	})
	f.prod.waitFor("known_hosts has the new key", func(status.Status) bool {
		return bytes.Contains(readFile(t, kh), []byte(strings.TrimSpace(now.PublicKey)))
	})
}

// TestConsumerRemovedLosesAccess: staging lets in exactly the client keys
// its consumers' agents report; a consumer removed from the file is out at
// the next reconcile.
func TestConsumerRemovedLosesAccess(t *testing.T) {
	f := twoAgents(t, writeConfig(t, peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"})))
	authorized := filepath.Join(f.S, "etc/ssh/authorized_keys.d/nix-ssh")
	prodKey := strings.TrimSpace(facts(t, f.P).ClientKey.PublicKey)
	if got := readFile(t, authorized); !bytes.Contains(got, []byte(prodKey)) || bytes.Count(got, []byte("ssh-ed25519")) != 1 {
		t.Fatalf("staging's authorized keys, want exactly production's %s:\n%s", prodKey, got)
	}
	renameSave(t, f.config, fmt.Sprintf(`apiVersion: nixpeer/v1
trust: tofu
hosts:
  - name: stage
    address: 127.0.0.2
    peerPort: %d
    platform: nix
    apply: ["true"]
    serve: {}
`, peerPortOf("127.0.0.2")))
	f.stage.waitFor("generation 2 reconciled", func(s status.Status) bool { return ready(s) && s.Generation == 2 })
	if got := readFile(t, authorized); bytes.Contains(got, []byte("ssh-ed25519")) {
		t.Fatalf("production's key is still authorized after it left the file:\n%s", got)
	}
}

// TestFactsHoldNoSecrets reads both agents' facts from their peer ports
// and looks for every private key of both hosts in them.
func TestFactsHoldNoSecrets(t *testing.T) {
	f := twoAgents(t, writeConfig(t, peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"})))
	for _, h := range []struct{ root, addr string }{{f.S, fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2"))}, {f.P, fmt.Sprintf("127.0.0.3:%d", peerPortOf("127.0.0.3"))}} {
		got, err := peer.Fetch(context.Background(), h.addr, func(ssh.PublicKey) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		doc := fmt.Sprintf("%+v", got)
		if got.ClientKey == "" || len(got.HostKeys) == 0 {
			t.Fatalf("facts of %s lack public keys: %s", h.addr, doc)
		}
		for _, secret := range secretsUnder(t, h.root) {
			if strings.Contains(doc, secret) {
				t.Fatalf("facts of %s hold secret material %.12s...: %s", h.addr, secret, doc)
			}
		}
	}
}

// secretsUnder returns the private halves of every key the agent keeps
// under root: the base64 of the binary-cache secret key, and the raw
// ed25519 seeds of the SSH keys, base64-encoded as an encoder would.
func secretsUnder(t *testing.T, root string) []string {
	var out []string
	if raw, err := os.ReadFile(filepath.Join(root, "var/lib/nixpeer/keys/cache-priv-key.pem")); err == nil {
		_, b64, _ := strings.Cut(strings.TrimSpace(string(raw)), ":")
		out = append(out, b64, b64[:20])
	}
	for _, p := range []string{"var/lib/nixpeer/keys/ssh_client_ed25519", "etc/ssh/ssh_host_ed25519_key"} {
		k, err := ssh.ParseRawPrivateKey(readFile(t, filepath.Join(root, p)))
		if err != nil {
			t.Fatal(err)
		}
		priv := *k.(*ed25519.PrivateKey)
		out = append(out, "PRIVATE KEY", fmt.Sprintf("%x", priv.Seed()), b64(priv.Seed()), b64(priv))
	}
	return out
}

// TestPeerAnsweringGarbageIsIgnored: a peer port that answers with
// garbage, or with a document over the limit, is reported and never used.
func TestPeerAnsweringGarbageIsIgnored(t *testing.T) {
	testenv.Require(t, "nix")
	for _, c := range []struct {
		name, want string
		answer     []byte
	}{
		{"garbage", "invalid facts", []byte("this is not json\n")},
		{"oversized", "document too large", append(bytes.Repeat([]byte("x"), peer.MaxDocumentSize+10), '\n')},
		{"wrong host", "says it is", []byte(`{"version":1,"name":"other","address":"127.0.0.2","generation":1,"observedGeneration":1,"ready":true,"hostKeys":["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"],"clientKey":""}` + "\n")},
	} {
		t.Run(c.name, func(t *testing.T) {
			fakePeerPort(t, fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2")), c.answer)
			P := t.TempDir()
			os.MkdirAll(filepath.Join(P, "etc/nix"), 0o755)
			testenv.WriteNixConf(t, filepath.Join(P, "etc/nix"))
			config := writeConfig(t, peeringFleet(22, "ssh", []string{"true"}))
			prod := startAgent(t, P, config, "prod")
			st := peerState(prod, "the bad answer reported", func(p status.Peer) bool { return strings.Contains(p.Message, c.want) })
			if st.Ready || st.Peers[0].State != status.PeerWaitingForFacts {
				t.Fatalf("production after a bad answer: %+v", st.Peers[0])
			}
			if conf := readFile(t, filepath.Join(P, "etc/nix/nixpeer.conf")); bytes.Contains(conf, []byte("ssh://")) {
				t.Fatalf("production uses a peer that answered garbage:\n%s", conf)
			}
		})
	}
}

// fakePeerPort is an SSH server on addr that answers every exec request
// with answer and keeps the channel open.
func fakePeerPort(t *testing.T, addr string, answer []byte) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	fakePeerPortWith(t, addr, signer, answer)
}

// fakePeerPortWith is fakePeerPort with the host key signer.
func fakePeerPortWith(t *testing.T, addr string, signer ssh.Signer, answer []byte) (stop func()) {
	config := &ssh.ServerConfig{NoClientAuth: true}
	config.AddHostKey(signer)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, chans, reqs, err := ssh.NewServerConn(c, config)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for nc := range chans {
					ch, creqs, err := nc.Accept()
					if err != nil {
						return
					}
					go func() {
						for r := range creqs {
							r.Reply(r.Type == "exec", nil)
							if r.Type == "exec" {
								ch.Write(answer)
							}
						}
					}()
				}
			}()
		}
	}()
	return func() { ln.Close() }
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// TestDemoConverges runs `nixpeer demo`, the README's first command, with
// real Nix and sshd (a closure of 10 paths instead of 100): both agents
// Ready, production builds the closure itself, staging builds it, and
// production fetches every path of it from staging.
func TestDemoConverges(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	code, out, stderr := runCLI(t, "demo", "--paths", "10")
	for _, want := range []string{"Both agents Ready", "production builds it itself: ", "from 'ssh://nix-ssh@127.0.0.2'",
		"Production fetched all 10 paths from staging", "fetching took "} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("demo: exit %d, no %q in its output\n%s\n%s", code, want, out, stderr)
		}
	}
}

// TestDemoWithoutRoot: run by another user, the demo says what it skips
// and why, and shows the agents exchanging their keys.
func TestDemoWithoutRoot(t *testing.T) {
	testenv.RequireRoot(t) // to become nobody
	cmd := exec.Command(binary(t), "demo")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	cmd.Env = append(os.Environ(), "TMPDIR="+os.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Skipped: staging's nix-daemon and sshd, the build and the fetch (run as root") ||
		!strings.Contains(string(out), "consumer prod: KeysKnown") {
		t.Fatalf("demo as nobody: %v\n%s", err, out)
	}
}

// TestStagingSSHDStopsWhileItsAgentRuns: staging checks its own sshd and
// says what it found. Its sshd stops while its agent runs: production
// withdraws staging as soon as staging says so (no probe of its own
// needed), and stays Ready; staging is not Ready and says why. sshd comes
// back: production probes it again and uses it.
func TestStagingSSHDStopsWhileItsAgentRuns(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "sshd")
	testenv.RequireNixSSHUser(t)
	f := prepareFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	f.stage = startAgent(t, f.S, f.config, "stage", "--sshd-check-interval", "1s")
	f.prod = startAgent(t, f.P, f.config, "prod")
	f.startSSHD(t)
	f.stage.waitFor("staging Ready", ready)
	peerState(f.prod, "production uses staging", inState(status.PeerServing))
	conf := filepath.Join(f.P, "etc/nix/nixpeer.conf")
	serving := readFile(t, conf)
	if !bytes.Contains(serving, []byte("ssh://")) {
		t.Fatalf("production's nixpeer.conf lacks the substituter:\n%s", serving)
	}

	f.sshd.Stop(t)
	st := f.prod.waitFor("staging withdrawn on its own word", func(s status.Status) bool {
		return ready(s) && s.Peers[0].State == status.PeerProbeFailed && strings.Contains(s.Peers[0].Message, "its own sshd does not serve") &&
			!bytes.Contains(readFile(t, conf), []byte("ssh://"))
	})
	if !st.Peers[0].Connected {
		t.Fatalf("production lost staging's agent: %+v", st.Peers[0])
	}
	stage := f.stage.waitFor("staging says its sshd does not serve", func(s status.Status) bool { return !s.Ready })
	if c := condition(t, stage, status.ServeReady); c.Reason != "SSHDNotServing" {
		t.Fatalf("staging's ServeReady: %+v", c)
	}

	f.startSSHD(t)
	f.stage.waitFor("staging Ready again", ready)
	f.prod.waitFor("staging used again", func(s status.Status) bool {
		return ready(s) && s.Peers[0].State == status.PeerServing && bytes.Equal(readFile(t, conf), serving)
	})
}
