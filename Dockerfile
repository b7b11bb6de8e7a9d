# Quiver: a two-stage build. The first stage compiles the release binary (dependencies in a
# layer of their own, so source changes rebuild only Quiver); the second runs it as a
# non-root user on a slim base.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ make \
    && rm -rf /var/lib/apt/lists/*
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY proto ./proto
COPY crates ./crates
# Dependencies first: a placeholder crate with the same manifest.
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/quiver quiver \
    && mkdir -p /var/lib/quiver/data \
    && chown -R quiver /var/lib/quiver
COPY --from=build /src/target/release/quiver /usr/local/bin/quiver
USER 10001
WORKDIR /var/lib/quiver
# Every setting can be overridden with QUIVER_* variables or a mounted file (QUIVER_CONFIG).
# The metrics address serves /metrics, /healthz and /readyz over HTTP.
ENV QUIVER_LISTEN=0.0.0.0:8815 \
    QUIVER_METRICS_LISTEN=0.0.0.0:9090 \
    QUIVER_DATA_DIR=/var/lib/quiver/data \
    QUIVER_LOG_FORMAT=json
VOLUME ["/var/lib/quiver/data"]
EXPOSE 8815 9090
# No HTTP client in the image: the health check asks the server itself over Flight.
HEALTHCHECK --interval=15s --timeout=5s --retries=3 \
    CMD ["/usr/local/bin/quiver", "health", "--server", "grpc://127.0.0.1:8815"]
ENTRYPOINT ["/usr/local/bin/quiver"]
CMD ["serve"]
