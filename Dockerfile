# syntax=docker/dockerfile:1
# The operator image (docs/install.md):  docker build -t qpm-operator:dev .
# Needs BuildKit (the default builder since Docker 23) for the heredoc below.
#
# Stage 1 builds the binary on the Debian release of the runtime image (bookworm, so the same
# glibc), with the dependencies compiled in a layer of their own: a source change rebuilds only the
# crate. Stage 2 is distroless: glibc, CA certificates and the binary; no shell, no package manager.

FROM rust:1.95-bookworm AS builder
WORKDIR /src

# Dependency layer, rebuilt only when Cargo.toml or Cargo.lock change: build the dependencies
# against stub sources. cargo refuses a manifest whose declared targets are missing, so a stub is
# also made for each [[bench]], [[test]] and [[example]] that Cargo.toml declares.
COPY Cargo.toml Cargo.lock ./
RUN <<'EOS'
set -eu
mkdir -p src
echo 'fn main() {}' > src/main.rs
: > src/lib.rs
awk '
  function flush() { if (kind != "" && name != "") print (path != "" ? path : dir "/" name ".rs"); kind = ""; name = ""; path = "" }
  /^\[/ { flush() }
  /^\[\[bench\]\]/ { kind = "bench"; dir = "benches" }
  /^\[\[test\]\]/ { kind = "test"; dir = "tests" }
  /^\[\[example\]\]/ { kind = "example"; dir = "examples" }
  kind != "" && /^name *=/ { split($0, a, "\""); name = a[2] }
  kind != "" && /^path *=/ { split($0, a, "\""); path = a[2] }
  END { flush() }
' Cargo.toml | while read -r stub; do
  mkdir -p "$(dirname "$stub")"
  echo 'fn main() {}' > "$stub"
done
cargo build --release --locked
EOS

# The crate itself. COPY keeps the files' timestamps, which may be older than the stub build;
# touching the crate roots makes cargo rebuild the crate rather than keep the stub binary.
COPY src ./src
RUN touch src/lib.rs src/main.rs \
 && cargo build --release --locked \
 && cp target/release/qpm-operator /qpm-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /qpm-operator /qpm-operator
# distroless's nonroot user; deploy/base/deployment.yaml runs the pod as the same UID and GID.
USER 65532:65532
ENTRYPOINT ["/qpm-operator"]
CMD ["run"]
