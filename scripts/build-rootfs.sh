#!/usr/bin/env bash
# Builds a read-only guest root image (squashfs, lz4hc) for one language.
# Usage: [ARCH=x86_64|aarch64] scripts/build-rootfs.sh raw|python|javascript
#   -> prints the artefact path on stdout. ARCH defaults to the host's; a foreign one runs the
#   debootstrap second stage and the chroot steps through qemu-user (scripts/setup-host.sh
#   --arch aarch64 installs and registers it).
#
# 1. A common base (debootstrap --variant=minbase trixie + BASE_PACKAGES) is built once and
#    cached as $CACHE/artefacts/base-trixie<tag>-<basehash>.tar.zst;
#    basehash = sha256(base recipe: suite, mirror, package list, arch, the build_base function).
# 2. The image = base + language layer + common finalisation, squashed to
#    $CACHE/artefacts/<lang><tag>-<hash>.sqfs with its .manifest (package versions);
#    hash = sha256(basehash, this script (which holds all pins), lang).
#    <tag> is empty for x86_64 and -aarch64 for aarch64 (scripts/lib-arch.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF="$ROOT/scripts/build-rootfs.sh"
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"

SUITE=trixie
MIRROR=http://deb.debian.org/debian
BASE_PACKAGES=bash,coreutils,git,curl,jq,tar,gzip,unzip,file,ca-certificates,procps
PYTHON_PACKAGES=(python3 python3-pip)
# Bun from npm, one package per architecture (x86_64: the glibc "baseline" build, no AVX2
# requirement). Pinned version + npm integrity of each.
BUN_VERSION=1.4.5
declare -A BUN_PKG=([x86_64]=bun-linux-x64-baseline [aarch64]=bun-linux-aarch64)
declare -A BUN_INTEGRITY_OF=(
  [x86_64]=sha512-s8yMwYcFnnrA178gji0gZbkE2WVDej/Ti1x770oPfihxyRxSMNhGhiAQNXV53aDeraZxksdvKV/RAdQBCd0qPA==
  [aarch64]=sha512-4BXmsSKnjOrlGWqZV4x/oWa7AVoR+B6lCXddMzOAXBIm3t50eslg9wb66gmtW1AamEQ1l1CDvmmruysEhqOWMg==
)
SANDBOX_UID=1000
SANDBOX_HOME=/home/user
MOUNT_POINTS=(proc sys dev tmp run home/user var/tmp opt/sbx)

IMG="${1:-}"
case "$IMG" in
raw | python | javascript) ;;
*)
  echo "usage: $0 raw|python|javascript" >&2
  exit 2
  ;;
esac

log() { echo "[assets] $IMG image ($ARCH): $*" >&2; }
die() { echo "[assets] $IMG image ($ARCH): ERROR: $*" >&2; exit 1; }
# shellcheck source=lib-arch.sh
. "$ROOT/scripts/lib-arch.sh"
[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, chroot)"
for t in debootstrap mksquashfs zstd curl chroot; do command -v "$t" >/dev/null || die "missing tool: $t (run scripts/setup-host.sh)"; done
need_foreign_exec
BUN_NAME=${BUN_PKG[$ARCH]}
BUN_INTEGRITY=${BUN_INTEGRITY_OF[$ARCH]}
BUN_URL=https://registry.npmjs.org/@oven/$BUN_NAME/-/$BUN_NAME-$BUN_VERSION.tgz

mkdir -p "$CACHE/artefacts" "$CACHE/build" "$CACHE/downloads"

# run_logged LOGFILE DESCRIPTION CMD...: runs CMD with output to LOGFILE, prints a progress line
# every 20 s, and on failure prints the log's tail and exits.
run_logged() {
  local logf=$1 desc=$2 t0 pid
  shift 2
  t0=$(date +%s)
  "$@" >>"$logf" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    kill -0 "$pid" 2>/dev/null && log "  ... $desc, $(($(date +%s) - t0)) s"
  done
  if ! wait "$pid"; then
    echo "----- last 30 lines of $logf -----" >&2
    tail -n 30 "$logf" >&2
    die "$desc failed (full log: $logf)"
  fi
}

