#!/usr/bin/env bash
# Builds the guest kernel (uncompressed ELF vmlinux, booted by QEMU microvm via PVH) from
# Debian's linux-source-6.1 and images/kernel/guest.config.
# Usage: scripts/build-kernel.sh        -> prints the artefact path on stdout
# Output: $CACHE/artefacts/vmlinux-<hash> (+ .config next to it as vmlinux-<hash>.config)
# hash = first 16 hex of sha256(this script, the fragment, linux-source version, gcc version).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
FRAGMENT="$ROOT/images/kernel/guest.config"
SRC_PKG=linux-source-6.1
SRC_TAR=/usr/src/linux-source-6.1.tar.xz
FORBIDDEN=(CONFIG_MODULES CONFIG_IO_URING CONFIG_BPF_SYSCALL CONFIG_USERFAULTFD CONFIG_KEXEC)

log() { echo "[assets] kernel: $*" >&2; }
die() { echo "[assets] kernel: ERROR: $*" >&2; exit 1; }

[ -f "$FRAGMENT" ] || die "missing $FRAGMENT"
[ -f "$SRC_TAR" ] || die "missing $SRC_TAR (run scripts/setup-host.sh)"
src_ver=$(dpkg-query -W -f='${Version}' "$SRC_PKG" 2>/dev/null) ||
  die "package $SRC_PKG not installed (run scripts/setup-host.sh)"
for t in make gcc bc bison flex; do command -v "$t" >/dev/null || die "missing tool: $t"; done
cc_ver=$(gcc --version | head -1)

hash=$({
  sha256sum "${BASH_SOURCE[0]}" "$FRAGMENT" | cut -d' ' -f1
  echo "$SRC_PKG $src_ver"
  echo "$cc_ver"
} | sha256sum | cut -c1-16)

ART="$CACHE/artefacts/vmlinux-$hash"
if [ -s "$ART" ]; then
  log "up to date ($ART)"
  echo "$ART"
  exit 0
fi

mkdir -p "$CACHE/artefacts" "$CACHE/build"
WORK="$CACHE/build/kernel-$hash"
LOG="$CACHE/build/kernel-$hash.log"
rm -rf "$WORK"
mkdir -p "$WORK"
: >"$LOG"
t0=$(date +%s)

log "6.1 ($src_ver): extracting source..."
tar -xf "$SRC_TAR" -C "$WORK" --strip-components=1 || die "extracting $SRC_TAR failed"

log "configuring (allnoconfig + images/kernel/guest.config)"
make -C "$WORK" allnoconfig KCONFIG_ALLCONFIG="$FRAGMENT" >>"$LOG" 2>&1 ||
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
log "building vmlinux with make -j$jobs, about 4-5 min on 2 cores (log: $LOG)..."
make -C "$WORK" -j"$jobs" vmlinux >>"$LOG" 2>&1 &
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
  die "make vmlinux failed (full log: $LOG)"
fi

[ "$(head -c4 "$WORK/vmlinux" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] ||
  die "$WORK/vmlinux is not an ELF file"

# Atomic publish: copy to a temp name in the same dir, then rename.
cp "$WORK/.config" "$ART.config.tmp.$$"
mv -f "$ART.config.tmp.$$" "$ART.config"
cp "$WORK/vmlinux" "$ART.tmp.$$"
mv -f "$ART.tmp.$$" "$ART"
mv -f "$LOG" "$ART.build.log" 2>/dev/null || true
rm -rf "$WORK"
log "built in $(( $(date +%s) - t0 )) s: $ART ($(du -h --apparent-size "$ART" | cut -f1))"
echo "$ART"
