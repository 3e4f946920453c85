#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kubectl from the k8s.io/kubernetes module through the Go
# module proxy (no git clone), into a cache outside the repository, and print the bin directory:
#
#   tests/kube-apiserver/build.sh            -> ${KINEPY_CACHE:-$HOME/.cache/kinepy}/kube-1.35.4/bin
#   tests/kube-apiserver/build.sh --regen    only rewrite go.mod/go.sum from k8s.io/kubernetes@v$VERSION's go.mod
#                                            (VERSION=1.36.0 tests/kube-apiserver/build.sh --regen to move)
#   tests/kube-apiserver/build.sh --force    rebuild even when the cache is current
#
# The wrapper module (go.mod here) requires k8s.io/kubernetes at a release and replaces every staging module
# that the release's own go.mod points at ./staging/src/k8s.io/X with the published k8s.io/X v0.<minor>.<patch>
# (the go command ignores a dependency's replace lines: kubernetes/kubernetes#79384). The `tool` lines keep
# `go mod tidy` from dropping k8s.io/kubernetes, which no package of this module imports.
#
# Cache: the binaries plus a stamp (sha256 of go.mod and go.sum). A current stamp means no Go is needed at all;
# a missing or stale one rebuilds (5-8 min cold on 2 shared cores, 1.8 GB RAM; docs/kubernetes.md). Builds run
# under `nice -n 19` with GOMAXPROCS=2 and CGO_ENABLED=0, hold a lock (flock) so concurrent callers wait for
# one build, and write to a temporary directory renamed into place only when all three binaries exist.
# kube-controller-manager (its namespace controller empties a deleted namespace) is for the benchmarks'
# Kubernetes workload (benchmarks/kube.py).
#
# Exit codes: 0 built or cached (stdout: the bin directory, nothing else); 3 Go is not installed and there is
# no current cache; anything else, the build failed (its output is in $cache/build.log and on stderr).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$here"

regen=0
force=0
for arg in "$@"; do
    case "$arg" in
    --regen) regen=1 ;;
    --force) force=1 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build.sh: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

export GOFLAGS="-buildvcs=false"
# An older local Go fetches the toolchain go.mod asks for (1.25) through the proxy, unless the caller decided.
export GOTOOLCHAIN="${GOTOOLCHAIN:-auto}"

have_go() { command -v go >/dev/null 2>&1; }

if [ "$regen" = 1 ]; then
    have_go || { echo "build.sh: go not found; --regen needs Go" >&2; exit 3; }
    V=${VERSION:-$(awk '$1 == "k8s.io/kubernetes" {sub(/^v/, "", $2); print $2; exit}' go.mod)}
    [ -n "$V" ] || { echo "build.sh: no VERSION and no k8s.io/kubernetes requirement in go.mod" >&2; exit 2; }
    M=$(go mod download -json "k8s.io/kubernetes@v$V" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    [ -f "$M" ] || { echo "build.sh: go mod download k8s.io/kubernetes@v$V gave no go.mod" >&2; exit 1; }
    gover=$(awk '$1 == "go" {print $2; exit}' "$M")
    rm -f go.mod go.sum
    go mod init kinepy.test/kube-apiserver
    # Every `k8s.io/X => ./staging/src/k8s.io/X` of the real go.mod becomes `k8s.io/X => k8s.io/X v0.<minor>.<patch>`.
    for m in $(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$M"); do
        go mod edit "-replace=$m=$m@v0.${V#1.}"
    done
    go mod edit "-go=$gover" "-godebug=default=go${gover%.*}" "-require=k8s.io/kubernetes@v$V" \
        -tool=k8s.io/kubernetes/cmd/kube-apiserver -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
        -tool=k8s.io/kubernetes/cmd/kubectl
    go mod tidy
    echo "build.sh: go.mod now pins k8s.io/kubernetes v$V ($(grep -c '^replace ' go.mod) replaces); run build.sh to build" >&2
    exit 0
fi

V=$(awk '$1 == "k8s.io/kubernetes" {sub(/^v/, "", $2); print $2; exit}' go.mod)
[ -n "$V" ] || { echo "build.sh: no k8s.io/kubernetes requirement in go.mod" >&2; exit 1; }
cache="${KINEPY_CACHE:-$HOME/.cache/kinepy}/kube-$V"
bin="$cache/bin"
stamp=$(cat go.mod go.sum | sha256sum | cut -d' ' -f1)
binaries=(kube-apiserver kube-controller-manager kubectl)

current() {
    [ "$force" = 0 ] || return 1
    for b in "${binaries[@]}"; do [ -x "$bin/$b" ] || return 1; done
    [ "$(cat "$bin/.stamp" 2>/dev/null)" = "$stamp" ]
}

if current; then
    echo "$bin"
    exit 0
fi
if ! have_go; then
    echo "build.sh: go not found and no current build in $bin; install Go >= 1.21 (https://go.dev/dl/)" >&2
    exit 3
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if current; then # another caller built it while we waited for the lock
    echo "$bin"
    exit 0
fi

tmp="$cache/bin.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
log="$cache/build.log"
ldflags="-s -w"
for kv in "gitVersion=v$V" "gitMajor=${V%%.*}" "gitMinor=$(echo "$V" | cut -d. -f2)" "gitTreeState=clean"; do
    ldflags="$ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done
echo "build.sh: building ${binaries[*]} v$V into $bin (cold: 5-10 min on 2 cores; log: $log)" >&2
started=$(date +%s)
status=0
(
    set -x
    go version
    env GOMAXPROCS=2 CGO_ENABLED=0 nice -n 19 go build -mod=readonly -trimpath -ldflags "$ldflags" -o "$tmp/" \
        "${binaries[@]/#/k8s.io/kubernetes/cmd/}"
) >"$log" 2>&1 || status=$?
if [ "$status" != 0 ]; then
    tail -n 60 "$log" >&2
    echo "build.sh: go build failed ($status); full log: $log" >&2
    exit "$status"
fi
"$tmp/kube-apiserver" --version >>"$log" 2>&1
echo "$stamp" >"$tmp/.stamp"
rm -rf "$bin"
mv "$tmp" "$bin"
echo "build.sh: built in $(($(date +%s) - started)) s: $(cd "$bin" && du -sh "${binaries[@]}" | awk '{printf "%s %s  ", $2, $1}')" >&2
echo "$bin"
