#!/usr/bin/env bash
# The boot floor: bare guest kernel + a language's root image, the interpreter as PID 1 printing
# "1" on the serial console. Prints the wall time from QEMU start to that line, per run, then
# min/median. Everything later (agent, snapshots) is measured against this.
# Usage: scripts/floor-boot.sh raw|python|javascript [RUNS=5]
#        scripts/floor-boot.sh check      boots raw, checks /dev/vda, squashfs root, no io_uring
# Env: ARCH=x86_64|aarch64 (the guest's, default the host's: microvm or virt, as the worker
#      starts them), KERNEL, IMAGE (default $CACHE/images[/aarch64]/vmlinux and <lang>.sqfs),
#      FLOOR_JS=/usr/bin/node (another JS runtime inside IMAGE), FLOOR_PROC=1 (raw/python also
#      through the /proc-mounting bash), QEMU (default qemu-system-<arch>), FLOOR_VERBOSE=1.
# TCG only (no KVM on these machines); each QEMU runs under `timeout 60`.
set -euo pipefail

CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
IMG="${1:-}"
RUNS="${2:-5}"
die() { echo "floor-boot: ERROR: $*" >&2; exit 1; }
# shellcheck source=lib-arch.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib-arch.sh"
IMAGES="$CACHE/images${ASSET_SUBDIR:+/$ASSET_SUBDIR}"
QEMU="${QEMU:-qemu-system-$ARCH}"
KERNEL="${KERNEL:-$IMAGES/vmlinux}"
# Machine and kernel console/timer options as sbx-vmworker gives its VMs (vmworker/machine.c),
# so the floor differs from a real run only by what the project adds.
case "$ARCH" in
x86_64)
  MACHINE=microvm,acpi=off
  APPEND="console=ttyS0 panic=-1 reboot=t quiet loglevel=1 tsc=reliable no_timer_check i8042.noaux nolapic_timer random.trust_cpu=on"
  ;;
aarch64)
  MACHINE=virt,gic-version=3
  APPEND="console=ttyAMA0 panic=-1 reboot=t quiet loglevel=1 random.trust_cpu=on"
  ;;
esac

# The init's arguments go on the kernel cmdline WITHOUT "--": QEMU microvm appends
# virtio_mmio.device=... at the end, and after "--" the kernel would hand that to init instead of
# registering /dev/vda. Without "--", words the kernel does not know become init's argv, except
# words containing '.' or '=' (taken as module params / environment). Double quotes group words.
# Bun aborts without /proc, so javascript (and, with FLOOR_PROC=1, the others) runs under a bash
# that mounts /proc first and then execs the interpreter (what the agent does anyway).
PROC_SH='mount -t proc proc /proc; exec'
case "$IMG" in
raw) INIT_ARGS='init=/bin/bash -c "echo 1"'
  [ "${FLOOR_PROC:-0}" != 1 ] || INIT_ARGS="init=/bin/bash -c \"$PROC_SH /bin/echo 1\"" ;;
python) INIT_ARGS='init=/usr/bin/python3 -c print(1)'
  [ "${FLOOR_PROC:-0}" != 1 ] || INIT_ARGS="init=/bin/bash -c \"$PROC_SH /usr/bin/python3 -c 'print(1)'\"" ;;
javascript) INIT_ARGS="NO_COLOR=1 init=/bin/bash -c \"$PROC_SH ${FLOOR_JS:-/usr/local/bin/bun} -e console\\[\\'log\\'\\]\\(1\\)\"" ;;
check)
  INIT_ARGS="init=/bin/bash -c \"mount -t proc proc /proc; echo root: \$(grep ' / ' /proc/mounts);
ls -l /dev/vda; echo io_uring code symbols, want 0: \$(grep -c ' [Tt] [a-z_]*io_uring' /proc/kallsyms);
cat /proc/version; echo 1\""
  INIT_ARGS=${INIT_ARGS//$'\n'/ }
  RUNS=1
  ;;
*) die "usage: $0 raw|python|javascript|check [RUNS]" ;;
esac
IMAGE="${IMAGE:-$IMAGES/${IMG/check/raw}.sqfs}"
[ -e "$KERNEL" ] || die "kernel not found: $KERNEL (run scripts/build-assets.sh)"
[ -e "$IMAGE" ] || die "image not found: $IMAGE (run scripts/build-assets.sh)"
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive integer"

APPEND+=" root=/dev/vda rootfstype=squashfs ro $INIT_ARGS"

boot_once() {
  local t0 now line ms=""
  t0=$(date +%s%N)
  while IFS= read -r line; do
    line=${line%$'\r'}
    while [[ $line =~ $'\e'\[[0-9\;]*m ]]; do line=${line/"${BASH_REMATCH[0]}"/}; done
    [ "${FLOOR_VERBOSE:-0}" = 1 ] || [ "$IMG" = check ] && echo "    | $line" >&2
    if [ -z "$ms" ] && [ "$line" = 1 ]; then
      now=$(date +%s%N)
      ms=$(((now - t0) / 1000000))
    fi
  done < <(timeout 60 "$QEMU" -M "$MACHINE" -accel tcg -cpu max -m 256 -smp 1 \
    -nodefaults -no-user-config -nographic -no-reboot \
    -kernel "$KERNEL" -append "$APPEND" \
    -drive "file=$IMAGE,if=none,id=root,format=raw,readonly=on" \
    -device virtio-blk-device,drive=root -device virtio-rng-device -serial stdio 2>&1 </dev/null)
  now=$(date +%s%N)
  echo "${ms:-FAIL} $(((now - t0) / 1000000))"
}

times=()
for i in $(seq "$RUNS"); do
  read -r ms total < <(boot_once)
  printf 'floor-boot %s run %d: print at %s ms, qemu exited at %s ms\n' "$IMG" "$i" "$ms" "$total" >&2
  [ "$ms" != FAIL ] || die "run $i: the line '1' never appeared (FLOOR_VERBOSE=1 to see the console)"
  times+=("$ms")
done
mapfile -t sorted < <(printf '%s\n' "${times[@]}" | sort -n)
n=${#sorted[@]}
if ((n % 2)); then med=${sorted[n / 2]}; else med=$(((sorted[n / 2 - 1] + sorted[n / 2]) / 2)); fi
echo "floor $IMG ($ARCH): min ${sorted[0]} ms, median $med ms over $n run(s) ($($QEMU --version | head -1 | awk '{print $4}'), TCG)"
