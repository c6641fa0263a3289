# syntax=docker/dockerfile:1
# stockflow: build in a Rust image, run in a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target/ are build caches (BuildKit): a change to the sources recompiles
# stockflow's own crates, not librdkafka and the other dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p stockflow \
    && cp target/release/stockflow /usr/local/bin/stockflow

FROM debian:bookworm-slim
# OpenSSL for Kafka over TLS and SASL/SCRAM; the system's roots for Kafka and ClickHouse over TLS.
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home /var/lib/stockflow stockflow && mkdir -p /var/lib/stockflow && chown stockflow /var/lib/stockflow
COPY --from=build /usr/local/bin/stockflow /usr/local/bin/stockflow
COPY configs /etc/stockflow
USER stockflow
WORKDIR /var/lib/stockflow
EXPOSE 8080
# Ready once caught up: a replay of a long log may take minutes (start period).
HEALTHCHECK --interval=5s --timeout=6s --start-period=5m --retries=3 \
    CMD ["stockflow", "--config", "/etc/stockflow/docker.toml", "healthcheck"]
ENTRYPOINT ["stockflow"]
CMD ["run", "--http", "0.0.0.0:8080"]
