# The operator image (docs/install.md):  docker build -t qpm-operator:dev .
# Without a registry, scripts/image.sh builds the same runtime layout FROM scratch with podman
# (tests/image.rs keeps the two in step: USER, ENTRYPOINT, CMD, EXPOSE and LABELs).
#
# The build runs on the Debian release of the runtime image (bookworm, so the same glibc).
# cargo-chef caches the dependencies in a layer of their own: `prepare` reduces the manifests to
# a recipe that changes only when Cargo.toml or Cargo.lock do, `cook` builds the dependencies from
# it, and a source change rebuilds only the crate. The final stage is distroless: glibc, CA
# certificates and the binary; no shell, no package manager.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --bin qpm-operator --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin qpm-operator \
 && cp target/release/qpm-operator /qpm-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /qpm-operator /qpm-operator
LABEL org.opencontainers.image.title="qpm-operator" \
      org.opencontainers.image.description="Kubernetes operator for Qualys Patch Management deployment jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
# /metrics, /healthz and /readyz (deploy/base/deployment.yaml).
EXPOSE 8080
# distroless's nonroot user; deploy/base/deployment.yaml runs the pod as the same UID and GID.
USER 65532:65532
ENTRYPOINT ["/qpm-operator"]
CMD ["run"]
