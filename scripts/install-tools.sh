#!/usr/bin/env bash
# Installs the external programs the test suite needs into a cache OUTSIDE the
# checkout (default ~/.cache/kmover-tools, override with KMOVER_TOOLS_DIR).
#
# Idempotent: a tool whose binary exists and reports the expected version is
# left alone. Every build goes to a temporary path that is renamed into place,
# so an interrupted build never leaves a broken binary behind.
#
# Usage: scripts/install-tools.sh [TOOL...]   (no TOOL: kopia)
#   kopia              every kopia build the tests use
#   kopia-VERSION      one kopia release, e.g. kopia-0.22.3 or kopia-0.22.3-testing
#   cargo-fuzz         the fuzzing driver
#   minio              the S3 server the S3 storage tests run against
set -euo pipefail

TOOLS_DIR="${KMOVER_TOOLS_DIR:-$HOME/.cache/kmover-tools}"

# The oracle version first: the interop tests need it most.
KOPIA_VERSIONS=(0.22.3 0.21.1 0.23.1)
# Built with `-tags testing`, which enables kopia's fast (insecure) key
# derivation and its fake clock for tests.
KOPIA_TESTING_VERSIONS=(0.22.3)

log() { printf '[install-tools] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' is required but not installed ($2)"
}

# Prints the value of a string field from `go mod download -json` output.
json_field() {
    local json="$1" field="$2"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import json,sys; d=json.load(sys.stdin); v=d
for k in sys.argv[1].split("."): v=(v or {}).get(k)
print(v or "")' "$field" <<<"$json"
    else
        # go's JSON is one key per line; good enough for the flat keys we need.
        sed -n "s/^[[:space:]]*\"${field##*.}\": \"\(.*\)\",\{0,1\}$/\1/p" <<<"$json" | head -n1
    fi
}

# True when $1 is an executable whose `--version` starts with version $2.
has_version() {
    local bin="$1" version="$2" out
    [[ -x "$bin" ]] || return 1
    out="$("$bin" --version 2>/dev/null)" || return 1
    [[ "$out" == "$version "* || "$out" == "v$version "* ]]
}

# install_kopia VERSION [TAGS]
#
# `go install github.com/kopia/kopia@vX` cannot be used: it consults the
# module's version list, which the Go proxy refuses for kopia (HTTP 403).
# Downloading the exact module version and building inside it works.
install_kopia() {
    local version="$1" tags="${2:-}"
    local name="kopia-$version${tags:+-$tags}"
    local dest="$TOOLS_DIR/$name/kopia"

    if has_version "$dest" "$version"; then
        log "$name: present ($dest)"
        return 0
    fi
    require go "install Go from https://go.dev/dl/"

    log "$name: downloading github.com/kopia/kopia@v$version"
    local scratch json module_dir commit
    scratch="$(mktemp -d)"
    # A throwaway module dir, so `go mod download` never touches a go.mod of ours.
    json="$(cd "$scratch" && GOFLAGS=-mod=mod go mod download -json "github.com/kopia/kopia@v$version")" ||
        die "$name: go mod download failed"
    rmdir "$scratch"
    module_dir="$(json_field "$json" Dir)"
    commit="$(json_field "$json" Origin.Hash)"
    [[ -d "$module_dir" ]] || die "$name: module directory missing in: $json"

    log "$name: building (takes a few minutes)"
    mkdir -p "$TOOLS_DIR/$name"
    local tmp_bin="$TOOLS_DIR/$name/.kopia.partial.$$"
    trap "rm -f '$tmp_bin'" EXIT
    # The same version stamps as the official release builds, so `--version`
    # and the repository's format blob (buildVersion/buildInfo) match them.
    local ldflags="-s -w -X github.com/kopia/kopia/repo.BuildVersion=$version"
    ldflags+=" -X github.com/kopia/kopia/repo.BuildInfo=${commit:-unknown}"
    ldflags+=" -X github.com/kopia/kopia/repo.BuildGitHubRepo=kopia/kopia"
    (
        cd "$module_dir"
        GOFLAGS="-buildvcs=false -trimpath" go build ${tags:+-tags "$tags"} \
            -ldflags "$ldflags" -o "$tmp_bin" .
    ) || die "$name: go build failed"

    has_version "$tmp_bin" "$version" || die "$name: built binary does not report version $version"
    mv -f "$tmp_bin" "$dest"
    trap - EXIT
    log "$name: installed $dest"
}

