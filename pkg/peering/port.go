package peering

import (
	"context"
	"fmt"
	"net"
	"sync"

	"go.uber.org/zap"
	"golang.org/x/crypto/ssh"

	"github.com/nixpeer/nixpeer/pkg/peer"
)

// Port keeps the peer port listening where the desired state says, with
// the host's own SSH host key, and gives peers the host's latest facts.
type Port struct {
	ctx    context.Context
	log    *zap.Logger
	opts   peer.ServerOptions
	notify func(reason string)

	mu     sync.Mutex
	addr   string
	key    []byte // marshalled public host key of the running server
	srv    *peer.Server
	cancel context.CancelFunc
	done   chan struct{}
	facts  *peer.Facts
	// Own is the host's facts as its watches tell them to the peers it
	// fetches from.
	Own peer.Own
}

// NewPort returns a port that listens nowhere until Ensure; it stops
// listening when ctx ends. notify is called when the server stops by
// itself, so that the next Ensure starts it again.
func NewPort(ctx context.Context, log *zap.Logger, opts peer.ServerOptions, notify func(string)) *Port {
	return &Port{ctx: ctx, log: log, opts: opts, notify: notify}
}

// ListenAddr is where an agent whose address is address listens: on that
// address when it is an IP literal (so that several agents can share a
// machine), on every interface otherwise.
func ListenAddr(address string, port int) string {
	host := ""
	if ip := net.ParseIP(address); ip != nil {
		host = address
	}
	return net.JoinHostPort(host, fmt.Sprint(port))
}

// Ensure makes the port listen on addr with hostKey. It does nothing when
// it does so already.
func (p *Port) Ensure(addr string, hostKey ssh.Signer, cert *ssh.Certificate) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	key := hostKey.PublicKey().Marshal()
	if cert != nil {
		key = append(key, cert.Marshal()...)
	}
	if p.srv != nil && p.addr == addr && string(p.key) == string(key) && !p.ended() {
		return nil
	}
	p.stopLocked()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on the peer port %s: %w", addr, err)
	}
	opts := p.opts
	opts.Certificate = cert
	srv := peer.NewServer(p.log, hostKey, opts)
	if p.facts != nil {
		srv.Publish(*p.facts)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ctx, ln); err != nil {
			p.log.Error("peer port stopped", zap.String("addr", addr), zap.Error(err))
			p.notify("peer port stopped")
		}
	}()
	p.addr, p.key, p.srv, p.cancel, p.done = addr, key, srv, cancel, done
	p.log.Info("peer port listening", zap.String("addr", ln.Addr().String()), zap.String("hostKey", ssh.FingerprintSHA256(hostKey.PublicKey())))
	return nil
}

// ended reports whether the running server stopped by itself.
func (p *Port) ended() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Publish gives peers f from now on.
func (p *Port) Publish(f peer.Facts) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.facts = &f
	if p.srv != nil {
		p.srv.Publish(f)
	}
	if err := p.Own.Set(f); err != nil {
		p.log.Error("refusing to tell invalid facts; peers are told the previous document", zap.Error(err))
	}
}

// Close stops listening and waits for the server to end.
func (p *Port) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopLocked()
}

func (p *Port) stopLocked() {
	if p.srv == nil {
		return
	}
	p.cancel()
	<-p.done
	p.srv, p.addr, p.key = nil, "", nil
}
