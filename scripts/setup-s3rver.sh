#!/usr/bin/env bash
# Installs s3rver (an S3-compatible server in Node.js, used by the remote layer cache tests in
# tests/e2e/s3front.py) from the npm registry into $CACHE/npm/s3rver, pinned to one version.
# Idempotent: with that version present it does no network work. Prints the path of the
# s3rver executable on stdout (everything else goes to stderr).
set -euo pipefail

S3RVER_VERSION=3.7.1
CACHE="${EXEC_SANDBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/exec-sandbox}"
DIR="$CACHE/npm/s3rver"
BIN="$DIR/node_modules/.bin/s3rver"
PKG="$DIR/node_modules/s3rver/package.json"

log() { echo "setup-s3rver: $*" >&2; }

installed_version() {
  [ -f "$PKG" ] && [ -x "$BIN" ] || return 1
  sed -n 's/^[[:space:]]*"version":[[:space:]]*"\([^"]*\)".*/\1/p' "$PKG" | head -1
}

if [ "$(installed_version || true)" = "$S3RVER_VERSION" ]; then
  log "s3rver $S3RVER_VERSION present"
  echo "$BIN"
  exit 0
fi

if ! command -v npm >/dev/null; then
  # Debian's own Node.js and npm (12's are 18 and 9: enough for s3rver).
  log "installing Debian's nodejs and npm"
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  DEBIAN_FRONTEND=noninteractive timeout 900 $SUDO apt-get install -y -q --no-install-recommends \
    nodejs npm >&2 || { log "npm not found and could not be installed"; exit 1; }
fi
command -v node >/dev/null || { log "node not found"; exit 1; }

mkdir -p "$CACHE/npm"
exec 9>"$CACHE/npm/.s3rver.lock"
flock -w 600 9 || { log "another install holds $CACHE/npm/.s3rver.lock"; exit 1; }
# Another run may have installed it while we waited for the lock.
if [ "$(installed_version || true)" = "$S3RVER_VERSION" ]; then
  echo "$BIN"
  exit 0
fi

# Install into a fresh directory, then swap it in: a half-finished install is never used.
tmp="$CACHE/npm/.s3rver.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo '{"name":"sbx-s3rver","private":true}' >"$tmp/package.json"
t0=$(date +%s)
log "installing s3rver@$S3RVER_VERSION into $DIR"
timeout 600 npm install --prefix "$tmp" --no-audit --no-fund --no-update-notifier \
  --loglevel=error --save-exact "s3rver@$S3RVER_VERSION" >&2
[ -x "$tmp/node_modules/.bin/s3rver" ] || { log "npm left no node_modules/.bin/s3rver"; exit 1; }
rm -rf "$DIR.old"
[ -e "$DIR" ] && mv -T "$DIR" "$DIR.old"
mv -T "$tmp" "$DIR"
rm -rf "$DIR.old"
trap - EXIT
log "done in $(($(date +%s) - t0)) s"
[ "$(installed_version)" = "$S3RVER_VERSION" ] || { log "installed version mismatch"; exit 1; }
echo "$BIN"
