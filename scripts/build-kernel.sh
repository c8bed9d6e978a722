#!/usr/bin/env bash
# Builds the guest kernel from Debian's linux-source-6.1 and the config fragments
# images/kernel/guest.config + images/kernel/guest-<arch>.config, for
#   x86_64:  the uncompressed ELF vmlinux, booted by QEMU microvm via PVH;
#   aarch64: the uncompressed arm64 Image, booted by QEMU virt (cross-compiled with
#            aarch64-linux-gnu-gcc on an x86 host).
# Usage: [ARCH=x86_64|aarch64] scripts/build-kernel.sh   -> prints the artefact path on stdout
#   ARCH defaults to the host's (scripts/lib-arch.sh).
# Output: $CACHE/artefacts/vmlinux-<hash> (x86_64) or Image-aarch64-<hash> (aarch64), with the
# final .config next to it as <artefact>.config.
# hash = first 16 hex of sha256(this script, both fragments, linux-source version, target
# architecture and toolchain prefix, compiler version).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
FORBIDDEN=(CONFIG_MODULES CONFIG_IO_URING CONFIG_BPF_SYSCALL CONFIG_USERFAULTFD CONFIG_KEXEC)

log() { echo "[assets] kernel ($ARCH): $*" >&2; }
die() { echo "[assets] kernel ($ARCH): ERROR: $*" >&2; exit 1; }
# shellcheck source=lib-arch.sh
. "$ROOT/scripts/lib-arch.sh"

# What to build and where make leaves it, per architecture.
case "$ARCH" in
x86_64) KTARGET=vmlinux KOUT=vmlinux ART_NAME=vmlinux ;;
aarch64) KTARGET=Image KOUT=arch/arm64/boot/Image ART_NAME=Image$ARCH_TAG ;;
esac
FRAGMENTS=("$ROOT/images/kernel/guest.config" "$ROOT/images/kernel/guest-$ARCH.config")
for f in "${FRAGMENTS[@]}"; do [ -f "$f" ] || die "missing $f"; done
[ -f "$SRC_TAR" ] || die "missing $SRC_TAR (run scripts/setup-host.sh)"
src_ver=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
  die "package $SRC_PKG not installed (run scripts/setup-host.sh)"
for t in make gcc "${CROSS}gcc" bc bison flex; do
  command -v "$t" >/dev/null || die "missing tool: $t (run scripts/setup-host.sh --arch $ARCH)"
done
cc_ver=$("${CROSS}gcc" --version | head -1)

hash=$({
  sha256sum "${BASH_SOURCE[0]}" "${FRAGMENTS[@]}" | cut -d' ' -f1
  echo "$SRC_PKG $src_ver"
  echo "$KARCH $CROSS"
  echo "$cc_ver"
} | sha256sum | cut -c1-16)

ART="$CACHE/artefacts/$ART_NAME-$hash"
if [ -s "$ART" ]; then
  log "up to date ($ART)"
  echo "$ART"
  exit 0
fi

mkdir -p "$CACHE/artefacts" "$CACHE/build"
WORK="$CACHE/build/kernel$ARCH_TAG-$hash"
LOG="$CACHE/build/kernel$ARCH_TAG-$hash.log"
# ARCH/CROSS_COMPILE on make's command line: they override an ARCH=aarch64 in the environment,
# which Kbuild would not understand.
KMAKE=(make -C "$WORK" ARCH="$KARCH" CROSS_COMPILE="$CROSS")
rm -rf "$WORK"
mkdir -p "$WORK"
: >"$LOG"
t0=$(date +%s)

log "6.1 ($src_ver): extracting source..."
tar -xf "$SRC_TAR" -C "$WORK" --strip-components=1 || die "extracting $SRC_TAR failed"

log "configuring (allnoconfig + images/kernel/guest.config + guest-$ARCH.config)"
FRAGMENT="$WORK/sbx-fragment.config"
cat "${FRAGMENTS[@]}" >"$FRAGMENT"
"${KMAKE[@]}" allnoconfig KCONFIG_ALLCONFIG="$FRAGMENT" >>"$LOG" 2>&1 ||
  { tail -n 40 "$LOG" >&2; die "make allnoconfig failed (log: $LOG)"; }

# Every line of the fragment must have survived; forbidden options must be off.
dropped=()
while IFS='=' read -r key val; do
  if [ "$val" = n ]; then
    grep -qE "^$key=[ym]$" "$WORK/.config" && dropped+=("$key=n (got $(grep "^$key=" "$WORK/.config"))")
  else
    grep -qxF "$key=$val" "$WORK/.config" ||
      dropped+=("$key=$val (got: $(grep -E "^$key=|^# $key is not set" "$WORK/.config" || echo absent))")
  fi
done < <(grep -E '^CONFIG_[A-Za-z0-9_]+=' "$FRAGMENT")
if [ ${#dropped[@]} -gt 0 ]; then
  log "WARNING: fragment options that did not take effect (missing dependencies?):"
  printf '[assets] kernel:   %s\n' "${dropped[@]}" >&2
fi
bad=()
for k in "${FORBIDDEN[@]}"; do grep -q "^$k=y$" "$WORK/.config" && bad+=("$k"); done
[ ${#bad[@]} -eq 0 ] || die "forbidden options enabled in .config: ${bad[*]}"

jobs=$(nproc)
log "building $KTARGET with make -j$jobs, about 4-5 min on 2 cores (log: $LOG)..."
"${KMAKE[@]}" -j"$jobs" "$KTARGET" >>"$LOG" 2>&1 &
mpid=$!
# Progress: one line every 30 s with the number of objects compiled so far.
while kill -0 "$mpid" 2>/dev/null; do
  for _ in $(seq 30); do kill -0 "$mpid" 2>/dev/null || break; sleep 1; done
  kill -0 "$mpid" 2>/dev/null || break
  n=$(find "$WORK" -name '*.o' 2>/dev/null | wc -l)
  log "  ... $(( $(date +%s) - t0 )) s, $n objects compiled"
done
if ! wait "$mpid"; then
  echo "----- last 40 lines of $LOG -----" >&2
  tail -n 40 "$LOG" >&2
  die "make $KTARGET failed (full log: $LOG)"
fi

# x86_64: an ELF file; aarch64: an arm64 Image (magic "ARM\x64" at offset 56).
case "$ARCH" in
x86_64) magic_at=0 magic=7f454c46 ;;
aarch64) magic_at=56 magic=41524d64 ;;
esac
[ "$(od -An -tx1 -j"$magic_at" -N4 "$WORK/$KOUT" | tr -d ' \n')" = "$magic" ] ||
  die "$WORK/$KOUT is not a $ARCH $KTARGET"

# Atomic publish: copy to a temp name in the same dir, then rename.
cp "$WORK/.config" "$ART.config.tmp.$$"
mv -f "$ART.config.tmp.$$" "$ART.config"
cp "$WORK/$KOUT" "$ART.tmp.$$"
mv -f "$ART.tmp.$$" "$ART"
mv -f "$LOG" "$ART.build.log" 2>/dev/null || true
rm -rf "$WORK"
log "built in $(( $(date +%s) - t0 )) s: $ART ($(du -h --apparent-size "$ART" | cut -f1))"
echo "$ART"
