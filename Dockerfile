# syntax=docker/dockerfile:1
# Images of IoT Cloud, one Dockerfile with two targets sharing one build of the workspace
# (`cargo build --release --locked`; BuildKit is required for the cache mounts):
#
#   docker build --target operator -t ghcr.io/iot-cloud/iot-operator:dev .
#   docker build --target worker   -t ghcr.io/iot-cloud/iot-worker:dev .
#
# Runtime images are distroless (glibc, libgcc, CA certificates; no shell, no package manager) and
# run as the non-root user 65532. The binaries link nothing else dynamically: librdkafka and zlib
# are built into them (LIBZ_SYS_STATIC below), TLS is rustls.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
# librdkafka (rdkafka-sys) is compiled from source: C/C++ toolchain, make, cmake, pkg-config.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ pkg-config \
 && rm -rf /var/lib/apt/lists/*
# Link zlib statically (the distroless runtime image has no libz.so.1).
ENV LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never \
    CARGO_NET_RETRY=5
WORKDIR /src
COPY . .
# The cache mounts keep downloaded crates and compiled dependencies between builds (BuildKit), so a
# source change recompiles only the workspace crates.
# CARGO_PROFILE=dev gives unoptimised, faster-to-build images for the Tilt loop.
ARG CARGO_PROFILE=release
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --locked --profile "$CARGO_PROFILE" --bin iot-operator --bin iot-worker \
 && out_dir=$([ "$CARGO_PROFILE" = dev ] && echo debug || echo "$CARGO_PROFILE") \
 && mkdir -p /out \
 && cp "target/$out_dir/iot-operator" "target/$out_dir/iot-worker" /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
LABEL org.opencontainers.image.title="iot-operator" \
      org.opencontainers.image.description="IoT Cloud operator: reconciles DeviceType and Application resources" \
      org.opencontainers.image.source="https://github.com/iot-cloud/iot-cloud" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/iot-operator /usr/local/bin/iot-operator
USER 65532:65532
EXPOSE 9100
ENTRYPOINT ["/usr/local/bin/iot-operator"]
CMD ["run"]

FROM gcr.io/distroless/cc-debian12:nonroot AS worker
LABEL org.opencontainers.image.title="iot-worker" \
      org.opencontainers.image.description="IoT Cloud data-path workers: simulator, bridge, enrichment, dashboard" \
      org.opencontainers.image.source="https://github.com/iot-cloud/iot-cloud" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/iot-worker /usr/local/bin/iot-worker
USER 65532:65532
EXPOSE 9101 9102 9103 5001
ENTRYPOINT ["/usr/local/bin/iot-worker"]
CMD ["--help"]
