package probe

import (
	"encoding/binary"
	"fmt"
	"io"
)

// Nix's wire format: every integer is a little-endian uint64; a string is
// its length, its bytes, and zero padding to a multiple of 8.
// Constants from Nix's serve-protocol.hh and worker-protocol.hh.
const (
	serveMagic1        = 0x390c9deb
	serveMagic2        = 0x5452eecb
	serveClientVersion = 0x205 // what we announce to nix-store --serve
	cmdQueryValidPaths = 1

	workerMagic1 = 0x6e697863
	workerMagic2 = 0x6478696f
	// workerClientVersion is what we announce to nix-daemon --stdio: 1.35,
	// whose daemons (Nix 2.15 on) say whether they trust the client; 1.38
	// adds a feature exchange we do not speak.
	workerClientVersion = 0x123
	// workerMinVersion is the oldest daemon we talk to (Nix's own bound).
	workerMinVersion = 0x10a

	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461
	stderrWrite         = 0x64617416
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54

	// Bounds on what a server may make us read.
	maxString   = 64 << 10
	maxMessages = 1024
	maxFields   = 256
)

func major(v uint64) uint64 { return v >> 8 }
func minor(v uint64) uint64 { return v & 0xff }

// words encodes integers in Nix's wire format.
func words(vs ...uint64) []byte {
	b := make([]byte, 0, 8*len(vs))
	for _, v := range vs {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	return b
}

// wireReader reads Nix's wire format. Its first error sticks in err: every
// read after it reads nothing and returns a zero value.
type wireReader struct {
	r   io.Reader
	buf [8]byte
	err error
}

// uint64 reads one integer; what names it in errors.
func (w *wireReader) uint64(what string) uint64 {
	if w.err != nil {
		return 0
	}
	if _, err := io.ReadFull(w.r, w.buf[:]); err != nil {
		w.err = fmt.Errorf("read %s: %w", what, eofIsUnexpected(err))
		return 0
	}
	return binary.LittleEndian.Uint64(w.buf[:])
}

// string reads one string of at most limit bytes.
func (w *wireReader) string(what string, limit uint64) string {
	n := w.uint64(what + " length")
	if w.err != nil {
		return ""
	}
	if n > limit {
		w.err = fail(WrongProtocol, "%s is %d bytes long, more than %d", what, n, limit)
		return ""
	}
	b := make([]byte, (n+7)&^7)
	if _, err := io.ReadFull(w.r, b); err != nil {
		w.err = fmt.Errorf("read %s: %w", what, eofIsUnexpected(err))
		return ""
	}
	return string(b[:n])
}

func eofIsUnexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// greet sends hello, then reads the server's magic, which must be magic,
// and its protocol version. proto ("serve" or "worker") names them in
// errors; server is what a wrong magic says the peer is not.
func greet(w io.Writer, r io.Reader, hello []byte, proto string, magic uint64, server string) (*wireReader, uint64, error) {
	if _, err := w.Write(hello); err != nil {
		return nil, 0, fmt.Errorf("send %s greeting: %w", proto, err)
	}
	wr := &wireReader{r: r}
	got := wr.uint64(proto + " magic")
	if wr.err != nil {
		return nil, 0, wr.err
	}
	if got != magic {
		return nil, 0, fail(WrongProtocol, "%s magic is %#x, want %#x: not %s", proto, got, magic, server)
	}
	version := wr.uint64(proto + " protocol version")
	return wr, version, wr.err
}

// serveHandshake speaks to nix-store --serve: greeting, then an empty
// QueryValidPaths, whose answer must be an empty set.
func serveHandshake(w io.Writer, r io.Reader) (Result, error) {
	wr, version, err := greet(w, r, words(serveMagic1, serveClientVersion), "serve", serveMagic2, "nix-store --serve")
	if err != nil {
		return Result{}, err
	}
	if major(version) != major(serveClientVersion) {
		return Result{}, fail(WrongProtocol, "serve protocol version %#x, want major %#x", version, major(serveClientVersion))
	}
	// QueryValidPaths: lock 0, substitute 0, no paths.
	if _, err := w.Write(words(cmdQueryValidPaths, 0, 0, 0)); err != nil {
		return Result{}, fmt.Errorf("send QueryValidPaths: %w", err)
	}
	n := wr.uint64("QueryValidPaths answer")
	if wr.err != nil {
		return Result{}, wr.err
	}
	if n != 0 {
		return Result{}, fail(WrongProtocol, "QueryValidPaths of no paths answered %d paths", n)
	}
	return Result{ServerVersion: version}, nil
}

// workerHandshake speaks to nix-daemon --stdio: greeting and version
// exchange, then the daemon's start-up messages up to STDERR_LAST.
func workerHandshake(w io.Writer, r io.Reader) (Result, error) {
	wr, version, err := greet(w, r, words(workerMagic1), "worker", workerMagic2, "nix-daemon --stdio")
	if err != nil {
		return Result{}, err
	}
	if major(version) != major(workerClientVersion) || version < workerMinVersion {
		return Result{}, fail(WrongProtocol, "worker protocol version %#x, want 1.x with x >= %d", version, minor(workerMinVersion))
	}
	// Both sides use the lower of the two versions.
	m := min(minor(version), minor(workerClientVersion))
	hello := words(workerClientVersion)
	if m >= 14 {
		hello = append(hello, words(0)...) // obsolete CPU affinity: none
	}
	if m >= 11 {
		hello = append(hello, words(0)...) // obsolete reserveSpace
	}
	if _, err := w.Write(hello); err != nil {
		return Result{}, fmt.Errorf("send worker version: %w", err)
	}
	res := Result{ServerVersion: version}
	if m >= 33 {
		res.NixVersion = wr.string("daemon Nix version", 256)
	}
	if m >= 35 {
		t := wr.uint64("daemon trust")
		if wr.err != nil {
			return Result{}, wr.err
		}
		if t > uint64(NotTrusted) {
			return Result{}, fail(WrongProtocol, "daemon trust %d, want 0 to 2", t)
		}
		res.Trusted = DaemonTrust(t)
	}
	if err := readStderr(wr, m); err != nil {
		return Result{}, err
	}
	return res, nil
}

// readStderr reads the daemon's log messages until STDERR_LAST. An
// STDERR_ERROR fails with the daemon's message.
func readStderr(wr *wireReader, m uint64) error {
	for range maxMessages {
		code := wr.uint64("daemon message code")
		if wr.err != nil {
			return wr.err
		}
		switch code {
		case stderrLast:
			return nil
		case stderrNext, stderrWrite:
			wr.string("daemon log message", maxString)
		case stderrRead:
			return fail(WrongProtocol, "daemon asks for data during the handshake")
		case stderrError:
			return readDaemonError(wr, m)
		case stderrStartActivity:
			// id, level, type, text, fields, parent
			wr.uint64("activity id")
			wr.uint64("activity level")
			wr.uint64("activity type")
			wr.string("activity text", maxString)
			skipFields(wr)
			wr.uint64("activity parent")
		case stderrStopActivity:
			wr.uint64("activity id")
		case stderrResult:
			wr.uint64("result activity id")
			wr.uint64("result type")
			skipFields(wr)
		default:
			return fail(WrongProtocol, "unknown daemon message code %#x", code)
		}
	}
	if wr.err != nil {
		return wr.err
	}
	return fail(WrongProtocol, "more than %d daemon messages before STDERR_LAST", maxMessages)
}

// skipFields reads an activity's or result's list of fields.
func skipFields(wr *wireReader) {
	n := wr.uint64("field count")
	if n > maxFields {
		wr.err = fail(WrongProtocol, "%d fields, more than %d", n, maxFields)
		return
	}
	for range n {
		typ := wr.uint64("field type")
		if wr.err != nil {
			return
		}
		switch typ {
		case 0:
			wr.uint64("field")
		case 1:
			wr.string("field", maxString)
		default:
			wr.err = fail(WrongProtocol, "unknown field type %d", typ)
			return
		}
	}
}

// readDaemonError reads an STDERR_ERROR and returns it as a failure.
func readDaemonError(wr *wireReader, m uint64) error {
	var msg string
	if m < 26 {
		msg = wr.string("daemon error", maxString)
		wr.uint64("daemon error status")
	} else {
		// type ("Error"), level, name, message, position, traces
		wr.string("daemon error type", maxString)
		wr.uint64("daemon error level")
		wr.string("daemon error name", maxString)
		msg = wr.string("daemon error", maxString)
		// Nix sends no position (0) and traces without positions; whatever
		// follows, the message is what matters.
	}
	if wr.err != nil {
		return wr.err
	}
	return fail(WrongProtocol, "daemon error: %s", msg)
}
