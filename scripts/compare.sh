#!/usr/bin/env bash
# Side-by-side performance comparison of kopia v0.22.3 and kmover on generated data (issue 8).
#
#   scripts/compare.sh [SCENARIO...]      scenarios: a b c d e f g h (default: all)
#
#   a  first backup of the mixed set (1 GiB random, 512 MiB compressible, 20,000 small files)
#   b  unchanged re-backup of it          c  re-backup after changing 1% of its files
#   d  restore of (a)                     e  backup and restore of one 4 GiB file
#   f  backup of 1,000,000 files of 100 bytes in 100,000 directories
#   g  restore of the mixed set over S3 (MinIO behind a proxy adding 50 ms per round trip)
#   h  full maintenance after deleting half of 6 snapshots
#
# For every measured step kopia runs first, then kmover, on the same data with the same settings:
# default repository algorithms, global policy compression zstd-fastest, --parallel 2, and an empty
# cache directory. kopia's automatic maintenance after writes is turned off (--no-auto-maintenance)
# so both tools do the same work; scenario (h) measures maintenance on its own. Wall time and peak
# RSS come from GNU time (or the helper's /proc poller when GNU time is missing). Every restore is
# checked against its source (contents, permissions, mtimes).
#
# Environment:
#   KMOVER_BENCH_SCALE=1        dataset size factor (0.02 for a quick check; 1 for the real figures)
#   KMOVER_BENCH_DIR=DIR        work directory (default /tmp/kmover-bench); datasets are kept and
#                               reused while their scale matches, repositories are recreated
#   KMOVER_BENCH_PARALLEL=2     --parallel of snapshot create and restore
#   KMOVER_BENCH_RTT_MS=50      latency the S3 proxy adds to every round trip in (g)
#   KMOVER_BENCH_KOPIA=PATH     kopia binary (default ~/.cache/kmover-tools/kopia-0.22.3/kopia)
#   KMOVER_BENCH_KMOVER=PATH    a prebuilt kmover (default: cargo build --release)
#   KMOVER_BENCH_HELPER=PATH    a prebuilt benches/compare_helper.rs (default: cargo build --release)
#   KMOVER_MINIO=PATH           MinIO binary (default: the pinned one in ~/.cache/kmover-tools)
#   KMOVER_BENCH_DROP_CACHES=1  drop the OS page cache before every measured step (needs root)
#   KMOVER_BENCH_KOPIA_AUTO_MAINTENANCE=1  leave kopia's automatic maintenance on
#
# Prints a markdown table (also saved to $KMOVER_BENCH_DIR/results.md); exits non-zero when a
# command fails or a restore differs from its source, not when a goal is missed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${KMOVER_TOOLS_DIR:-$HOME/.cache/kmover-tools}"
SCALE="${KMOVER_BENCH_SCALE:-1}"
WORK="${KMOVER_BENCH_DIR:-/tmp/kmover-bench}"
PARALLEL="${KMOVER_BENCH_PARALLEL:-2}"
RTT_MS="${KMOVER_BENCH_RTT_MS:-50}"
KOPIA="${KMOVER_BENCH_KOPIA:-$TOOLS_DIR/kopia-0.22.3/kopia}"
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c # keep in step with tests/common/minio.rs
MINIO="${KMOVER_MINIO:-$TOOLS_DIR/minio-$MINIO_VERSION/minio}"
PASSWORD="kmover-bench-password"
MINIO_USER="kmover-bench-admin"
MINIO_SECRET="kmover-bench-minio-secret-7d41"
# Bumped whenever the generator changes what it writes, so stale datasets are regenerated.
DATASET_VERSION=1
ALL_SCENARIOS=(a b c d e f g h)
TOOLS=(kopia kmover)

die() { echo "compare.sh: $*" >&2; exit 1; }
note() { printf '\n==> %s\n' "$*" >&2; }

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

# ---------------------------------------------------------------- arguments and environment

SELECTED=()
for arg in "$@"; do
    case "$arg" in
        -h | --help) usage; exit 0 ;;
        [a-h]) SELECTED+=("$arg") ;;
        *) die "unknown scenario '$arg' (expected some of: ${ALL_SCENARIOS[*]})" ;;
    esac
