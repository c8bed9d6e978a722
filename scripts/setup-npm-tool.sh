#!/usr/bin/env bash
# Installs test tools from the npm registry, pinned, into $CACHE/npm/NAME (one directory per
# tool): s3rver for the remote layer cache tests, kubernetes-models for the manifest checks.
# Usage: scripts/setup-npm-tool.sh NAME   -> prints $CACHE/npm/NAME on stdout
# Idempotent: with the same packages present it does no network work. A half-finished install
# is never used (it is built beside, then swapped in).
set -euo pipefail

# The tools and their pinned packages.
case "${1:-}" in
s3rver) set -- s3rver s3rver@3.7.1 ;;
k8s-validate) set -- k8s-validate kubernetes-models@4.5.1 js-yaml@4.1.0 ;;
*) echo "usage: $0 s3rver|k8s-validate" >&2; exit 2 ;;
esac
NAME=$1
shift
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
DIR="$CACHE/npm/$NAME"
WANT="$*"

log() { echo "setup-npm-tool: $NAME: $*" >&2; }

present() { [ -f "$DIR/.specs" ] && [ "$(cat "$DIR/.specs")" = "$WANT" ]; }

if present; then
  echo "$DIR"
  exit 0
fi

if ! command -v npm >/dev/null; then
  # Debian's own Node.js and npm (12's are 18 and 9: enough for these tools).
  log "installing Debian's nodejs and npm"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -q --no-install-recommends \
    nodejs npm >&2 || { log "npm not found and could not be installed"; exit 1; }
fi
command -v node >/dev/null || { log "node not found"; exit 1; }

mkdir -p "$CACHE/npm"
exec 9>"$CACHE/npm/.$NAME.lock"
flock -w 600 9 || { log "another install holds $CACHE/npm/.$NAME.lock"; exit 1; }
# Another run may have installed it while we waited for the lock.
if present; then
  echo "$DIR"
  exit 0
fi

tmp="$CACHE/npm/.$NAME.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "{\"name\":\"sbx-$NAME\",\"private\":true}" >"$tmp/package.json"
t0=$(date +%s)
log "installing $WANT into $DIR"
# shellcheck disable=SC2068 # the specs are words on purpose
timeout 600 npm install --prefix "$tmp" --no-audit --no-fund --no-update-notifier \
  --loglevel=error --save-exact $@ >&2
for spec in "$@"; do
  pkg=${spec%@*}
  [ -f "$tmp/node_modules/$pkg/package.json" ] || { log "npm left no $pkg"; exit 1; }
done
echo "$WANT" >"$tmp/.specs"
rm -rf "$DIR.old"
[ -e "$DIR" ] && mv -T "$DIR" "$DIR.old"
mv -T "$tmp" "$DIR"
rm -rf "$DIR.old"
trap - EXIT
log "done in $(($(date +%s) - t0)) s"
echo "$DIR"
