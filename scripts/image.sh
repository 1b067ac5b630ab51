#!/usr/bin/env bash
# Build the operator image without pulling anything: the Dockerfile's runtime layout, FROM scratch.
#
#   scripts/image.sh [BINARY] [TAG]
#
# BINARY defaults to target/release/qpm-operator (under $CARGO_TARGET_DIR when set); TAG to
# localhost/qpm-operator:dev. The image holds the binary, exactly the shared libraries `ldd` says
# it links (and the dynamic loader), the CA bundle of this machine, and passwd/group entries for
# the non-root user 65532 — everything owned by root and read-only for that user. USER,
# ENTRYPOINT, CMD, EXPOSE and LABELs are the Dockerfile's (tests/image.rs checks they agree).
# Needs podman (Debian: `apt-get install podman`); `podman build` FROM scratch needs no registry.
# Prints the image id on stdout; progress goes to stderr.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
binary="${1:-${CARGO_TARGET_DIR:-$repo/target}/release/qpm-operator}"
tag="${2:-localhost/qpm-operator:dev}"
ca_bundle="${QPM_IMAGE_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"

if ! command -v podman >/dev/null 2>&1; then
  echo "error: podman is not installed (Debian: apt-get install podman)" >&2
  exit 1
fi
if [ ! -x "$binary" ]; then
  echo "error: $binary is not an executable (build it: cargo build --release --locked)" >&2
  exit 1
fi
if [ ! -r "$ca_bundle" ]; then
  echo "error: no CA bundle at $ca_bundle (Debian: apt-get install ca-certificates)" >&2
  exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/etc/ssl/certs"

install -m 0555 "$binary" "$root/qpm-operator"

# Every absolute path ldd prints is a library the binary needs at run time: "libc.so.6 =>
# /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and the loader "/lib64/ld-linux-x86-64.so.2 (0x...)".
# vdso has no path and is skipped. cp -L copies the file a symlink points to, under the name the
# binary and the loader ask for (the loader searches /lib/<multiarch> without an ld.so.cache).
libs="$(ldd "$binary" | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' | sort -u)"
if [ -z "$libs" ]; then
  echo "error: ldd found no shared libraries in $binary (the layout expects a glibc binary)" >&2
  exit 1
fi
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
  chmod 0555 "$root$lib"
done
install -m 0444 "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
# The home is / (not a directory of the user's own): nothing in the image is writable by it.
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' > "$root/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$root/etc/group"
chmod 0444 "$root/etc/passwd" "$root/etc/group"
find "$root" -type d -exec chmod 0555 {} +

cat > "$context/Containerfile" <<'CONTAINERFILE'
FROM scratch
COPY rootfs/ /
LABEL org.opencontainers.image.title="qpm-operator" \
      org.opencontainers.image.description="Kubernetes operator for Qualys Patch Management deployment jobs" \
      org.opencontainers.image.licenses="Apache-2.0"
EXPOSE 8080
USER 65532:65532
ENTRYPOINT ["/qpm-operator"]
CMD ["run"]
CONTAINERFILE

echo "building $tag from $binary" >&2
podman build --quiet --pull=never --layers=false -t "$tag" -f "$context/Containerfile" "$context" >&2
podman image inspect --format '{{.Id}}' "$tag"
