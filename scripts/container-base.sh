#!/usr/bin/env bash
# Makes a Debian 12 base image for the Containerfile without a container registry: debootstrap
# bookworm (minbase), packed once into $CACHE/artefacts and imported into podman as IMAGE
# (default localhost/sbx-base:bookworm). Prints the image name on stdout.
# Usage: scripts/container-base.sh [IMAGE]
# Where a registry is reachable, use the Containerfile's default (debian:12-slim) instead.
set -euo pipefail

CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
IMAGE="${1:-localhost/sbx-base:bookworm}"
SUITE=bookworm
MIRROR=http://deb.debian.org/debian

log() { echo "[container-base] $*" >&2; }
die() { echo "[container-base] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap)"
for t in debootstrap zstd podman; do command -v "$t" >/dev/null || die "missing tool: $t (run scripts/setup-host.sh)"; done

hash=$({ echo "$SUITE $MIRROR minbase"; sed -n '/^build()/,/^}/p' "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
TAR="$CACHE/artefacts/container-base-$SUITE-$hash.tar.zst"

build() {
  local dir=$1
  debootstrap --variant=minbase "$SUITE" "$dir" "$MIRROR"
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$dir/etc/apt/sources.list"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin "$dir"/var/lib/apt/lists/*
}

if [ ! -s "$TAR" ]; then
  mkdir -p "$CACHE/artefacts" "$CACHE/build"
  work=$(mktemp -d "$CACHE/build/container-base.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  t0=$(date +%s)
  log "debootstrap $SUITE minbase, about 2 min (log: $work.log)..."
  build "$work/root" >"$work.log" 2>&1 || { tail -n 30 "$work.log" >&2; die "debootstrap failed (log: $work.log)"; }
  tar -C "$work/root" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$TAR.tmp.$$" || die "packing failed"
  mv -f "$TAR.tmp.$$" "$TAR"
  rm -f "$work.log"
  log "built in $(($(date +%s) - t0)) s: $TAR ($(du -h "$TAR" | cut -f1))"
fi

# Import once per tarball (a tag per hash). An imported image has no configuration: give it
# the PATH and shell a registry's debian image has.
tagged="$IMAGE-$hash"
if ! podman image exists "$tagged"; then
  log "importing into podman as $IMAGE"
  zstd -dc "$TAR" | podman import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$tagged" >/dev/null || die "podman import failed"
fi
podman tag "$tagged" "$IMAGE"
echo "$IMAGE"
