package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"time"

	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// ErrNoDaemon means nothing answered on the socket.
var ErrNoDaemon = errors.New("no nixpeer daemon answers")

// Client talks to a daemon over its socket.
type Client struct {
	Socket string
	http   *http.Client
}

// NewClient returns a client of the daemon at socket.
func NewClient(socket string) *Client {
	return &Client{Socket: socket, http: &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}},
	}}
}

// Status fetches the host's status.
func (c *Client) Status(ctx context.Context) (status.Status, error) {
	return ask[status.Status](ctx, c, http.MethodGet, "/v1/status", nil)
}

// WaitReconciled returns the status once a reconcile has finished after
// the time after, or the latest status after wait (at most 5s).
func (c *Client) WaitReconciled(ctx context.Context, after time.Time, wait time.Duration) (status.Status, error) {
	q := url.Values{"after": {after.Format(time.RFC3339Nano)}, "wait": {wait.String()}}
	return ask[status.Status](ctx, c, http.MethodGet, "/v1/status?"+q.Encode(), nil)
}

// Events fetches the history of reconciles from since on (all when zero).
func (c *Client) Events(ctx context.Context, since time.Time) ([]state.Event, error) {
	path := "/v1/events"
	if !since.IsZero() {
		path += "?" + url.Values{"since": {since.Format(time.RFC3339Nano)}}.Encode()
	}
	return ask[[]state.Event](ctx, c, http.MethodGet, path, nil)
}

// Next returns the status at once when last is the zero status, else
// once a reconcile has finished after last's (or after 5s): what a
// client following the agent asks next.
func (c *Client) Next(ctx context.Context, last status.Status) (status.Status, error) {
	if last.LastReconcile.IsZero() {
		return c.Status(ctx)
	}
	return c.WaitReconciled(ctx, last.LastReconcile, 5*time.Second)
}

// Reconcile asks the daemon to reconcile now.
func (c *Client) Reconcile(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/v1/reconcile", nil, nil)
}

// TrustApprove asks the daemon to trust the host key with fingerprint fp
// that peer offers and that awaits approval.
func (c *Client) TrustApprove(ctx context.Context, peer, fp string) error {
	return c.do(ctx, http.MethodPost, "/v1/trust/approve?"+url.Values{"peer": {peer}, "fingerprint": {fp}}.Encode(), nil, nil)
}

// TrustReset asks the daemon to forget what it trusted of peer.
func (c *Client) TrustReset(ctx context.Context, peer string) error {
	return c.do(ctx, http.MethodPost, "/v1/trust/reset?peer="+url.QueryEscape(peer), nil, nil)
}

// do asks the daemon for method path and decodes the answer into out
// (when not nil). in, when not nil, is sent as JSON, and then only ctx
// bounds the call, not the client's timeout (the daemon may run Nix and
// ask peers).
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	hc, reqBody := c.http, io.Reader(nil)
	if in != nil {
		raw, err := json.Marshal(in)
		if err != nil {
			return err
		}
		long := *c.http
		long.Timeout = 0
		hc, reqBody = &long, bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://nixpeer"+path, reqBody)
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			if errors.Is(op.Err, syscall.EACCES) {
				return fmt.Errorf("permission denied on %s: only root and members of the socket's group may ask the daemon", c.Socket)
			}
			return fmt.Errorf("%w on %s: %v", ErrNoDaemon, c.Socket, op.Err)
		}
		return fmt.Errorf("ask daemon on %s: %w", c.Socket, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("read answer from %s: %w", c.Socket, err)
	}
	if resp.StatusCode >= 300 {
		var e errorBody
		switch {
		case json.Unmarshal(body, &e) != nil || e.Error == "":
		case resp.StatusCode == http.StatusUnprocessableEntity:
			return errors.New(e.Error) // the call was taken, and failed
		default:
			return fmt.Errorf("daemon refused: %s", e.Error)
		}
		return fmt.Errorf("daemon answered %s", resp.Status)
	}
	if out != nil {
		if err := json.Unmarshal(body, out); err != nil {
			return fmt.Errorf("decode answer from %s: %w", c.Socket, err)
		}
	}
	return nil
}

// ask is do for a call that answers a T.
func ask[T any](ctx context.Context, c *Client, method, path string, in any) (T, error) {
	var out T
	err := c.do(ctx, method, path, in, &out)
	return out, err
}

// PlanRequest asks what realising Targets (store paths or .drv files)
// would do on the daemon's host: `nixpeer plan`.
type PlanRequest struct {
	Targets []string `json:"targets"`
	// Store is the Nix store to plan for; "" for the host's own.
	Store string `json:"store,omitempty"`
}

// PathsRequest asks which serving peer of the daemon's host holds each of
// Paths, signed by a key the host trusts: `nixpeer wait --path`.
type PathsRequest struct {
	Paths []string `json:"paths"`
}

// PathsAnswer says which peer holds each path found (by path), and why
// the others are not found yet, when the daemon can tell.
type PathsAnswer struct {
	Found map[string]string `json:"found"`
	Why   string            `json:"why,omitempty"`
}

// Plan asks the daemon for the plan of req and decodes it into out. The
// daemon runs Nix's dry run with its own settings and asks its peers:
// it may take minutes, bounded by ctx.
func (c *Client) Plan(ctx context.Context, req PlanRequest, out any) error {
	return c.do(ctx, http.MethodPost, "/v1/plan", req, out)
}

// FleetRequest asks for the fleet view; it has no fields yet.
type FleetRequest struct{}

// FleetHost is one host of the desired-state file as the daemon sees it.
type FleetHost struct {
	Name    string `json:"name"`
	Address string `json:"address"`
	// Role: "serves", "fetches from A, B", both, or "-".
	Role string `json:"role"`
	// Self marks the daemon's host.
	Self bool `json:"self,omitempty"`
	// Ready, Generation and ObservedGeneration are what the host's agent
	// says now (its facts over its peer port, or the daemon's status);
	// Ready is nil when it could not be asked.
	Ready              *bool `json:"ready,omitempty"`
	Generation         int64 `json:"generation,omitempty"`
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Trust is how the daemon trusts the host's key: pinned, tofu,
	// approved, refused (it peers with it), or, for a host it does not
	// peer with: pinned (the key matches the file's hostKey), unverified
	// (no pin to check).
	Trust string `json:"trust"`
	// LastHeard is "now" while the daemon's watch of it is open, else
	// when it last went down; empty for a host it does not peer with.
	LastHeard string `json:"lastHeard,omitempty"`
	// Error says why it could not be asked.
	Error string `json:"error,omitempty"`
	// HostKey is the SSH host key ("ssh-ed25519 BASE64") its agent
	// showed on its peer port, when the daemon's check of it passed (for
	// the daemon's host: its own).
	HostKey string `json:"hostKey,omitempty"`
	// Pinned: the desired-state file pins the host's key (hostKey).
	Pinned bool `json:"pinned,omitempty"`
}

// Fleet asks the daemon for every host of its desired state, each asked
// over its peer port by the daemon (all at once, each within the fetch
// timeout).
func (c *Client) Fleet(ctx context.Context) ([]FleetHost, error) {
	return ask[[]FleetHost](ctx, c, http.MethodPost, "/v1/fleet", FleetRequest{})
}

// Paths asks the daemon which of req's paths its serving peers hold.
func (c *Client) Paths(ctx context.Context, req PathsRequest) (PathsAnswer, error) {
	return ask[PathsAnswer](ctx, c, http.MethodPost, "/v1/paths", req)
}
