package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/nixpeer/nixpeer/pkg/desired"
)

// The shell scripts are thin: each asks "nixpeer __complete WORDS..." for
// the candidates of the word being completed, so that commands, flags and
// host names come from the binary itself. The first line of the answer
// says whether the shell should also offer file names ("files") or not
// ("words").

const bashCompletion = `# bash completion for nixpeer: eval "$(nixpeer completion bash)", or
# install as /usr/share/bash-completion/completions/nixpeer.
_nixpeer() {
    local cur=${COMP_WORDS[COMP_CWORD]} IFS=$'\n'
    local -a out
    out=($("${COMP_WORDS[0]}" __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)) || return 0
    if [[ ${out[0]} == files ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return 0
    fi
    COMPREPLY=("${out[@]:1}")
    # After "--name=", bash completes the word after the "=" alone.
    if [[ $cur == = || ${COMP_WORDS[COMP_CWORD-1]} == = ]]; then
        [[ $cur == = ]] && cur=
        COMPREPLY=("${COMPREPLY[@]#*=}")
    fi
}
complete -F _nixpeer nixpeer
`

const zshCompletion = `#compdef nixpeer
# zsh completion for nixpeer: source <(nixpeer completion zsh), or install
# as _nixpeer in a directory of $fpath.
_nixpeer() {
    local -a out
    out=("${(@f)$(${words[1]} __complete "${(@)words[2,CURRENT]}" 2>/dev/null)}")
    if [[ $out[1] == files ]]; then
        compset -P '*='
        _files
        return
    fi
    shift out
    (( $#out )) && compadd -a out
}
if [[ $funcstack[1] == _nixpeer ]]; then
    _nixpeer "$@"
else
    compdef _nixpeer nixpeer
fi
`

const fishCompletion = `# fish completion for nixpeer: nixpeer completion fish | source, or
# install as ~/.config/fish/completions/nixpeer.fish.
function __nixpeer_complete
    set -l out (nixpeer __complete (commandline -opc)[2..-1] (commandline -ct) 2>/dev/null)
    if test "$out[1]" = files
        set -l token (commandline -ct)
        set -l flag (string match -r -- '^-[^=]*=' $token)
        __fish_complete_path (string replace -r -- '^-[^=]*=' '' $token) | string replace -r -- '^' "$flag"
        return
    end
    printf '%s\n' $out[2..-1]
end
complete -c nixpeer -f -a '(__nixpeer_complete)'
`

// cmdCompletion is "nixpeer completion bash|zsh|fish".
func cmdCompletion(args []string, stdout io.Writer) error {
	fs := newFlagSet("completion")
	if err := parseFlagsAndArgs(fs, args); err != nil {
		return err
	}
	scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
	if fs.NArg() != 1 || scripts[fs.Arg(0)] == "" {
		return &exitError{code: 2, msg: usageOf("completion")}
	}
	_, err := io.WriteString(stdout, scripts[fs.Arg(0)])
	return err
}

// cmdComplete is "nixpeer __complete WORDS...", which the completion
// scripts run: WORDS are the command line after "nixpeer" up to the word
// being completed, which is last (empty at a new word).
func cmdComplete(words []string, stdout io.Writer) {
	cands, files := complete(words)
	fmt.Fprintln(stdout, map[bool]string{true: "files", false: "words"}[files])
	for _, c := range cands {
		fmt.Fprintln(stdout, c)
	}
}

// subcommands are the second words of the commands whose first is name
// (trust pending, rotate cache-key).
func subcommands(name string) []string {
	var out []string
	for _, c := range commands {
		if first, second, ok := strings.Cut(c.name, " "); ok && first == name {
			out = append(out, second)
		}
	}
	return out
}

