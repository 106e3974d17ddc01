#!/usr/bin/env bash
# Builds the real peers gotel's tests run against, from pinned versions on the Go module proxy:
#   .cache/peers/otelcol-gotel  OpenTelemetry Collector core v0.165.0 + contrib v0.165.1 (peers/collector)
#   .cache/peers/jaeger         Jaeger v2, github.com/jaegertracing/jaeger/cmd/jaeger v1.76.0 (peers/jaeger)
# The Go module and build caches (GOMODCACHE, GOCACHE) live outside the checkout, in
# $GOTEL_GO_CACHE (default ~/.cache/gotel-go), so a fresh clone on the same machine (CI) reuses them
# and only links the binaries again. Idempotent: a stamp records the inputs each binary was built
# from; when they match, a second run does nothing (it does not even start the go command).
# Usage: scripts/build-peers.sh GO   (GO: the go binary to build with; the Makefile passes its pinned one)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
go=${1:-go}
out=$root/.cache/peers
# Jaeger's version is pinned in peers/jaeger/go.mod (v1.76.0): its own go.mod has a replace
# directive, so `go install ...@v1.76.0` refuses it and a module of ours builds the package instead.
JAEGER_PACKAGE=github.com/jaegertracing/jaeger/cmd/jaeger
gocache=${GOTEL_GO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gotel-go}
export GOMODCACHE=$gocache/mod GOCACHE=$gocache/build GOTOOLCHAIN=local
export GOFLAGS="-mod=readonly -modcacherw" CGO_ENABLED=0
mkdir -p "$out"

goversion=$("$go" env GOVERSION)

# build NAME INPUTS... -- COMMAND...: runs COMMAND unless the stamp of NAME matches INPUTS.
build() {
    local name=$1; shift
    local inputs=()
    while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
    shift
    local want
    want=$( { echo "$goversion"; printf '%s\n' "${inputs[@]}"; } | sha256sum | cut -d' ' -f1)
    if [ -e "$out/$name" ] && [ "$(cat "$out/$name.stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    echo "peers: building $name (the first time on a machine takes minutes; Go caches in $gocache)"
    local t0=$SECONDS
    "$@"
    echo "$want" > "$out/$name.stamp"
    echo "peers: built $out/$name in $((SECONDS - t0)) s"
}

col=$root/peers/collector
build otelcol-gotel "$(cat "$col/go.mod" "$col/go.sum" "$col/main.go" | sha256sum)" -- \
    bash -c "cd '$col' && '$go' build -trimpath -ldflags='-s -w' -o '$out/otelcol-gotel' ."
jae=$root/peers/jaeger
build jaeger "$(cat "$jae/go.mod" "$jae/go.sum" | sha256sum)" -- \
    bash -c "cd '$jae' && '$go' build -trimpath -ldflags='-s -w' -o '$out/jaeger' $JAEGER_PACKAGE"

# Modules of the test programs that need more than the standard library (tests build them offline).
grpcecho=$root/tests/go/grpcecho
build grpcecho.modules "$(cat "$grpcecho/go.mod" "$grpcecho/go.sum" | sha256sum)" -- \
    bash -c "cd '$grpcecho' && '$go' mod download && touch '$out/grpcecho.modules'"
