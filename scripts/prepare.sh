#!/usr/bin/env bash
# Prepares a Debian machine for nixpeer's demo and tests: installs what is
# missing of Nix (nix-bin), sshd (openssh-server) and the packages given
# as arguments, and creates the nix-ssh user the way nix.sshServe does.
# Needs root for both; without it, says what is missing and exits 1.
# Safe to run again: what is there is left as it is.
#
# The argument seaweedfs is no Debian package: it builds SeaweedFS's weed
# (an S3 server for the tests) at the pinned version below from the Go
# module proxy, once, into /var/cache/nixpeer-test, and links
# /usr/local/bin/weed to it.
set -euo pipefail

# The SeaweedFS module version built for seaweedfs (`weed version`: 4.53).
seaweedfs_version=v0.0.0-20261109003541-7506e5f91cd6
weed_cache=/var/cache/nixpeer-test/seaweedfs-$seaweedfs_version
weed_link=/usr/local/bin/weed

need=()
want_weed=
weed_missing() {
  [ -x "$weed_cache/weed" ] && [ "$(readlink "$weed_link" 2>/dev/null)" = "$weed_cache/weed" ] && return 1
  return 0
}
command -v nix-store >/dev/null 2>&1 || need+=(nix-bin)
# nix-users and nixbld (the daemon's socket group, the build users) come
# from nix-setup-systemd, only a Recommends of nix-bin.
getent group nix-users >/dev/null 2>&1 || need+=(nix-setup-systemd)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
for p in "$@"; do
  case $p in
    systemd) command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd) ;;
    iptables) [ -x /usr/sbin/iptables ] || need+=(iptables) ;;
    seaweedfs) if weed_missing; then want_weed=1; fi ;;
    *) dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p") ;;
  esac
done

# The user sshd hands a substituter's connection to (nix.sshServe creates it
# on NixOS); in nix-users so that it reaches the Nix daemon's socket. Its
# password is "*", not the locked "!": sshd without PAM refuses key logins
# to a locked account.
make_user="useradd --system --gid nix-users --shell /bin/bash --home-dir /var/empty --password '*' nix-ssh"

if [ "$(id -u)" -ne 0 ]; then
  missing=("${need[@]}")
  id nix-ssh >/dev/null 2>&1 || missing+=("the nix-ssh user")
  [ -z "$want_weed" ] || missing+=("SeaweedFS $seaweedfs_version ($weed_link -> $weed_cache/weed)")
  if [ ${#missing[@]} -gt 0 ]; then
    echo "prepare: not root, so not installing: ${missing[*]}" >&2
    [ ${#need[@]} -eq 0 ] || echo "prepare: as root: apt-get install -y ${need[*]}" >&2
    id nix-ssh >/dev/null 2>&1 || echo "prepare: as root: $make_user" >&2
    [ -z "$want_weed" ] || echo "prepare: as root: $0 seaweedfs (builds weed from the Go module proxy if it is not cached: about 5 minutes)" >&2
    exit 1
  fi
  exit 0
fi

if [ ${#need[@]} -gt 0 ]; then
  echo "prepare: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! getent group nix-users >/dev/null; then
  echo "prepare: no group nix-users after installing nix-bin and nix-setup-systemd" >&2
  exit 1
fi
if ! id nix-ssh >/dev/null 2>&1; then
  echo "prepare: creating the nix-ssh user" >&2
  eval "$make_user"
fi
mkdir -p /var/empty
# /tmp without its sticky bit lets any user rename what others keep there;
# nixpeer refuses to write below such a directory, and the tests keep
# their roots in /tmp.
if [ -z "$(find /tmp -maxdepth 0 -perm -1000)" ] && [ -n "$(find /tmp -maxdepth 0 -perm -0002)" ]; then
  echo "prepare: /tmp is world-writable without the sticky bit; setting it (chmod +t /tmp)" >&2
  chmod +t /tmp
fi

# SeaweedFS's weed, built from its module at the pinned version: `go
# install ...@version` refuses a module whose go.mod has replace
# directives, so the module is downloaded and built in a copy of its
# directory (the module cache is read-only). Built into a temporary
# directory beside the cached binary and renamed into place, so that a
# build cut short leaves no half binary; the link is replaced by a rename
# too.
if [ -n "$want_weed" ]; then
  if [ ! -x "$weed_cache/weed" ]; then
    go=$(command -v go || echo /usr/local/go/bin/go)
    if [ ! -x "$go" ]; then
      echo "prepare: no go in PATH or at /usr/local/go/bin/go, needed to build SeaweedFS's weed" >&2
      exit 1
    fi
    echo "prepare: building SeaweedFS $seaweedfs_version (weed) from the Go module proxy, about 5 minutes" >&2
    mkdir -p "$weed_cache"
    rm -rf "$weed_cache"/.build.* # left by a build cut short
    weed_tmp=$(mktemp -d)
    weed_out=$(mktemp -d "$weed_cache/.build.XXXXXX")
    trap 'rm -rf "$weed_tmp" "$weed_out"' EXIT
    weed_dir=$(cd "$weed_tmp" && GOWORK=off GOFLAGS=-mod=mod "$go" mod download -json "github.com/seaweedfs/seaweedfs@$seaweedfs_version" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    if [ -z "$weed_dir" ] || [ ! -d "$weed_dir/weed" ]; then
      echo "prepare: go mod download github.com/seaweedfs/seaweedfs@$seaweedfs_version gave no module directory" >&2
      exit 1
    fi
    cp -r "$weed_dir" "$weed_tmp/src"
    chmod -R u+w "$weed_tmp/src"
    (cd "$weed_tmp/src" && GOWORK=off GOFLAGS= "$go" build -o "$weed_out/weed" ./weed)
    if ! weed_version=$("$weed_out/weed" version 2>&1); then
      echo "prepare: the weed built does not run: $weed_version" >&2
      exit 1
    fi
    chmod 0755 "$weed_out/weed"
    mv -f "$weed_out/weed" "$weed_cache/weed"
    rm -rf "$weed_tmp" "$weed_out"
    trap - EXIT
  fi
  ln -sfn "$weed_cache/weed" "$weed_link.tmp"
  mv -fT "$weed_link.tmp" "$weed_link"
  echo "prepare: $weed_link -> $weed_cache/weed" >&2
fi
