# The `tidemark` binary (worker, coordinator, CLI and the embedded default in one) on a
# slim Debian runtime, running as an unprivileged user.
#
#   docker build -t tidemark .
#   docker run --rm -p 6875:6875 tidemark          # the embedded default, as `tidemark up`
#
# k8s/ runs the same image as `tidemark worker` and `tidemark coordinator`.

# --- build: the release binary, with Cargo's registry and target cached between builds.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tidemark-worker --bin tidemark \
    && mkdir -p /out \
    && cp target/release/tidemark /out/tidemark \
    && strip --strip-debug /out/tidemark

# --- runtime: glibc, libgcc and zlib (what the binary links against) come with the base.
FROM debian:bookworm-slim
COPY --from=build /out/tidemark /usr/local/bin/tidemark
# The ingest log lives here (a volume: writable with a read-only root, kept by restarts).
RUN mkdir -p /var/lib/tidemark && chown 10001:10001 /var/lib/tidemark
ENV TIDEMARK_DATA_DIR=/var/lib/tidemark
VOLUME /var/lib/tidemark
# A numeric user, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
# 6875 public gRPC, 6876 metrics of `up`, 6880 internal gRPC, 7100 timely, 9090 metrics.
EXPOSE 6875 6876 6880 7100 9090
ENTRYPOINT ["/usr/local/bin/tidemark"]
CMD ["up", "--listen", "0.0.0.0:6875", "--metrics-listen", "0.0.0.0:6876"]
