// Command nixpeer is the nixpeer agent and its command-line client; its
// commands are listed in commands.go ("nixpeer help", "man nixpeer").
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

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText())
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
	case "publish":
		err = cmdPublish(args[1:], stdout)
	case "publish-hook":
		err = cmdPublishHook(args[1:], stderr)
	case "rotate", "revoke":
		err = cmdKey(args[0], args[1:], stdout)
	case "demo":
		err = cmdDemo(args[1:], stdout, stderr)
	case "completion":
		err = cmdCompletion(args[1:], stdout)
	case "__complete":
		cmdComplete(args[1:], stdout)
	case "version":
		cmdVersion(stdout)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usageText())
	default:
		fmt.Fprintf(stderr, "nixpeer: unknown command %q\n\n%s", args[0], usageText())
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
