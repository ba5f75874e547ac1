package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nixpeer/nixpeer/pkg/command"
)

// CLI runs the nix command. It learns Nix's version once (one spawn, at
// the first call that needs it) and keeps it: the version of the nix
// binary does not change under a running agent often enough to pay a
// spawn at every check.
type CLI struct {
	// Env is added to this process's environment for every nix run (for
	// example NIX_CONF_DIR=DIR to read DIR/nix.conf).
	Env []string

	mu           sync.Mutex
	major, minor int
	known        bool
}

// ShowConfig returns the configuration Nix itself sees: every setting name
// with its effective value as nix.conf would spell it (lists joined by one
// space, booleans true or false).
//
// It runs `nix show-config --json` (Nix before 2.20) or `nix config show
// --json` (2.20 and later), with the nix-command experimental feature
// turned on. If that subcommand fails the other one is tried once; the
// error then names both.
func (c *CLI) ShowConfig(ctx context.Context) (map[string]string, error) {
	major, minor, err := c.version(ctx)
	if err != nil {
		return nil, fmt.Errorf("show nix configuration: %w", err)
	}
	cmds := [][]string{{"show-config"}, {"config", "show"}}
	if major > 2 || major == 2 && minor >= 20 {
		cmds[0], cmds[1] = cmds[1], cmds[0]
	}
	var firstErr error
	for _, sub := range cmds {
		args := append([]string{"--extra-experimental-features", "nix-command"}, sub...)
		out, err := c.run(ctx, append(args, "--json")...)
		if err != nil {
			if firstErr == nil {
				firstErr = err
				continue
			}
			return nil, fmt.Errorf("show nix configuration: %w (and %v)", firstErr, err)
		}
		cfg, err := ParseShowConfigJSON(out)
		if err != nil {
			return nil, fmt.Errorf("show nix configuration: %w", err)
		}
		return cfg, nil
	}
	return nil, fmt.Errorf("show nix configuration: %w", firstErr)
}

// SignClosure signs the closure of storePath with the secret key in
// keyFile (`nix store sign -r`).
func (c *CLI) SignClosure(ctx context.Context, keyFile, storePath string) error {
	_, err := c.run(ctx, "--extra-experimental-features", "nix-command", "store", "sign", "--key-file", keyFile, "-r", storePath)
	return err
}

// version returns Nix's major and minor version, from `nix --version` the
// first time.
func (c *CLI) version(ctx context.Context) (int, int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.known {
		return c.major, c.minor, nil
	}
	out, err := c.run(ctx, "--version")
	if err != nil {
		return 0, 0, err
	}
	if c.major, c.minor, err = parseNixVersion(string(out)); err != nil {
		return 0, 0, err
	}
	c.known = true
	return c.major, c.minor, nil
}

// run runs nix with args, and returns its standard output; a failure
// carries its standard error.
func (c *CLI) run(ctx context.Context, args ...string) ([]byte, error) {
	res, err := command.Run(ctx, append([]string{"nix"}, args...), c.Env)
	if err != nil {
		return nil, fmt.Errorf("%w: %s", err, command.Tail(res.Stderr, 2048))
	}
	return res.Stdout, nil
}

// parseNixVersion returns the major and minor version from `nix --version`
// output such as "nix (Nix) 2.8.0" or "nix (Nix) 2.20.0pre2023_dirty": the
// first word that starts with DIGITS.DIGITS.
func parseNixVersion(s string) (int, int, error) {
	for _, word := range strings.Fields(s) {
		majorText, rest, ok := strings.Cut(word, ".")
		if !ok {
			continue
		}
		minorText := rest
		if i := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
			minorText = rest[:i]
		}
		major, err1 := strconv.Atoi(majorText)
		minor, err2 := strconv.Atoi(minorText)
		if err1 == nil && err2 == nil && major >= 0 && minor >= 0 {
			return major, minor, nil
		}
	}
	return 0, 0, fmt.Errorf("no version number in %q", strings.TrimSpace(s))
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
		text, err := configValueText(val)
		if err != nil {
			return nil, fmt.Errorf("parse nix configuration JSON: setting %s: %w", name, err)
		}
		out[name] = text
	}
	return out, nil
}

// configValueText spells one JSON setting value as nix.conf would.
func configValueText(msg json.RawMessage) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(msg))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	return valueText(v), nil
}

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
		keys := make([]string, 0, len(v))
		for k := range v {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + valueText(v[k])
		}
		return strings.Join(parts, " ")
	default:
		return fmt.Sprint(v)
	}
}
