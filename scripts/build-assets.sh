#!/usr/bin/env bash
# Builds every guest asset (kernel, root images, initramfs), content-hashed and cached, then
# points $CACHE/images/{vmlinux,initramfs.cpio,python.sqfs,javascript.sqfs,raw.sqfs} at them.
# Usage: [ARCH=x86_64|aarch64] scripts/build-assets.sh [--no-initramfs]
#   ARCH: the guest architecture, default the host's. x86_64's links are $CACHE/images/*,
#   aarch64's $CACHE/images/aarch64/* (same names; its `vmlinux` is an arm64 Image).
#   agent binary: $SBX_AGENT, default build/sbx-agent, or build/<ARCH>/sbx-agent for a guest
#   architecture other than the host's (make build/aarch64/sbx-agent).
#   --no-initramfs: skip the initramfs (e.g. before the agent exists); its link is left as is.
# A run with unchanged inputs rebuilds nothing and takes a few seconds. Runs serialise on
# $CACHE/lock.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
export EXEC_SANDBOX_CACHE_DIR="$CACHE"
LANGS=(raw python javascript)

log() { echo "[assets] $*" >&2; }
die() { echo "[assets] ERROR: $*" >&2; exit 1; }
# shellcheck source=lib-arch.sh
. "$ROOT/scripts/lib-arch.sh"
if [ -n "$CROSS" ]; then
  AGENT="${SBX_AGENT:-$ROOT/build/$ARCH/sbx-agent}"
else
  AGENT="${SBX_AGENT:-$ROOT/build/sbx-agent}"
fi
IMAGES="$CACHE/images${ASSET_SUBDIR:+/$ASSET_SUBDIR}"

want_initramfs=1
for a in "$@"; do
  case "$a" in
  --no-initramfs) want_initramfs=0 ;;
  -h | --help)
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument: $a (usage: $0 [--no-initramfs])" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap/chroot need it)"
# Fail early, before the long steps, if the agent is missing.
if [ $want_initramfs -eq 1 ] && [ ! -f "$AGENT" ]; then
  die "agent binary not found: $AGENT -- run 'make' (or 'make ${AGENT#"$ROOT/"}') first, set SBX_AGENT, or pass --no-initramfs"
fi

mkdir -p "$CACHE/artefacts" "$CACHE/build" "$IMAGES"
exec 9>"$CACHE/lock"
if ! flock -n 9; then
  log "another build holds $CACHE/lock; waiting..."
  flock 9
fi

t0=$(date +%s)
log "guest architecture $ARCH"
declare -A ART
ART[vmlinux]=$("$ROOT/scripts/build-kernel.sh") || die "kernel build failed"
for l in "${LANGS[@]}"; do
  ART[$l.sqfs]=$("$ROOT/scripts/build-rootfs.sh" "$l") || die "$l image build failed"
done
if [ $want_initramfs -eq 1 ]; then
  ART[initramfs.cpio]=$("$ROOT/scripts/build-initramfs.sh" "$AGENT") || die "initramfs build failed"
else
  log "initramfs: skipped (--no-initramfs)"
fi

# Atomic symlink swap: make the new link under a temp name, then rename over the old one.
for name in vmlinux initramfs.cpio raw.sqfs python.sqfs javascript.sqfs; do
  [ -n "${ART[$name]:-}" ] || continue
  ln -sfn "${ART[$name]}" "$IMAGES/.$name.tmp.$$"
  mv -T -f "$IMAGES/.$name.tmp.$$" "$IMAGES/$name"
done

log "done in $(($(date +%s) - t0)) s. Images in $IMAGES:"
for name in vmlinux initramfs.cpio raw.sqfs python.sqfs javascript.sqfs; do
  link="$IMAGES/$name"
  if [ -e "$link" ]; then
    printf '[assets]   %-16s %6s  -> %s\n' "$name" "$(du -hL --apparent-size "$link" | cut -f1)" "$(readlink "$link")" >&2
  else
    printf '[assets]   %-16s (missing)\n' "$name" >&2
  fi
done
