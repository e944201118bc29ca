#!/usr/bin/env bash
# The main job, end to end: kmover creates a filesystem repository in a temporary directory, backs
# up a sample folder into it, lists the snapshot, verifies it, restores it and compares the result
# with the original. `KMOVER_DEMO_KEEP=1` keeps the files; `KMOVER_DEMO_SOURCE=DIR` backs up DIR.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KMOVER="$ROOT/target/release/kmover"
export KOPIA_PASSWORD="${KOPIA_PASSWORD:-kmover-demo-password}"
unset KOPIA_CONFIG_PATH KOPIA_CACHE_DIRECTORY

say() { printf '\n==> %s\n' "$*"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kmover-demo.XXXXXX")"
cleanup() {
    if [[ "${KMOVER_DEMO_KEEP:-}" == "1" ]]; then echo "Kept the demo's files in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

SAMPLE="${KMOVER_DEMO_SOURCE:-$WORK/sample}"
REPO="$WORK/repository"
RESTORED="$WORK/restored"
kmover() { "$KMOVER" --config-file "$WORK/kmover.config" --cache-directory "$WORK/cache" "$@"; }

say "Building kmover (release)"
cargo build --release --locked --bin kmover --manifest-path "$ROOT/Cargo.toml"

if [[ -z "${KMOVER_DEMO_SOURCE:-}" ]]; then
    say "Making a sample folder: $SAMPLE"
    mkdir -p "$SAMPLE/docs/nested" "$SAMPLE/data" "$SAMPLE/empty-dir"
    for i in $(seq 1 2000); do echo "line $i: kmover reads and writes kopia repositories"; done >"$SAMPLE/notes.txt"
    printf 'hello from the kmover demo\n' >"$SAMPLE/hello.txt"
    head -c 12000000 /dev/urandom >"$SAMPLE/data/random.bin"
    : >"$SAMPLE/empty.txt"
    cp -p "$SAMPLE/notes.txt" "$SAMPLE/docs/nested/copy of notes.txt"
    ln -s ../hello.txt "$SAMPLE/docs/link-to-hello"
    chmod 600 "$SAMPLE/hello.txt"
fi

say "kmover repository create filesystem --path $REPO"
kmover repository create filesystem --path "$REPO"

say "kmover snapshot create $SAMPLE"
kmover snapshot create "$SAMPLE"

say "kmover snapshot list"
kmover snapshot list --manifest-id

say "kmover snapshot verify --verify-files-percent=100"
kmover snapshot verify --verify-files-percent=100

say "kmover snapshot restore $SAMPLE $RESTORED"
kmover snapshot restore "$SAMPLE" "$RESTORED"

say "Comparing the restored folder with the original"
diff -r --no-dereference "$SAMPLE" "$RESTORED"
echo "    identical: $(find "$RESTORED" | wc -l) entries"
say "Done: backed up and restored through a Kopia-format repository"
