#!/bin/sh
# Captures what one real Nix prints where nixpeer reads it back: run it with
# the Nix to capture on PATH (in a chroot of scripts/nixroot.sh for a newer
# one; as root), from this directory:
#   sh capture.sh                       # writes ./NIX_VERSION/
# - show.json: `nix config show --json` (`nix show-config --json` before
#   2.20), trimmed to the settings of ./nix.conf, which holds them as
#   nixpeer writes them (percent-encoded query values, an IPv6 host,
#   priorities);
# - path-info.json: `nix path-info --json --sigs` of a path with two
#   references and a signature by capture-1.pub;
# - dry-run.txt: `nix-store --realise --dry-run` of a derivation to build
#   whose input a binary cache has (what `nixpeer plan` parses).
set -eu
v=$(nix --version | awk '{print $NF}')
here=$PWD
mkdir -p "$v"
tmp=$(mktemp -d)
trap 'chmod -R u+w "$tmp"; rm -rf "$tmp"' EXIT
f="--extra-experimental-features nix-command"

mkdir "$tmp/conf"
cp nix.conf "$tmp/conf/nix.conf"
export NIX_CONF_DIR="$tmp/conf" NIX_USER_CONF_FILES=/nonexistent NIX_CONFIG=
nix $f config show --json >"$tmp/full.json" 2>/dev/null ||
  nix $f show-config --json >"$tmp/full.json"
python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
keep = ["substituters", "trusted-public-keys", "secret-key-files", "fallback"]
print(json.dumps({k: {"value": d[k]["value"]} for k in keep}, indent=1))
' "$tmp/full.json" >"$v/show.json"

printf 'substituters =\nsandbox = false\n' >"$tmp/conf/nix.conf"
s2=$tmp/s2
mk='let mk = name: deps: derivation { inherit name deps; system = builtins.currentSystem; builder = "/bin/sh";
  args = [ "-c" "echo nixpeer-capture $name > $out; for d in $deps; do echo $d >> $out; done" ]; };
  a = mk "a" [ ]; b = mk "b" [ ]; c = mk "c" [ a b ]; in'
# Built in the machine's own store (a store under another root cannot run
# /bin/sh): tiny paths, left there.
c=$(nix-build --no-out-link -E "$mk c")
nix-store --generate-binary-cache-key capture-1 "$tmp/sk" "$tmp/pk"
nix $f store sign --key-file "$tmp/sk" "$c"
nix $f path-info --json --sigs "$c" >"$v/path-info.json"
cp "$tmp/pk" "$v/capture-1.pub"
nix $f copy --to "file://$tmp/cache" "$c"
top=$(nix-instantiate --store "$s2" -E "$mk mk \"top\" [ c ]")
nix-store --store "$s2" --realise --dry-run "$top" --option substituters "file://$tmp/cache" \
  --option require-sigs false 2>"$v/dry-run.txt" >/dev/null
echo "$v"
