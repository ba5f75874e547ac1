package api

import (
	"context"
	"net/http"
)

// KeyRequest asks the daemon to rotate or revoke one of the host's keys:
// `nixpeer rotate cache-key`, `nixpeer revoke cache-key`, `nixpeer rotate
// host-key`.
type KeyRequest struct {
	// Key is "cache-key" or "host-key".
	Key string `json:"key"`
	// Action is "rotate" or "revoke" (cache-key only).
	Action string `json:"action"`
	// Force: a rotation under way goes on without waiting for the peers
	// that did not take the next key yet.
	Force bool `json:"force,omitempty"`
}

// KeyAnswer says what the daemon started.
type KeyAnswer struct {
	Result string `json:"result"`
}

// Key asks the daemon to rotate or revoke one of the host's keys.
func (c *Client) Key(ctx context.Context, req KeyRequest) (KeyAnswer, error) {
	return ask[KeyAnswer](ctx, c, http.MethodPost, "/v1/keys", req)
}

// PublishRequest queues store paths for the caches the host publishes to:
// `nixpeer publish` and the post-build hook (`nixpeer publish-hook`).
type PublishRequest struct {
	Paths []string `json:"paths"`
}

// PublishAnswer says how many paths were queued.
type PublishAnswer struct {
	Queued int `json:"queued"`
}

// Publish queues paths for the caches the host publishes to.
func (c *Client) Publish(ctx context.Context, req PublishRequest) (PublishAnswer, error) {
	return ask[PublishAnswer](ctx, c, http.MethodPost, "/v1/publish", req)
}
