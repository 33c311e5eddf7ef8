# syntax=docker/dockerfile:1
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY config ./config
COPY docs/openapi.json ./docs/openapi.json
COPY benches ./benches
RUN cargo build --release --locked --bin etlq

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 etlq
COPY --from=build /src/target/release/etlq /usr/local/bin/etlq
COPY sql /opt/etlq/sql
USER etlq
ENV ETLQ__API__HOST=0.0.0.0 ETLQ__LOG__FORMAT=json
EXPOSE 8080
# SIGTERM drains; give the container longer than worker.drain_timeout_ms to stop.
STOPSIGNAL SIGTERM
ENTRYPOINT ["etlq"]
CMD ["serve"]
