# Sourced by the asset scripts: the guest architecture they build for.
# Input: $ARCH = x86_64 | aarch64 (amd64 / arm64 accepted), default the host's (uname -m).
# Sets:
#   ARCH        normalised: x86_64 | aarch64
#   DEB_ARCH    Debian's name: amd64 | arm64
#   KARCH       the kernel's ARCH= value: x86 (what Kbuild picks by itself on x86_64) | arm64
#   CROSS       toolchain prefix ("" when building for the host, else e.g. aarch64-linux-gnu-)
#   ARCH_TAG    "" for x86_64 (artefact names as they always were), "-aarch64" otherwise
#   ASSET_SUBDIR  where build-assets.sh links the images under $CACHE/images ("" or "aarch64")
# Callers define log/die before sourcing.

ARCH=${ARCH:-$(uname -m)}
case "$ARCH" in
x86_64 | amd64) ARCH=x86_64 DEB_ARCH=amd64 KARCH=x86 ARCH_TAG= ASSET_SUBDIR= ;;
aarch64 | arm64) ARCH=aarch64 DEB_ARCH=arm64 KARCH=arm64 ARCH_TAG=-aarch64 ASSET_SUBDIR=aarch64 ;;
*) die "unsupported guest architecture $ARCH (want x86_64 or aarch64)" ;;
esac
if [ "$ARCH" = "$(uname -m)" ]; then CROSS=; else CROSS=$ARCH-linux-gnu-; fi
export ARCH

# need_foreign_exec: dies unless binaries of $ARCH run here (natively or through a qemu-user
# binfmt handler), which debootstrap's second stage and the chroot steps need.
need_foreign_exec() {
  [ -z "$CROSS" ] && return 0
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$ARCH" ] ||
    die "no binfmt handler for $ARCH binaries (run: scripts/setup-host.sh --arch $ARCH)"
}
