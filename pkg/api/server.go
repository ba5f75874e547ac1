// Package api is the agent's local API: HTTP/JSON over a unix socket, so
// `nixpeer status` and `curl --unix-socket` can ask the daemon. Reading is
// open to root and to the members of a group; changing anything is root's
// alone, checked with SO_PEERCRED.
package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/nixpeer/nixpeer/pkg/atomicfile"
	"github.com/nixpeer/nixpeer/pkg/state"
	"github.com/nixpeer/nixpeer/pkg/status"
)

// Backend is what the daemon exposes through the socket.
type Backend interface {
	Status() status.Status
	// WaitReconciled returns the status once a reconcile finished after
	// the given time, or the latest one when ctx ends.
	WaitReconciled(ctx context.Context, after time.Time) status.Status
	// Reconcile asks for a reconcile now.
	Reconcile()
	// TrustReset forgets what was trusted of a peer; it reports an error
	// for an unknown peer.
	TrustReset(peer string) error
	// TrustApprove trusts the host key with fingerprint fp that peer
	// offers and that awaits approval.
	TrustApprove(peer, fp string) error
	// Events returns the history of reconciles that changed something,
	// oldest first, from since on.
	Events(since time.Time) ([]state.Event, error)
	// Plan answers `nixpeer plan` with a value sent as JSON.
	Plan(ctx context.Context, req PlanRequest) (any, error)
	// Paths answers `nixpeer wait --path`.
	Paths(ctx context.Context, req PathsRequest) (PathsAnswer, error)
	// Fleet answers `nixpeer status --fleet`: every host of the desired
	// state, as its agent says over its peer port.
	Fleet(ctx context.Context, req FleetRequest) ([]FleetHost, error)
	// Key answers `nixpeer rotate cache-key`, `nixpeer revoke cache-key`
	// and `nixpeer rotate host-key`.
	Key(ctx context.Context, req KeyRequest) (KeyAnswer, error)
	// Publish answers `nixpeer publish` and the post-build hook.
	Publish(ctx context.Context, req PublishRequest) (PublishAnswer, error)
}

// Listen creates the socket at path, refusing when a live daemon already
// answers there and removing a stale one otherwise. The socket is 0660 and
// owned by group (if that group exists on the machine), else 0600: never
// world-writable, and not even briefly so. Its directory must be this
// process's user's and writable by nobody else, or sticky: the socket is
// chown-ed and chmod-ed by its path, which another user could otherwise
// swap for a symbolic link to any file in between.
func Listen(path, group string) (net.Listener, error) {
	dir := filepath.Dir(path)
	if err := atomicfile.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := privateDir(dir); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another nixpeer daemon answers on %s", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	old := unix.Umask(0o177)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	mode := os.FileMode(0o600)
	if gid, ok := lookupGroup(group); ok {
		if err := os.Lchown(path, 0, gid); err != nil {
			ln.Close()
			return nil, fmt.Errorf("give socket %s to group %s: %w", path, group, err)
		}
		mode = 0o660
	}
	if err := os.Chmod(path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket %s: %w", path, err)
	}
	return ln, nil
}

// privateDir checks that dir is a directory of this process's user that
// no other user may write to, or a sticky one.
func privateDir(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("socket directory %s is not a directory (a symbolic link?); refusing it", dir)
	case fi.Mode().Perm()&0o022 != 0 && fi.Mode()&os.ModeSticky == 0:
		// In a sticky directory (/tmp) nobody else may replace root's socket.
		return fmt.Errorf("socket directory %s is writable by group or others (%04o); refusing it: make it 0755", dir, fi.Mode().Perm())
	case ok && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("socket directory %s belongs to uid %d, not to this agent's user %d; refusing it", dir, st.Uid, os.Geteuid())
	}
	return nil
}

func lookupGroup(name string) (int, bool) {
	if name == "" {
		return 0, false
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, false
	}
	gid, err := strconv.Atoi(g.Gid)
	return gid, err == nil
}

type credKey struct{}

// Server serves the API on a listener.
type Server struct {
	mux     *http.ServeMux
	log     *zap.Logger
	backend Backend
	group   string
	srv     *http.Server
}

// NewServer returns a server for backend; group names who may read.
func NewServer(log *zap.Logger, backend Backend, group string) *Server {
	mux := http.NewServeMux()
	s := &Server{mux: mux, log: log, backend: backend, group: group}
	mux.HandleFunc("GET /v1/status", s.read(s.status))
	mux.HandleFunc("GET /v1/events", s.read(s.events))
	mux.HandleFunc("POST /v1/reconcile", s.mutate(s.reconcile))
	mux.HandleFunc("POST /v1/trust/reset", s.mutate(s.trustReset))
	mux.HandleFunc("POST /v1/trust/approve", s.mutate(s.trustApprove))
	// Root only: the daemon logs in to its peers with the host's key.
	mux.HandleFunc("POST /v1/plan", s.mutate(call(backend.Plan)))
	mux.HandleFunc("POST /v1/paths", s.mutate(call(backend.Paths)))
	mux.HandleFunc("POST /v1/fleet", s.read(call(backend.Fleet)))
	mux.HandleFunc("POST /v1/keys", s.mutate(call(backend.Key)))
	mux.HandleFunc("POST /v1/publish", s.mutate(call(backend.Publish)))
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if uc, ok := c.(*net.UnixConn); ok {
				if cred, err := peerCred(uc); err == nil {
					return context.WithValue(ctx, credKey{}, cred)
				}
			}
			return ctx
		},
	}
	return s
}

