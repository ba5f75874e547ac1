package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
)

// cmdCacheKey is `nixpeer rotate cache-key` and `nixpeer revoke
// cache-key`: the daemon of a serving host carries them out; status shows
// each phase.
func cmdCacheKey(action string, args []string, stdout io.Writer) error {
	fs := newFlagSet(action + " cache-key")
	var hf hostFlags
	hf.register(fs, true)
	var force *bool
	if action == "rotate" {
		force = fs.Bool("force", false, "go on with the rotation under way without waiting for the consumers that do not trust the next key yet (they fetch nothing signed by it alone until they do)")
	}
	// The key is named before the flags or after them.
	named := len(args) > 0 && args[0] == "cache-key"
	if named {
		args = args[1:]
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return &exitError{code: 0}
		}
		return &exitError{code: 2}
	}
	if rest := fs.Args(); !named && (len(rest) != 1 || rest[0] != "cache-key") || named && len(rest) != 0 {
		return &exitError{code: 2, msg: usageOf(action + " cache-key")}
	}
	req := api.CacheKeyRequest{Action: action}
	if force != nil {
		req.Force = *force
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := api.NewClient(hf.layout().Socket).CacheKey(ctx, req)
	if err != nil {
		return &exitError{code: 1, msg: clientError(action+" cache-key", err)}
	}
	fmt.Fprintln(stdout, a.Result)
	return nil
}
