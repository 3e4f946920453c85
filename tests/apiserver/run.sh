#!/usr/bin/env bash
# Run Kubernetes' own storage test suites (k8s.io/apiserver pkg/storage/etcd3, optionally
# pkg/storage/cacher) against kinepy, through the real etcd Go client.
#
#   tests/apiserver/run.sh [options] [PACKAGE...]      PACKAGE: etcd3 (default), cacher
#
# Options:
#   -run REGEX           only the tests matching REGEX (passed as -test.run)
#   -skip REGEX          skip the tests matching REGEX (passed as -test.skip)
#   --snapshot REV       run kinepy from `git archive REV` of this checkout (e.g. HEAD) instead of the
#                        working tree, so that uncommitted edits by others do not leak into the run
#   --compact-wait-patch raise compact_test.go's waitTimeout from 100 ms to 500 ms, as kine does
#                        (it only says how long one compaction cycle may take under load)
#   --datastore TEMPLATE the backend (sets KINEPY_APISERVER_DATASTORE): a kinepy --datastore-endpoint with
#                        "{db}" where each RunEtcd puts a new database name kt_<hex> (kinepy creates it), e.g.
#                        'postgres://kinepy:pw@127.0.0.1:5432/{db}?sslmode=disable' or
#                        'mysql://kinepy:pw@tcp(127.0.0.1:3306)/{db}'. Default: a fresh SQLite file per RunEtcd.
#                        The kt_* databases are left for the caller to drop (or to throw the server away).
#   --parallel N         -test.parallel for every package (default: etcd3 1, cacher 4; see below)
#   --no-build           reuse the test binaries in bin/
#   --etcd               control run: keep upstream's embedded etcd 3.6 test server instead of kinepy (binaries
#                        bin/<package>.etcd.test, results <package>.etcd.*), to tell kinepy bugs from test
#                        flakes or effects of -test.parallel 1
#
# What it does (docs: shared reference kubernetes-storage-tests.md, §3.2 route B):
#   1. copies k8s.io/apiserver at the version in go.mod from the Go module cache to
#      .cache/apiserver (go.mod replaces k8s.io/apiserver with that directory), and puts
#      testserver/test_server.go (the kinepy launcher) over pkg/storage/etcd3/testserver/test_server.go;
#   2. builds bin/<package>.test with `go test -c` (under nice, GOMAXPROCS=2, -p=1);
#   3. runs each binary from its package directory with -test.count 1 -test.parallel P
#      -test.timeout 30m -test.v; every RunEtcd starts `python3 -m kinepy` on a fresh SQLite file
#      (or a fresh database from --datastore / KINEPY_APISERVER_DATASTORE);
#      P: only parallel *subtests* (t.Parallel inside one test, sharing one server) are affected, no
#      top-level test is parallel. cacher runs with 4 because its TestGet needs its parallel subtests to
#      overlap: serialised, the too_high_resource_version case blocks 3 s in the watch cache and later
#      cases find `foo` deleted by its 1 s TTL (embedded etcd fails identically with 1; upstream CI uses
#      the default, GOMAXPROCS). etcd3 passes either way; it stays at 1, as recorded in RESULTS.md, so
#      its kinepy logs are in test order and timing-sensitive cases (compaction's 100 ms) see no
#      competing subtests on a loaded 2-core machine;
#   4. prints a per-test PASS/FAIL/SKIP summary and exits 1 if any test failed or a binary crashed.
#
# Outputs: .cache/results/<package><tag>.log (full go test output), .cache/results/<package><tag>.summary,
# .cache/logs/<package><tag>/<Test>.<n>.kinepy.log (one log per kinepy server); <tag> is empty for
# SQLite, .etcd for --etcd, .<scheme> (.postgres, .mysql) for --datastore.
#
# Environment: KINEPY_REPO (kinepy checkout; default the repository containing this script),
# KINEPY_PYTHON (default python3), KINEPY_APISERVER_TIMEOUT (default 30m), GOMAXPROCS (default 2),
# KINEPY_APISERVER_DATASTORE (as --datastore), KINEPY_APISERVER_SNAPSHOT (as --snapshot).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache="$here/.cache"
bin="$here/bin"

