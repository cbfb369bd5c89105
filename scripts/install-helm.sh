#!/usr/bin/env bash
# Builds the pinned Helm from the Go module proxy into .tools/bin (like uv: the Makefile installs
# it, nothing by hand). Skips the build when the binary there already is that version.
# Usage: scripts/install-helm.sh VERSION   (e.g. v3.22.0)
set -euo pipefail
version=${1:?usage: install-helm.sh VERSION}
cd "$(dirname "$0")/.."
bin_dir="$PWD/.tools/bin"
helm="$bin_dir/helm"
# The Go toolchain's usual place when it is not on PATH (e.g. a non-login shell in CI).
PATH="$PATH:/usr/local/go/bin"

# The module version recorded in the binary's build info is the pin we check against.
if [[ -x $helm ]] && go version -m "$helm" 2>/dev/null | grep -qE "^\s+mod\s+helm.sh/helm/v3\s+$version\s"; then
    exit 0
fi
command -v go >/dev/null || { echo "install-helm: Go is needed to build Helm (apt-get install golang, or /usr/local/go)" >&2; exit 1; }

mkdir -p "$bin_dir"
echo "install-helm: building helm $version from the Go module proxy (a few minutes, once)" >&2
start=$(date +%s)
# -mod=mod: resolve from the module's own go.mod, never a vendor dir; CGO off: a static binary
# and a faster build; the ldflag makes `helm version` print the pin instead of a dev version.
GOBIN="$bin_dir" GOFLAGS=-mod=mod CGO_ENABLED=0 \
    go install -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
    "helm.sh/helm/v3/cmd/helm@$version"
echo "install-helm: built $("$helm" version --short) in $(($(date +%s) - start)) s" >&2
