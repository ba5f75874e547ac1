package peer

import (
	"context"
	"fmt"

	"golang.org/x/crypto/ssh"
)

// Turn waits on client, a connection to a serving peer, for a turn to
// probe the peer's sshd, and returns the function that ends it. The peer
// gives a bounded number of turns at once (ServerOptions.Turns), so that
// its consumers, however many start together, probe it a few at a time.
// It fails when ctx ends first, the connection fails, or the peer gives
// no turns to this host (it does not know it, or is an agent from before
// turns): the caller then probes without one.
func Turn(ctx context.Context, client *ssh.Client) (end func(), err error) {
	sess, lines, stderr, err := start(client, cmdTurn)
	if err != nil {
		return nil, fmt.Errorf("ask for a turn: %w", err)
	}
	stop := context.AfterFunc(ctx, func() { sess.Close() })
	line, err := lines.next()
	if !stop() {
		sess.Close()
		return nil, fmt.Errorf("wait for a turn: %w", ctx.Err())
	}
	if err != nil || string(line) != string(turnLine[:len(turnLine)-1]) {
		sess.Close()
		return nil, fmt.Errorf("wait for a turn: got %q, %v%s", line, err, stderr.suffix())
	}
	return func() { sess.Close() }, nil
}
