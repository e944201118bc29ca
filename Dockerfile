# kmover container image: a drop-in for the VolSync Kopia mover image and a `kopia` CLI for
# CronJob backups. See docs/volsync.md.
#
# Targets:
#   kmover        (default) scratch: the static binary as /usr/local/bin/kmover,
#                 /mover-kopia/entry.sh and /usr/local/bin/kopia (links to it), CA certificates,
#                 a non-root user. No shell.
#   kmover-shell  the same plus a static busybox (/bin/sh and friends) for snapshot actions
#                 (KOPIA_BEFORE_SNAPSHOT/KOPIA_AFTER_SNAPSHOT) and CronJob scripts.
#
# The binary comes from the `builder` stage (a static musl build), or, with
# `--build-arg KMOVER_DIST=dist-context`, from a prepared `dist/` in the build context
# (scripts/build-image.sh does that: no base image is needed then).

ARG KMOVER_DIST=dist-builder
ARG KMOVER_VERSION=0.1.0

FROM docker.io/library/rust:1.95-alpine AS builder
RUN apk add --no-cache musl-dev cmake make perl clang busybox-static ca-certificates
WORKDIR /src
COPY . .
# Reproducible: no timestamps or paths of this machine in the binary.
ENV SOURCE_DATE_EPOCH=0 \
    CARGO_INCREMENTAL=0 \
    RUSTFLAGS="--remap-path-prefix=/src=/kmover --remap-path-prefix=/usr/local/cargo=/cargo"
RUN cargo build --locked --profile image --target x86_64-unknown-linux-musl --bin kmover \
 && sh scripts/build-image.sh --stage-rootfs \
      target/x86_64-unknown-linux-musl/image/kmover /bin/busybox.static /dist

FROM scratch AS dist-builder
COPY --from=builder /dist/ /dist/

FROM scratch AS dist-context
COPY dist/ /dist/

FROM ${KMOVER_DIST} AS dist

FROM scratch AS kmover
ARG KMOVER_VERSION
COPY --from=dist /dist/rootfs/ /
ENV version=${KMOVER_VERSION} \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    KOPIA_CHECK_FOR_UPDATES=false \
    PATH=/usr/local/bin:/bin
LABEL org.opencontainers.image.title="kmover" \
      org.opencontainers.image.description="VolSync Kopia mover and kopia-compatible CLI, reading and writing Kopia repositories" \
      org.opencontainers.image.version="${KMOVER_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://example.invalid/kmover"
USER 65532:65532
WORKDIR /
ENTRYPOINT ["/mover-kopia/entry.sh"]

FROM kmover AS kmover-shell
COPY --from=dist /dist/shell/ /