done
[[ ${#SELECTED[@]} -gt 0 ]] || SELECTED=("${ALL_SCENARIOS[@]}")
selected() { [[ " ${SELECTED[*]} " == *" $1 "* ]]; }

awk -v s="$SCALE" 'BEGIN { exit !(s > 0 && s <= 100) }' ||
    die "KMOVER_BENCH_SCALE must be a number in (0, 100], got '$SCALE'"
[[ "$PARALLEL" =~ ^[1-9][0-9]*$ ]] || die "KMOVER_BENCH_PARALLEL must be a positive integer"
[[ "$RTT_MS" =~ ^[0-9]+$ ]] || die "KMOVER_BENCH_RTT_MS must be a whole number of milliseconds"
[[ -x "$KOPIA" ]] || die "kopia not found at $KOPIA (run scripts/install-tools.sh, or set KMOVER_BENCH_KOPIA)"
KOPIA_VERSION="$("$KOPIA" --version 2>&1 | sed -n 1p)"
[[ "$KOPIA_VERSION" == 0.22.3* ]] ||
    echo "compare.sh: warning: $KOPIA is not kopia 0.22.3 ($KOPIA_VERSION)" >&2
if selected g; then
    [[ -x "$MINIO" ]] || die "MinIO not found at $MINIO (run scripts/install-tools.sh minio, or set KMOVER_MINIO)"
fi

mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
DATA="$WORK/data"
RUN="$WORK/run"
LOGS="$WORK/logs"
RESULTS="$WORK/results.tsv"
mkdir -p "$DATA" "$RUN" "$LOGS"
: >"$RESULTS"
FAILURES=0

# Scaled sizes (at least one of everything).
# printf %.0f: awk's print writes numbers of 2^31 and more as 4.29497e+09.
scaled() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); printf "%.0f\n", (v < 1 ? 1 : v) }'; }

# ---------------------------------------------------------------- builds

PIDS_TO_STOP=()
cleanup() {
    local pid
    for pid in "${PIDS_TO_STOP[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT

cargo_executable() { # NAME CARGO_ARGS...: builds and prints the path of executable NAME
    local name="$1"
    shift
    # A bench build also builds the package's binaries: pick the artifact by file name (bench
    # executables carry a -HASH suffix).
    (cd "$ROOT" && cargo build --release --message-format=json-render-diagnostics "$@") |
        grep -o '"executable":"[^"]*"' | sed 's/^"executable":"\(.*\)"$/\1/' |
        grep -E "/$name(-[0-9a-f]+)?$" | sed -n '$p'
}

note "building kmover and the comparison helper (release)"
if [[ -n "${KMOVER_BENCH_KMOVER:-}" ]]; then
    KMOVER="$KMOVER_BENCH_KMOVER"
else
    KMOVER="$(cargo_executable kmover --bin kmover)"
fi
[[ -x "$KMOVER" ]] || die "kmover binary not found (${KMOVER:-build printed no executable})"
HELPER="${KMOVER_BENCH_HELPER:-$(cargo_executable compare_helper --bench compare_helper)}"
[[ -x "$HELPER" ]] || die "the compare_helper build printed no executable"

if [[ -x /usr/bin/time ]] && /usr/bin/time -f '%e %M' -o /dev/null true 2>/dev/null; then
    MEASURE_WITH="GNU time"
else
    MEASURE_WITH="/proc VmHWM polling"
fi

HAS_KMOVER_MAINTENANCE=0
"$KMOVER" maintenance run --help >/dev/null 2>&1 && HAS_KMOVER_MAINTENANCE=1

# ---------------------------------------------------------------- tools

# Each (group, tool) pair has a home directory with its config, cache and logs.
home_of() { echo "$RUN/$1/$2/home"; }

# tool_command GROUP TOOL: sets TOOL_CMD to the tool with its private config, cache and logs.
tool_command() {
    local group="$1" name="$2" home
    home="$(home_of "$group" "$name")"
    mkdir -p "$home"
    case "$name" in
        kopia)
            TOOL_CMD=("$KOPIA" --config-file "$home/repository.config" --log-dir "$home/logs")
            [[ "${KMOVER_BENCH_KOPIA_AUTO_MAINTENANCE:-0}" == 1 ]] || TOOL_CMD+=(--no-auto-maintenance)
            ;;
        kmover) TOOL_CMD=("$KMOVER" --config-file "$home/repository.config" --cache-directory "$home/cache") ;;
        *) die "unknown tool $name" ;;
    esac
}

