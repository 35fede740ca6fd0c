# batch_agent, the agentwal demo, in a small image.
# Build: docker build -t agentwal/batch-agent:0.1.0 .
# (Not built in the project's CI: there is no docker engine there.)

FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --example batch_agent --features http \
 && cp target/release/examples/batch_agent /batch_agent

FROM debian:bookworm-slim
# curl: the preStop hook and the probes call the loopback health server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /data --create-home agent
COPY --from=build /batch_agent /usr/local/bin/batch_agent
USER 10001
WORKDIR /data
VOLUME /data
# `docker stop` waits 10 s before SIGKILL: keep the budget below it.
# Kubernetes overrides this with the pod's env (25 s under a 40 s grace period).
ENV SHUTDOWN_TIMEOUT=8
STOPSIGNAL SIGTERM
# Exec form: batch_agent is PID 1 and receives SIGTERM itself (no shell in between).
ENTRYPOINT ["/usr/local/bin/batch_agent"]
CMD ["--journal", "/data/journal", "--sink", "/data/sink.log", "--health", "127.0.0.1:8080"]
