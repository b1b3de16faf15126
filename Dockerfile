# Gateway image: the `gateway` node and the `loadtest` harness, built in a Rust builder stage
# and copied into a slim Debian runtime that runs as an unprivileged user.
#
#   docker build -t gateway .
#   docker run --rm -p 4000:4000 --ulimit nofile=1048576:1048576 gateway
#
# Every flag has a GATEWAY_* environment variable (`gateway --help`); docker-compose.yml and
# deploy/k8s set them. Checked offline by `hadolint --failure-threshold error Dockerfile`
# (gateway/tests/deploy/files.rs), and built and run for real by gateway/tests/compose.
#
# Needs BuildKit (the cache mounts below): Docker 23+ uses it by default; Docker 20.10 and
# docker-compose 1.29 need DOCKER_BUILDKIT=1 (and COMPOSE_DOCKER_CLI_BUILD=1). No `# syntax=`
# line on purpose: the built-in frontend has everything used here, and the line would make
# every build fetch a frontend image from Docker Hub, which fails offline or behind a mirror.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Manifests and sources of the three workspace crates (see .dockerignore for what stays out).
COPY Cargo.toml Cargo.lock ./
COPY gateway gateway
COPY pubsub-redis pubsub-redis
COPY loadtest loadtest
# The registry and target caches survive between builds (BuildKit); the binaries are copied
# out of the cached target dir in the same step because the cache is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p loadtest \
    && install -m 0755 target/release/gateway target/release/loadtest /usr/local/bin/

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it and volumes can be shared.
RUN groupadd --system --gid 10001 gateway \
    && useradd --system --uid 10001 --gid gateway --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /usr/local/bin/gateway /usr/local/bin/loadtest /usr/local/bin/
USER 10001:10001
ENV GATEWAY_PORT=4000 \
    GATEWAY_BIND=0.0.0.0 \
    GATEWAY_LOG_FORMAT=json
EXPOSE 4000
# Liveness only (/healthz): /readyz turns 503 while draining or deaf to Redis, which is a
# routing decision for the load balancer, not a reason to restart the container. bash's
# /dev/tcp keeps curl (and its dependencies) out of the image.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${GATEWAY_PORT:-4000} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
# SIGTERM starts the drain (sessions closed in paced batches with 1012); give the container
# at least --shutdown-timeout-ms (30 s by default) to stop: compose's stop_grace_period,
# Kubernetes' terminationGracePeriodSeconds.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/gateway"]
