package peer

import (
	"context"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// The commands a session may exec.
const (
	cmdFacts = "facts"
	cmdWatch = "watch"
	// cmdTurn waits for a turn to probe this host's sshd, writes
	// turnLine, and holds the turn until the session ends. Known peers
	// only.
	cmdTurn = "turn"
	// cmdTell reads the client's own facts from its stdin: one document
	// at once, a new one whenever they change, and a keepalive line "{}"
	// every Keepalive (see ServerOptions.Told). Clients with a key only.
	cmdTell = "tell"
)

// turnLine is what a turn writes once it is given.
var turnLine = []byte("go\n")

// keepaliveLine is what a watch writes when there is nothing new.
var keepaliveLine = []byte("{}\n")

// serveSession accepts a session channel and runs the one command it asks
// for; every other request is refused.
func (s *Server) serveSession(ctx context.Context, log *zap.Logger, sconn *ssh.ServerConn, nc ssh.NewChannel) {
	ch, reqs, err := nc.Accept()
	if err != nil {
		log.Debug("accept peer session", zap.Error(err))
		return
	}
	defer ch.Close()

	// A session that does not ask for its command in time ends its
	// connection: closing only the channel would leave it to the client
	// to acknowledge, and the connection would never idle out.
	noExec := time.AfterFunc(s.opts.HandshakeTimeout, func() {
		log.Debug("peer session asked for no command in time; closing the connection")
		sconn.Close()
	})
	defer noExec.Stop()

	gone := make(chan struct{}) // closed when the channel or connection ends
	var ran chan struct{}       // closed when the command is done
	for req := range reqs {
		cmd, ok := execCommand(req)
		if ran != nil || !ok || !s.serves(sconn, cmd) {
			log.Debug("refused peer request", zap.String("type", req.Type), zap.String("command", quoteShort(cmd)))
			if req.WantReply {
				req.Reply(false, nil)
			}
			continue
		}
		noExec.Stop()
		if req.WantReply {
			req.Reply(true, nil)
		}
		if cmd != cmdTell {
			// Stdin means nothing here; reading it keeps the client from
			// filling the channel's buffer. Its EOF does not end a watch
			// (ssh < /dev/null).
			go io.Copy(io.Discard, ch)
		}
		ran = make(chan struct{})
		go func() {
			defer close(ran)
			w := stallGuard{ch: ch, conn: sconn, timeout: s.opts.IdleTimeout}
			switch cmd {
			case cmdFacts:
				s.runFacts(log, ch, w, clientKey(sconn))
			case cmdWatch:
				s.runWatch(ctx, log, w, gone, clientKey(sconn))
			case cmdTurn:
				s.runTurn(ctx, log, w, gone, s.peerOf(sconn))
			case cmdTell:
				s.runTell(ctx, log, ch, sconn)
			}
			ch.Close()
			// A client that never acknowledges the close would keep the
			// session counted, and the connection from idling out.
			t := time.NewTimer(s.opts.HandshakeTimeout)
			defer t.Stop()
			select {
			case <-gone:
			case <-t.C:
				log.Debug("peer did not close its session; closing the connection")
				sconn.Close()
			}
		}()
	}
	close(gone)
	if ran != nil {
		<-ran
	}
}

// serves reports whether the client of sconn may run cmd.
func (s *Server) serves(sconn *ssh.ServerConn, cmd string) bool {
	switch cmd {
	case cmdFacts, cmdWatch:
		return true
	case cmdTurn:
		return s.peerOf(sconn) != ""
	case cmdTell:
		return s.opts.Told != nil && clientKey(sconn) != nil
	}
	return false
}

// execCommand returns the command of an exec request.
func execCommand(req *ssh.Request) (string, bool) {
	if req.Type != "exec" {
		return "", false
	}
	var p struct{ Command string }
	if err := ssh.Unmarshal(req.Payload, &p); err != nil {
		return "", false
	}
	return p.Command, true
}

// runFacts writes the current document and exits 0, or exits 1 with a
// message on stderr before the first Publish.
func (s *Server) runFacts(log *zap.Logger, ch ssh.Channel, w stallGuard, key ssh.PublicKey) {
	status := uint32(0)
	if doc := s.current(key); doc != nil {
		if err := w.write(doc); err != nil {
			log.Debug("write facts to peer", zap.Error(err))
			return
		}
	} else {
		status = 1
		if _, err := ch.Stderr().Write([]byte("no facts published yet\n")); err != nil {
			return
		}
	}
	ch.CloseWrite()
	ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
}

// runWatch writes the current document, each new one and keepalives
// until the session is gone or ctx ends.
func (s *Server) runWatch(ctx context.Context, log *zap.Logger, w stallGuard, gone <-chan struct{}, key ssh.PublicKey) {
	slot, unwatch := s.watch(key)
	defer unwatch()
	tick := time.NewTicker(s.opts.Keepalive)
	defer tick.Stop()
	for {
		line := keepaliveLine
		select {
		case line = <-slot:
			if line == nil {
				continue
			}
		case <-tick.C:
		case <-gone:
			return
		case <-ctx.Done():
			return
		}
		if err := w.write(line); err != nil {
			log.Debug("write to peer watch", zap.Error(err))
			return
		}
	}
}

// runTell hands the documents the client tells to ServerOptions.Told, and
// exits 1 with its error on stderr when Told refuses them. A client silent
// for 3×Keepalive is gone: its connection is closed.
func (s *Server) runTell(ctx context.Context, log *zap.Logger, ch ssh.Channel, sconn *ssh.ServerConn) {
	silence := 3 * s.opts.Keepalive
	timer := time.AfterFunc(silence, func() {
		log.Debug("peer told nothing for too long; closing the connection", zap.Duration("silence", silence))
		sconn.Close()
	})
	// Told may leave a call of next reading when it returns: what that
	// reads then must not arm the timer again.
	var mu sync.Mutex
	ended := false
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		ended = true
		timer.Stop()
	}()
	lines := newLineReader(ch, MaxDocumentSize)
	next := func() (Facts, error) {
		for {
			line, err := lines.next()
			if err != nil {
				return Facts{}, err
			}
			mu.Lock()
			if ended {
				mu.Unlock()
				return Facts{}, io.EOF
			}
			timer.Reset(silence)
			mu.Unlock()
			if !isKeepalive(line) {
				return DecodeFacts(line)
			}
		}
	}
	status := uint32(0)
	if err := s.opts.Told(ctx, clientKey(sconn), next); err != nil {
		log.Debug("refused what a peer told", zap.Error(err))
		status = 1
		if _, err := ch.Stderr().Write([]byte(err.Error() + "\n")); err != nil {
			return
		}
	}
	ch.CloseWrite()
	ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{status}))
}

