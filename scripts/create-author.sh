#!/usr/bin/env bash
# Creates an author and prints {author_id, token}. The token is shown once; only its hash is stored.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${1:-}" ] || { echo "usage: make author NAME=alice" >&2; exit 2; }
. scripts/service-env.sh
.venv/bin/python -m publisher migrate >/dev/null
exec .venv/bin/python -m publisher create-author --name "$1"