# Mounts made inside a work tree; always undone before the tree is removed.
MOUNTED=()
umount_all() {
  local m
  for m in "${MOUNTED[@]}"; do umount -l "$m" 2>/dev/null || true; done
  MOUNTED=()
}
# safe_rm DIR: refuses to delete a tree that still has something mounted under it.
safe_rm() {
  [ -e "$1" ] || return 0
  if grep -qF " $1/" /proc/mounts; then die "refusing to remove $1: still has mounts"; fi
  rm -rf "$1"
}
WORK=
cleanup() {
  umount_all
  [ -z "$WORK" ] || safe_rm "$WORK" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Base: debootstrap minbase + tools every image needs. Its hash covers this function's text.
build_base() {
  local dir=$1 logf=$2
  run_logged "$logf" "debootstrap $SUITE (minbase)" \
    debootstrap --arch="$DEB_ARCH" --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$dir" "$MIRROR"
  # Keep apt usable for the language layers; finalisation removes lists. Drop the .debs.
  printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$dir/etc/apt/sources.list"
  rm -f "$dir"/var/cache/apt/archives/*.deb "$dir"/var/cache/apt/*.bin
}
base_hash=$({
  echo "$SUITE $MIRROR $BASE_PACKAGES $DEB_ARCH"
  declare -f build_base run_logged
} | sha256sum | cut -c1-16)
BASE_TAR="$CACHE/artefacts/base-$SUITE$ARCH_TAG-$base_hash.tar.zst"

hash=$({
  echo "$base_hash $IMG"
  sha256sum "$SELF" | cut -d' ' -f1
} | sha256sum | cut -c1-16)
ART="$CACHE/artefacts/$IMG$ARCH_TAG-$hash.sqfs"
if [ -s "$ART" ] && [ -s "$ART.manifest" ]; then
  log "up to date ($ART)"
  echo "$ART"
  exit 0
fi

t_all=$(date +%s)
if [ -s "$BASE_TAR" ]; then
  log "base $SUITE up to date ($BASE_TAR)"
else
  t0=$(date +%s)
  WORK="$CACHE/build/base$ARCH_TAG-$base_hash"
  safe_rm "$WORK"
  mkdir -p "$WORK"
  blog="$CACHE/build/base$ARCH_TAG-$base_hash.log"
  : >"$blog"
  if [ -n "$CROSS" ]; then eta="3-5 min under qemu-user"; else eta="2-3 min"; fi
  log "base: debootstrap $SUITE $DEB_ARCH minbase + $BASE_PACKAGES, about $eta (log: $blog)..."
  build_base "$WORK/root" "$blog"
  log "base: packing tree"
  tar -C "$WORK/root" --numeric-owner --xattrs -cf - . | zstd -q -T0 -3 -o "$BASE_TAR.tmp.$$" ||
    die "packing base tree failed"
  mv -f "$BASE_TAR.tmp.$$" "$BASE_TAR"
  safe_rm "$WORK"
  rm -f "$blog"
  WORK=
  log "base built in $(($(date +%s) - t0)) s: $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
fi

WORK="$CACHE/build/$IMG$ARCH_TAG-$hash"
LOGF="$CACHE/build/$IMG$ARCH_TAG-$hash.log"
safe_rm "$WORK"
mkdir -p "$WORK/root"
R="$WORK/root"
: >"$LOGF"
log "unpacking base"
zstd -q -dc "$BASE_TAR" | tar -C "$R" --numeric-owner -xf - || die "unpacking $BASE_TAR failed"

chroot_apt_install() {
  cp -L /etc/resolv.conf "$R/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$R/usr/sbin/policy-rc.d"
  chmod 755 "$R/usr/sbin/policy-rc.d"
  mount -t proc proc "$R/proc"
  MOUNTED+=("$R/proc")
  run_logged "$LOGF" "apt-get update (chroot)" chroot "$R" env DEBIAN_FRONTEND=noninteractive \
    apt-get -q update
  run_logged "$LOGF" "apt-get install $* (chroot)" chroot "$R" env DEBIAN_FRONTEND=noninteractive \
    apt-get -q -y --no-install-recommends install "$@"
  chroot "$R" apt-get clean >>"$LOGF" 2>&1 || true
  umount_all
  rm -f "$R/usr/sbin/policy-rc.d" "$R/etc/resolv.conf"
}

extra_manifest=
case "$IMG" in
raw) ;;
python)
  log "installing ${PYTHON_PACKAGES[*]} from $SUITE (no recommends)..."
  chroot_apt_install "${PYTHON_PACKAGES[@]}"
  chroot "$R" /usr/bin/python3 -m pip --version >>"$LOGF" 2>&1 ||
    die "python3 -m pip in the image does not run"
  ;;
javascript)
  tgz="$CACHE/downloads/$BUN_NAME-$BUN_VERSION.tgz"
  want=$(echo "${BUN_INTEGRITY#sha512-}" | base64 -d | od -An -tx1 -v | tr -d ' \n')
  if [ ! -s "$tgz" ] || [ "$(sha512sum "$tgz" | cut -d' ' -f1)" != "$want" ]; then
    log "downloading Bun $BUN_VERSION from npm..."
    curl -fsSL --retry 3 -o "$tgz.tmp.$$" "$BUN_URL" || die "download failed: $BUN_URL"
    got=$(sha512sum "$tgz.tmp.$$" | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
      rm -f "$tgz.tmp.$$"
      die "Bun tarball integrity mismatch (want sha512 $want, got $got)"
    fi
    mv -f "$tgz.tmp.$$" "$tgz"
  fi
  mkdir -p "$WORK/bun"
  tar -C "$WORK/bun" -xzf "$tgz" package/bin/bun || die "Bun tarball has no package/bin/bun"
  install -D -m 0755 "$WORK/bun/package/bin/bun" "$R/usr/local/bin/bun"
  ln -sfn bun "$R/usr/local/bin/node"
  chroot "$R" /usr/local/bin/bun --version >>"$LOGF" 2>&1 || log "note: bun did not run on the host (CPU?), continuing"
  extra_manifest="bun $BUN_VERSION npm:@oven/$BUN_NAME $BUN_INTEGRITY"
  ;;
esac

log "finalising (user sandbox, mount points, trimming docs/locales/apt caches)"
# User sandbox uid/gid 1000, home /home/user (a mount point; owned by root in the image).
sed -i '/^sandbox:/d' "$R/etc/passwd" "$R/etc/group" "$R/etc/shadow" "$R/etc/gshadow" 2>/dev/null || true
echo "sandbox:x:$SANDBOX_UID:$SANDBOX_UID:sandbox:$SANDBOX_HOME:/bin/bash" >>"$R/etc/passwd"
echo "sandbox:x:$SANDBOX_UID:" >>"$R/etc/group"
[ -f "$R/etc/shadow" ] && echo "sandbox:!:19000:0:99999:7:::" >>"$R/etc/shadow"
[ -f "$R/etc/gshadow" ] && echo "sandbox:!::" >>"$R/etc/gshadow"
echo sandbox >"$R/etc/hostname"
cat >"$R/etc/hosts" <<'EOF'
127.0.0.1	localhost sandbox
::1		localhost ip6-localhost ip6-loopback
EOF
# Trim. C.UTF-8 itself lives in /usr/lib/locale and is kept.
rm -rf "$R/usr/share/doc" "$R/usr/share/man" "$R/usr/share/info" \
  "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/* "$R"/var/cache/debconf/*-old \
  "$R"/var/log/* "$R/etc/resolv.conf" "$R/etc/machine-id"
if [ -d "$R/usr/share/locale" ]; then
  find "$R/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name 'C.UTF-8' ! -name 'C.utf8' ! -name locale.alias \
    -exec rm -rf {} +
fi
mkdir -p "$R/var/lib/apt/lists/partial" "$R/var/cache/apt/archives/partial"
# An empty resolver file: the agent binds the VM's own over it when the VM has a NIC (the root
# is read-only); without a NIC it stays empty.
: >"$R/etc/resolv.conf"
# Empty mount points (the agent mounts proc/sys/devtmpfs/tmpfs there).
for m in "${MOUNT_POINTS[@]}"; do
  if [ -e "$R/$m" ]; then
    find "$R/$m" -mindepth 1 -delete 2>/dev/null || { rm -rf "${R:?}/$m"; mkdir -p "$R/$m"; }
  else
    mkdir -p "$R/$m"
  fi
done
chmod 1777 "$R/tmp" "$R/var/tmp"
chmod 0755 "$R/home/user" "$R/opt/sbx"

{
  echo "# $IMG image $hash ($DEB_ARCH, base $SUITE $base_hash), built $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  [ -z "$extra_manifest" ] || echo "$extra_manifest"
  dpkg-query --admindir="$R/var/lib/dpkg" -W -f='${Package} ${Version}\n'
} >"$WORK/manifest" || die "dpkg-query failed"

log "mksquashfs (lz4hc)..."
run_logged "$LOGF" "mksquashfs" mksquashfs "$R" "$WORK/img.sqfs" \
  -comp lz4 -Xhc -noappend -no-xattrs -all-root -no-progress
mv -f "$WORK/manifest" "$ART.manifest.tmp.$$"
mv -f "$ART.manifest.tmp.$$" "$ART.manifest"
mv -f "$WORK/img.sqfs" "$ART.tmp.$$"
mv -f "$ART.tmp.$$" "$ART"
safe_rm "$WORK"
WORK=
rm -f "$LOGF"
log "built in $(($(date +%s) - t_all)) s: $ART ($(du -h "$ART" | cut -f1))"
echo "$ART"
