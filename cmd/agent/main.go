// Command nixpeer is the nixpeer agent and its command-line client.
//
//	nixpeer run --config FILE [--host NAME] [--root DIR] [--state-dir DIR] [--socket PATH] [--log-level LEVEL]
//	nixpeer validate --config FILE [--host NAME]
//	nixpeer status [--socket PATH] [--json] [--watch | --fleet]
//	nixpeer events [--socket PATH] [--json] [--since DURATION]
//	nixpeer wait [--socket PATH] [--timeout DURATION] [--path STOREPATH]...
//	nixpeer plan [--json] [--store URL] TARGET...
//	nixpeer reconcile [--socket PATH]
//	nixpeer facts [--root DIR] [--state-dir DIR] [--json]
//	nixpeer trust reset [--socket PATH] PEER
//	nixpeer demo [--keep]
//	nixpeer version
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// exitError carries an exit code and a message for main to print.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

const usage = `nixpeer keeps NixOS hosts sharing their Nix stores over SSH, as a desired-state file says.

Usage:
  nixpeer run --config FILE [--host NAME] [--root DIR] [--state-dir DIR] [--socket PATH] [--log-level LEVEL]
  nixpeer validate --config FILE [--host NAME]
  nixpeer status [--socket PATH] [--json] [--watch | --fleet]
  nixpeer events [--socket PATH] [--json] [--since DURATION]
  nixpeer wait [--socket PATH] [--timeout DURATION] [--path STOREPATH]...
  nixpeer plan [--json] [--store URL] TARGET...
  nixpeer reconcile [--socket PATH]
  nixpeer facts [--root DIR] [--state-dir DIR] [--json]
  nixpeer trust pending [--socket PATH] [--json | --yaml]
  nixpeer trust approve [--socket PATH] PEER SHA256:FINGERPRINT
  nixpeer trust reset [--socket PATH] PEER
  nixpeer demo [--keep]
  nixpeer version

Run "nixpeer COMMAND -h" for the flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stderr)
	case "validate":
		err = cmdValidate(args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout)
	case "reconcile":
		err = cmdReconcile(args[1:], stdout)
	case "facts":
		err = cmdFacts(args[1:], stdout)
	case "events":
		err = cmdEvents(args[1:], stdout)
	case "wait":
		err = cmdWait(args[1:], stdout, stderr)
	case "plan":
		err = cmdPlan(args[1:], stdout)
	case "trust":
		err = cmdTrust(args[1:], stdout)
	case "demo":
		err = cmdDemo(args[1:], stdout, stderr)
	case "version":
		cmdVersion(stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "nixpeer: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintln(stderr, ee.msg)
		}
		return ee.code
	}
	fmt.Fprintf(stderr, "nixpeer %s: %v\n", args[0], err)
	return 1
}