packages=()
run_re=""
skip_re=""
snapshot=${KINEPY_APISERVER_SNAPSHOT:-}
compact_patch=0
build=1
backend=kinepy
parallel=""
datastore=${KINEPY_APISERVER_DATASTORE:-}
while [ $# -gt 0 ]; do
    case "$1" in
    -run | --run) run_re=$2; shift 2 ;;
    -skip | --skip) skip_re=$2; shift 2 ;;
    --snapshot) snapshot=$2; shift 2 ;;
    --compact-wait-patch) compact_patch=1; shift ;;
    --datastore) datastore=$2; shift 2 ;;
    --parallel) parallel=$2; shift 2 ;;
    --no-build) build=0; shift ;;
    --etcd) backend=etcd; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    etcd3 | cacher) packages+=("$1"); shift ;;
    *) echo "run.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ ${#packages[@]} -gt 0 ] || packages=(etcd3)

command -v go >/dev/null || { echo "run.sh: go not found" >&2; exit 127; }
export GOMAXPROCS=${GOMAXPROCS:-2}
export GOFLAGS="${GOFLAGS:-} -mod=readonly"
export GOTOOLCHAIN=${GOTOOLCHAIN:-local}
timeout=${KINEPY_APISERVER_TIMEOUT:-30m}
[ "$backend" = kinepy ] || datastore="" # the control run has no datastore
if [ -n "$datastore" ]; then
    case "$datastore" in
    *'{db}'*) ;;
    *) echo "run.sh: --datastore / KINEPY_APISERVER_DATASTORE needs a {db} placeholder: $datastore" >&2; exit 2 ;;
    esac
    scheme=${datastore%%:*}
    tag=".$scheme"
    store="kinepy on $scheme"
else
    tag=""
    store="kinepy on sqlite"
fi
export KINEPY_APISERVER_DATASTORE="$datastore"
cd "$here"

# --- 1. the module copy ------------------------------------------------------------------------
version=$(awk '$1 == "k8s.io/apiserver" && $2 ~ /^v/ {print $2; exit}' go.mod)
[ -n "$version" ] || { echo "run.sh: no k8s.io/apiserver requirement in go.mod" >&2; exit 1; }
src=$(go mod download -json "k8s.io/apiserver@$version" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "run.sh: go mod download k8s.io/apiserver@$version gave no directory" >&2; exit 1; }
copy="$cache/apiserver"
if [ "$(cat "$copy/.kinepy-source" 2>/dev/null)" != "$src" ]; then
    echo "run.sh: copying k8s.io/apiserver@$version to $copy"
    rm -rf "$copy" "$copy.tmp"
    mkdir -p "$cache"
    cp -R "$src" "$copy.tmp"
    chmod -R u+w "$copy.tmp"
    echo "$src" >"$copy.tmp/.kinepy-source"
    mv "$copy.tmp" "$copy"
fi
if [ "$backend" = etcd ]; then
    install -m 0644 "$src/pkg/storage/etcd3/testserver/test_server.go" "$copy/pkg/storage/etcd3/testserver/test_server.go"
    suffix=.etcd
    store="embedded etcd"
else
    install -m 0644 testserver/test_server.go "$copy/pkg/storage/etcd3/testserver/test_server.go"
    suffix=
fi
install -m 0644 "$src/pkg/storage/etcd3/compact_test.go" "$copy/pkg/storage/etcd3/compact_test.go"
if [ "$compact_patch" = 1 ]; then
    sed -i 's/waitTimeout = 100 \* waitDelay/waitTimeout = 500 * waitDelay/' "$copy/pkg/storage/etcd3/compact_test.go"
    grep -aq 'waitTimeout = 500 \* waitDelay' "$copy/pkg/storage/etcd3/compact_test.go" ||
        { echo "run.sh: --compact-wait-patch did not apply" >&2; exit 1; }
fi

