#!/usr/bin/env bash
# Full maintenance, kmover vs kopia v0.22.3, on two copies of the same repository (maintenance
# issue, item 5): wall time, peak RSS, and what each leaves behind (bytes, pack and index blobs).
#
#   benches/maintenance_compare.sh
#
# The repository is written by kopia: FILES small files (in directories of 1000) plus a few
# random files of several MiB, snapshotted three times with a third of the small files replaced
# and a big file swapped between snapshots; the first two snapshots are then deleted, so GC,
# rewrite and pack deletion all have work. It is copied, and each tool runs
# `maintenance run --full --safety=none` on its own copy. kopia's automatic maintenance is off
# while the repository is written. Afterwards kopia verifies kmover's copy.
#
# Environment:
#   KMOVER_BENCH_FILES=200000   small files per snapshot
#   KMOVER_BENCH_DIR=DIR        work directory (default /tmp/kmover-maintenance-bench; recreated)
#   KMOVER_BENCH_KOPIA=PATH     kopia binary (default ~/.cache/kmover-tools/kopia-0.22.3/kopia)
#   KMOVER_BENCH_KMOVER=PATH    a prebuilt kmover (default: cargo build --release)
#
# Prints a markdown table (also saved to $KMOVER_BENCH_DIR/results.md). Exits non-zero when a
# command fails, not when kmover is slower.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILES="${KMOVER_BENCH_FILES:-200000}"
WORK="${KMOVER_BENCH_DIR:-/tmp/kmover-maintenance-bench}"
KOPIA="${KMOVER_BENCH_KOPIA:-$HOME/.cache/kmover-tools/kopia-0.22.3/kopia}"
export KOPIA_PASSWORD="bench-password" KOPIA_CHECK_FOR_UPDATES=false

[ -x "$KOPIA" ] || { echo "kopia not found at $KOPIA (scripts/install-tools.sh)" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "GNU time (/usr/bin/time) is needed for peak RSS" >&2; exit 1; }
if [ -n "${KMOVER_BENCH_KMOVER:-}" ]; then
    KMOVER="$KMOVER_BENCH_KMOVER"
else
    (cd "$ROOT" && cargo build --release --quiet --bin kmover)
    KMOVER="$ROOT/target/release/kmover"
fi

rm -rf "$WORK"
mkdir -p "$WORK/data"
kopia() { "$KOPIA" --config-file "$WORK/kopia.config" --log-dir "$WORK/kopia-logs" "$@"; }
kopia_b() { "$KOPIA" --config-file "$WORK/kopia-b.config" --log-dir "$WORK/kopia-logs" "$@"; }
kmover() { "$KMOVER" --config-file "$WORK/kmover.config" "$@"; }

# Small files from a seeded stream: unique contents, deterministic across runs.
make_small_files() { # $1 = first index, $2 = count
    python3 - "$WORK/data" "$1" "$2" <<'EOF'
import os, sys, hashlib
root, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(first, first + count):
    d = os.path.join(root, "small", f"d{i // 1000:05d}")
    os.makedirs(d, exist_ok=True)
    seed = hashlib.sha256(str(i).encode()).digest()
    with open(os.path.join(d, f"f{i:07d}"), "wb") as f:
        f.write(seed * (1 + i % 8))
EOF
}
big_file() { head -c "$2" /dev/urandom > "$WORK/data/$1"; }

echo "== writing the repository with kopia ($FILES small files per snapshot)" >&2
make_small_files 0 "$FILES"
big_file big-1.bin $((24 << 20))
big_file big-2.bin $((12 << 20))
kopia repository create filesystem --path "$WORK/repo" --cache-directory "$WORK/kopia-cache" \
    --no-auto-maintenance >/dev/null
