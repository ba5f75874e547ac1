package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixpeer/nixpeer/pkg/testenv"
)

func TestTmpTimeline(t *testing.T) {
	f := prepareFleet(t, testenv.FreePort(t, "127.0.0.2"), "ssh")
	key := filepath.Join(f.S, "etc/ssh/ssh_host_ed25519_key")
	os.MkdirAll(filepath.Dir(key), 0o755)
	exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).Run()
	f.startSSHD(t)
	start := time.Now()
	f.stage = startAgent(t, f.S, f.config, "stage")
	f.prod = startAgent(t, f.P, f.config, "prod")
	s := f.stage.waitFor("staging Ready", ready)
	p := f.prod.waitFor("production Ready", ready)
	t.Logf("start %s", start.UTC().Format("15:04:05.000"))
	t.Logf("stage ready %s prod ready %s", s.Conditions[0].LastTransitionTime.Format("15:04:05.000"), p.Conditions[0].LastTransitionTime.Format("15:04:05.000"))
	t.Logf("STAGE\n%s", f.stage.logs.String())
	t.Logf("PROD\n%s", f.prod.logs.String())
}