// HandleRead serves h at pattern (such as "GET /metrics") to whoever may
// read the status. Call it before Serve.
func (s *Server) HandleRead(pattern string, h http.Handler) {
	s.mux.HandleFunc(pattern, s.read(h.ServeHTTP))
}

// Serve answers on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve status socket: %w", err)
	}
	return nil
}

// Shutdown stops the server.
func (s *Server) Shutdown(ctx context.Context) error { return s.srv.Shutdown(ctx) }

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	err = raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil {
		return nil, err
	}
	return cred, cerr
}

// allowedToRead: root, or a member (primary or supplementary) of the group.
func (s *Server) allowedToRead(cred *unix.Ucred) bool {
	// The agent's own user (an agent run without root, as the demo may
	// be) can read its memory anyway.
	if cred.Uid == 0 || int(cred.Uid) == os.Geteuid() {
		return true
	}
	gid, ok := lookupGroup(s.group)
	if !ok {
		return false
	}
	if int(cred.Gid) == gid {
		return true
	}
	u, err := user.LookupId(strconv.Itoa(int(cred.Uid)))
	if err != nil {
		return false
	}
	gids, err := u.GroupIds()
	return err == nil && slices.Contains(gids, strconv.Itoa(gid))
}

func (s *Server) guard(r *http.Request, w http.ResponseWriter) (*unix.Ucred, bool) {
	// A browser page must never reach the daemon (DNS rebinding, a proxy).
	if r.Header.Get("Origin") != "" || r.Header.Get("Referer") != "" {
		writeError(w, http.StatusForbidden, "requests from a browser are refused")
		return nil, false
	}
	cred, ok := r.Context().Value(credKey{}).(*unix.Ucred)
	if !ok {
		writeError(w, http.StatusForbidden, "cannot tell who is calling (no SO_PEERCRED)")
		return nil, false
	}
	return cred, true
}

func (s *Server) read(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cred, ok := s.guard(r, w)
		if !ok {
			return
		}
		if !s.allowedToRead(cred) {
			writeError(w, http.StatusForbidden, fmt.Sprintf("uid %d may not read the status: only root, the agent's own user and members of group %q may", cred.Uid, s.group))
			return
		}
		h(w, r)
	}
}

func (s *Server) mutate(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		cred, ok := s.guard(r, w)
		if !ok {
			return
		}
		if cred.Uid != 0 {
			s.log.Warn("refused a mutating call from a non-root caller",
				zap.String("path", r.URL.Path), zap.Uint32("uid", cred.Uid), zap.Int32("pid", cred.Pid))
			writeError(w, http.StatusForbidden, fmt.Sprintf("only root may %s (you are uid %d): run it with sudo", r.URL.Path, cred.Uid))
			return
		}
		h(w, r)
	}
}

// maxWait bounds a long poll of the status.
const maxWait = 5 * time.Second

// status answers at once, or, with ?after=TIME (RFC 3339), once a reconcile
// has finished after TIME (at most wait=DURATION, default and cap 5s): a
// client follows the agent without polling.
func (s *Server) status(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if q.Get("after") == "" {
		writeJSON(w, http.StatusOK, s.backend.Status())
		return
	}
	after, err := time.Parse(time.RFC3339Nano, q.Get("after"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "after: want an RFC 3339 time, such as the lastReconcile of a status")
		return
	}
	wait := maxWait
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait <= 0 {
			writeError(w, http.StatusBadRequest, "wait: want a positive duration such as 2s")
			return
		}
		wait = min(wait, maxWait)
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	writeJSON(w, http.StatusOK, s.backend.WaitReconciled(ctx, after))
}

// events answers the history, from ?since=TIME (RFC 3339) on.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	var since time.Time
	if v := r.URL.Query().Get("since"); v != "" {
		var err error
		if since, err = time.Parse(time.RFC3339Nano, v); err != nil {
			writeError(w, http.StatusBadRequest, "since: want an RFC 3339 time")
			return
		}
	}
	evs, err := s.backend.Events(since)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	if evs == nil {
		evs = []state.Event{}
	}
	writeJSON(w, http.StatusOK, evs)
}

func (s *Server) reconcile(w http.ResponseWriter, _ *http.Request) {
	s.backend.Reconcile()
	writeJSON(w, http.StatusAccepted, map[string]string{"result": "reconcile queued"})
}

func (s *Server) trustReset(w http.ResponseWriter, r *http.Request) {
	peer := r.URL.Query().Get("peer")
	if err := s.backend.TrustReset(peer); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"result": "trust in " + peer + " reset; it is trusted again on next contact"})
}

// maxRequest bounds the JSON body of a call.
const maxRequest = 1 << 20

// decode reads a call's JSON body into v, strictly: nothing unknown,
// nothing after it, at most maxRequest bytes.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, "bad request body: "+err.Error())
		return false
	}
	if dec.More() {
		writeError(w, http.StatusBadRequest, "bad request body: more than one JSON value")
		return false
	}
	return true
}

// call answers a POST of a Req in JSON with what f makes of it; a failure
// of f is the daemon's answer too (422), not a refusal.
func call[Req, Resp any](f func(context.Context, Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		if !decode(w, r, &req) {
			return
		}
		resp, err := f(r.Context(), req)
		if err != nil {
			writeError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

func (s *Server) trustApprove(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	peer, fp := q.Get("peer"), q.Get("fingerprint")
	if err := s.backend.TrustApprove(peer, fp); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"result": "host key " + fp + " of " + peer + " approved"})
}

// errorBody is the JSON body of every refusal.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