snap() { kopia --no-auto-maintenance snapshot create "$WORK/data" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
S1=$(snap)
rm -rf "$WORK/data/small/d0000"* && make_small_files "$FILES" $((FILES / 3))
rm "$WORK/data/big-1.bin" && big_file big-3.bin $((20 << 20))
S2=$(snap)
rm -rf "$WORK/data/small/d0001"* && make_small_files $((FILES * 2)) $((FILES / 3))
snap >/dev/null
kopia --no-auto-maintenance snapshot delete "$S1" --delete >/dev/null
kopia --no-auto-maintenance snapshot delete "$S2" --delete >/dev/null
cp -a "$WORK/repo" "$WORK/repo-kopia"
mv "$WORK/repo" "$WORK/repo-kmover"
kmover repository connect filesystem --path "$WORK/repo-kmover" >/dev/null 2>&1
kopia_b repository connect filesystem --path "$WORK/repo-kopia" --cache-directory "$WORK/kopia-b-cache" >/dev/null

measure() { # $1 = label, rest = command (a binary, not a function); sets SECS and PEAK_KIB
    local label=$1; shift
    if ! /usr/bin/time -f '%e %M' -o "$WORK/$label.time" "$@" >"$WORK/$label.out" 2>"$WORK/$label.err"; then
        echo "$label failed:" >&2; tail -20 "$WORK/$label.err" >&2; exit 1
    fi
    read -r SECS PEAK_KIB <"$WORK/$label.time"
}
footprint() { # $1 = repository directory; prints "bytes packs indexes"
    python3 - "$1" <<'EOF'
import os, sys
root = sys.argv[1]
size = packs = indexes = 0
for d, _, files in os.walk(root):
    rel = os.path.relpath(d, root).replace(os.sep, "")
    for f in files:
        blob = (rel if rel != "." else "") + f
        if blob.startswith("_"):
            continue  # kopia's diagnostic logs
        size += os.path.getsize(os.path.join(d, f))
        packs += blob[:1] in "pq"
        indexes += blob[:2] in ("xn", "xs", "xr")
print(size, packs, indexes)
EOF
}

read -r before_bytes before_packs before_indexes <<<"$(footprint "$WORK/repo-kmover")"
echo "== full maintenance (safety none)" >&2
measure kmover "$KMOVER" --config-file "$WORK/kmover.config" maintenance run --full --safety=none
k_secs=$SECS k_kib=$PEAK_KIB
measure kopia "$KOPIA" --config-file "$WORK/kopia-b.config" --log-dir "$WORK/kopia-logs" \
    maintenance run --full --safety=none
o_secs=$SECS o_kib=$PEAK_KIB
read -r k_bytes k_packs k_indexes <<<"$(footprint "$WORK/repo-kmover")"
read -r o_bytes o_packs o_indexes <<<"$(footprint "$WORK/repo-kopia")"

echo "== kopia verifies kmover's result" >&2
"$KOPIA" --config-file "$WORK/kopia-v.config" --log-dir "$WORK/kopia-logs" repository connect filesystem \
    --path "$WORK/repo-kmover" --cache-directory "$WORK/kopia-v-cache" >/dev/null
"$KOPIA" --config-file "$WORK/kopia-v.config" --log-dir "$WORK/kopia-logs" snapshot verify >/dev/null
"$KOPIA" --config-file "$WORK/kopia-v.config" --log-dir "$WORK/kopia-logs" content verify >/dev/null

mib() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
{
    echo "Full maintenance of a kopia repository ($FILES small files per snapshot, 2 of 3 snapshots deleted; before: $(mib "$before_bytes") MiB, $before_packs packs, $before_indexes index blobs)"
    echo
    echo "| tool | wall s | peak RSS MiB | MiB left | packs left | index blobs left |"
    echo "|---|---:|---:|---:|---:|---:|"
    echo "| kopia 0.22.3 | $o_secs | $(mib $((o_kib * 1024))) | $(mib "$o_bytes") | $o_packs | $o_indexes |"
    echo "| kmover | $k_secs | $(mib $((k_kib * 1024))) | $(mib "$k_bytes") | $k_packs | $k_indexes |"
} | tee "$WORK/results.md"
