#!/bin/sh
# Builds the kmover container image (Dockerfile, target `kmover`, and `kmover-shell`) from a
# locally built static binary with Debian's buildah (vfs storage, chroot isolation: no daemon,
# no base image to pull), reports its size, then runs its entrypoint with a simulated VolSync
# job layout: a backup, then a restore, compared with the source tree.
#
# Usage:
#   scripts/build-image.sh                 build, report, smoke-test
#   scripts/build-image.sh --no-smoke      build and report only
#   scripts/build-image.sh --stage-rootfs BINARY BUSYBOX OUT
#                                          lay out the image's files (used by the Dockerfile too)
#
# Environment:
#   CI=true          a missing buildah (that cannot be installed) fails instead of skipping
#   KMOVER_IMAGE     image name (default localhost/kmover:dev)
#
# POSIX sh on purpose: the Dockerfile's Alpine builder stage runs --stage-rootfs without bash.
set -eu

SHELL_APPLETS="sh ash cat cp date echo env false find grep head kill ls mkdir mv printf rm sed \
sleep sort sync tail test timeout touch tr true wc"

in_ci() { [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; }

warn_banner() {
    line="!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    printf '%s\n!! %s\n%s\n' "$line" "$*" "$line" >&2
}

# stage_rootfs BINARY BUSYBOX OUT: OUT/rootfs is the scratch image's tree, OUT/shell the
# busybox layer of kmover-shell. Timestamps are pinned for reproducible layers.
stage_rootfs() {
    binary=$1 busybox=$2 out=$3
    rm -rf "$out/rootfs" "$out/shell"
    rootfs=$out/rootfs
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/mover-kopia" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
    cp "$binary" "$rootfs/usr/local/bin/kmover"
    chmod 0755 "$rootfs/usr/local/bin/kmover"
    ln -s /usr/local/bin/kmover "$rootfs/mover-kopia/entry.sh"
    ln -s kmover "$rootfs/usr/local/bin/kopia"
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    chmod 0644 "$rootfs/etc/ssl/certs/ca-certificates.crt"
    printf 'root:x:0:0:root:/:/sbin/nologin\nkmover:x:65532:65532:kmover:/:/sbin/nologin\n' \
        >"$rootfs/etc/passwd"
    printf 'root:x:0:\nkmover:x:65532:\n' >"$rootfs/etc/group"
    chmod 1777 "$rootfs/tmp"
    mkdir -p "$out/shell/bin"
    cp "$busybox" "$out/shell/bin/busybox"
    chmod 0755 "$out/shell/bin/busybox"
    for applet in $SHELL_APPLETS; do
        ln -s busybox "$out/shell/bin/$applet"
    done
    find "$out/rootfs" "$out/shell" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +
}

if [ "${1:-}" = "--stage-rootfs" ]; then
    [ $# -eq 4 ] || { echo "usage: $0 --stage-rootfs BINARY BUSYBOX OUT" >&2; exit 2; }
    stage_rootfs "$2" "$3" "$4"
    exit 0
fi

SMOKE=1
[ "${1:-}" = "--no-smoke" ] && SMOKE=0

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
IMAGE=${KMOVER_IMAGE:-localhost/kmover:dev}
TARGET_TRIPLE=x86_64-unknown-linux-musl

# Debian's packages provide buildah, the static busybox and musl-gcc (aws-lc's C code).
ensure_tools() {
    missing=""
    command -v buildah >/dev/null 2>&1 || missing="$missing buildah"
    [ -x /bin/busybox ] || missing="$missing busybox-static"
    command -v musl-gcc >/dev/null 2>&1 || missing="$missing musl-tools"
    # Not for the image: the mover tests use them (cronjob scripts, the syncfs check).
    command -v jq >/dev/null 2>&1 || missing="$missing jq"
    command -v strace >/dev/null 2>&1 || missing="$missing strace"
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "Installing:$missing"
        # shellcheck disable=SC2086 # word splitting wanted
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null; then
            echo "apt-get could not install:$missing" >&2
        fi
    fi
    command -v buildah >/dev/null 2>&1 && [ -x /bin/busybox ] && command -v musl-gcc >/dev/null 2>&1
}

if ! ensure_tools; then
    if in_ci; then
        echo "buildah, busybox-static or musl-tools is missing and could not be installed (CI=true: failing)" >&2
        exit 1
    fi
    warn_banner "SKIPPING the image build: buildah, busybox-static or musl-tools is missing (apt-get install buildah busybox-static musl-tools)"
    exit 0
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET_TRIPLE"; then
    rustup target add "$TARGET_TRIPLE"
fi

echo "==> static binary (cargo build --profile image --target $TARGET_TRIPLE)"
SOURCE_DATE_EPOCH=0 CARGO_INCREMENTAL=0 CC_x86_64_unknown_linux_musl=musl-gcc \
    RUSTFLAGS="--remap-path-prefix=$ROOT=/kmover --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo" \
    cargo build --locked --profile image --target "$TARGET_TRIPLE" --bin kmover
BINARY=target/$TARGET_TRIPLE/image/kmover

CONTEXT=target/image-context
rm -rf "$CONTEXT"
mkdir -p "$CONTEXT/dist"
stage_rootfs "$BINARY" /bin/busybox "$CONTEXT/dist"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/kmover-buildah.XXXXXX")
cleanup() { buildah_ rm --all >/dev/null 2>&1 || true; rm -rf "$WORK"; }
buildah_() { buildah --storage-driver vfs --root "$WORK/storage" --runroot "$WORK/run" "$@"; }
trap cleanup EXIT INT TERM

for target in kmover kmover-shell; do
    tag=$IMAGE
    [ "$target" = kmover-shell ] && tag="${IMAGE%:*}-shell:${IMAGE##*:}"
    echo "==> buildah bud --target $target -t $tag"
    buildah_ bud --quiet --isolation chroot --layers=false \
        --build-arg KMOVER_DIST=dist-context --target "$target" \
        -f "$ROOT/Dockerfile" -t "$tag" "$CONTEXT" >/dev/null
    size=$(buildah_ images --format '{{.Size}}' "$tag")
    echo "image $tag: $size (binary $(du -h "$BINARY" | cut -f1))"
done

[ "$SMOKE" = 1 ] || exit 0

echo "==> smoke test: entrypoint with a simulated job layout"
JOB=$WORK/job
mkdir -p "$JOB/data/docs" "$JOB/cache" "$JOB/tmp" "$JOB/repo" "$JOB/restore/data" "$JOB/dst-cache"
printf 'hello from the smoke test\n' >"$JOB/data/hello.txt"
head -c 3000000 /dev/urandom >"$JOB/data/docs/random.bin"
ln -s ../hello.txt "$JOB/data/docs/link"
chown -R 65532:65532 "$JOB/cache" "$JOB/tmp" "$JOB/repo" "$JOB/restore" "$JOB/dst-cache"
ctr=$(buildah_ from "$IMAGE")
common_env="--env KOPIA_PASSWORD=smoke-test --env KOPIA_CACHE_DIR=/cache \
 --env KOPIA_OVERRIDE_USERNAME=app --env KOPIA_OVERRIDE_HOSTNAME=ns1 \
 --env KOPIA_REPOSITORY=filesystem:///mnt/repo --env KOPIA_CACHE_CAPACITY_BYTES=1073741824"
# shellcheck disable=SC2086
buildah_ run --isolation chroot $common_env --env DATA_DIR=/data \
    -v "$JOB/data:/data:ro" -v "$JOB/cache:/cache" -v "$JOB/tmp:/tmp" -v "$JOB/repo:/mnt/repo" \
    "$ctr" -- /mover-kopia/entry.sh backup >"$WORK/backup.log" 2>&1 \
    || { cat "$WORK/backup.log"; echo "smoke backup FAILED" >&2; exit 1; }
tail -n 5 "$WORK/backup.log"
# shellcheck disable=SC2086
buildah_ run --isolation chroot $common_env --env DATA_DIR=/restore/data \
    --env KOPIA_DISCOVER_SNAPSHOTS=true \
    -v "$JOB/restore:/restore" -v "$JOB/restore/data:/restore/data" -v "$JOB/dst-cache:/cache" \
    -v "$JOB/tmp:/tmp" -v "$JOB/repo:/mnt/repo" \
    "$ctr" -- /mover-kopia/entry.sh restore >"$WORK/restore.log" 2>&1 \
    || { cat "$WORK/restore.log"; echo "smoke restore FAILED" >&2; exit 1; }
tail -n 5 "$WORK/restore.log"
if ! diff -r --no-dereference "$JOB/data" "$JOB/restore/data"; then
    echo "smoke test FAILED: the restored tree differs from the source" >&2
    exit 1
fi
# The kopia personality of the same image lists the snapshot.
# shellcheck disable=SC2086
buildah_ run --isolation chroot --env KOPIA_PASSWORD=smoke-test -v "$JOB/repo:/mnt/repo" \
    -v "$JOB/tmp:/tmp" "$ctr" -- kopia --config-file=/tmp/repository.config \
    repository connect filesystem --path=/mnt/repo >/dev/null 2>&1
buildah_ run --isolation chroot --env KOPIA_PASSWORD=smoke-test -v "$JOB/repo:/mnt/repo" \
    -v "$JOB/tmp:/tmp" "$ctr" -- kopia --config-file=/tmp/repository.config \
    snapshot list --all | grep -q 'app@ns1:/data' \
    || { echo "smoke test FAILED: kopia mode did not list app@ns1:/data" >&2; exit 1; }
echo "smoke test passed: backup and restore through the image's entrypoint reproduce the tree"
