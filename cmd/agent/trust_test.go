package main

// trust: approve, the default: a host key nobody vouched for is pending,
// and nothing is written for its peer until an operator approves it.

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

// TestImpostorFirstAwaitsApproval: before staging's agent is up, an
// impostor answers at its address, copying its name and address, with a
// host key of its own. Production, under the default trust, writes
// nothing for it and shows its key pending; approving another key is
// refused. Once the real staging is up, its key is pending in turn, and
// staging shows production's: approved on both hosts, they peer.
func TestImpostorFirstAwaitsApproval(t *testing.T) {
	testenv.RequireRoot(t) // trust approve is root only
	testenv.Require(t, "nix")
	config := writeConfig(t, strings.Replace(peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"}), "trust: tofu\n", "", 1))
	f := &fleetRun{config: config, S: t.TempDir(), P: t.TempDir()}
	for _, root := range []string{f.S, f.P} {
		os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
		testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
	}
	fake, stopFake := impostor(t, fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2")), "stage", "127.0.0.2")
	f.prod = startAgent(t, f.P, f.config, "prod")
	pending := func(a *agent, peer, fp string) status.Status {
		return a.waitFor(peer+"'s key "+fp+" pending", func(s status.Status) bool {
			for _, p := range s.Peers {
				if p.Name == peer && p.Reason == "HostKeyNotApproved" && p.RefusedHostKeyFingerprint == fp &&
					strings.HasPrefix(p.PendingHostKey, "ssh-ed25519 ") && p.State == status.PeerHostKeyRefused {
					return true
				}
			}
			return false
		})
	}
	st := pending(f.prod, "stage", fake)
	if st.Ready {
		t.Fatal("production is Ready with a host key pending")
	}
	if c := condition(t, st, status.PeersTrusted); c.Status != status.False || !strings.Contains(c.Message, "nixpeer trust approve stage "+fake) {
		t.Fatalf("PeersTrusted %+v; want False, naming the command with the fingerprint", c)
	}
	kh, conf := filepath.Join(f.P, "root/.ssh/known_hosts"), filepath.Join(f.P, "etc/nix/nixpeer.conf")
	noStage := func(when string) {
		t.Helper()
		if got, _ := os.ReadFile(kh); bytes.Contains(got, []byte("127.0.0.2")) {
			t.Fatalf("%s: known_hosts has an entry for staging's address:\n%s", when, got)
		}
		if got, _ := os.ReadFile(conf); bytes.Contains(got, []byte("ssh://")) || bytes.Contains(got, []byte("127.0.0.2:")) {
			t.Fatalf("%s: the Nix settings name staging:\n%s", when, got)
		}
	}
	noStage("the impostor pending")

	code, out, _ := runCLI(t, "trust", "pending", "--socket", f.prod.socket)
	if code != 0 || !strings.Contains(out, "stage") || !strings.Contains(out, fake) {
		t.Fatalf("trust pending: exit %d\n%s", code, out)
	}
	code, out, _ = runCLI(t, "trust", "pending", "--socket", f.prod.socket, "--yaml")
	if code != 0 || !strings.Contains(out, "- name: stage\n  hostKey: ssh-ed25519 ") {
		t.Fatalf("trust pending --yaml: exit %d\n%s", code, out)
	}
	genuineKey := "SHA256:" + strings.Repeat("A", 43)
	code, _, errText := runCLI(t, "trust", "approve", "--socket", f.prod.socket, "stage", genuineKey)
	if code != 1 || !strings.Contains(errText, "offers host key "+fake) {
		t.Fatalf("approving a key the peer does not offer: exit %d, %s", code, errText)
	}
	noStage("a wrong approval")

	// The real staging comes up where the impostor was.
	stopFake()
	f.stage = startAgent(t, f.S, f.config, "stage", noSSHDCheck)
	var stageFP, prodFP string
	testenv.WaitFor(t, 20*time.Second, 5*time.Millisecond, "both hosts' keys", func() error {
		stageFP, prodFP = facts(t, f.S).HostKey.Fingerprint, facts(t, f.P).HostKey.Fingerprint
		if stageFP == "" || prodFP == "" {
			return fmt.Errorf("host keys %q %q", stageFP, prodFP)
		}
		return nil
	})
	pending(f.prod, "stage", stageFP)
	pending(f.stage, "prod", prodFP)
	noStage("staging pending")
	for _, a := range []struct {
		agent *agent
		peer  string
		fp    string
	}{{f.prod, "stage", stageFP}, {f.stage, "prod", prodFP}} {
		if code, out, errText := runCLI(t, "trust", "approve", "--socket", a.agent.socket, a.peer, a.fp); code != 0 {
			t.Fatalf("trust approve %s: exit %d\n%s%s", a.peer, code, out, errText)
		}
	}
	// Staging lets production in; production probes its sshd (there is
	// none here: that it gets that far is the point).
	st = peerState(f.prod, "production authorized by staging", inState(status.PeerProbeFailed))
	if p := st.Peers[0]; p.Trust != status.TrustApproved || p.HostKeyFingerprint != stageFP {
		t.Fatalf("peer %+v; want stage approved with %s", p, stageFP)
	}
	if got := readFile(t, kh); !bytes.Contains(got, []byte("127.0.0.2")) {
		t.Fatalf("known_hosts lacks staging once approved:\n%s", got)
	}
	// The approval outlives a restart.
	f.prod.stop()
	f.prod = startAgent(t, f.P, f.config, "prod")
	peerState(f.prod, "staging still approved after a restart", func(p status.Peer) bool {
		return p.Trust == status.TrustApproved && p.State == status.PeerProbeFailed
	})
}

// TestConsumerImpostorFirstAwaitsApproval is the serving side of the
// attack: before production's agent is up, an impostor answers at its
// address, copying its name and address, with a host key of its own and
// a client key it would like to read staging's store with. Staging, under
// the default trust, shows the key pending and never lets the client key
// in.
func TestConsumerImpostorFirstAwaitsApproval(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix")
	config := writeConfig(t, strings.Replace(peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"}), "trust: tofu\n", "", 1))
	S := t.TempDir()
	os.MkdirAll(filepath.Join(S, "etc/nix"), 0o755)
	testenv.WriteNixConf(t, filepath.Join(S, "etc/nix"))
	attacker := testenv.NewKey(t)
	fake, _ := impostorWith(t, fmt.Sprintf("127.0.0.3:%d", peerPortOf("127.0.0.3")), "prod", "127.0.0.3",
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(attacker.PublicKey()))))
	stage := startAgent(t, S, config, "stage", noSSHDCheck)
	st := stage.waitFor("prod's key "+fake+" pending", func(s status.Status) bool {
		return len(s.Peers) == 1 && s.Peers[0].Name == "prod" && s.Peers[0].Reason == "HostKeyNotApproved" &&
			s.Peers[0].RefusedHostKeyFingerprint == fake
	})
	if c := condition(t, st, status.ServeReady); !strings.Contains(c.Message, "waiting for the client key of prod") {
		t.Fatalf("ServeReady %+v; want it waiting for prod's client key", c)
	}
	authorized := readFile(t, filepath.Join(S, "etc/ssh/authorized_keys.d/nix-ssh"))
	if bytes.Contains(authorized, bytes.Fields(ssh.MarshalAuthorizedKey(attacker.PublicKey()))[1]) {
		t.Fatalf("the impostor's client key is in nix-ssh's authorized keys:\n%s", authorized)
	}
	// Nothing changes while it stays pending: another pass, the same.
	if err := stage.client.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	stage.waitFor("a reconcile", func(s status.Status) bool { return s.LastReconcile.After(st.LastReconcile) })
	if got := readFile(t, filepath.Join(S, "etc/ssh/authorized_keys.d/nix-ssh")); !bytes.Equal(got, authorized) {
		t.Fatalf("nix-ssh's authorized keys changed with the impostor pending:\n%s", got)
	}
}

// TestTrustPendingFleetPinsEveryHost: under the default trust, nothing is
// trusted yet. On production, `trust pending --fleet --yaml` prints a
// hostKey pin for every host of the file, each with the key its agent
// shows; committed to the file (reviewed once), both hosts trust each
// other on every host with nothing approved.
func TestTrustPendingFleetPinsEveryHost(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix")
	fleet := strings.Replace(peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"}), "trust: tofu\n", "", 1)
	config := writeConfig(t, fleet)
	f := &fleetRun{config: config, S: t.TempDir(), P: t.TempDir()}
	for _, root := range []string{f.S, f.P} {
		os.MkdirAll(filepath.Join(root, "etc/nix"), 0o755)
		testenv.WriteNixConf(t, filepath.Join(root, "etc/nix"))
	}
	f.stage = startAgent(t, f.S, f.config, "stage", noSSHDCheck)
	f.prod = startAgent(t, f.P, f.config, "prod")
	peerState(f.prod, "staging pending", func(p status.Peer) bool { return p.Reason == "HostKeyNotApproved" })

	code, out, errText := runCLI(t, "trust", "pending", "--fleet", "--yaml", "--socket", f.prod.socket)
	if code != 0 {
		t.Fatalf("trust pending --fleet --yaml: exit %d\n%s%s", code, out, errText)
	}
	pinned := fleet
	for _, h := range []struct{ name, root string }{{"stage", f.S}, {"prod", f.P}} {
		line := facts(t, h.root).HostKey.PublicKey
		if !strings.Contains(out, "- name: "+h.name+"\n  hostKey: "+line+"\n") {
			t.Fatalf("trust pending --fleet --yaml has no pin of %s's key %s:\n%s", h.name, line, out)
		}
		pinned = strings.Replace(pinned, "  - name: "+h.name+"\n", "  - name: "+h.name+"\n    hostKey: "+line+"\n", 1)
	}
	code, text, _ := runCLI(t, "trust", "pending", "--fleet", "--socket", f.prod.socket)
	if code != 0 || !strings.Contains(text, "TRUST HERE") || !strings.Contains(text, "self") {
		t.Fatalf("trust pending --fleet: exit %d\n%s", code, text)
	}

	// The pins committed: trusted on both hosts, nothing approved.
	renameSave(t, config, pinned)
	for _, a := range []*agent{f.prod, f.stage} {
		a.waitFor("the peer pinned", func(s status.Status) bool {
			return len(s.Peers) == 1 && s.Peers[0].Trust == status.TrustPinned
		})
	}
	if code, out, _ := runCLI(t, "trust", "pending", "--fleet", "--yaml", "--socket", f.prod.socket); code != 0 || strings.Contains(out, "hostKey:") {
		t.Fatalf("trust pending --fleet --yaml with every key pinned: exit %d\n%s", code, out)
	}
}
