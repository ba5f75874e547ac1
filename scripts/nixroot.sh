#!/usr/bin/env bash
# A newer Nix for the tests: a minimal Debian chroot of a later suite (trixie:
# Nix 2.26, sid: the newest Debian has) with nix-bin, sshd, iptables and the
# users the tests need, built once with debootstrap and cached under
# /var/cache/nixpeer-test/SUITE (NIXROOT_CACHE overrides). A change of the
# set-up below is applied to a cached chroot on its next use.
#
#   scripts/nixroot.sh prepare SUITE        build or update it; prints its path
#   scripts/nixroot.sh run SUITE CMD...     run CMD inside, with /proc, /dev, /dev/pts
#                                           and /sys bind-mounted for the command only
#   scripts/nixroot.sh version SUITE        the Nix version inside
#
# The chroot's /proc, /dev, /dev/pts and /sys are mounted in a private mount
# namespace of each run, never in the machine's; and a directory is removed
# only when nothing is mounted in it (/dev there is the host's: rm -rf would
# delete the host's device nodes).
set -euo pipefail

cache=${NIXROOT_CACHE:-/var/cache/nixpeer-test}
cmd=${1:?usage: nixroot.sh prepare|run|version SUITE [CMD...]}
suite=${2:?usage: nixroot.sh prepare|run|version SUITE [CMD...]}
shift 2
case $suite in *[!a-z0-9-]*|"") echo "nixroot: bad suite name: $suite" >&2; exit 2 ;; esac
dir=$cache/$suite
stamp=$dir/.nixpeer-ready # line 1: the Nix version; line 2: the set-up's digest

# The set-up run inside (as root, with apt's resolver: debootstrap's
# --include fails on these). The mirror's Release files are past their
# validity date here, hence Check-Valid-Until=false. Debian's nix-bin
# without recommends creates neither nixbld nor nix-users.
setup='
set -e
export DEBIAN_FRONTEND=noninteractive
apt="apt-get -o Acquire::Check-Valid-Until=false -qq"
$apt update
$apt install -y --no-install-recommends nix-bin openssh-server openssh-client \
  python3 passwd util-linux iproute2 iptables >/dev/null
apt-get clean
getent group nixbld >/dev/null || groupadd --system nixbld
for i in 1 2 3 4 5 6 7 8; do
  id nixbld$i >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /var/empty \
    --shell /usr/sbin/nologin --gid nixbld --groups nixbld nixbld$i
done
getent group nix-users >/dev/null || groupadd --system nix-users
id nix-ssh >/dev/null 2>&1 || useradd --system --gid nix-users --shell /bin/bash \
  --home-dir /var/empty --password "*" nix-ssh
mkdir -p /var/empty /run/sshd /nix/var/nix/daemon-socket
chgrp nix-users /nix/var/nix/daemon-socket
'
digest=$(printf %s "$setup" | sha256sum | cut -c1-16)

mounted_under() { # the mount points at or below $1, deepest first
  awk -v d="$1" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r
}

# remove DIR, only when nothing is mounted in it, never crossing into
# another file system.
remove() {
  [ -e "$1" ] || return 0
  if [ -n "$(mounted_under "$1")" ]; then
    echo "nixroot: something is mounted under $1; not removing it:" >&2
    mounted_under "$1" >&2
    exit 1
  fi
  rm -rf --one-file-system "$1"
}

mirror() {
  local u
  u=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | grep -v security | head -1)
  echo "${u:-http://deb.debian.org/debian}"
}

# inside ROOT CMD...: CMD in the chroot, with the kernel file systems
# mounted in a mount namespace of its own: nobody else sees them, two runs
# do not unmount each other's, and they are gone with the last process in
# it, however it ends.
inside() {
  local root=$1; shift
  unshare --mount --propagation private /bin/sh -euc '
    root=$1; shift
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"
    mount --bind /dev/pts "$root/dev/pts"
    mount --bind /sys "$root/sys"
    exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root TERM=dumb LANG=C.UTF-8 "$@"
  ' inside "$root" "$@"
}

prepare() {
  if [ -f "$stamp" ] && [ "$(sed -n 2p "$stamp")" = "$digest" ]; then echo "$dir"; return 0; fi
  [ "$(id -u)" -eq 0 ] || { echo "nixroot: building a chroot needs root" >&2; exit 1; }
  mkdir -p "$cache"
  if [ ! -f "$stamp" ]; then
    command -v debootstrap >/dev/null 2>&1 || {
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    remove "$dir" # half-built by an earlier run
    remove "$dir.tmp"
    echo "nixroot: debootstrap $suite (once; cached in $dir)" >&2
    debootstrap --variant=minbase "$suite" "$dir.tmp" "$(mirror)" >"$cache/$suite.debootstrap.log" 2>&1 || {
      tail -20 "$cache/$suite.debootstrap.log" >&2; exit 1; }
    cp /etc/resolv.conf "$dir.tmp/etc/resolv.conf" 2>/dev/null || true
    mv "$dir.tmp" "$dir"
  fi
  rm -f "$stamp"
  inside "$dir" /bin/sh -c "$setup"
  inside "$dir" nix-store --version | awk '{print $NF}' >"$stamp.tmp"
  echo "$digest" >>"$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
  echo "$dir"
}

case $cmd in
  prepare) prepare ;;
  run) prepare >/dev/null; inside "$dir" "$@" ;;
  version) prepare >/dev/null; sed -n 1p "$stamp" ;;
  *) echo "nixroot: unknown command $cmd" >&2; exit 2 ;;
esac
