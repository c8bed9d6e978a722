#!/usr/bin/env bash
# Installs the Debian packages that building, running and testing exec-sandbox need.
# Then test tools from npm: s3rver for the remote layer cache tests, kubernetes-models for the
# Kubernetes manifests (scripts/setup-npm-tool.sh). podman (with runc; catatonit for its pods'
# pause image) builds and runs the container image in the tests.
# Idempotent: a second run with everything present does no network work.
set -euo pipefail

[ "$(id -u)" -eq 0 ] && SUDO= || SUDO=sudo

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
PKGS_BPO=(qemu-system-x86 qemu-utils)
KERNEL_SRC=linux-source-6.1

missing=()
for p in "${PKGS_MAIN[@]}" "${PKGS_BPO[@]}" "$KERNEL_SRC"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
qemu_ok=0
if command -v qemu-system-x86_64 >/dev/null &&
  qemu-system-x86_64 --version | grep -qE 'version (9|[1-9][0-9])\.'; then qemu_ok=1; fi

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
  qemu-system-x86_64 --version | head -1
fi

# npm tools for the tests, in the project's cache dir; a no-op when present.
"$(dirname "$0")/setup-s3rver.sh" >/dev/null
"$(dirname "$0")/setup-npm-tool.sh" k8s-validate >/dev/null