// runTurn waits for a free turn, says so, and holds it until the session
// is gone, ctx ends or TurnHold passed. A peer holds one turn at a time:
// when it asks again (over a new connection, the old one perhaps dead
// without this host knowing), its earlier request or turn ends.
func (s *Server) runTurn(ctx context.Context, log *zap.Logger, w stallGuard, gone <-chan struct{}, peer string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	mine := &cancel
	s.mu.Lock()
	if end := s.turnHeld[peer]; end != nil {
		(*end)()
		log.Debug("peer asked for another turn; its earlier one ended", zap.String("peer", peer))
	}
	s.turnHeld[peer] = mine
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		if s.turnHeld[peer] == mine {
			delete(s.turnHeld, peer)
		}
		s.mu.Unlock()
	}()
	select {
	case s.turns <- struct{}{}:
	case <-gone:
		return
	case <-ctx.Done():
		return
	}
	defer func() { <-s.turns }()
	if err := w.write(turnLine); err != nil {
		log.Debug("write to peer turn", zap.Error(err))
		return
	}
	hold := time.NewTimer(s.opts.TurnHold)
	defer hold.Stop()
	select {
	case <-gone:
	case <-ctx.Done():
	case <-hold.C:
		log.Debug("peer held its turn too long; ended it", zap.Duration("turnHold", s.opts.TurnHold))
	}
}

// stallGuard writes to a channel and closes the whole connection when one
// write takes longer than timeout: a client that stops reading must not
// hold a goroutine and a connection forever.
type stallGuard struct {
	ch      ssh.Channel
	conn    ssh.Conn
	timeout time.Duration
}

func (g stallGuard) write(b []byte) error {
	t := time.AfterFunc(g.timeout, func() { g.conn.Close() })
	defer t.Stop()
	_, err := g.ch.Write(b)
	return err
}