# The environment of every tool run: the password, and MinIO's keys for the S3 repositories.
export KOPIA_PASSWORD="$PASSWORD" KOPIA_CHECK_FOR_UPDATES=false
export AWS_ACCESS_KEY_ID="$MINIO_USER" AWS_SECRET_ACCESS_KEY="$MINIO_SECRET"
unset KOPIA_CONFIG_PATH KOPIA_CACHE_DIRECTORY KOPIA_LOG_DIR

# tool GROUP TOOL ARGS...: runs a tool unmeasured.
tool() {
    tool_command "$1" "$2"
    shift 2
    "${TOOL_CMD[@]}" "$@"
}

# setup GROUP TOOL ARGS...: an unmeasured step; its output goes to the group's log.
setup() {
    local group="$1" name="$2"
    shift 2
    local log="$LOGS/$group-$name-setup.log"
    if ! tool "$group" "$name" "$@" >>"$log" 2>&1; then
        echo "compare.sh: setup step failed: $name $*" >&2
        tail -20 "$log" >&2
        exit 1
    fi
}

# The storage flags of `repository create|connect` for a group's repository.
storage_args() { # GROUP TOOL [ENDPOINT]
    local group="$1" name="$2" endpoint="${3:-}"
    if [[ -n "$endpoint" ]]; then
        echo "s3 --bucket=bench-$group-$name --endpoint=$endpoint --disable-tls"
    else
        echo "filesystem --path=$RUN/$group/$name/repo"
    fi
}

# new_repo GROUP TOOL [ENDPOINT]: a fresh repository with zstd-fastest as global compression.
new_repo() {
    local group="$1" name="$2" endpoint="${3:-}"
    rm -rf "$RUN/$group/$name"
    mkdir -p "$RUN/$group/$name"
    local home
    home="$(home_of "$group" "$name")"
    # kopia takes the cache location only when creating or connecting; kmover as a global flag.
    local -a cache=()
    [[ "$name" == kopia ]] && cache=(--cache-directory="$home/cache")
    # shellcheck disable=SC2046 # the storage flags are meant to split
    setup "$group" "$name" repository create $(storage_args "$group" "$name" "$endpoint") "${cache[@]}"
    setup "$group" "$name" policy set --global --compression=zstd-fastest
}

# connect GROUP TOOL FROM_GROUP ENDPOINT: a second connection to FROM_GROUP's S3 repository.
connect_s3() {
    local group="$1" name="$2" from="$3" endpoint="$4"
    rm -rf "$RUN/$group/$name"
    mkdir -p "$RUN/$group/$name"
    local home
    home="$(home_of "$group" "$name")"
    local -a cache=()
    [[ "$name" == kopia ]] && cache=(--cache-directory="$home/cache")
    setup "$group" "$name" repository connect s3 --bucket="bench-$from-$name" \
        --endpoint="$endpoint" --disable-tls "${cache[@]}"
}

# The IDs of a group's snapshots, oldest first.
snapshot_ids() { # GROUP TOOL
    tool "$1" "$2" snapshot list --all --json | grep -o '"id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/'
}

fresh_caches() { # GROUP TOOL
    rm -rf "$(home_of "$1" "$2")/cache"
    # The previous step's dirty pages (hundreds of MiB after a backup or restore) would otherwise
    # be written back while this step runs, slowing whichever tool goes second.
    sync
    if [[ "${KMOVER_BENCH_DROP_CACHES:-0}" == 1 ]]; then
        echo 3 >/proc/sys/vm/drop_caches 2>/dev/null ||
            die "KMOVER_BENCH_DROP_CACHES=1 needs write access to /proc/sys/vm/drop_caches"
    fi
}

