#!/usr/bin/env bash
# Runs the whole test suite: installs what the tests need if it is missing,
# then formatting, lints, all tests (including the kopia interop tests) and a
# short fuzzing smoke run.
#
# Works on a fresh machine that has only Go and Rust (rustup). Tools are cached
# outside the checkout, in ~/.cache/kmover-tools (override: KMOVER_TOOLS_DIR).
#
# Environment:
#   CI=true                 a missing kopia or MinIO fails the interop tests instead of skipping them
#   KMOVER_FUZZ_SECONDS=N   how long each fuzz target runs (default 20)
#   KMOVER_SKIP_FUZZ=1      skip the fuzzing smoke run (for quick local runs)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export KMOVER_TOOLS_DIR="${KMOVER_TOOLS_DIR:-$HOME/.cache/kmover-tools}"
FUZZ_SECONDS="${KMOVER_FUZZ_SECONDS:-20}"
FUZZ_TOOLCHAIN="${KMOVER_FUZZ_TOOLCHAIN:-nightly}"
CARGO_FUZZ_VERSION=0.13.2 # keep in step with scripts/install-tools.sh

SUITE_START=$SECONDS

step() {
    printf '\n==> %s  [%s elapsed, %s free on the build disk]\n' "$*" \
        "$(elapsed $((SECONDS - SUITE_START)))" "$(df -h --output=avail . | tail -1 | tr -d ' ')"
}

elapsed() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

warn_banner() {
    local line
    line="$(printf '!%.0s' {1..78})"
    printf '%s\n!! %s\n%s\n' "$line" "$*" "$line" >&2
}

in_ci() { [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; }

check_rust() {
    command -v cargo >/dev/null || { echo "cargo not found: install Rust with rustup" >&2; exit 1; }
    # rustfmt and clippy come with rustup's default profile, but not the minimal one.
    local component missing=()
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            missing+=("$component")
        fi
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        step "Installing Rust components: ${missing[*]}"
        rustup component add "${missing[@]}"
    fi
}

install_kopia() {
    step "Tools: kopia (built once, cached in $KMOVER_TOOLS_DIR)"
    "$ROOT/scripts/install-tools.sh" kopia
}

# MinIO serves the S3 storage tests (crates/blob/tests/s3_minio.rs,
# tests/interop_s3.rs).
install_minio() {
    step "Tools: MinIO (built once, cached in $KMOVER_TOOLS_DIR)"
    "$ROOT/scripts/install-tools.sh" minio
}

run_fmt() {
    step "cargo fmt --check"
    cargo fmt --all --check
    if [[ -f fuzz/Cargo.toml ]]; then
        cargo fmt --manifest-path fuzz/Cargo.toml --all --check
    fi
}

run_clippy() {
    step "cargo clippy --workspace --all-targets (without and with kmover/testing) -- -D warnings"
    cargo clippy --workspace --all-targets --locked -- -D warnings
    # The `testing` feature (fake clock shared with kopia -tags testing) is what the tests use.
    cargo clippy --workspace --all-targets --locked --features kmover/testing -- -D warnings
}

run_tests() {
    step "cargo test --workspace --features kmover/testing"
    cargo test --workspace --locked --no-fail-fast --features kmover/testing
}

# The container image: built with buildah from a static binary, then its entrypoint backs up
# and restores a simulated VolSync job (also installs jq and strace for the mover tests).
run_image_build() {
    step "Container image (scripts/build-image.sh)"
    "$ROOT/scripts/build-image.sh"
}

# Makes nightly and cargo-fuzz available; returns non-zero (after saying why)
# when that is impossible here.
prepare_fuzzing() {
    if ! rustup run "$FUZZ_TOOLCHAIN" rustc --version >/dev/null 2>&1; then
        echo "Installing the $FUZZ_TOOLCHAIN toolchain (cargo fuzz needs it)"
        if ! rustup toolchain install "$FUZZ_TOOLCHAIN" --profile minimal; then
            echo "could not install the $FUZZ_TOOLCHAIN Rust toolchain"
            return 1
        fi
    fi
    if ! "$ROOT/scripts/install-tools.sh" cargo-fuzz; then
        echo "could not install cargo-fuzz $CARGO_FUZZ_VERSION"
        return 1
    fi
    export PATH="$KMOVER_TOOLS_DIR/cargo-fuzz-$CARGO_FUZZ_VERSION/bin:$PATH"
}

# Builds every fuzz target and runs each for FUZZ_SECONDS. A local
# fuzz/corpus/TARGET only seeds the run: new inputs go to a scratch directory, so the
# checkout is not modified. Crashes are written to fuzz/artifacts/.
run_fuzz_smoke() {
    step "Fuzzing smoke run (${FUZZ_SECONDS}s per target)"
    if [[ "${KMOVER_SKIP_FUZZ:-}" == "1" ]]; then
        echo "skipped: KMOVER_SKIP_FUZZ=1"
        return 0
    fi
    if [[ ! -f fuzz/Cargo.toml ]]; then
        echo "skipped: there is no fuzz/Cargo.toml yet"
        return 0
    fi

    if ! prepare_fuzzing; then
        # Toolchain availability is a property of the machine, not of the code:
        # warn loudly (also under CI) but still make sure the targets compile.
        warn_banner "fuzzing skipped (see above); checking that the fuzz targets compile on stable instead"
        cargo check --manifest-path fuzz/Cargo.toml --bins
        return 0
    fi

    local targets
    targets="$(cargo "+$FUZZ_TOOLCHAIN" fuzz list)"
    if [[ -z "$targets" ]]; then
        echo "skipped: fuzz/ defines no targets"
        return 0
    fi
    cargo "+$FUZZ_TOOLCHAIN" fuzz build

    local target scratch seeds
    for target in $targets; do
        scratch="$(mktemp -d)"
        seeds=()
        [[ -d "fuzz/corpus/$target" ]] && seeds=("fuzz/corpus/$target")
        # Inputs that once crashed a target: every target replays them all first.
        [[ -d fuzz/regressions ]] && seeds+=("fuzz/regressions")
        echo "--- fuzz $target"
        if ! cargo "+$FUZZ_TOOLCHAIN" fuzz run "$target" "$scratch" "${seeds[@]}" -- \
            -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -print_final_stats=1; then
            rm -rf "$scratch"
            echo "fuzz target $target FAILED; the crashing input is under fuzz/artifacts/$target/" >&2
            return 1
        fi
        rm -rf "$scratch"
    done
}

main() {
    if in_ci; then
        echo "CI=true: missing test tools fail the suite instead of being skipped"
        # A one-off build gains nothing from incremental caches, which cost gigabytes of disk.
        export CARGO_INCREMENTAL=0
    fi
    check_rust
    install_kopia
    install_minio
    run_fmt
    run_clippy
    run_image_build
    run_tests
    run_fuzz_smoke
    step "All checks passed"
}

# Sourcing the script (to call one step by hand) does not run the suite.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
