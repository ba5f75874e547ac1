package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// str encodes a string in Nix's wire format.
func str(s string) []byte {
	b := append(words(uint64(len(s))), s...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	return b
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

// step is one exchange of a scripted server: it expects to read want, then
// writes reply.
type step struct{ want, reply []byte }

// fakeServer plays steps on one end of a pipe and closes it; it returns the
// other end and a channel with the server's first error.
func fakeServer(t *testing.T, steps ...step) (net.Conn, <-chan error) {
	t.Helper()
	server, client := net.Pipe()
	errc := make(chan error, 1)
	go func() {
		defer server.Close()
		for i, s := range steps {
			got := make([]byte, len(s.want))
			if _, err := io.ReadFull(server, got); err != nil {
				errc <- err
				return
			}
			if !bytes.Equal(got, s.want) {
				errc <- fmt.Errorf("step %d: unexpected bytes from the client (-want +got):\n%s", i, cmp.Diff(s.want, got))
				return
			}
			if _, err := server.Write(s.reply); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	t.Cleanup(func() { client.Close() })
	return client, errc
}

func reasonOf(err error) Reason {
	var f *failure
	if errors.As(err, &f) {
		return f.reason
	}
	return WrongProtocol // what Probe makes of a plain error
}

func TestServeHandshake(t *testing.T) {
	t.Parallel()
	conn, errc := fakeServer(t,
		step{words(serveMagic1, 0x205), words(serveMagic2, 0x207)},
		step{words(cmdQueryValidPaths, 0, 0, 0), words(0)},
	)
	res, err := serveHandshake(conn, conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Result{ServerVersion: 0x207}, res); diff != "" {
		t.Errorf("result mismatch (-want +got):\n%s", diff)
	}
}

func TestServeHandshakeFailures(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		steps []step
		want  string
	}{
		{"echo", []step{{words(serveMagic1, 0x205), []byte("hello\n")}}, "unexpected EOF"},
		{"bad magic", []step{{words(serveMagic1, 0x205), words(workerMagic2, 0x207)}}, "serve magic is 0x6478696f"},
		{"bad major", []step{{words(serveMagic1, 0x205), words(serveMagic2, 0x122)}}, "serve protocol version 0x122"},
		{"paths", []step{{words(serveMagic1, 0x205), words(serveMagic2, 0x207)}, {words(1, 0, 0, 0), words(3)}}, "answered 3 paths"},
		{"silent close", []step{{words(serveMagic1, 0x205), nil}}, "read serve magic: unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			handshakeFails(t, "serveHandshake", serveHandshake, tc.steps, tc.want)
		})
	}
}

func TestWorkerHandshake(t *testing.T) {
	t.Parallel()
	startActivity := cat(words(stderrStartActivity, 7, 3, 100), str("copying"),
		words(2, 0, 42, 1), str("a field"), words(0))
	result := cat(words(stderrResult, 7, 105, 1, 0, 9))
	for _, tc := range []struct {
		name   string
		steps  []step
		result Result
	}{
		{
			name: "nix 2.8",
			steps: []step{
				{words(workerMagic1), words(workerMagic2, 0x122)},
				{words(0x123, 0, 0), cat(str("2.8.0"), words(stderrLast))},
			},
			result: Result{ServerVersion: 0x122, NixVersion: "2.8.0"},
		},
		{
			name: "newer daemon, log messages",
			steps: []step{
				{words(workerMagic1), words(workerMagic2, 0x126)},
				{words(0x123, 0, 0), cat(str("2.24.0"), words(0), words(stderrNext), str("hello"),
					startActivity, result, words(stderrStopActivity, 7), words(stderrLast))},
			},
			result: Result{ServerVersion: 0x126, NixVersion: "2.24.0"},
		},
		{
			name: "nix 2.26 (1.37): trusts its client",
			steps: []step{
				{words(workerMagic1), words(workerMagic2, 0x125)},
				{words(0x123, 0, 0), cat(str("2.26.3"), words(1), words(stderrLast))},
			},
			result: Result{ServerVersion: 0x125, NixVersion: "2.26.3", Trusted: Trusted},
		},
		{
			name: "nix 2.34 (1.38): does not trust its client",
			steps: []step{
				{words(workerMagic1), words(workerMagic2, 0x126)},
				{words(0x123, 0, 0), cat(str("2.34.8"), words(2), words(stderrLast))},
			},
			result: Result{ServerVersion: 0x126, NixVersion: "2.34.8", Trusted: NotTrusted},
		},
		{
			name: "old daemon 1.21",
			steps: []step{
				{words(workerMagic1), words(workerMagic2, 0x115)},
				{words(0x123, 0, 0), words(stderrLast)},
			},
			result: Result{ServerVersion: 0x115},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			conn, errc := fakeServer(t, tc.steps...)
			res, err := workerHandshake(conn, conn)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.result, res); diff != "" {
				t.Errorf("result mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWorkerHandshakeFailures(t *testing.T) {
	t.Parallel()
	greeting := step{words(workerMagic1), words(workerMagic2, 0x122)}
	hello := words(0x123, 0, 0)
	for _, tc := range []struct {
		name  string
		steps []step
		want  string
	}{
		{"serve server", []step{{words(workerMagic1), nil}}, "unexpected EOF"},
		{"bad magic", []step{{words(workerMagic1), words(serveMagic2, 0x207)}}, "worker magic is 0x5452eecb"},
		{"too old", []step{{words(workerMagic1), words(workerMagic2, 0x109)}}, "worker protocol version 0x109"},
		{"daemon error", []step{greeting, {hello, cat(str("2.8.0"), words(stderrError), str("Error"), words(0),
			str("Error"), str("user 'nix-ssh' is not allowed"), words(0, 0))}}, "user 'nix-ssh' is not allowed"},
		{"huge string", []step{greeting, {hello, words(1 << 40)}}, "more than 256"},
		{"huge log message", []step{greeting, {hello, cat(str("2.8.0"), words(stderrNext, maxString+1))}}, "more than 65536"},
		{"unknown code", []step{greeting, {hello, cat(str("2.8.0"), words(0x1234))}}, "unknown daemon message code 0x1234"},
		{"wants data", []step{greeting, {hello, cat(str("2.8.0"), words(stderrRead, 8))}}, "asks for data"},
		{"cut short", []step{greeting, {hello, cat(str("2.8.0"), words(stderrNext))}}, "unexpected EOF"},
		{"bad trust", []step{{words(workerMagic1), words(workerMagic2, 0x125)}, {hello, cat(str("2.26.3"), words(7))}}, "daemon trust 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			handshakeFails(t, "workerHandshake", workerHandshake, tc.steps, tc.want)
		})
	}
}

// handshakeFails runs handshake (named name) against a server that
// speaks steps, and wants a WrongProtocol error containing want.
func handshakeFails(t *testing.T, name string, handshake func(io.Writer, io.Reader) (Result, error), steps []step, want string) {
	t.Helper()
	conn, errc := fakeServer(t, steps...)
	go func() { <-errc }()
	_, err := handshake(conn, conn)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("%s = %v, want an error containing %q", name, err, want)
	}
	if r := reasonOf(err); r != WrongProtocol {
		t.Errorf("reason %v, want WrongProtocol", r)
	}
}

func TestErrorMessage(t *testing.T) {
	t.Parallel()
	e := &Error{Reason: HostKeyMismatch, Peer: "nix-ssh@127.0.0.2:22", Err: errors.New("expected SHA256:a, got SHA256:b")}
	want := "probe nix-ssh@127.0.0.2:22: host key mismatch: expected SHA256:a, got SHA256:b"
	if got := e.Error(); got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	var target *Error
	if !errors.As(error(e), &target) || target.Reason != HostKeyMismatch {
		t.Errorf("errors.As does not find the *Error")
	}
}

func TestSettle(t *testing.T) {
	t.Parallel()
	start := time.Now()
	live, cancelLive := context.WithCancel(context.Background())
	defer cancelLive()
	expired, cancelExpired := context.WithDeadline(context.Background(), start)
	defer cancelExpired()
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	later := start.Add(time.Hour)

	plain := errors.New("read serve magic: unexpected EOF")
	for _, tc := range []struct {
		name     string
		ctx      context.Context
		deadline time.Time
		err      error
		want     Reason
	}{
		{"plain error", live, later, plain, WrongProtocol},
		{"plain error after the deadline", expired, start, plain, Timeout},
		{"plain error, deadline passed, ctx not yet done", live, start, plain, Timeout},
		{"plain error after cancel", canceled, later, plain, Canceled},
		{"host key mismatch stands", expired, start, &failure{reason: HostKeyMismatch, err: plain}, HostKeyMismatch},
		{"unauthorized stands", canceled, later, &failure{reason: Unauthorized, err: plain}, Unauthorized},
		{"settled stands", expired, start, &failure{reason: WrongProtocol, err: plain, settled: true}, WrongProtocol},
		{"refused", live, later, &failure{reason: Refused, err: plain}, Refused},
	} {
		f := settle(tc.ctx, start, tc.deadline, tc.err)
		if f.reason != tc.want || !f.settled {
			t.Errorf("%s: settle = %v (settled %v), want %v", tc.name, f.reason, f.settled, tc.want)
		}
		if !errors.Is(f, plain) {
			t.Errorf("%s: %v does not wrap the original error", tc.name, f)
		}
	}
}
