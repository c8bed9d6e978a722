#!/usr/bin/env bash
# Loads the exec-sandbox AppArmor profile where the host runs AppArmor. On hosts without it
# (our development and CI machines among them) it says so and does nothing: SECURITY.md layer 6
# is then absent, and the other six layers stand on their own.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ ! -d /sys/kernel/security/apparmor ] || [ "$(cat /sys/module/apparmor/parameters/enabled 2>/dev/null)" != Y ]; then
  echo "install-apparmor: AppArmor is not enabled on this host; nothing loaded"
  exit 0
fi
command -v apparmor_parser >/dev/null || { echo "install-apparmor: apparmor_parser missing (apt install apparmor)" >&2; exit 1; }
install -m 0644 "$here/apparmor/exec-sandbox" /etc/apparmor.d/exec-sandbox
apparmor_parser -r -W /etc/apparmor.d/exec-sandbox
echo "install-apparmor: profile sbx-vmworker (and sbx-vmworker//qemu) loaded"
