package launch

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// weedRegion is the region SeaweedFS's S3 gateway answers for.
const weedRegion = "us-east-1"

// Weed is a SeaweedFS server with its S3 gateway, on loopback.
type Weed struct {
	// Endpoint is the S3 API's URL, http://ADDRESS:PORT.
	Endpoint string
	// AccessKey and SecretKey are the credentials of the one identity the
	// gateway knows, allowed everything (Admin, Read, Write, List,
	// Tagging). Anonymous requests are refused.
	AccessKey, SecretKey string
	// Proc is weed server.
	Proc *Process
	// Dir holds the S3 configuration (s3.json), the data (data/) and the
	// filer's and the gateway's unix sockets.
	Dir string
	// Retried says why first ports picked were not the ones used.
	Retried []string

	// sockets are the unix sockets weed makes outside Dir (its gRPC
	// services', /tmp/seaweedfs-NAME-grpc-PORT.sock): Stop removes the
	// ones it leaves behind.
	sockets []string
}

// LookWeed finds the SeaweedFS program weed in PATH.
func LookWeed() (string, error) {
	p, err := exec.LookPath("weed")
	if err != nil {
		return "", fmt.Errorf("no weed (SeaweedFS): %w; as root, run scripts/prepare.sh seaweedfs", err)
	}
	return p, nil
}

// StartWeed runs `weed server` with its master, volume server, filer and
// S3 gateway on address (a loopback IP), each on a free port, storing
// below dir, and waits (at most 30 s) until the gateway stores an object
// for an authenticated request: about 10 s. The credentials are random,
// made for this server.
func StartWeed(dir, address string) (*Weed, error) {
	prog, err := LookWeed()
	if err != nil {
		return nil, err
	}
	if ip := net.ParseIP(address); ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("weed address %q is not a loopback IP", address)
	}
	w := &Weed{Dir: dir}
	if w.AccessKey, err = randomKey(10); err != nil {
		return nil, err
	}
	if w.SecretKey, err = randomKey(20); err != nil {
		return nil, err
	}
	config := filepath.Join(dir, "s3.json")
	if err := writeWeedS3Config(config, w.AccessKey, w.SecretKey); err != nil {
		return nil, err
	}
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(data, 0o755); err != nil {
		return nil, fmt.Errorf("weed data directory: %w", err)
	}
	// Ports picked free may be taken before weed binds them: then try
	// others.
	const attempts = 3
	for attempt := 1; ; attempt++ {
		err := w.start(prog, address, config, data)
		if err == nil {
			return w, nil
		}
		if w.Proc == nil {
			return nil, err
		}
		logs := w.Proc.Logs()
		ended, _ := w.Proc.Exited()
		if attempt == attempts || !ended || !strings.Contains(logs, "address already in use") {
			return nil, fmt.Errorf("weed on %s: %w\nweed log:\n%s", address, err, logs)
		}
		w.Retried = append(w.Retried, logs)
	}
}

// start picks the ports, runs weed server and waits until its S3 gateway
// stores an object; on failure weed is stopped.
func (w *Weed) start(prog, address, config, data string) error {
	// The HTTP ports of master, volume server, filer and gateway, then
	// their gRPC ports: given too, for weed's own choice (HTTP port +
	// 10000) may be taken, or above 65535.
	ports, err := freePorts(address, 8)
	if err != nil {
		return err
	}
	master, volume, filer, s3 := ports[0], ports[1], ports[2], ports[3]
	w.Endpoint = "http://" + net.JoinHostPort(address, strconv.Itoa(s3))
	w.sockets = nil
	for i, name := range []string{"master", "volume", "filer", "s3"} {
		w.sockets = append(w.sockets, fmt.Sprintf("/tmp/seaweedfs-%s-grpc-%d.sock", name, ports[4+i]))
	}
	args := []string{
		// Its log to stderr only: no log files in /tmp.
		"-logtostderr",
		"server",
		"-dir=" + data,
		"-ip=" + address,
		"-ip.bind=" + address,
		"-master.port=" + strconv.Itoa(master),
		"-master.port.grpc=" + strconv.Itoa(ports[4]),
		"-volume.port=" + strconv.Itoa(volume),
		"-volume.port.grpc=" + strconv.Itoa(ports[5]),
		"-filer.port=" + strconv.Itoa(filer),
		"-filer.port.grpc=" + strconv.Itoa(ports[6]),
		"-s3",
		"-s3.port=" + strconv.Itoa(s3),
		"-s3.port.grpc=" + strconv.Itoa(ports[7]),
		"-s3.config=" + config,
		// The Iceberg and Lance catalogs listen on fixed ports (8181,
		// 9101) otherwise: two servers would collide.
		"-s3.port.iceberg=0",
		"-s3.port.lance=0",
		// A bucket is a collection, and a collection's first write
		// grows 7 volumes (sparse files): 5 would be full after one
		// bucket, and the filer's own log (another collection) fails.
		"-volume.max=100",
		// No 10 s pause before the volume server stops.
		"-volume.preStopSeconds=0",
		"-master.telemetry=false",
	}
	// The filer's and the gateway's HTTP unix sockets in dir, not as
	// /tmp/seaweedfs-NAME-PORT.sock, where the path fits a unix socket.
	for _, name := range []string{"filer", "s3"} {
		sock := filepath.Join(w.Dir, name+".sock")
		if len(sock) < 100 {
			args = append(args, "-"+name+".localSocket="+sock)
		} else {
			port := map[string]int{"filer": filer, "s3": s3}[name]
			w.sockets = append(w.sockets, fmt.Sprintf("/tmp/seaweedfs-%s-%d.sock", name, port))
		}
	}
	cmd := exec.Command(prog, args...)
	cmd.Dir = w.Dir // weed reads ./security.toml, ./filer.toml: none here
	if w.Proc, err = Start("weed", cmd); err != nil {
		return err
	}
	client, err := w.client()
	if err != nil {
		w.Stop()
		return err
	}
	probe, err := randomKey(6)
	if err != nil {
		w.Stop()
		return err
	}
	probe = "nixpeer-ready-" + strings.ToLower(probe)
	err = WaitFor(30*time.Second, 100*time.Millisecond, func() error {
		if ended, err := w.Proc.Exited(); ended {
			return fmt.Errorf("weed exited (%v): %w", err, ErrStop)
		}
		return probeWrite(client, probe)
	})
	if err != nil {
		w.Stop()
		return fmt.Errorf("wait for the S3 gateway at %s to store an object: %w", w.Endpoint, err)
	}
	return nil
}

