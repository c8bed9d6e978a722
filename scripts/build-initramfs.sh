#!/usr/bin/env bash
# Builds the guest initramfs: an uncompressed newc cpio holding
#   /init     the agent binary (static, mode 0755)
#   /dev /proc /sys /newroot   empty directories
#   /repl/... every file under agent/repl/ (if that folder exists)
# (The kernel's built-in initramfs already provides /dev/console.)
# Usage: [ARCH=x86_64|aarch64] scripts/build-initramfs.sh AGENT_BINARY
#   -> prints the artefact path on stdout. ARCH (default the host's, scripts/lib-arch.sh) must be
#   the agent binary's architecture.
# Output: $CACHE/artefacts/initramfs<tag>-<hash>.cpio (<tag>: "" for x86_64, -aarch64);
# hash = sha256(this script, the agent binary, names+contents of agent/repl/*).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
REPL_DIR="$ROOT/agent/repl"

log() { echo "[assets] initramfs ($ARCH): $*" >&2; }
die() { echo "[assets] initramfs ($ARCH): ERROR: $*" >&2; exit 1; }
# shellcheck source=lib-arch.sh
. "$ROOT/scripts/lib-arch.sh"

AGENT="${1:-}"
[ -n "$AGENT" ] || die "usage: $0 AGENT_BINARY"
[ -f "$AGENT" ] || die "agent binary not found: $AGENT (build it with 'make build/sbx-agent')"
[ "$(head -c4 "$AGENT" | od -An -tx1 | tr -d ' \n')" = 7f454c46 ] || die "$AGENT is not an ELF binary"
# e_machine (little-endian u16 at offset 18): 0x3e x86-64, 0xb7 AArch64.
declare -A ELF_MACHINE=([x86_64]=3e00 [aarch64]=b700)
[ "$(od -An -tx1 -j18 -N2 "$AGENT" | tr -d ' \n')" = "${ELF_MACHINE[$ARCH]}" ] ||
  die "$AGENT is not an $ARCH binary (for another guest architecture, set ARCH)"
command -v cpio >/dev/null || die "missing tool: cpio"

repl_files=()
if [ -d "$REPL_DIR" ]; then
  while IFS= read -r -d '' f; do repl_files+=("$f"); done < <(cd "$REPL_DIR" && find . -type f -print0 | sort -z)
fi

hash=$({
  sha256sum "${BASH_SOURCE[0]}" "$AGENT" | cut -d' ' -f1
  for f in "${repl_files[@]}"; do
    printf '%s ' "$f"
    sha256sum "$REPL_DIR/$f" | cut -d' ' -f1
  done
} | sha256sum | cut -c1-16)

ART="$CACHE/artefacts/initramfs$ARCH_TAG-$hash.cpio"
if [ -s "$ART" ]; then
  log "up to date ($ART)"
  echo "$ART"
  exit 0
fi

mkdir -p "$CACHE/artefacts" "$CACHE/build"
WORK=$(mktemp -d "$CACHE/build/initramfs.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
S="$WORK/root"
mkdir -p "$S/dev" "$S/proc" "$S/sys" "$S/newroot"
install -m 0755 "$AGENT" "$S/init"
if [ ${#repl_files[@]} -gt 0 ]; then
  for f in "${repl_files[@]}"; do
    install -D -m "$(stat -c %a "$REPL_DIR/$f")" "$REPL_DIR/$f" "$S/repl/$f"
  done
fi
# Reproducible: fixed mtimes, root ownership, sorted entries.
find "$S" -exec touch -h -d @0 {} +
(cd "$S" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --reproducible --quiet) \
  >"$WORK/initramfs.cpio" || die "cpio failed"
mv -f "$WORK/initramfs.cpio" "$ART.tmp.$$"
mv -f "$ART.tmp.$$" "$ART"
log "built: $ART ($(du -h "$ART" | cut -f1), ${#repl_files[@]} repl file(s))"
echo "$ART"
