# syntax=docker/dockerfile:1
# Tollgate server image: `docker build -t tollgate .`, or `docker compose up` (see docker-compose.yml).
# The builder compiles the one `tollgate` binary; the runtime image holds only that binary
# and CA certificates (for HTTPS to AI providers).

FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
    && cp target/release/tollgate /usr/local/bin/tollgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home tollgate
COPY --from=builder /usr/local/bin/tollgate /usr/local/bin/tollgate
USER tollgate
# The services listen on 127.0.0.1 by default, which a published port cannot
# reach from outside the container: listen on every interface here.
ENV TOLLGATE_PROXY_ADDR=0.0.0.0:8080 TOLLGATE_INGEST_ADDR=0.0.0.0:8081
EXPOSE 8080 8081
ENTRYPOINT ["tollgate"]
CMD ["serve"]
