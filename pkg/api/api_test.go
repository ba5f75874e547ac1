package api

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/nixpeer/nixpeer/internal/testenv"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

type fakeBackend struct{ reconciles int }

func (f *fakeBackend) Status() status.Status { return status.Status{Host: "stage", Ready: true} }
func (f *fakeBackend) Reconcile()            { f.reconciles++ }
func (f *fakeBackend) WaitReconciled(ctx context.Context, after time.Time) status.Status {
	<-ctx.Done()
	return status.Status{Host: "waited"}
}
func (f *fakeBackend) TrustReset(peer string) error {
	if peer != "prod" {
		return errors.New("unknown peer " + peer)
	}
	return nil
}

func (f *fakeBackend) Events(since time.Time) ([]state.Event, error) { return nil, nil }

func (f *fakeBackend) TrustApprove(peer, fp string) error {
	if peer != "stage" || fp != "SHA256:x" {
		return errors.New("nothing awaits approval")
	}
	return nil
}

func (f *fakeBackend) Plan(ctx context.Context, req PlanRequest) (any, error) {
	if req.Store == "broken" {
		return nil, errors.New("nix-store --realise --dry-run: exit status 1")
	}
	return map[string]any{"build": req.Targets}, nil
}

func (f *fakeBackend) Key(ctx context.Context, req KeyRequest) (KeyAnswer, error) {
	return KeyAnswer{Result: req.Action}, nil
}

func (f *fakeBackend) Publish(ctx context.Context, req PublishRequest) (PublishAnswer, error) {
	return PublishAnswer{Queued: len(req.Paths)}, nil
}

func (f *fakeBackend) Fleet(ctx context.Context, req FleetRequest) ([]FleetHost, error) {
	return []FleetHost{{Name: f.Status().Host, Self: true, Trust: "self"}}, nil
}

func (f *fakeBackend) Paths(ctx context.Context, req PathsRequest) (PathsAnswer, error) {
	return PathsAnswer{Found: map[string]string{req.Paths[0]: "stage"}, Why: "not built yet"}, nil
}

func serve(t *testing.T, sock string) *fakeBackend {
	t.Helper()
	ln, err := Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	b := &fakeBackend{}
	srv := NewServer(zap.NewNop(), b, "")
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return b
}

func TestStatusAndReconcileAsRoot(t *testing.T) {
	testenv.RequireRoot(t) // the mutating route is root's
	sock := filepath.Join(t.TempDir(), "agent.sock")
	b := serve(t, sock)
	st, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600 when no group exists", st.Mode().Perm())
	}

	c := NewClient(sock)
	got, err := c.Status(context.Background())
	if err != nil || got.Host != "stage" || !got.Ready {
		t.Fatalf("Status = %+v, %v", got, err)
	}
	start := time.Now()
	got, err = c.WaitReconciled(context.Background(), start, 50*time.Millisecond)
	if err != nil || got.Host != "waited" || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("WaitReconciled = %+v, %v after %v; want the backend's answer after the wait", got, err, time.Since(start))
	}
	if err := c.Reconcile(context.Background()); err != nil || b.reconciles != 1 {
		t.Fatalf("Reconcile: %v, backend saw %d", err, b.reconciles)
	}
	if err := c.TrustReset(context.Background(), "nope"); err == nil || !strings.Contains(err.Error(), "unknown peer nope") {
		t.Fatalf("TrustReset(nope) = %v, want the backend's refusal", err)
	}
	if err := c.TrustApprove(context.Background(), "stage", "SHA256:x"); err != nil {
		t.Fatalf("TrustApprove: %v", err)
	}
	if err := c.TrustApprove(context.Background(), "stage", "SHA256:y"); err == nil || !strings.Contains(err.Error(), "nothing awaits approval") {
		t.Fatalf("TrustApprove of another key = %v, want the backend's refusal", err)
	}
	var p struct{ Build []string }
	if err := c.Plan(context.Background(), PlanRequest{Targets: []string{"/nix/store/x"}}, &p); err != nil || len(p.Build) != 1 {
		t.Fatalf("Plan = %+v, %v", p, err)
	}
	if err := c.Plan(context.Background(), PlanRequest{Store: "broken"}, &p); err == nil || err.Error() != "nix-store --realise --dry-run: exit status 1" {
		t.Fatalf("Plan of a failing dry run = %v, want the backend's error as it is", err)
	}
	a, err := c.Paths(context.Background(), PathsRequest{Paths: []string{"/nix/store/y"}})
	if err != nil || a.Found["/nix/store/y"] != "stage" || a.Why != "not built yet" {
		t.Fatalf("Paths = %+v, %v", a, err)
	}
	// A body that is not exactly a request is refused.
	for _, body := range []string{`{"paths": ["/nix/store/y"], "more": 1}`, `{"paths": []} {}`, `[`} {
		req, _ := http.NewRequest(http.MethodPost, "http://nixpeer/v1/paths", strings.NewReader(body))
		resp, err := c.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("body %s: %s, want 400", body, resp.Status)
		}
	}
}

// TestSocketDirectoryMustBePrivate: the socket is chown-ed and chmod-ed by
// its path, so a directory another user may write to (who could swap the
// socket for a symbolic link meanwhile) is refused, as is a link.
func TestSocketDirectoryMustBePrivate(t *testing.T) {
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(open, "agent.sock"), ""); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("Listen in a 0777 directory = %v, want a refusal", err)
	}
	// Sticky, as /tmp: nobody else may replace the socket there.
	if err := os.Chmod(open, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(filepath.Join(open, "agent.sock"), "")
	if err != nil {
		t.Fatalf("Listen in a sticky directory: %v", err)
	}
	ln.Close()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(t.TempDir(), link); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(filepath.Join(link, "agent.sock"), ""); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Listen in a symbolic link = %v, want a refusal", err)
	}
}

func TestSecondDaemonRefusedStaleSocketReplaced(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	serve(t, sock)
	if _, err := Listen(sock, ""); err == nil || !strings.Contains(err.Error(), "another nixpeer daemon") {
		t.Fatalf("second Listen = %v, want a refusal", err)
	}

	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("stale socket file should remain: %v", err)
	}
	ln2, err := Listen(stale, "")
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	ln2.Close()
}

func TestBrowserRequestsRefused(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	serve(t, sock)
	c := NewClient(sock)
	req, _ := http.NewRequest(http.MethodGet, "http://nixpeer/v1/status", nil)
	req.Header.Set("Origin", "http://evil.example")
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("request with Origin: %s, want 403", resp.Status)
	}
}

func TestNoDaemonNamesTheSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	_, err := NewClient(sock).Status(context.Background())
	if !errors.Is(err, ErrNoDaemon) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("err = %v, want ErrNoDaemon naming %s", err, sock)
	}
}
