package api

import (
	"context"
	"net/http"
)

// CacheKeyRequest asks a serving host's daemon to rotate or revoke its
// binary-cache signing key: `nixpeer rotate cache-key`, `nixpeer revoke
// cache-key`.
type CacheKeyRequest struct {
	// Action is "rotate" or "revoke".
	Action string `json:"action"`
	// Force: a rotation under way goes on without waiting for the
	// consumers that do not trust the next key yet.
	Force bool `json:"force,omitempty"`
}

// CacheKeyAnswer says what the daemon started.
type CacheKeyAnswer struct {
	Result string `json:"result"`
}

// CacheKey asks the daemon to rotate or revoke the host's signing key.
func (c *Client) CacheKey(ctx context.Context, req CacheKeyRequest) (CacheKeyAnswer, error) {
	var a CacheKeyAnswer
	err := c.do(ctx, http.MethodPost, "/v1/cache-key", req, &a)
	return a, err
}
