#!/usr/bin/env bash
# Builds every guest asset (kernel, root images, initramfs), content-hashed and cached, then
# points $CACHE/images/{vmlinux,initramfs.cpio,python.sqfs,javascript.sqfs,raw.sqfs} at them.
# Usage: scripts/build-assets.sh [--no-initramfs]
#   agent binary: $SBX_AGENT, default build/sbx-agent under the repo root.
#   --no-initramfs: skip the initramfs (e.g. before the agent exists); its link is left as is.
# A run with unchanged inputs rebuilds nothing and takes a few seconds. Runs serialise on
# $CACHE/lock.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
export EXEC_SANDBOX_CACHE_DIR="$CACHE"
AGENT="${SBX_AGENT:-$ROOT/build/sbx-agent}"
LANGS=(raw python javascript)

log() { echo "[assets] $*" >&2; }
die() { echo "[assets] ERROR: $*" >&2; exit 1; }

want_initramfs=1
for a in "$@"; do
  case "$a" in
  --no-initramfs) want_initramfs=0 ;;
  -h | --help)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown argument: $a (usage: $0 [--no-initramfs])" ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap/chroot need it)"
# Fail early, before the long steps, if the agent is missing.
if [ $want_initramfs -eq 1 ] && [ ! -f "$AGENT" ]; then
  die "agent binary not found: $AGENT -- run 'make' (or 'make build/sbx-agent') first, set SBX_AGENT, or pass --no-initramfs"
fi

mkdir -p "$CACHE/artefacts" "$CACHE/build" "$CACHE/images"
exec 9>"$CACHE/lock"
if ! flock -n 9; then
  log "another build holds $CACHE/lock; waiting..."
  flock 9
fi

t0=$(date +%s)
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
  ln -sfn "${ART[$name]}" "$CACHE/images/.$name.tmp.$$"
  mv -T -f "$CACHE/images/.$name.tmp.$$" "$CACHE/images/$name"
done

log "done in $(($(date +%s) - t0)) s. Images in $CACHE/images:"
for name in vmlinux initramfs.cpio raw.sqfs python.sqfs javascript.sqfs; do
  link="$CACHE/images/$name"
  if [ -e "$link" ]; then
    printf '[assets]   %-16s %6s  -> %s\n' "$name" "$(du -hL --apparent-size "$link" | cut -f1)" "$(readlink "$link")" >&2
  else
    printf '[assets]   %-16s (missing)\n' "$name" >&2
  fi
done
