# The idem image: one binary, every role. `docker build -t idem:local .` from the repository root.
#
#   docker run --rm -p 127.0.0.1:8000:8000 -v idem-data:/data \
#     -e IDEM_INSECURE_NO_AUTH=true idem:local            # `idem serve` on SQLite at /data/idem.db
#   docker run --rm -e IDEM_BIND=127.0.0.1:8000 -e IDEM_OPS_BIND=0.0.0.0:9464 \
#     -e IDEM_DATABASE_URL=postgres://... idem:local worker   # any role: api, scheduler, worker, migrate
#
# The build's only RUN step in the builder stage is `cargo build --release --locked -p idem`, the
# same command CI runs outside Docker (deploy/check.sh prints it from this file and checks that).

############################ builder ############################
FROM rust:1-bookworm AS builder
WORKDIR /src
# The build context is filtered by .dockerignore (no target/, no .git).
COPY . .
# The cache mounts (BuildKit, Docker's default builder since 23.0) keep downloaded crates between
# builds; they hold nothing the image needs.
# SQLite is compiled in (libsqlite3-sys "bundled") and TLS is rustls, so the runtime stage needs
# no -dev packages and no OpenSSL.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    cargo build --release --locked -p idem

############################ runtime ############################
FROM debian:bookworm-slim AS runtime
# ca-certificates: the `http` task and amqps:// / rediss:// / TLS PostgreSQL connections.
# tini: PID 1 that forwards SIGTERM to idem (which then shuts down gracefully within
# IDEM_SHUTDOWN_GRACE_SECONDS) and reaps orphaned children of `shell` tasks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*
# A fixed, non-root uid/gid (10001) so Kubernetes' runAsNonRoot/runAsUser can check it, and the
# SQLite default's directory owned by it.
RUN groupadd --system --gid 10001 idem \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin idem \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=builder /src/target/release/idem /usr/local/bin/idem

# IDEM_BIND: the API listens on every interface inside the container. idem refuses a non-loopback
# bind without API keys (not built yet) unless IDEM_INSECURE_NO_AUTH=true is set: pass that at run
# time, and publish the port only on a private network. Every role checks this setting, so the
# roles that do not serve the API (scheduler, worker, migrate) should set IDEM_BIND=127.0.0.1:8000.
# IDEM_DATABASE_URL: sqlite://PATH, so sqlite:///data/idem.db is the absolute path /data/idem.db.
ENV IDEM_BIND=0.0.0.0:8000 \
    IDEM_DATABASE_URL=sqlite:///data/idem.db
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
# 8000: the API (and /health*, /metrics of `serve` and `api`).
# 9464: IDEM_OPS_BIND of `scheduler` and `worker` (/health, /health/live, /health/ready, /metrics);
#       set IDEM_OPS_BIND=0.0.0.0:9464 to open it.
EXPOSE 8000 9464
# No HEALTHCHECK: the image has no curl or wget, and the port to probe depends on the role.
# Orchestrators probe GET /health/live (liveness) and /health/ready (readiness) on 8000 for
# serve/api and on 9464 for scheduler/worker; docker/docker-compose.yml and
# deploy/kubernetes/ do so.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/idem"]
CMD ["serve"]
