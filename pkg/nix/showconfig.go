package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nixpeer/nixpeer/pkg/command"
)

// CLI runs the nix command.
type CLI struct {
	// Env is added to this process's environment for every nix run (for
	// example NIX_CONF_DIR=DIR to read DIR/nix.conf).
	Env []string

	mu sync.Mutex
	// show is the subcommand that printed the configuration last time.
	show []string
}

// showCommands print the configuration, in the order tried: `nix config
// show` (2.20 and later) and `nix show-config` (2.4 to 2.19; from 2.20 on a
// deprecated alias that warns on standard error).
var showCommands = [][]string{{"config", "show"}, {"show-config"}}

// ShowConfig returns the configuration Nix itself sees: every setting name
// with its effective value as nix.conf would spell it (lists joined by one
// space, booleans true or false).
//
// It runs `nix config show --json` with the nix-command experimental
// feature turned on, or `nix show-config --json` where that fails (Nix
// before 2.20), and remembers which one worked: one spawn per call after
// the first. What Nix says on standard error (a warning) is neither an
// error nor output.
func (c *CLI) ShowConfig(ctx context.Context) (map[string]string, error) {
	c.mu.Lock()
	cmds := showCommands
	if c.show != nil {
		cmds = [][]string{c.show}
	}
	c.mu.Unlock()
	var errs []string
	for _, sub := range cmds {
		out, err := c.run(ctx, slices.Concat(sub, []string{"--json"})...)
		if err != nil {
			errs = append(errs, err.Error())
			continue
		}
		cfg, err := ParseShowConfigJSON(out)
		if err != nil {
			return nil, fmt.Errorf("show nix configuration: %w", err)
		}
		c.mu.Lock()
		c.show = sub
		c.mu.Unlock()
		return cfg, nil
	}
	return nil, fmt.Errorf("show nix configuration: %s", strings.Join(errs, "; and "))
}

// SignClosure signs the closure of storePath with the secret key in
// keyFile (`nix store sign -r`).
func (c *CLI) SignClosure(ctx context.Context, keyFile, storePath string) error {
	_, err := c.run(ctx, "store", "sign", "--key-file", keyFile, "-r", storePath)
	return err
}

// run runs `nix --extra-experimental-features nix-command ARGS` and returns
// its standard output; a failure carries its standard error.
func (c *CLI) run(ctx context.Context, args ...string) ([]byte, error) {
	res, err := command.Run(ctx, append([]string{"nix", "--extra-experimental-features", "nix-command"}, args...), c.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, command.Tail(res.Stderr, 2048))
	}
	return res.Stdout, nil
}

// ParseShowConfigJSON parses the output of `nix show-config --json`. Nix
// 2.4 and later print {"NAME": {"value": V, ...}}; older ones printed
// {"NAME": V}; both are accepted. Values are turned into text as nix.conf
// spells them: a list as its items joined by one space, a map (such as
// access-tokens) as sorted KEY=VALUE items, null as the empty string.
func ParseShowConfigJSON(data []byte) (map[string]string, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("parse nix configuration JSON: %w", err)
	}
	out := make(map[string]string, len(raw))
	for name, msg := range raw {
		val := msg
		var wrapped map[string]json.RawMessage
		if bytes.HasPrefix(bytes.TrimSpace(msg), []byte("{")) && json.Unmarshal(msg, &wrapped) == nil {
			if v, ok := wrapped["value"]; ok {
				val = v
			}
		}
		dec := json.NewDecoder(bytes.NewReader(val))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			return nil, fmt.Errorf("parse nix configuration JSON: setting %s: %w", name, err)
		}
		out[name] = valueText(v)
	}
	return out, nil
}

// valueText spells one JSON setting value as nix.conf would.
func valueText(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case string:
		return v
	case bool:
		return strconv.FormatBool(v)
	case json.Number:
		return v.String()
	case []any:
		parts := make([]string, len(v))
		for i, e := range v {
			parts[i] = valueText(e)
		}
		return strings.Join(parts, " ")
	case map[string]any:
		keys := slices.Sorted(maps.Keys(v))
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + valueText(v[k])
		}
		return strings.Join(parts, " ")
	default:
		return fmt.Sprint(v)
	}
}
