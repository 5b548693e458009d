# syntax=docker/dockerfile:1
#
# Image of the agent: /eks-pod-identity-agent (subcommands server,
# initialize, probe), /eks-pod-identity-init (the small privileged init binary) and
# /go-runner (the launcher upstream's Helm chart puts in front of both:
# command ['/go-runner', '/eks-pod-identity-agent', 'server']).
#
#   docker buildx build --platform linux/amd64,linux/arm64 -t REPO:TAG .
#
# Multi-arch: the build stage runs natively for each target platform (under
# QEMU emulation when the builder has no node of that architecture; add an
# arm64 node with `docker buildx create --append` for speed). Cross-compiling
# from $BUILDPLATFORM would need a cross C toolchain for aws-lc and the
# matching linker setup; a native build needs neither and produces exactly
# what CI builds. TARGETARCH only keeps the two architectures' caches apart,
# so both builds run in parallel (sharing=locked would otherwise serialize
# them on one shared cache).
# The check that the arm64 binaries build and run is .ci/arm64 (run by CI):
# a cross build against this image's glibc (Debian 12, 2.36), the symbol
# versions they need, and the binaries run under qemu-user.

# Runtime base: distroless publishes rolling tags only. Release pipelines
# should pin a digest: --build-arg RUNTIME_IMAGE=gcr.io/distroless/cc-debian12@sha256:...
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:latest

FROM rust:1.95.0-bookworm AS build
ARG TARGETARCH
WORKDIR /src
COPY . .
# The same command as CI. target/ lives in a cache mount (kept between
# builds, not in the layer), so the binaries are copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,id=cargo-registry-${TARGETARCH},sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,id=cargo-git-${TARGETARCH},sharing=locked \
    --mount=type=cache,target=/src/target,id=eks-pod-identity-agent-target-${TARGETARCH},sharing=locked \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/eks-pod-identity-agent target/release/eks-pod-identity-init \
       target/release/go-runner /out/

# glibc, libgcc and CA certificates, no shell or package manager. aws-lc is
# linked statically into the binaries.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="eks-pod-identity-agent" \
      org.opencontainers.image.description="Node-local credential agent for EKS Pod Identity (Rust, drop-in for the upstream agent)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/eks-pod-identity-agent /eks-pod-identity-agent
COPY --from=build /out/eks-pod-identity-init /eks-pod-identity-init
COPY --from=build /out/go-runner /go-runner
# No USER: the image runs as root (UID 0), as upstream's does, on purpose.
# - The init container must be root: it is privileged and configures the
#   host network (a non-root process gets no capabilities even there).
# - The server binds port 80 and needs CAP_NET_BIND_SERVICE *effective*.
#   Kubernetes' capabilities.add does not reach a non-root process (no
#   ambient capabilities), file capabilities (setcap) are not reliably kept
#   by every builder/registry and are ignored under
#   allowPrivilegeEscalation: false (no_new_privs), and the unprivileged-port
#   sysctl cannot be set for a hostNetwork pod. So the manifests run the
#   server as root with every capability dropped but NET_BIND_SERVICE, a
#   read-only root filesystem and no privilege escalation
#   (daemonset/base/daemonset.yaml). Root by default also suits the
#   upstream Helm chart, which sets no user and runs the image unchanged.
#   For local use as non-root, pass --user and a --port above 1023.
ENTRYPOINT ["/eks-pod-identity-agent"]
CMD ["--help"]
