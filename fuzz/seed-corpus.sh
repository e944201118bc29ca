#!/usr/bin/env bash
# Seeds fuzz/corpus/<target>/ from the committed test data in crates/format/tests/data (kopia's
# own blobs and vectors), reshaped into each target's input layout. Corpora are not committed;
# run this before fuzzing. Existing corpus files are kept.
#
# Usage: fuzz/seed-corpus.sh [target...]   (default: every target)
# Needs jq to split the multi-document JSON probe files (skipped with a warning without it).
set -euo pipefail

FUZZ="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DATA="$FUZZ/../crates/format/tests/data"
KOPIA="$DATA/kopia-0.22.3"
CORPUS="$FUZZ/corpus"
ALL_TARGETS=(ids format_blob decrypt decompress s2 index pack indirect dir_manifest
    snapshot_manifest manifest_content)

have_jq() { command -v jq >/dev/null; }

# put TARGET NAME: stdin becomes one seed.
put() {
    mkdir -p "$CORPUS/$1"
    cat >"$CORPUS/$1/seed-$2"
}

byte() { printf "\\x$(printf %02x "$1")"; }

# probes KIND TARGET: every input of that kind from kopia's decode probes.
probes() {
    local kind=$1 target=$2 i=0
    if ! have_jq; then
        echo "warning: jq not found, decode probes not seeded for $target" >&2
        return 0
    fi
    while IFS= read -r -d '' input; do
        printf '%s' "$input" | put "$target" "probe-$kind-$i"
        i=$((i + 1))
    done < <(jq -j --arg k "$kind" '.[] | select(.kind == $k) | .input, "\u0000"' \
        "$DATA/snapshot/decode_probes.json")
}

seed_ids() {
    local i=0 id f
    while IFS= read -r id; do
        printf '%s' "$id" | put ids "object-id-$i"
        i=$((i + 1))
    done < <(sed -n 's/^"\([^"]*\)".*/\1/p' "$DATA/snapshot/object_ids.txt")
    for f in "$KOPIA"/*/*; do
        printf '%s' "$(basename "$f")" | put ids "blob-$(basename "$(dirname "$f")")-$(basename "$f")"
    done
    # Epoch-manager names, a listing with a two-blob set, times and modes.
    printf 'xr0_6_c31735d50feccb6f8569f2321160cfc9-s0011223344556677-c2' | put ids range
    printf 'xw1700000000' | put ids watermark
    printf 'xe7\nxn7_a-s1-c2\nxn7_b-s1-c2\nxs7_c\nxr0_6_d\nxr7_9_e' | put ids listing
    printf '2024-05-01T10:00:02.123456789+02:00' | put ids time
    printf '0o4755' | put ids mode
}

seed_format_blob() {
    local f
    for f in "$KOPIA"/*/kopia.repository; do
        put format_blob "$(basename "$(dirname "$f")")-repository" <"$f"
    done
    # Decrypted documents (shapes from spec §2.4, §2.7, §12, §15.1).
    printf '%s' '{"format":{"hash":"BLAKE2B-256-128","encryption":"AES256-GCM-HMAC-SHA256","ecc":"","secret":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","masterKey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","version":2,"maxPackSize":20971520,"indexVersion":2,"epochParameters":{"Enabled":true,"EpochRefreshFrequency":1200000000000,"FullCheckpointFrequency":7,"CleanupSafetyMargin":3600000000000,"MinEpochDuration":86400000000000,"EpochAdvanceOnCountThreshold":20,"EpochAdvanceOnTotalSizeBytesThreshold":10485760,"DeleteParallelism":4},"enablePasswordChange":true,"splitter":"DYNAMIC-4M-BUZHASH","requiredFeatures":[{"feature":"index-v2","ifNotUnderstood":{"warn":true,"message":"m"}}]}}' |
        put format_blob config
    printf '%s' '{"retentionMode":"GOVERNANCE","retentionPeriod":86400000000000}' | put format_blob blobcfg
    printf '%s' '{"nextFullMaintenance":"2026-01-02T03:04:05Z","nextQuickMaintenance":"2026-01-01T04:04:05.5+01:00","runs":{"snapshot-gc":[{"start":"2026-01-01T03:04:05Z","end":"2026-01-01T03:04:06Z","success":true,"extra":[{"kind":"k","data":{}}]}]},"schedule":{}}' |
        put format_blob maintenance
    printf '%s' '{"id":"s0123456789abcdef13c","startTime":"2026-01-01T00:00:00Z","checkpointTime":"2026-01-01T00:00:01.25Z","username":"user","hostname":"host"}' |
        put format_blob session
}

