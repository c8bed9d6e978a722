#!/usr/bin/env bash
# Installs s3rver (an S3-compatible server in Node.js, used by the remote layer cache tests in
# tests/e2e/s3front.py) from the npm registry, pinned (scripts/setup-npm-tool.sh). Prints the
# path of the s3rver executable on stdout (everything else goes to stderr).
set -euo pipefail

dir=$("$(dirname "$0")/setup-npm-tool.sh" s3rver)
[ -x "$dir/node_modules/.bin/s3rver" ] || { echo "setup-s3rver: no $dir/node_modules/.bin/s3rver" >&2; exit 1; }
echo "$dir/node_modules/.bin/s3rver"
