package peer

import (
	"context"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"
)

// serveConn runs one connection: the handshake, then its channels, until
// the client leaves, it idles out or ctx ends.
func (s *Server) serveConn(ctx context.Context, c net.Conn, src source) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	log := s.log.With(zap.Stringer("remote", c.RemoteAddr()))

	if err := c.SetDeadline(time.Now().Add(s.opts.HandshakeTimeout)); err != nil {
		s.abandon(src)
		log.Debug("peer connection: set handshake deadline", zap.Error(err))
		return
	}
	sconn, chans, reqs, err := ssh.NewServerConn(c, s.config)
	if err != nil {
		s.abandon(src)
		log.Debug("peer handshake failed", zap.Error(err))
		return
	}
	defer sconn.Close()
	peerName := sconn.Permissions.Extensions[permPeer]
	release, why := s.admit(src, peerName, sconn)
	if why != "" {
		log.Debug("refused peer connection", zap.String("peer", peerName), zap.String("why", why))
		return
	}
	defer release()
	if err := c.SetDeadline(time.Time{}); err != nil {
		log.Debug("peer connection: clear handshake deadline", zap.Error(err))
		return
	}
	if peerName == "" {
		// Anonymous: it comes back, known by then, on a new connection.
		t := time.AfterFunc(s.opts.AnonymousLifetime, func() { sconn.Close() })
		defer t.Stop()
	}
	log.Debug("peer connected", zap.String("peer", peerName), zap.String("clientVersion", string(sconn.ClientVersion())))

	go refuseGlobal(log, reqs)
	cs := &connState{sconn: sconn, idleTimeout: s.opts.IdleTimeout, log: log}
	cs.mu.Lock()
	cs.startIdleLocked()
	cs.mu.Unlock()
	var wg sync.WaitGroup
	for nc := range chans {
		if t := nc.ChannelType(); t != "session" {
			log.Debug("refused peer channel", zap.String("type", t))
			nc.Reject(ssh.UnknownChannelType, "only session channels are served")
			continue
		}
		if !cs.openChannel(s.opts.MaxChannels) {
			log.Debug("refused peer session: too many open", zap.Int("maxChannels", s.opts.MaxChannels))
			nc.Reject(ssh.ResourceShortage, "too many sessions on this connection")
			continue
		}
		wg.Go(func() {
			defer cs.closeChannel()
			s.serveSession(ctx, log, sconn, nc)
		})
	}
	cs.stopIdle()
	wg.Wait()
}

// refuseGlobal answers every global request (tcpip-forward and the like)
// with false.
func refuseGlobal(log *zap.Logger, reqs <-chan *ssh.Request) {
	for r := range reqs {
		log.Debug("refused peer global request", zap.String("type", r.Type))
		if r.WantReply {
			r.Reply(false, nil)
		}
	}
}

// connState counts a connection's open channels and closes the
// connection after it had none for idleTimeout.
type connState struct {
	sconn       *ssh.ServerConn
	idleTimeout time.Duration
	log         *zap.Logger

	mu     sync.Mutex
	open   int
	gen    int // counts idle periods, so a late timer of an old one does nothing
	idle   *time.Timer
	closed bool
}

// startIdleLocked starts an idle period.
func (c *connState) startIdleLocked() {
	c.gen++
	gen := c.gen
	c.idle = time.AfterFunc(c.idleTimeout, func() { c.expire(gen) })
}

// stopIdle ends idle tracking once the connection is over.
func (c *connState) stopIdle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	c.gen++
	c.idle.Stop()
}

func (c *connState) expire(gen int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen || c.open > 0 {
		return
	}
	c.log.Debug("closing idle peer connection", zap.Duration("idleTimeout", c.idleTimeout))
	c.sconn.Close()
}

// openChannel counts a new channel, or reports false when max are open.
func (c *connState) openChannel(max int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.open >= max {
		return false
	}
	c.open++
	c.gen++
	c.idle.Stop()
	return true
}

// closeChannel uncounts a channel and starts an idle period after the last.
func (c *connState) closeChannel() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open--
	if c.open == 0 && !c.closed {
		c.startIdleLocked()
	}
}