# measure ROW GROUP TOOL ARGS...: runs one measured step and records "ROW TOOL SECONDS KIB".
measure() {
    local row="$1" group="$2" name="$3"
    shift 3
    fresh_caches "$group" "$name"
    local log="$LOGS/$row-$name.log" stats="$LOGS/$row-$name.stats"
    local start end status=0
    tool_command "$group" "$name"
    echo "+ ${TOOL_CMD[*]} $*" >"$log"
    start=$(date +%s.%N)
    if [[ "$MEASURE_WITH" == "GNU time" ]]; then
        /usr/bin/time -f '%e %M' -o "$stats" -- "${TOOL_CMD[@]}" "$@" >>"$log" 2>&1 || status=$?
    else
        "$HELPER" measure "$stats" -- "${TOOL_CMD[@]}" "$@" >>"$log" 2>&1 || status=$?
    fi
    end=$(date +%s.%N)
    if [[ $status -ne 0 ]]; then
        echo "compare.sh: $row: $name failed (exit $status); last lines of $log:" >&2
        tail -15 "$log" >&2
        printf '%s\t%s\tfailed\tfailed\n' "$row" "$name" >>"$RESULTS"
        FAILURES=$((FAILURES + 1))
        return 1
    fi
    local kib
    kib=$(tail -1 "$stats" | awk '{ print $2 }')
    local secs
    secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    printf '%s\t%s\t%s\t%s\n' "$row" "$name" "$secs" "$kib" >>"$RESULTS"
    printf '    %-7s %-6s %8ss  %8s MiB peak RSS\n' "$row" "$name" "$secs" $((kib / 1024)) >&2
}

# verify ROW TOOL EXPECTED ACTUAL: a restore must reproduce its source.
verify() {
    local row="$1" name="$2" expected="$3" actual="$4"
    if ! "$HELPER" same-tree "$expected" "$actual" >"$LOGS/$row-$name.verify" 2>&1; then
        echo "compare.sh: $row: $name's restore differs from the source:" >&2
        cat "$LOGS/$row-$name.verify" >&2
        printf '%s\t%s\tdiffers\tdiffers\n' "$row" "$name" >>"$RESULTS"
        FAILURES=$((FAILURES + 1))
    fi
}

record_size() { # ROW BYTES
    printf '%s\tsize\t%s\t-\n' "$1" "$2" >>"$RESULTS"
}

record_na() { # ROW TOOL REASON
    printf '%s\t%s\tn/a (%s)\tn/a\n' "$1" "$2" "$3" >>"$RESULTS"
}

# ---------------------------------------------------------------- datasets

