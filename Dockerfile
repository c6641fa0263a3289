# stockflow: build in a Rust image, run in a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p stockflow

FROM debian:bookworm-slim
# OpenSSL for Kafka over TLS and SASL/SCRAM; the system's roots for Kafka and ClickHouse over TLS.
RUN apt-get update && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN useradd --system --home /var/lib/stockflow stockflow && mkdir -p /var/lib/stockflow && chown stockflow /var/lib/stockflow
COPY --from=build /src/target/release/stockflow /usr/local/bin/stockflow
COPY configs /etc/stockflow
USER stockflow
WORKDIR /var/lib/stockflow
EXPOSE 8080
ENTRYPOINT ["stockflow"]
CMD ["run", "--http", "0.0.0.0:8080"]