seed_decrypt() {
    local f name repo
    for f in "$KOPIA"/*/*; do
        name="$(basename "$f")"
        repo="$(basename "$(dirname "$f")")"
        case "$name" in
        kopia.repository) continue ;;
        kopia.blobcfg) { byte 6; byte 0; cat "$f"; } | put decrypt "$repo-blobcfg" ;;
        kopia.maintenance) { byte 8; byte 0; cat "$f"; } | put decrypt "$repo-maintenance" ;;
        *)
            # Blob crypto with the blob ID, under both algorithms; and as a content with its IV.
            for alg in 0 1; do
                { byte $((2 | alg)); byte "${#name}"; printf '%s' "$name"; cat "$f"; } |
                    put decrypt "$repo-$name-$alg"
            done
            { byte 0; byte 16; head -c 16 /dev/zero; cat "$f"; } | put decrypt "$repo-$name-content"
            ;;
        esac
    done
}

# Selector of a header ID: its position in compression::compressor_names() ("none" is 0).
header_selector() {
    case "$1" in
    00001000) echo 1 ;; 00001001) echo 2 ;; 00001002) echo 3 ;;
    00001100) echo 4 ;; 00001101) echo 5 ;; 00001102) echo 6 ;; 00001103) echo 7 ;;
    00001200) echo 8 ;; 00001201) echo 9 ;; 00001202) echo 10 ;; 00001203) echo 11 ;;
    00001300) echo 12 ;; 00001301) echo 13 ;; 00001302) echo 14 ;;
    00001400) echo 15 ;;
    00001500) echo 16 ;; 00001501) echo 17 ;; 00001502) echo 18 ;;
    *) echo 19 ;;
    esac
}

seed_decompress() {
    local f header
    for f in "$DATA"/compression/*.bin; do
        # Very large seeds only slow the mutator down.
        [[ $(stat -c %s "$f") -le 65536 ]] || continue
        header="$(head -c 4 "$f" | od -An -tx1 | tr -d ' \n')"
        { byte "$(header_selector "$header")"; tail -c +5 "$f"; } | put decompress "$(basename "$f")"
    done
}

seed_s2() {
    local f
    for f in "$DATA"/compression/*s2*.bin; do
        [[ $(stat -c %s "$f") -le 65536 ]] || continue
        tail -c +5 "$f" | put s2 "$(basename "$f")"
    done
}

seed_index() {
    local f
    for f in "$DATA"/index/*.bin; do
        put index "$(basename "$f")" <"$f"
    done
}

seed_pack() {
    local f
    # The format-v1 pack starts with a format-blob replica and ends with a postamble.
    for f in "$KOPIA"/format-v1/q*; do
        put pack "$(basename "$f")" <"$f"
    done
}

seed_json() {
    local target=$1 f
    shift
    for f in "$@"; do
        put "$target" "$(basename "$f")" <"$f"
    done
}

seed_indirect() {
    seed_json indirect "$DATA"/snapshot/indirect_*.json
    probes indirect indirect
}

seed_dir_manifest() {
    seed_json dir_manifest "$DATA"/snapshot/dir_*.json
    probes dir dir_manifest
}

seed_snapshot_manifest() {
    local i=0 payload f
    seed_json snapshot_manifest "$DATA"/snapshot/snapshot_*.json "$DATA"/snapshot/policy_{default,empty,full}.json
    probes snapshot snapshot_manifest
    probes policy snapshot_manifest
    # The payloads stored in a real repository's manifest store.
    if have_jq; then
        for f in "$DATA"/snapshot/manifest_content_*.json; do
            while IFS= read -r payload; do
                printf '%s' "$payload" | put snapshot_manifest "manifest-data-$i"
                i=$((i + 1))
            done < <(jq -c '.entries[] | select(.data != null) | .data' "$f")
        done
    fi
}

seed_manifest_content() {
    seed_json manifest_content "$DATA"/snapshot/manifest_content_*.gz "$DATA"/snapshot/manifest_content_*.json
    # Legacy index manager documents (kopia's blob metadata JSON).
    printf '%s' '{"inputMetadata":[{"id":"n1","length":10,"timestamp":"2020-01-01T00:00:00Z"},{"id":"n2","length":20,"timestamp":"2020-01-01T00:00:01.5Z"}],"outputMetadata":[{"id":"n3","length":25,"timestamp":"2020-01-01T00:00:02Z"}]}' |
        put manifest_content compaction-log
    printf '%s' '{"blobIDs":["m1","m2"],"cleanupScheduleTime":"2020-01-01T00:00:00Z"}' |
        put manifest_content cleanup
}

targets=("$@")
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")
for target in "${targets[@]}"; do
    "seed_$target"
    echo "$target: $(find "$CORPUS/$target" -type f | wc -l) files in fuzz/corpus/$target"
done