# dataset NAME COMMAND...: (re)generates $DATA/NAME unless it exists for this scale and version.
dataset() {
    local name="$1"
    shift
    local dir="$DATA/$name" stamp="$DATA/$name.stamp"
    local want="version=$DATASET_VERSION scale=$SCALE"
    if [[ -d "$dir" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        return
    fi
    note "generating dataset $name (scale $SCALE)"
    rm -rf "$dir" "$stamp"
    "$HELPER" "$@"
    echo "$want" >"$stamp"
}

# A mutated dataset must be regenerated before it is used as pristine again.
mark_changed() { rm -f "$DATA/$1.stamp"; }

tree_bytes() { "$HELPER" tree-bytes "$1"; }

# ---------------------------------------------------------------- scenarios

# (a) (b) (d) (c), in that order: (d) restores (a) and compares it with the unchanged set.
scenarios_mixed() {
    local group=mixed src="$DATA/mixed"
    dataset mixed gen-mixed "$src" "$SCALE"
    local bytes
    bytes=$(tree_bytes "$src")
    local t
    for t in "${TOOLS[@]}"; do new_repo "$group" "$t"; done

    note "(a) first backup"
    if selected a; then record_size a "$bytes"; fi
    for t in "${TOOLS[@]}"; do
        if selected a; then
            measure a "$group" "$t" snapshot create --parallel="$PARALLEL" "$src" || true
        else
            setup "$group" "$t" snapshot create --parallel="$PARALLEL" "$src"
        fi
    done

    if selected b; then
        note "(b) unchanged re-backup"
        record_size b "$bytes"
        for t in "${TOOLS[@]}"; do
            measure b "$group" "$t" snapshot create --parallel="$PARALLEL" "$src" || true
        done
    fi

    if selected d; then
        note "(d) restore of (a)"
        record_size d "$bytes"
        for t in "${TOOLS[@]}"; do
            local id target="$RUN/$group/$t/restore"
            id=$(snapshot_ids "$group" "$t" | sed -n 1p)
            rm -rf "$target"
            if measure d "$group" "$t" restore --parallel="$PARALLEL" "$id" "$target"; then
                verify d "$t" "$src" "$target"
            fi
        done
        # Deleted only now: ext4 skips inodes freed in the last minute when it allocates new
        # ones, so the second tool would pay for the first one's thousands of deleted files.
        for t in "${TOOLS[@]}"; do rm -rf "$RUN/$group/$t/restore"; done
    fi

    if selected c; then
        note "(c) re-backup after changing 1% of the files"
        local changed
        changed=$("$HELPER" mutate "$src" 1 1)
        mark_changed mixed
        echo "    changed $changed files" >&2
        record_size c "$bytes"
        for t in "${TOOLS[@]}"; do
            measure c "$group" "$t" snapshot create --parallel="$PARALLEL" "$src" || true
        done
    fi
    for t in "${TOOLS[@]}"; do rm -rf "$RUN/$group/$t/repo"; done
}

scenario_e() {
    local group=big src="$DATA/big"
    local bytes
    bytes=$(scaled $((4 << 30)))
    dataset big gen-big "$src/big.dat" "$bytes"
    note "(e) backup and restore of one $((bytes >> 20)) MiB file"
    record_size e-backup "$bytes"
    record_size e-restore "$bytes"
    local t
    for t in "${TOOLS[@]}"; do
        new_repo "$group" "$t"
        measure e-backup "$group" "$t" snapshot create --parallel="$PARALLEL" "$src" || true
    done
    for t in "${TOOLS[@]}"; do
        local id target="$RUN/$group/$t/restore"
        id=$(snapshot_ids "$group" "$t" | sed -n 1p)
        if [[ -z "$id" ]]; then
            record_na e-restore "$t" "no snapshot"
            continue
        fi
        rm -rf "$target"
        if measure e-restore "$group" "$t" restore --parallel="$PARALLEL" "$id" "$target"; then
            verify e-restore "$t" "$src" "$target"
        fi
        rm -rf "$target" "$RUN/$group/$t/repo"
    done
}

scenario_f() {
    local group=many src="$DATA/many"
    local files dirs
    files=$(scaled 1000000)
    dirs=$(scaled 100000)
    dataset many gen-many "$src" "$files" "$dirs" 100
    note "(f) backup of $files files of 100 bytes in $dirs directories"
    record_size f "$((files * 100))"
    local t
    for t in "${TOOLS[@]}"; do
        new_repo "$group" "$t"
        measure f "$group" "$t" snapshot create --parallel="$PARALLEL" "$src" || true
        rm -rf "$RUN/$group/$t/repo"
    done
}

start_minio() { # sets MINIO_ENDPOINT
    local dir="$RUN/s3/minio" port console
    rm -rf "$dir"
    mkdir -p "$dir/data"
    port=$("$HELPER" free-port)
    console=$("$HELPER" free-port)
    HOME="$dir" MINIO_ROOT_USER="$MINIO_USER" MINIO_ROOT_PASSWORD="$MINIO_SECRET" \
        MINIO_BROWSER=off MINIO_UPDATE=off \
        "$MINIO" server "$dir/data" --address "127.0.0.1:$port" \
        --console-address "127.0.0.1:$console" --quiet >"$LOGS/minio.log" 2>&1 &
    PIDS_TO_STOP+=($!)
    MINIO_ENDPOINT="127.0.0.1:$port"
}

start_proxy() { # UPSTREAM: sets PROXY_ENDPOINT once the proxy listens
    local port i
    port=$("$HELPER" free-port)
    "$HELPER" proxy "127.0.0.1:$port" "$1" "$RTT_MS" >"$LOGS/proxy.log" 2>&1 &
    PIDS_TO_STOP+=($!)
    for i in $(seq 100); do
        grep -q listening "$LOGS/proxy.log" 2>/dev/null && break
        sleep 0.05
    done
    grep -q listening "$LOGS/proxy.log" || die "the latency proxy did not start: $(cat "$LOGS/proxy.log")"
    PROXY_ENDPOINT="127.0.0.1:$port"
}

scenario_g() {
    local group=s3 src="$DATA/mixed"
    dataset mixed gen-mixed "$src" "$SCALE"
    local bytes
    bytes=$(tree_bytes "$src")
    note "(g) restore over S3 with $RTT_MS ms added per round trip"
    start_minio
    start_proxy "$MINIO_ENDPOINT"
    local endpoint="$MINIO_ENDPOINT" proxy="$PROXY_ENDPOINT" t
    for t in "${TOOLS[@]}"; do
        "$HELPER" create-bucket "$endpoint" "bench-$group-$t" >>"$LOGS/s3-setup.log" 2>&1 ||
            die "cannot create bucket bench-$group-$t: $(tail -3 "$LOGS/s3-setup.log")"
        # The backup goes straight to MinIO; only the measured restore pays the latency.
        new_repo "$group" "$t" "$endpoint"
        setup "$group" "$t" snapshot create --parallel="$PARALLEL" "$src"
    done
    record_size g "$bytes"
    for t in "${TOOLS[@]}"; do
        local id target="$RUN/$group-slow/$t/restore"
        id=$(snapshot_ids "$group" "$t" | sed -n 1p)
        connect_s3 "$group-slow" "$t" "$group" "$proxy"
        if measure g "$group-slow" "$t" restore --parallel="$PARALLEL" "$id" "$target"; then
            verify g "$t" "$src" "$target"
        fi
    done
    # After both restores, as in (d).
    for t in "${TOOLS[@]}"; do rm -rf "$RUN/$group-slow/$t/restore"; done
    cleanup
    PIDS_TO_STOP=()
    rm -rf "$RUN/s3/minio"
}

scenario_h() {
    local group=maint src="$DATA/maint"
    local snapshots=6 t i
    note "(h) full maintenance after deleting $((snapshots / 2)) of $snapshots snapshots"
    # A quarter of the mixed set, plus a churn file replaced before every snapshot and 5% of the
    # files changed, so the deleted snapshots leave garbage behind.
    rm -rf "$src"
    "$HELPER" gen-mixed "$src" "$(awk -v s="$SCALE" 'BEGIN { print s / 4 }')"
    for t in "${TOOLS[@]}"; do new_repo "$group" "$t"; done
    for i in $(seq "$snapshots"); do
        "$HELPER" gen-big "$src/churn/c.dat" "$(scaled $((64 << 20)))" "$i"
        "$HELPER" mutate "$src" 5 "$i" >/dev/null
        for t in "${TOOLS[@]}"; do
            setup "$group" "$t" snapshot create --parallel="$PARALLEL" "$src"
        done
    done
    record_size h "$(tree_bytes "$src")"
    for t in "${TOOLS[@]}"; do
        local id
        for id in $(snapshot_ids "$group" "$t" | sed -n "1,$((snapshots / 2))p"); do
            setup "$group" "$t" snapshot delete "$id" --delete
        done
        if [[ "$t" == kmover && $HAS_KMOVER_MAINTENANCE == 0 ]]; then
            record_na h "$t" "not implemented"
            continue
        fi
        measure h "$group" "$t" maintenance run --full --safety=none || true
    done
    for t in "${TOOLS[@]}"; do rm -rf "$RUN/$group/$t/repo"; done
    rm -rf "$src"
}

# ---------------------------------------------------------------- report

goal_of() {
    case "$1" in
        a | d | e-backup | e-restore | f) echo 2 ;;
        b | c | h) echo 3 ;;
        g) echo 5 ;;
    esac
}

