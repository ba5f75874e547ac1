package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/peer"
	"github.com/nixpeer/nixpeer/pkg/status"
	"golang.org/x/crypto/ssh"
)

// TestTrustCA: trust: ca with host certificates made by plain ssh-keygen.
// Impostors at staging's address are refused: a plain key, a certificate
// of another CA, an expired one, one for another host. Staging
// and production converge with nothing approved or pinned;
// production's ssh (Nix's) trusts staging through the CA line in
// known_hosts, the substituter pinning no key, and fetches a signed path.
// Staging's host key is then replaced by a new one with a new certificate
// from the same CA: production uses staging again with nothing to do, and
// fetches through it.
func TestTrustCA(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "sshd", "ssh-keygen")
	testenv.RequireNixSSHUser(t)
	f := prepareFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	sshKeygen := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ssh-keygen", append([]string{"-q"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen %v: %v\n%s", args, err, out)
		}
	}
	ca := filepath.Join(t.TempDir(), "fleet-ca")
	sshKeygen("-t", "ed25519", "-N", "", "-C", "fleet-ca", "-f", ca)
	// certify gives root a new host key, certified by the CA for name and
	// address, each file renamed into place (a running sshd reads them for
	// every connection).
	certify := func(root, name, address string) string {
		key := filepath.Join(root, "etc/ssh/ssh_host_ed25519_key")
		os.MkdirAll(filepath.Dir(key), 0o755)
		tmp := filepath.Join(t.TempDir(), "key")
		sshKeygen("-t", "ed25519", "-N", "", "-f", tmp)
		sshKeygen("-s", ca, "-h", "-I", name, "-n", name+","+address, tmp+".pub")
		for _, suffix := range []string{"-cert.pub", ".pub", ""} {
			if err := os.Rename(tmp+suffix, key+suffix); err != nil {
				t.Fatal(err)
			}
		}
		return key
	}
	stageKey := certify(f.S, "stage", "127.0.0.2")
	certify(f.P, "prod", "127.0.0.3")
	caPub := strings.TrimSpace(string(readFile(t, ca+".pub")))
	config := strings.Replace(string(readFile(t, f.config)), "trust: tofu\n", "trust: {mode: ca, hostCAs: [\""+caPub+"\"]}\n", 1)
	if err := os.WriteFile(f.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	f.sshdExtra = []string{"HostCertificate " + stageKey + "-cert.pub"}
	f.sshOpts = []string{"-o", "UserKnownHostsFile=" + filepath.Join(f.P, "root/.ssh/known_hosts")}
	// First, impostors answer at staging's address, one after the other:
	// with a plain key of their own, and with certificates of another CA,
	// expired, or for another host. Each is refused, saying why.
	other := filepath.Join(t.TempDir(), "other-ca")
	sshKeygen("-t", "ed25519", "-N", "", "-C", "other-ca", "-f", other)
	peerPort := fmt.Sprintf("127.0.0.2:%d", peerPortOf("127.0.0.2"))
	f.prod = startAgent(t, f.P, f.config, "prod")
	for _, imp := range []struct {
		what    string
		signCA  string
		sign    []string
		wantWhy string
	}{
		{"a plain key", "", nil, "plain host key"},
		{"another CA", other, []string{"-n", "stage,127.0.0.2"}, "not one of hostCAs"},
		{"an expired certificate", ca, []string{"-n", "stage,127.0.0.2", "-V", "20200101:20200102"}, "does not hold"},
		{"another host's certificate", ca, []string{"-n", "prod,127.0.0.3"}, "does not hold"},
	} {
		key := filepath.Join(t.TempDir(), "impostor")
		sshKeygen("-t", "ed25519", "-N", "", "-f", key)
		signer := parseSigner(t, key)
		host := signer
		if imp.signCA != "" {
			sshKeygen(append(append([]string{"-s", imp.signCA, "-h", "-I", "impostor"}, imp.sign...), key+".pub")...)
			cert, _, _, _, err := ssh.ParseAuthorizedKey(readFile(t, key+"-cert.pub"))
			if err != nil {
				t.Fatal(err)
			}
			if host, err = ssh.NewCertSigner(cert.(*ssh.Certificate), signer); err != nil {
				t.Fatal(err)
			}
		}
		doc, err := json.Marshal(peer.Facts{Version: peer.FactsVersion, Name: "stage", Address: "127.0.0.2", Generation: 1, ObservedGeneration: 1,
			Ready: true, HostKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))}})
		if err != nil {
			t.Fatal(err)
		}
		stopFake := fakePeerPortWith(t, peerPort, host, append(doc, '\n'))
		st := f.prod.waitFor("an impostor with "+imp.what+" refused", func(s status.Status) bool {
			return len(s.Peers) == 1 && s.Peers[0].Reason == "HostKeyNotCertified" && s.Peers[0].RefusedHostKeyFingerprint == ssh.FingerprintSHA256(host.PublicKey())
		})
		if !strings.Contains(st.Peers[0].Message, imp.wantWhy) || st.Ready || strings.Contains(string(readFile(t, filepath.Join(f.P, "root/.ssh/known_hosts"))), " ssh-ed25519 "+strings.Fields(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))[1]) {
			t.Fatalf("%s: production %+v; want refused, saying %q, nothing written", imp.what, st.Peers[0], imp.wantWhy)
		}
		stopFake()
	}

	f.startSSHD(t)
	f.stage = startAgent(t, f.S, f.config, "stage")
	f.stage.waitFor("staging Ready", ready)

	certified := func(what, fp string) status.Status {
		t.Helper()
		return f.prod.waitFor(what, func(s status.Status) bool {
			return ready(s) && len(s.Peers) == 1 && s.Peers[0].Trust == status.TrustCertified &&
				s.Peers[0].HostKeyFingerprint == fp && s.Peers[0].State == status.PeerServing
		})
	}
	certified("production Ready, staging certified", facts(t, f.S).HostKey.Fingerprint)
	if c := facts(t, f.S).HostCertificate; c == nil || c.KeyID != "stage" || strings.Join(c.Principals, ",") != "stage,127.0.0.2" || c.Error != "" {
		t.Fatalf("nixpeer facts on staging: host certificate %+v", c)
	}
	kh := string(readFile(t, filepath.Join(f.P, "root/.ssh/known_hosts")))
	if !strings.Contains(kh, "@cert-authority [127.0.0.2]:"+strconv.Itoa(f.port)+" "+strings.Join(strings.Fields(caPub)[:2], " ")) {
		t.Fatalf("production's known_hosts has no CA line for staging:\n%s", kh)
	}
	if conf := string(readFile(t, filepath.Join(f.P, "etc/nix/nixpeer.conf"))); strings.Contains(conf, "base64-ssh-public-host-key") || !strings.Contains(conf, "ssh://nix-ssh@127.0.0.2") {
		t.Fatalf("production's substituter pins a key, or is missing:\n%s", conf)
	}
	fetchNew := func(what string) {
		t.Helper()
		path := testenv.BuildPath(t, f.daemon, "nixpeer-ca", what+" "+strconv.FormatInt(time.Now().UnixNano(), 10))
		f.fetch(t, path)
	}
	fetchNew("built on staging")

	// Staging's host key is replaced under the same CA, and its agent
	// restarted with it, while its sshd serves on. Production takes the
	// new key with nothing approved, and its Nix settings are never
	// rewritten: the substituter is not withdrawn for a moment.
	conf := filepath.Join(f.P, "etc/nix/nixpeer.conf")
	before := modTime(t, conf)
	certify(f.S, "stage", "127.0.0.2")
	f.stage.stop()
	f.stage = startAgent(t, f.S, f.config, "stage")
	start := time.Now()
	certified("production Ready with staging's new key", facts(t, f.S).HostKey.Fingerprint)
	t.Logf("staging's new host key certified on production %v after staging's agent started again", time.Since(start).Round(time.Millisecond))
	if !modTime(t, conf).Equal(before) {
		_, ev, _ := runCLI(t, "events", "--socket", f.prod.socket)
		t.Fatalf("production's Nix settings were rewritten during the rotation: the substituter was withdrawn:\n%s\nevents:\n%s", readFile(t, conf), ev)
	}
	fetchNew("built on staging during its host key change")
	// A restart of its sshd changes nothing: it reads the new files.
	f.sshd.Stop(t)
	f.startSSHD(t)
	fetchNew("built on staging after its sshd restarted")
}

func modTime(t *testing.T, path string) time.Time {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.ModTime()
}

// parseSigner reads the unencrypted private key at path.
func parseSigner(t *testing.T, path string) ssh.Signer {
	t.Helper()
	s, err := ssh.ParsePrivateKey(readFile(t, path))
	if err != nil {
		t.Fatal(err)
	}
	return s
}