install_all_kopia() {
    local v
    for v in "${KOPIA_VERSIONS[@]}"; do
        install_kopia "$v"
    done
    for v in "${KOPIA_TESTING_VERSIONS[@]}"; do
        install_kopia "$v" testing
    done
}

CARGO_FUZZ_VERSION=0.13.2

# cargo-fuzz, from crates.io, into its own root so it stays out of ~/.cargo.
# Callers put "$TOOLS_DIR/cargo-fuzz-$CARGO_FUZZ_VERSION/bin" on PATH.
install_cargo_fuzz() {
    local root="$TOOLS_DIR/cargo-fuzz-$CARGO_FUZZ_VERSION"
    local dest="$root/bin/cargo-fuzz"
    if [[ -x "$dest" ]] && "$dest" fuzz --version >/dev/null 2>&1; then
        log "cargo-fuzz-$CARGO_FUZZ_VERSION: present ($dest)"
        return 0
    fi
    require cargo "install Rust with rustup from https://rustup.rs"
    log "cargo-fuzz-$CARGO_FUZZ_VERSION: building from crates.io"
    # Install into a scratch root, then move it into place in one rename.
    local partial="$root.partial.$$"
    trap "rm -rf '$partial'" EXIT
    cargo install --quiet --locked --version "$CARGO_FUZZ_VERSION" --root "$partial" cargo-fuzz ||
        die "cargo-fuzz: cargo install failed"
    rm -rf "$root"
    mv "$partial" "$root"
    trap - EXIT
    log "cargo-fuzz-$CARGO_FUZZ_VERSION: installed $dest"
}

# MinIO (S3-compatible server) for the S3 storage tests (tests/common/minio.rs
# finds it at $TOOLS_DIR/minio-$MINIO_VERSION/minio, or at $KMOVER_MINIO).
# Built from source like kopia: `go install` would need the module's version
# list, which the proxy refuses, and MinIO publishes no tagged Go module
# versions, so the pin is a pseudo-version. Overriding it with
# KMOVER_MINIO_VERSION also needs KMOVER_MINIO pointed at the result for the
# tests. The build takes about 3 minutes on 2 cores.
MINIO_VERSION="${KMOVER_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

install_minio() {
    local version="$MINIO_VERSION"
    local dest="$TOOLS_DIR/minio-$version/minio"
    if [[ -x "$dest" ]] && "$dest" --version >/dev/null 2>&1; then
        log "minio-$version: present ($dest)"
        return 0
    fi
    require go "install Go from https://go.dev/dl/"

    log "minio-$version: downloading github.com/minio/minio@$version"
    local scratch json module_dir
    scratch="$(mktemp -d)"
    json="$(cd "$scratch" && GOFLAGS=-mod=mod go mod download -json "github.com/minio/minio@$version")" ||
        die "minio: go mod download failed"
    rmdir "$scratch"
    module_dir="$(json_field "$json" Dir)"
    [[ -d "$module_dir" ]] || die "minio: module directory missing in: $json"

    log "minio-$version: building (takes several minutes)"
    mkdir -p "$TOOLS_DIR/minio-$version"
    local tmp_bin="$TOOLS_DIR/minio-$version/.minio.partial.$$"
    trap "rm -f '$tmp_bin'" EXIT
    (cd "$module_dir" && GOFLAGS="-buildvcs=false -trimpath" go build -o "$tmp_bin" .) ||
        die "minio: go build failed"
    "$tmp_bin" --version >/dev/null 2>&1 || die "minio: built binary does not run"
    mv -f "$tmp_bin" "$dest"
    trap - EXIT
    log "minio-$version: installed $dest"
}

main() {
    mkdir -p "$TOOLS_DIR"
    # Serialise concurrent runs (two test.sh at once would build twice).
    if command -v flock >/dev/null 2>&1; then
        exec 9>"$TOOLS_DIR/.install.lock"
        flock 9
    fi
    local wanted=("$@")
    [[ ${#wanted[@]} -gt 0 ]] || wanted=(kopia)
    local tool
    for tool in "${wanted[@]}"; do
        case "$tool" in
        kopia) install_all_kopia ;;
        kopia-*-testing)
            tool="${tool#kopia-}"
            install_kopia "${tool%-testing}" testing
            ;;
        kopia-*) install_kopia "${tool#kopia-}" ;;
        cargo-fuzz) install_cargo_fuzz ;;
        minio) install_minio ;;
        *) die "unknown tool '$tool' (known: kopia, kopia-VERSION, cargo-fuzz, minio)" ;;
        esac
    done
}

main "$@"