// probeWrite stores an empty object in a new bucket, then deletes both.
// The gateway lists buckets about 2 s after weed server starts, but
// writes only some 8 s later, once the filer has announced itself to the
// master (its lock server): until then a PUT waits.
func probeWrite(client *minio.Client, bucket string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := client.MakeBucket(ctx, bucket, minio.MakeBucketOptions{Region: weedRegion})
	if err != nil && minio.ToErrorResponse(err).Code != "BucketAlreadyOwnedByYou" {
		return err
	}
	if _, err := client.PutObject(ctx, bucket, "probe", strings.NewReader(""), 0, minio.PutObjectOptions{}); err != nil {
		return err
	}
	if err := client.RemoveObject(ctx, bucket, "probe", minio.RemoveObjectOptions{}); err != nil {
		return err
	}
	return client.RemoveBucket(ctx, bucket)
}

// client returns an S3 client of the gateway with the credentials.
func (w *Weed) client() (*minio.Client, error) {
	u, err := url.Parse(w.Endpoint)
	if err != nil {
		return nil, err
	}
	return minio.New(u.Host, &minio.Options{
		Creds:  credentials.NewStaticV4(w.AccessKey, w.SecretKey, ""),
		Secure: u.Scheme == "https",
		Region: weedRegion,
	})
}

// MakeBucket creates the bucket name.
func (w *Weed) MakeBucket(name string) error {
	client, err := w.client()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: weedRegion}); err != nil {
		return fmt.Errorf("make bucket %s at %s: %w", name, w.Endpoint, err)
	}
	return nil
}

// Stop kills weed (SIGKILL): asked to stop, weed server stops its volume
// server first, and then its filer waits 15 s to flush its log to it; the
// data is not kept anyway. The unix sockets it leaves in /tmp are removed.
func (w *Weed) Stop() error {
	if ended, _ := w.Proc.Exited(); !ended {
		_ = syscall.Kill(-w.Proc.Pid(), syscall.SIGKILL)
	}
	err := w.Proc.Stop() // returns once weed has ended
	for _, sock := range w.sockets {
		removeStaleSocket(sock)
	}
	return err
}

// removeStaleSocket removes the unix socket at path unless something
// accepts connections on it (another weed that got the same port since).
func removeStaleSocket(path string) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		_ = os.Remove(path)
	}
}

// freePorts returns n distinct TCP ports on address, each free a moment
// ago.
func freePorts(address string, n int) ([]int, error) {
	var ports []int
	for len(ports) < n {
		p, err := FreePort(address)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	return ports, nil
}

// randomKey returns n random bytes in upper-case hex.
func randomKey(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return strings.ToUpper(hex.EncodeToString(b)), nil
}

// writeWeedS3Config writes the S3 gateway's configuration (-s3.config):
// one identity, allowed everything.
func writeWeedS3Config(path, accessKey, secretKey string) error {
	type credential struct {
		AccessKey string `json:"accessKey"`
		SecretKey string `json:"secretKey"`
	}
	type identity struct {
		Name        string       `json:"name"`
		Credentials []credential `json:"credentials"`
		Actions     []string     `json:"actions"`
	}
	config := struct {
		Identities []identity `json:"identities"`
	}{[]identity{{
		Name:        "nixpeer-test",
		Credentials: []credential{{AccessKey: accessKey, SecretKey: secretKey}},
		Actions:     []string{"Admin", "Read", "Write", "List", "Tagging"},
	}}}
	raw, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o600); err != nil {
		return fmt.Errorf("write the S3 configuration: %w", err)
	}
	return nil
}