describe() {
    case "$1" in
        a) echo "(a) first backup, mixed set" ;;
        b) echo "(b) unchanged re-backup" ;;
        c) echo "(c) re-backup, 1% of files changed" ;;
        d) echo "(d) restore of (a)" ;;
        e-backup) echo "(e) backup of one big file" ;;
        e-restore) echo "(e) restore of one big file" ;;
        f) echo "(f) backup of many 100-byte files" ;;
        g) echo "(g) restore over S3, +${RTT_MS} ms RTT" ;;
        h) echo "(h) full maintenance" ;;
    esac
}

report() {
    printf '| scenario | data | kopia time | kmover time | speed ratio | kopia peak RSS | kmover peak RSS | RSS ratio | goal | met? |\n'
    printf '|---|---|---|---|---|---|---|---|---|---|\n'
    local row
    for row in a b c d e-backup e-restore f g h; do
        grep -q "^$row	size	" "$RESULTS" || continue
        awk -F '\t' -v row="$row" -v goal="$(goal_of "$row")" -v what="$(describe "$row")" '
            function mib(k) { return sprintf("%.0f MiB", k / 1024) }
            function size(b) {
                return b >= 2^30 ? sprintf("%.2f GiB", b / 2^30) : sprintf("%.1f MiB", b / 2^20)
            }
            function numeric(v) { return v ~ /^[0-9.]+$/ }
            $1 == row && $2 == "size"   { bytes = $3 }
            $1 == row && $2 == "kopia"  { kt = $3; kr = $4 }
            $1 == row && $2 == "kmover" { mt = $3; mr = $4 }
            END {
                speed = "-"; rss = "-"; met = "-"
                if (numeric(kt) && numeric(mt) && mt > 0) speed = sprintf("%.2fx", kt / mt)
                if (numeric(kr) && numeric(mr) && kr > 0) rss = sprintf("%.2fx", mr / kr)
                if (speed != "-" && rss != "-") {
                    why = ""
                    if (kt / mt < goal) why = why "speed"
                    if (mr / kr > 0.5) why = why (why == "" ? "" : ", ") "RSS"
                    if (row == "f" && mr > 1024 * 1024) why = why (why == "" ? "" : ", ") "RSS > 1 GiB"
                    met = why == "" ? "yes" : "no (" why ")"
                }
                goal_text = "≥ " goal "x, RSS ≤ 0.5x" (row == "f" ? ", ≤ 1 GiB" : "")
                printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", what, size(bytes),
                    numeric(kt) ? kt " s" : kt, numeric(mt) ? mt " s" : mt, speed,
                    numeric(kr) ? mib(kr) : kr, numeric(mr) ? mib(mr) : mr, rss, goal_text, met
            }' "$RESULTS"
    done
}

# ---------------------------------------------------------------- main

note "kopia: $KOPIA_VERSION; kmover: $KMOVER; scale $SCALE; parallel $PARALLEL; measuring with $MEASURE_WITH"
if selected a || selected b || selected c || selected d; then scenarios_mixed; fi
if selected e; then scenario_e; fi
if selected f; then scenario_f; fi
if selected g; then scenario_g; fi
if selected h; then scenario_h; fi

kmover_revision() { # the commit, marked -dirty when the work tree has changes
    local rev
    [[ -z "${KMOVER_BENCH_KMOVER:-}" ]] || { echo "prebuilt $KMOVER"; return; }
    rev=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null) || { echo unknown; return; }
    [[ -z "$(cd "$ROOT" && git status --porcelain --untracked-files=no 2>/dev/null)" ]] || rev+="-dirty"
    echo "$rev"
}

{
    echo
    echo "kopia ${KOPIA_VERSION%% *} vs kmover $(kmover_revision);" \
        "scale $SCALE; --parallel $PARALLEL; zstd-fastest; $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    report
} | tee "$WORK/results.md"

[[ $FAILURES -eq 0 ]] || die "$FAILURES step(s) failed or restored wrong data; see $LOGS"
