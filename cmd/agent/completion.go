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
        __fish_complete_path (commandline -ct)
        return
    end
    printf '%s\n' $out[2..-1]
end
complete -c nixpeer -f -a '(__nixpeer_complete)'
`

// cmdCompletion is "nixpeer completion bash|zsh|fish".
func cmdCompletion(args []string, stdout io.Writer) error {
	fs := newFlagSet("completion")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: map[bool]int{true: 0, false: 2}[err == flag.ErrHelp]}
	}
	scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
	if fs.NArg() != 1 || scripts[fs.Arg(0)] == "" {
		return &exitError{code: 2, msg: "usage: nixpeer completion bash|zsh|fish"}
	}
	_, err := io.WriteString(stdout, scripts[fs.Arg(0)])
	return err
}

// cmdComplete is "nixpeer __complete WORDS...", which the completion
// scripts run: WORDS are the command line after "nixpeer" up to the word
// being completed, which is last (empty at a new word).
func cmdComplete(words []string, stdout io.Writer) {
	cands, files := complete(words)
	kind := "words"
	if files {
		kind = "files"
	}
	fmt.Fprintln(stdout, kind)
	for _, c := range cands {
		fmt.Fprintln(stdout, c)
	}
}

// complete returns the candidates for the last of words, and whether file
// names are candidates too.
func complete(words []string) (cands []string, files bool) {
	if len(words) == 0 {
		words = []string{""}
	}
	cur := words[len(words)-1]
	prefixed := func(all []string) []string {
		var out []string
		for _, w := range all {
			if strings.HasPrefix(w, cur) && !slices.Contains(out, w) {
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
		return prefixed(append(names, "help")), false
	}
	name, rest := words[0], words[1:]
	if name == "trust" {
		if len(rest) == 1 {
			return prefixed([]string{"pending", "approve", "reset"}), false
		}
		name, rest = "trust "+rest[0], rest[1:]
	}
	c, ok := findCommand(name)
	if !ok {
		return nil, false
	}
	fs := flagsOf(c)
	// The value of a flag: the word before cur names one that takes it.
	if len(rest) >= 2 {
		if f := fs.Lookup(strings.TrimLeft(rest[len(rest)-2], "-")); f != nil && strings.HasPrefix(rest[len(rest)-2], "-") && !isSwitch(f) {
			switch f.Name {
			case "config", "root", "state-dir", "socket":
				return nil, true
			case "host":
				return prefixed(namesIn(configOf(rest))), false
			}
			return nil, false
		}
	}
	var flags []string
	fs.VisitAll(func(f *flag.Flag) { flags = append(flags, "--"+f.Name) })
	if strings.HasPrefix(cur, "-") {
		return prefixed(flags), false
	}
	switch {
	case c.argKind == "peer" && positionals(fs, rest) == 0:
		return prefixed(namesIn(configOf(rest))), false
	case c.argKind == "file":
		return nil, true
	case strings.Contains(c.argKind, "|") && positionals(fs, rest) == 0:
		return prefixed(strings.Split(c.argKind, "|")), false
	}
	return prefixed(flags), false
}

// positionals counts the arguments before the last word that are neither
// flags nor flag values.
func positionals(fs *flag.FlagSet, rest []string) int {
	n := 0
	for i := 0; i < len(rest)-1; i++ {
		w := rest[i]
		if !strings.HasPrefix(w, "-") {
			n++
			continue
		}
		if f := fs.Lookup(strings.TrimLeft(w, "-")); f != nil && !isSwitch(f) && !strings.Contains(w, "=") {
			i++ // its value
		}
	}
	return n
}

// configOf is the desired-state file the command line names with
// --config, or the default.
func configOf(words []string) string {
	for i, w := range words {
		if v, ok := strings.CutPrefix(w, "--config="); ok {
			return v
		}
		if w == "--config" && i+1 < len(words)-1 {
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
	return hostNames(f)
}
