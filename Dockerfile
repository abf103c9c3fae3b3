# observer's OCI image: `cargo xtask image` builds it (README, Kubernetes section).
#
# Stage 1 builds exactly as a developer does: `cargo xtask build` installs the nightly's rust-src and bpf-linker built
# against the nightly's own LLVM (the pins live in xtask/src/toolchain.rs, one place), then builds the agent with its
# eBPF programs embedded. Stage 2 is the binary on a slim Debian 12 (the glibc it was linked against) and nothing else:
# no shell tools are needed at run time.
ARG RUST_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
# Caches keep the registry, the toolchains' downloads and the target directory between builds of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo xtask build \
    && install -D -m 0755 target/dist/observer /out/observer

FROM ${RUNTIME_IMAGE}
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/observer /usr/local/bin/observer
# Non-root by default; the DaemonSet runs the agent as uid 0 with only the capabilities it needs (README).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/observer"]
CMD ["--help"]
LABEL org.opencontainers.image.title="observer" \
      org.opencontainers.image.description="eBPF HTTP traffic observer with business context" \
      org.opencontainers.image.licenses="Apache-2.0"
