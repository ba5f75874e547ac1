package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/nixpeer/nixpeer/internal/demo"
)

// cmdDemo runs the demo (internal/demo) with this binary as both agents.
func cmdDemo(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("demo")
	keep := fs.Bool("keep", false, "keep the demo's directory (its files and agent logs) afterwards")
	paths := fs.Int("paths", 100, "the size of the closure staging builds and production fetches")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	return demo.Run(ctx, demo.Options{Binary: self, Out: stdout, Keep: *keep, Paths: *paths, PrintStatus: printStatus})
}