# --- kinepy ------------------------------------------------------------------------------------
if [ -n "$snapshot" ]; then
    rev=$(git -C "$repo" rev-parse --verify "$snapshot^{commit}")
    snap="$cache/kinepy-$rev"
    if [ ! -d "$snap" ]; then
        mkdir -p "$snap.tmp"
        git -C "$repo" archive "$rev" kinepy pyproject.toml | tar -x -C "$snap.tmp"
        mv "$snap.tmp" "$snap"
    fi
    export KINEPY_REPO="$snap"
else
    export KINEPY_REPO="${KINEPY_REPO:-$repo}"
fi
python=${KINEPY_PYTHON:-python3}
echo "run.sh: kinepy from $KINEPY_REPO ($(cd "$KINEPY_REPO" && PYTHONPATH=$KINEPY_REPO "$python" -m kinepy --version 2>&1 | head -1))"

# --- 2. build ----------------------------------------------------------------------------------
mkdir -p "$bin" "$cache/results"
if [ "$build" = 1 ]; then
    for p in "${packages[@]}"; do
        echo "run.sh: building bin/$p$suffix.test"
        start=$(date +%s)
        nice -n 19 go test -p=1 -c -o "$bin/$p$suffix.test" "k8s.io/apiserver/pkg/storage/$p"
        echo "run.sh: built bin/$p$suffix.test in $(($(date +%s) - start))s"
    done
fi

# --- 3. run ------------------------------------------------------------------------------------
status=0
for p in "${packages[@]}"; do
    [ -x "$bin/$p$suffix.test" ] || { echo "run.sh: $bin/$p$suffix.test missing (run without --no-build)" >&2; exit 1; }
    logs="$cache/logs/$p$suffix$tag"
    rm -rf "$logs"
    mkdir -p "$logs"
    out="$cache/results/$p$suffix$tag.log"
    par=$parallel
    if [ -z "$par" ]; then
        case "$p" in cacher) par=4 ;; *) par=1 ;; esac # why: step 3 in the header
    fi
    args=(-test.count 1 -test.parallel "$par" -test.timeout "$timeout" -test.v)
    [ -z "$run_re" ] || args+=(-test.run "$run_re")
    [ -z "$skip_re" ] || args+=(-test.skip "$skip_re")
    echo "run.sh: running $p$suffix.test ${args[*]} against $store (output: $out)"
    start=$(date +%s)
    set +e
    (cd "$copy/pkg/storage/$p" && KINEPY_TEST_LOG_DIR="$logs" nice -n 19 "$bin/$p$suffix.test" "${args[@]}") >"$out" 2>&1
    rc=$?
    set -e
    secs=$(($(date +%s) - start))

    # --- 4. summary ----------------------------------------------------------------------------
    summary="$cache/results/$p$suffix$tag.summary"
    {
        echo "== k8s.io/apiserver@$version pkg/storage/$p against $store: exit $rc after ${secs}s"
        # Top-level results only ("--- FAIL: TestX (1.00s)" at column 0); failed subtests are listed below.
        sed -n 's/^--- \(PASS\|FAIL\|SKIP\): \([^ ]*\) (\(.*\))$/\1 \2 (\3)/p' "$out"
        pass=$(grep -ac '^--- PASS: ' "$out" || true)
        fail=$(grep -ac '^--- FAIL: ' "$out" || true)
        skip=$(grep -ac '^--- SKIP: ' "$out" || true)
        echo "== $p: $pass passed, $fail failed, $skip skipped"
        if [ "$fail" -gt 0 ]; then
            echo "== failed subtests:"
            grep -aE '^ +--- FAIL: ' "$out" | sed 's/^ *//' || true
        fi
        if [ "$rc" -ne 0 ] && [ "$fail" -eq 0 ]; then
            echo "== $p.test exited $rc without a failing test (panic or timeout?):"
            grep -aE '^(panic:|fatal error:|\*\*\* Test killed)' "$out" | head -5 || true
            running=$(grep -aE '^=== RUN ' "$out" | tail -1 | sed 's/^=== RUN *//')
            echo "== last test started: ${running:-none}"
        fi
    } | tee "$summary"
    [ "$rc" -eq 0 ] || status=1
done
exit $status