// complete returns the candidates for the last of words, and whether file
// names are candidates too.
func complete(words []string) (cands []string, files bool) {
	words = joinEquals(words)
	if len(words) == 0 {
		words = []string{""}
	}
	cur := words[len(words)-1]
	prefixed := func(prefix string, all []string) []string {
		var out []string
		for _, w := range all {
			if w = prefix + w; strings.HasPrefix(w, cur) && !slices.Contains(out, w) {
				out = append(out, w)
			}
		}
		return out
	}
	if len(words) == 1 {
		var names []string
		for _, c := range commands {
			names = append(names, strings.Fields(c.name)[0])
		}
		return prefixed("", append(names, "help")), false
	}
	name, rest := words[0], words[1:]
	if subs := subcommands(name); len(subs) > 0 {
		if len(rest) == 1 {
			return prefixed("", subs), false
		}
		name, rest = name+" "+rest[0], rest[1:]
	}
	c, ok := findCommand(name)
	if !ok {
		return nil, false
	}
	fs := flagsOf(c)
	config := configOf(fs, rest)
	values := func(f *flag.Flag, prefix string) ([]string, bool) {
		switch f.Name {
		case "config", "root", "state-dir", "socket":
			return nil, true
		case "host":
			return prefixed(prefix, namesIn(config)), false
		}
		return nil, false
	}
	// A flag's value: in the word itself (--name=VALUE), or the word
	// after a flag that takes one.
	if n, _, hasValue := flagName(cur); n != "" && hasValue {
		if f := fs.Lookup(n); f != nil && !isSwitch(f) {
			return values(f, cur[:strings.IndexByte(cur, '=')+1])
		}
		return nil, false
	}
	if len(rest) >= 2 {
		if n, _, hasValue := flagName(rest[len(rest)-2]); n != "" && !hasValue {
			if f := fs.Lookup(n); f != nil && !isSwitch(f) {
				return values(f, "")
			}
		}
	}
	// Flags come before the arguments: Go's flag package stops at the
	// first argument.
	var flags []string
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, "--"+f.Name) })
	n := positionals(fs, rest)
	if n == 0 && strings.HasPrefix(cur, "-") {
		return prefixed("", flags), false
	}
	switch {
	case c.argKind == "file":
		return nil, true
	case n > 0:
		return nil, false
	case c.argKind == "peer":
		return prefixed("", namesIn(config)), false
	case strings.Contains(c.argKind, "|"):
		return prefixed("", strings.Split(c.argKind, "|")), false
	}
	return prefixed("", flags), false
}

// joinEquals undoes bash's splitting of "--name=value" at '=' (it is in
// COMP_WORDBREAKS): "--name", "=", "value" become one word again.
func joinEquals(words []string) []string {
	var out []string
	for i := 0; i < len(words); i++ {
		if words[i] == "=" && len(out) > 0 && strings.HasPrefix(out[len(out)-1], "-") {
			out[len(out)-1] += "="
			if i+1 < len(words) {
				out[len(out)-1] += words[i+1]
				i++
			}
			continue
		}
		out = append(out, words[i])
	}
	return out
}

// flagName reads a word as Go's flag package does: "-name" or "--name",
// with "=value" or not; name is "" for a word that is not a flag.
func flagName(w string) (name, value string, hasValue bool) {
	if len(w) < 2 || w[0] != '-' || w == "--" {
		return "", "", false
	}
	return strings.Cut(strings.TrimPrefix(w[1:], "-"), "=")
}

// positionals counts the arguments before the last word that are neither
// flags nor flag values.
func positionals(fs *flag.FlagSet, rest []string) int {
	n := 0
	for i := 0; i < len(rest)-1; i++ {
		name, _, hasValue := flagName(rest[i])
		if name == "" || n > 0 {
			n++
			continue
		}
		if f := fs.Lookup(name); f != nil && !isSwitch(f) && !hasValue {
			i++ // its value
		}
	}
	return n
}

// configOf is the desired-state file the command line names with its
// --config flag, or the default.
func configOf(fs *flag.FlagSet, words []string) string {
	for i := 0; i < len(words)-1; i++ {
		name, value, hasValue := flagName(words[i])
		if name != "config" || fs.Lookup("config") == nil {
			continue
		}
		if hasValue {
			return value
		}
		if i+1 < len(words)-1 {
			return words[i+1]
		}
	}
	return DefaultConfig
}

// namesIn are the names of the hosts of the desired-state file at path;
// none when it cannot be read.
func namesIn(path string) []string {
	f, _, err := desired.Load(path)
	if err != nil {
		return nil
	}
	return f.Names()
}
