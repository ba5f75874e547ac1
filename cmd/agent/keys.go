package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/nixpeer/nixpeer/pkg/api"
)

// cmdKey is `nixpeer rotate cache-key`, `nixpeer revoke cache-key` and
// `nixpeer rotate host-key`: the daemon carries them out; status shows
// each phase.
func cmdKey(action string, args []string, stdout io.Writer) error {
	if len(args) == 0 || !slices.Contains(subcommands(action), args[0]) {
		return &exitError{code: 2, msg: usageOfGroup(action)}
	}
	key := args[0]
	fs, hf := newHostFlagSet(action+" "+key, true)
	req := api.KeyRequest{Key: key, Action: action}
	if action == "rotate" {
		fs.BoolVar(&req.Force, "force", false, map[string]string{
			"cache-key": "go on with the rotation under way without waiting for the consumers that do not trust the next key yet (they fetch nothing signed by it alone until they do)",
			"host-key":  "go on with the rotation under way without waiting for the peers that did not accept the next key yet (they refuse it until approved again)",
		}[key])
	}
	if err := parseFlagsAndArgs(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return &exitError{code: 2, msg: usageOf(action + " " + key)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := hf.client().Key(ctx, req)
	if err != nil {
		return clientError(action+" "+key, err)
	}
	fmt.Fprintln(stdout, a.Result)
	return nil
}
