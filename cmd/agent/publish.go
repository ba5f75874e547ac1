package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
)

// hookTimeout bounds the post-build hook's request: Nix waits for the
// hook before it goes on with the build.
const hookTimeout = 2 * time.Second

// cmdPublish is `nixpeer publish PATH...`: queue store paths (with their
// closures) for the caches the host publishes to.
func cmdPublish(args []string, stdout io.Writer) error {
	fs, hf := newHostFlagSet("publish", true)
	if err := parseFlagsAndArgs(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return &exitError{code: 2, msg: usageOf("publish")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := hf.client().Publish(ctx, api.PublishRequest{Paths: fs.Args()})
	if err != nil {
		return clientError("publish", err)
	}
	fmt.Fprintf(stdout, "%d paths queued with their closures\n", a.Queued)
	return nil
}

// cmdPublishHook is `nixpeer publish-hook`, run by the post-build hook the
// agent writes: it queues $OUT_PATHS, within hookTimeout, and never fails
// (a failing hook would fail the build). Some Nix versions (2.8) leave
// OUT_PATHS empty: then $DRV_PATH is queued, and the agent publishes its
// outputs. What goes wrong is said on standard error, which Nix shows.
func cmdPublishHook(args []string, stderr io.Writer) error {
	fs, hf := newHostFlagSet("publish-hook", true)
	if err := parseFlags(fs, args); err != nil {
		return nil
	}
	paths := strings.Fields(os.Getenv("OUT_PATHS"))
	if len(paths) == 0 {
		paths = strings.Fields(os.Getenv("DRV_PATH"))
	}
	if len(paths) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), hookTimeout)
	defer cancel()
	if _, err := hf.client().Publish(ctx, api.PublishRequest{Paths: paths}); err != nil {
		fmt.Fprintf(stderr, "nixpeer publish-hook: not queued for publishing (the build goes on): %v\n", clientError("publish", err))
	}
	return nil
}
