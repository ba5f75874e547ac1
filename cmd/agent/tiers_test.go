package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// tier is one host of a fleet with several serving hosts: its root, its
// agent, and for a serving host its nix-daemon and sshd.
type tier struct {
	name, addr string
	root       string
	sshPort    int
	daemon     *testenv.NixDaemon
	apply      []string
	agent      *agent
}

// TestThreeTiers: a CI builder serves staging, staging serves production,
// and production fetches from both, staging first. A path built on the
// builder reaches production from whichever host has it, signed by the
// builder, with nothing copied by hand.
func TestThreeTiers(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.Require(t, "nix", "nix-store", "nix-daemon", "nix-build", "sshd")
	testenv.RequireNixSSHUser(t)
	tiers := []*tier{{name: "builder", addr: "127.0.0.31"}, {name: "stage", addr: "127.0.0.32"}, {name: "prod", addr: "127.0.0.33"}}
	for _, h := range tiers {
		h.root = t.TempDir()
		os.MkdirAll(filepath.Join(h.root, "etc/nix"), 0o755)
		testenv.WriteNixConf(t, filepath.Join(h.root, "etc/nix"))
		h.apply = []string{"true"}
		if h.name != "prod" {
			h.sshPort = testenv.FreePort(t, h.addr)
			h.daemon, h.apply = testenv.StartRestartableNixDaemon(t, filepath.Join(h.root, "etc/nix"))
		}
	}
	yaml := "apiVersion: nixpeer/v1\ntrust: tofu\nhosts:\n"
	for _, h := range tiers {
		yaml += fmt.Sprintf("  - name: %s\n    address: %s\n    peerPort: %d\n    platform: nix\n    apply: %s\n",
			h.name, h.addr, peerPortOf(h.addr), applyYAML(h.apply))
		if h.sshPort != 0 {
			yaml += fmt.Sprintf("    sshPort: %d\n    serve: {}\n", h.sshPort)
		}
		switch h.name {
		case "stage":
			yaml += "    substituteFrom: [builder]\n"
		case "prod":
			yaml += "    substituteFrom: [stage, builder]\n"
		}
	}
	config := writeConfig(t, yaml)
	for _, h := range tiers {
		h.agent = startAgent(t, h.root, config, h.name)
	}
	for _, h := range tiers[:2] {
		testenv.WaitFor(t, 20*time.Second, 10*time.Millisecond, h.name+"'s host key", func() error {
			_, err := os.Stat(filepath.Join(h.root, "etc/ssh/ssh_host_ed25519_key.pub"))
			return err
		})
		testenv.MakeTraversable(t, filepath.Join(h.root, "etc/ssh"))
		testenv.StartSSHD(t, testenv.SSHDConfig{Address: h.addr, Port: h.sshPort,
			HostKeyFile:        filepath.Join(h.root, "etc/ssh/ssh_host_ed25519_key"),
			AuthorizedKeysFile: filepath.Join(h.root, "etc/ssh/authorized_keys.d/%u"), Daemon: h.daemon})
	}
	for _, h := range tiers {
		st := h.agent.waitWithin(60*time.Second, h.name+" Ready", ready)
		for _, p := range st.Peers {
			if p.Role == status.RoleSubstituter && p.State != status.PeerServing {
				t.Fatalf("%s's peer %s: %+v", h.name, p.Name, p)
			}
		}
	}
	conf := readFile(t, filepath.Join(tiers[2].root, "etc/nix/nixpeer.conf"))
	stageAt, builderAt := bytes.Index(conf, []byte("ssh://nix-ssh@127.0.0.32?")), bytes.Index(conf, []byte("ssh://nix-ssh@127.0.0.31?"))
	if stageAt < 0 || builderAt < stageAt || !bytes.Contains(conf, []byte("priority=10")) || !bytes.Contains(conf, []byte("priority=11")) {
		t.Fatalf("production's substituters are not staging (priority 10) then the builder (11):\n%s", conf)
	}

	nonce := strconv.FormatInt(time.Now().UnixNano(), 10)
	path := testenv.BuildPath(t, tiers[0].daemon, "nixpeer-tiers", "built on the builder "+nonce)
	store := t.TempDir()
	cmd := exec.Command("nix-store", "--store", store, "-r", path)
	cmd.Env = append(os.Environ(), "NIX_CONF_DIR="+filepath.Join(tiers[2].root, "etc/nix"),
		"NIX_SSHOPTS=-F "+filepath.Join(tiers[2].root, "root/.ssh/config"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "copying path") || !strings.Contains(string(out), "from 'ssh://nix-ssh@127.0.0.32'") {
		t.Fatalf("production's fetch of %s built on the builder: %v\n%s", path, err, out)
	}
	sigs, err := exec.Command("nix", "--extra-experimental-features", "nix-command", "path-info", "--store", store, "--sigs", path).CombinedOutput()
	if err != nil || !strings.Contains(string(sigs), "127.0.0.31:") {
		t.Fatalf("the path production got carries no signature of the builder: %v\n%s", err, sigs)
	}
}

func applyYAML(argv []string) string {
	quoted := make([]string, len(argv))
	for i, a := range argv {
		quoted[i] = strconv.Quote(a)
	}
	return "[" + strings.Join(quoted, ", ") + "]"
}
