package main

// state.db lost or damaged under a production agent: trust outlives it,
// and the agent starts, reports and goes on.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// impostor answers at addr as the peer name at address would, with a host
// key of its own, listed in its facts: what trust on first use accepts. It
// returns the key's fingerprint and a function that stops it.
func impostor(t *testing.T, addr, name, address string) (string, func()) {
	return impostorWith(t, addr, name, address, "")
}

// impostorWith is impostor publishing clientKey ("ssh-ed25519 BASE64", or
// "" for none) as its client key.
func impostorWith(t *testing.T, addr, name, address, clientKey string) (string, func()) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
	doc, err := json.Marshal(peer.Facts{Version: peer.FactsVersion, Name: name, Address: address, Generation: 1, ObservedGeneration: 1,
		Ready: true, HostKeys: []string{line}, ClientKey: clientKey})
	if err != nil {
		t.Fatal(err)
	}
	stop := fakePeerPortWith(t, addr, signer, append(doc, '\n'))
	return ssh.FingerprintSHA256(signer.PublicKey()), stop
}

// stateDB is production's state.db.
func (f *fleetRun) stateDB() string { return filepath.Join(f.P, "var/lib/nixpeer/state.db") }

// TestEmptiedStateDBStillRefusesAnImpostor: production trusted staging;
// its state.db is emptied and an impostor answers at staging's address.
// The key production's own known_hosts pins is still trusted: the
// impostor is refused with HostKeyChanged and known_hosts is unchanged.
func TestEmptiedStateDBStillRefusesAnImpostor(t *testing.T) {
	f := twoAgents(t, writeConfig(t, peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"})))
	genuine := facts(t, f.S).HostKey.Fingerprint
	kh := filepath.Join(f.P, "root/.ssh/known_hosts")
	before := readFile(t, kh)
	f.stage.stop()
	f.prod.stop()
	if err := os.Truncate(f.stateDB(), 0); err != nil {
		t.Fatal(err)
	}
	fake, _ := impostor(t, fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2")), "stage", "127.0.0.2")

	f.prod = startAgent(t, f.P, f.config, "prod")
	st := peerState(f.prod, "the impostor refused", inState(status.PeerHostKeyRefused))
	p := st.Peers[0]
	if p.Reason != "HostKeyChanged" || p.RefusedHostKeyFingerprint != fake || p.HostKeyFingerprint != genuine {
		t.Fatalf("peer %+v; want HostKeyChanged, %s refused, %s trusted", p, fake, genuine)
	}
	if c := condition(t, st, status.StateStoreReady); c.Reason != "New" {
		t.Fatalf("StateStoreReady %+v, want New", c)
	}
	if got := readFile(t, kh); !bytes.Equal(got, before) {
		t.Fatalf("known_hosts changed:\n%s\nwant\n%s", got, before)
	}
}

// TestDamagedStateDBIsRecovered: production's state.db is cut short, then
// scrambled. The agent does not crash: it moves the file aside, says so,
// rebuilds its trust in staging from its known_hosts, and goes on.
func TestDamagedStateDBIsRecovered(t *testing.T) {
	f := twoAgents(t, writeConfig(t, peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"})))
	genuine := facts(t, f.S).HostKey.Fingerprint
	for _, damage := range []struct {
		name string
		do   func(path string) error
	}{
		{"cut", func(path string) error {
			st, err := os.Stat(path)
			if err != nil {
				return err
			}
			// Past its two meta pages, short of its end.
			t.Logf("state.db is %d bytes; cut to 12 KiB", st.Size())
			return os.Truncate(path, 12<<10)
		}},
		{"scrambled", func(path string) error {
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for i := 8 << 10; i < len(raw); i += 512 {
				raw[i] ^= 0x5a
			}
			return os.WriteFile(path, raw, 0o600)
		}},
	} {
		t.Run(damage.name, func(t *testing.T) {
			f.prod.stop()
			if err := damage.do(f.stateDB()); err != nil {
				t.Fatal(err)
			}
			f.prod = startAgent(t, f.P, f.config, "prod")
			st := f.prod.waitFor("the recovery reported", func(s status.Status) bool {
				c := status.Find(s.Conditions, status.StateStoreReady)
				return c != nil && c.Reason == "Recovered" && len(s.Peers) == 1 && s.Peers[0].HostKeyFingerprint == genuine &&
					s.Peers[0].State == status.PeerProbeFailed
			})
			msg := condition(t, st, status.StateStoreReady).Message
			moved, _ := filepath.Glob(f.stateDB() + ".damaged-*")
			if len(moved) == 0 || !strings.Contains(msg, moved[len(moved)-1]) {
				t.Fatalf("StateStoreReady %q; damaged files %v", msg, moved)
			}
			if c := condition(t, st, status.PeersTrusted); !strings.Contains(c.Message, "trusted again from this host's known_hosts") {
				t.Fatalf("PeersTrusted %+v: want the rebuilt trust said", c)
			}
			for _, m := range moved {
				os.Remove(m) // the next damage makes a new one
			}
		})
	}
}

// tellAs connects to the peer port at addr as an agent with host key
// signer would, and tells it f until the test ends.
func tellAs(t *testing.T, addr string, signer ssh.Signer, f peer.Facts) {
	var own peer.Own
	if err := own.Set(f); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		peer.Watch(ctx, addr, func(ssh.PublicKey) error { return nil },
			peer.WatchOptions{Identity: func() ssh.Signer { return signer }, Tell: own.Subscribe},
			func(peer.Facts) error { return nil }, func(error) {})
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
}

// TestEmptiedStateDBOnStagingKeepsItsConsumers: staging lets production in;
// its state.db is emptied, an impostor answers at production's address
// and tells staging it is production. The host key nix-ssh's authorized
// keys remember for production is still trusted: what the impostor tells
// is refused, the impostor's key is refused with HostKeyChanged when
// staging checks production's address, even under trust: tofu, and
// production's key stays let in.
func TestEmptiedStateDBOnStagingKeepsItsConsumers(t *testing.T) {
	f := twoAgents(t, writeConfig(t, peeringFleet(testenv.FreePort(t, "127.0.0.2"), "ssh", []string{"true"})))
	genuine := facts(t, f.P).HostKey.Fingerprint
	authorized := filepath.Join(f.S, "etc/ssh/authorized_keys.d/nix-ssh")
	before := readFile(t, authorized)
	if !bytes.Contains(before, []byte("nixpeer:prod:")) {
		t.Fatalf("nix-ssh's authorized keys do not remember production's host key:\n%s", before)
	}
	f.stage.stop()
	f.prod.stop()
	if err := os.Truncate(filepath.Join(f.S, "var/lib/nixpeer/state.db"), 0); err != nil {
		t.Fatal(err)
	}
	fake, _ := impostor(t, fmt.Sprintf("127.0.0.3:%d", peerPortOf("127.0.0.3")), "prod", "127.0.0.3")
	f.stage = startAgent(t, f.S, f.config, "stage", noSSHDCheck)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	teller, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	tellAs(t, fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2")), teller, peer.Facts{Version: peer.FactsVersion, Name: "prod", Address: "127.0.0.3",
		HostKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(teller.PublicKey())))}})
	st := f.stage.waitFor("the impostor refused", func(s status.Status) bool {
		for _, p := range s.Peers {
			if p.Name == "prod" && p.State == status.PeerHostKeyRefused {
				return true
			}
		}
		return false
	})
	p := st.Peers[0]
	if p.Reason != "HostKeyChanged" || p.RefusedHostKeyFingerprint != fake || p.HostKeyFingerprint != genuine {
		t.Fatalf("peer %+v; want HostKeyChanged, %s refused, %s trusted", p, fake, genuine)
	}
	if got := readFile(t, authorized); !bytes.Equal(got, before) {
		t.Fatalf("nix-ssh's authorized keys changed:\n%s\nwant\n%s", got, before)
	}
}
