#!/usr/bin/env bash
# Prepares a Debian machine for nixpeer's demo and tests: installs what is
# missing of Nix (nix-bin), sshd (openssh-server) and the packages given
# as arguments, and creates the nix-ssh user the way nix.sshServe does.
# Needs root for both; without it, says what is missing and exits 1.
# Safe to run again: what is there is left as it is.
set -euo pipefail

need=()
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
  if [ ${#missing[@]} -gt 0 ]; then
    echo "prepare: not root, so not installing: ${missing[*]}" >&2
    [ ${#need[@]} -eq 0 ] || echo "prepare: as root: apt-get install -y ${need[*]}" >&2
    id nix-ssh >/dev/null 2>&1 || echo "prepare: as root: $make_user" >&2
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
