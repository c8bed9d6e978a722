#!/usr/bin/env bash
# Installs the Debian packages that building, running and testing exec-sandbox need.
# Then test tools from npm: s3rver for the remote layer cache tests, kubernetes-models for the
# Kubernetes manifests (scripts/setup-npm-tool.sh). podman (with runc; catatonit for its pods'
# pause image) builds and runs the container image in the tests.
# Idempotent: a second run with everything present does no network work.
# Usage: scripts/setup-host.sh [--arch x86_64|aarch64]   (or ARCH=...; default the host's)
#   A guest architecture other than the host's also gets what its assets and guests need:
#   the cross compiler, the agent's static libraries for that architecture (dpkg multiarch),
#   qemu-system for it (backports, QEMU >= 9), and qemu-user-static registered with binfmt_misc
#   (debootstrap's second stage and the image chroot steps run the foreign binaries through it).
set -euo pipefail

[ "$(id -u)" -eq 0 ] && SUDO= || SUDO=sudo
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { echo "setup-host: $*"; }
die() { echo "setup-host: ERROR: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
  --arch) [ $# -ge 2 ] || die "--arch needs a value"; ARCH=$2; shift 2 ;;
  --arch=*) ARCH=${1#--arch=}; shift ;;
  *) die "unknown argument: $1 (usage: $0 [--arch x86_64|aarch64])" ;;
  esac
done
# shellcheck source=lib-arch.sh
. "$ROOT/scripts/lib-arch.sh"

PKGS_MAIN=(
  build-essential pkg-config git ca-certificates curl xz-utils cpio
  libev-dev libprotobuf-c-dev protobuf-c-compiler libseccomp-dev libcap-ng-dev libslirp-dev
  libcurl4-openssl-dev libarchive-dev libzstd-dev libjansson-dev libcmocka-dev
  libssl-dev zstd
  bc bison flex libelf-dev dwarves
  debootstrap squashfs-tools squashfs-tools-ng
  clang clang-format libclang-rt-14-dev valgrind python3 util-linux
  python3-protobuf protobuf-compiler python3-pytest python3-pytest-asyncio python3-pip python3-setuptools python3-venv
  python3-botocore
  podman runc catatonit python3-yaml
)
# The host's own QEMU always (its guests are the default), the foreign one beside it.
declare -A QEMU_PKG=([x86_64]=qemu-system-x86 [aarch64]=qemu-system-arm)
HOST_ARCH=$(uname -m)
PKGS_BPO=("${QEMU_PKG[$HOST_ARCH]:-qemu-system-x86}" qemu-utils)
[ "$ARCH" = "$HOST_ARCH" ] || PKGS_BPO+=("${QEMU_PKG[$ARCH]}")
QEMU_BIN=qemu-system-$ARCH
KERNEL_SRC=linux-source-6.1
if [ -n "$CROSS" ]; then
  # Cross toolchain (kernel, static agent), the agent's static libraries for $DEB_ARCH, and
  # user-mode emulation for the foreign debootstrap and chroot steps.
  PKGS_MAIN+=("gcc-${ARCH//_/-}-linux-gnu" "libc6-dev-$DEB_ARCH-cross" binfmt-support
    "libprotobuf-c-dev:$DEB_ARCH" "libzstd-dev:$DEB_ARCH" "libssl-dev:$DEB_ARCH")
  PKGS_BPO+=(qemu-user-static)
  if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH"; then
    log "adding dpkg architecture $DEB_ARCH"
    $SUDO dpkg --add-architecture "$DEB_ARCH"
    $SUDO apt-get update -q -o Dpkg::Progress-Fancy=0
  fi
fi

missing=()
for p in "${PKGS_MAIN[@]}" "${PKGS_BPO[@]}" "$KERNEL_SRC"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
qemu_ok=0
if command -v "$QEMU_BIN" >/dev/null &&
  "$QEMU_BIN" --version | grep -qE 'version (9|[1-9][0-9])\.'; then qemu_ok=1; fi

if [ ${#missing[@]} -eq 0 ] && [ $qemu_ok -eq 1 ]; then
  echo "setup-host: all packages present"
else
  echo "setup-host: installing: ${missing[*]:-qemu from backports}"
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    echo 'deb http://deb.debian.org/debian bookworm-backports main' |
      $SUDO tee /etc/apt/sources.list.d/sbx-bookworm-backports.list >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q -o Dpkg::Progress-Fancy=0
  $SUDO apt-get install -y -q --no-install-recommends "${PKGS_MAIN[@]}" "$KERNEL_SRC"
  $SUDO apt-get install -y -q --no-install-recommends -t bookworm-backports "${PKGS_BPO[@]}"
  "$QEMU_BIN" --version | head -1
fi

# A foreign guest architecture: its binaries must run here through qemu-user. Register the
# handler Debian ships (flag F: the interpreter is opened now, so it works inside chroots)
# where nothing did at boot (containers without systemd-binfmt).
# The registration is the kernel's, so a new container on the same kernel may find it made
# once binfmt_misc is mounted: mount first, then look.
if [ -n "$CROSS" ]; then
  [ -e /proc/sys/fs/binfmt_misc/register ] ||
    $SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
    die "cannot mount binfmt_misc (a container without the privilege?)"
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$ARCH" ]; then
    grep -h "^:qemu-$ARCH:" "/usr/lib/binfmt.d/qemu-$ARCH.conf" | $SUDO tee /proc/sys/fs/binfmt_misc/register >/dev/null ||
      [ -e "/proc/sys/fs/binfmt_misc/qemu-$ARCH" ] || # another run registered it meanwhile
      die "registering the qemu-$ARCH binfmt handler failed"
    log "registered binfmt handler qemu-$ARCH"
  fi
fi

# npm tools for the tests, in the project's cache dir; a no-op when present.
"$(dirname "$0")/setup-s3rver.sh" >/dev/null
"$(dirname "$0")/setup-npm-tool.sh" k8s-validate >/dev/null
