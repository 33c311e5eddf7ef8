# syntax=docker/dockerfile:1
# Build:  docker build -t etlq .
# Run:    docker run --rm -p 8080:8080 -e DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/etlq \
#                -v etlq-data:/var/lib/etlq etlq
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY docs/openapi.json ./docs/openapi.json
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin etlq

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/etlq etlq \
    && mkdir -p /var/lib/etlq && chown etlq /var/lib/etlq
COPY --from=build /src/target/release/etlq /usr/local/bin/etlq
COPY sql /opt/etlq/sql
USER etlq
# Relative paths in the settings (blob.url = "data/blobs", etl.work_dir = "data/work") land
# here: mount a volume to keep uploads and artifacts across restarts.
WORKDIR /var/lib/etlq
VOLUME ["/var/lib/etlq"]
ENV ETLQ__API__HOST=0.0.0.0 ETLQ__LOG__FORMAT=json
EXPOSE 8080
# SIGTERM drains; give the container longer than worker.drain_timeout_ms plus
# api.shutdown_grace_ms to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["etlq"]
CMD ["serve"]
