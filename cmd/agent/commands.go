package main

import (
	"flag"
	"fmt"
	"io"
	"strings"
	"sync"
)

// cliCommand is one of nixpeer's commands as its usage, its manual page and
// the shell completions describe it. Its flags are those it defines
// itself (flagsOf), so none of the three can drift from what it parses.
type cliCommand struct {
	// name is the words that name it: "status", "trust approve".
	name string
	// args are its arguments after the flags, as the synopsis shows them.
	args string
	// summary says what it does, in one line.
	summary string
	// argKind is what its arguments are, for the completions: "peer",
	// "file", a list of words separated by "|", or "" for none.
	argKind string
}

// commands are nixpeer's commands, in the order the usage lists them.
var commands = []cliCommand{
	{name: "run", summary: "run the agent, as its systemd unit does"},
	{name: "validate", summary: "check a desired-state file and say what it means for each host"},
	{name: "status", summary: "this host's status (exit 3 while not Ready); --fleet: every host's"},
	{name: "events", summary: "the history of reconciles that changed something"},
	{name: "wait", summary: "wait until the host is Ready, or until store paths are on a serving peer"},
	{name: "plan", args: "TARGET...", argKind: "file", summary: "what realising store paths would fetch, from where, and build here (exit 4 if anything)"},
	{name: "reconcile", summary: "reconcile now"},
	{name: "facts", summary: "this host's public keys, as its peers see them"},
	{name: "trust pending", summary: "peers' host keys awaiting an operator's approval"},
	{name: "trust approve", args: "PEER SHA256:FINGERPRINT", argKind: "peer", summary: "trust the host key a peer offers"},
	{name: "trust reset", args: "PEER", argKind: "peer", summary: "forget what was trusted of a peer"},
	{name: "rotate cache-key", summary: "rotate this serving host's binary-cache signing key without a hard cut"},
	{name: "rotate host-key", summary: "rotate this host's SSH host key, handed over by the old key so that peers never refuse it"},
	{name: "revoke cache-key", summary: "revoke this serving host's signing key at once, and re-sign with a new one"},
	{name: "publish", args: "PATH...", argKind: "file", summary: "upload store paths and their closures to the caches this host publishes to"},
	{name: "publish-hook", summary: "queue $OUT_PATHS for publishing; run by the post-build hook the agent writes, never fails"},
	{name: "demo", summary: "a staging and a production agent on this machine, end to end"},
	{name: "completion", args: "bash|zsh|fish", argKind: "bash|zsh|fish", summary: "print the shell completion script"},
	{name: "version", summary: "print the version"},
}

// defining, while set, is given every flag set a command makes. It is
// set only under definingMu, by flagsOf; newFlagSet reads it without the
// lock, so nothing may run a command while flagsOf runs one (the CLI runs
// one command per process, and tests do not run them in parallel with it).
var (
	definingMu sync.Mutex
	defining   func(*flag.FlagSet)
)

// flagsOf returns the flags c defines: it runs c with -h, which every
// command parses before doing anything, and keeps the flag set it made.
func flagsOf(c cliCommand) *flag.FlagSet {
	definingMu.Lock()
	defer definingMu.Unlock()
	var got *flag.FlagSet
	defining = func(fs *flag.FlagSet) { got = fs }
	defer func() { defining = nil }()
	run(append(strings.Fields(c.name), "-h"), io.Discard, io.Discard)
	if got == nil {
		got = flag.NewFlagSet("nixpeer "+c.name, flag.ContinueOnError) // no flags
	}
	return got
}

// findCommand returns the command named by words, or false.
func findCommand(name string) (cliCommand, bool) {
	for _, c := range commands {
		if c.name == name {
			return c, true
		}
	}
	return cliCommand{}, false
}

// flagSynopsis is "--name PLACEHOLDER" for a flag that takes a value,
// "--name" for a switch.
func flagSynopsis(f *flag.Flag) string {
	placeholder, _ := flag.UnquoteUsage(f)
	if isSwitch(f) {
		return "--" + f.Name
	}
	return "--" + f.Name + " " + strings.ToUpper(placeholder)
}

// isSwitch reports whether f is a bool flag, which takes no value.
func isSwitch(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// synopsis is the usage line of c.
func synopsis(c cliCommand) string {
	parts := []string{"nixpeer", c.name}
	flagsOf(c).VisitAll(func(f *flag.Flag) { parts = append(parts, "["+flagSynopsis(f)+"]") })
	if c.args != "" {
		parts = append(parts, c.args)
	}
	return strings.Join(parts, " ")
}

// usageOf is the usage message of the commands named.
func usageOf(names ...string) string {
	var lines []string
	for _, name := range names {
		if c, ok := findCommand(name); ok {
			lines = append(lines, synopsis(c))
		}
	}
	return "usage: " + strings.Join(lines, "\n       ")
}

// usageOfGroup is the usage message of the commands whose first word is
// first: trust, rotate, revoke.
func usageOfGroup(first string) string {
	var names []string
	for _, c := range commands {
		if strings.HasPrefix(c.name, first+" ") {
			names = append(names, c.name)
		}
	}
	return usageOf(names...)
}

// usageText is what "nixpeer help" prints.
func usageText() string {
	var b strings.Builder
	b.WriteString("nixpeer keeps NixOS hosts sharing their Nix stores over SSH, as a desired-state file says.\n\nUsage:\n")
	for _, c := range commands {
		fmt.Fprintf(&b, "  %s\n", synopsis(c))
	}
	b.WriteString("\nRun \"nixpeer COMMAND -h\" for the flags of a command, \"man nixpeer\" for the manual.\n")
	return b.String()
}
