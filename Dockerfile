# syntax=docker/dockerfile:1
# batch_agent, the agentwal demo, and wal-inspect in a small image.
# Build: docker build -t agentwal/batch-agent:0.1.0 .
# (Not built in the project's CI: there is no docker engine there;
# tests/deploy_manifests.rs checks this file's structure.)

FROM rust:1.89-bookworm AS build
WORKDIR /src
# 1. Dependencies, in their own layer: only the manifests and stub targets,
#    so this layer is rebuilt only when Cargo.toml / Cargo.lock change, not on
#    every source edit. (.dockerignore keeps target/ and .git out of the context.)
COPY Cargo.toml Cargo.lock ./
COPY benches/Cargo.toml benches/Cargo.toml
COPY wal-inspect/Cargo.toml wal-inspect/Cargo.toml
# Stubs for every target the manifests declare (cargo refuses a manifest
# whose [[example]] / [[test]] file is missing; tests/deploy_manifests.rs
# checks this list against Cargo.toml).
RUN mkdir -p src examples tests benches/src wal-inspect/src \
 && echo '' > src/lib.rs \
 && for e in batch_agent parallel_tools fleet_agent fleet_baseline; do echo 'fn main() {}' > examples/$e.rs; done \
 && for t in observe; do echo '' > tests/$t.rs; done \
 && echo 'fn main() {}' > benches/src/main.rs \
 && echo 'fn main() {}' > wal-inspect/src/main.rs
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --example batch_agent --features http \
 && cargo build --release --locked -p wal-inspect
# 2. The sources. touch: make cargo see them as newer than the stubs.
COPY src src
COPY examples examples
COPY benches benches
COPY wal-inspect wal-inspect
COPY README.md ./
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    touch src/lib.rs examples/*.rs wal-inspect/src/main.rs \
 && cargo build --release --locked --example batch_agent --features http \
 && cargo build --release --locked -p wal-inspect \
 && cp target/release/examples/batch_agent /batch_agent \
 && cp target/release/wal-inspect /wal-inspect

FROM debian:bookworm-slim
# curl: the preStop hook, the probes and the HEALTHCHECK call the loopback
# health server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /data --create-home agent
COPY --from=build /batch_agent /usr/local/bin/batch_agent
# The operator's tool, for `kubectl exec ... wal-inspect summary /data/journal`.
COPY --from=build /wal-inspect /usr/local/bin/wal-inspect
USER 10001
WORKDIR /data
# The journal needs a local disk or a block device, not NFS (locking and
# fsync semantics; see docs/operations.md "Storage").
VOLUME /data
# `docker stop` waits 10 s before SIGKILL: keep the budget below it.
# Kubernetes overrides this with the pod's env (25 s under a 40 s grace period).
ENV SHUTDOWN_TIMEOUT=8
# tracing on stderr; `docker run -e RUST_LOG=debug` for per-step spans.
ENV RUST_LOG=info
# Liveness for plain docker / compose (Kubernetes uses its own probes):
# /health answers 200 while the process runs. Needs --health (as in CMD).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-m", "2", "http://127.0.0.1:8080/health"]
STOPSIGNAL SIGTERM
# Exec form: batch_agent is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["/usr/local/bin/batch_agent"]
CMD ["--journal", "/data/journal", "--sink", "/data/sink.log", "--health", "127.0.0.1:8080"]
