#!/usr/bin/env bash
# Builds the real-node tier's images without a registry, as OCI archives (e2e/bin/images/):
#   policyc.oci.tar  the agent image as the Dockerfile's runtime stage describes it: a Debian
#                    bookworm rootfs (mmdebstrap, minbase, slimmed like bookworm-slim) with the
#                    packages of images/runtime-packages.txt, plus /usr/local/bin/policyc-agent
#                    (entrypoint) and /usr/local/bin/policyc (the probe modes `policyc serve` and
#                    `policyc connect`: the same image is the probe image)
#   pause.oci.tar    the sandbox image: e2e/bin/pause (build.sh pause), alone
# and images.env (their names). The binaries are the test build's (debug, debug info stripped
# into the image); the rootfs layer is cached and rebuilt only when the package list changes.
# Usage: e2e/node/images.sh [BIN_DIR]   (the directory holding policyc-agent and policyc; default
#        $CARGO_TARGET_DIR/debug or ./target/debug: cargo build -p policyc -p policyc-controller)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bins="${1:-${CARGO_TARGET_DIR:-$root/target}/debug}"
out="$root/e2e/bin/images"
packages="$root/images/runtime-packages.txt"
mkdir -p "$out"
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t0="$(now)"

command -v mmdebstrap >/dev/null || { echo "images.sh: mmdebstrap missing (apt-get install mmdebstrap)" >&2; exit 1; }

work="$(mktemp -d "$out/.work.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- the rootfs layer: cached while the package list and this script are unchanged ---
base="$out/rootfs.tar"
if [ ! -s "$base" ] || [ "$packages" -nt "$base" ] || [ "$0" -nt "$base" ]; then
  s="$(now)"
  include="$(grep -v '^#' "$packages" | grep -v '^$' | paste -sd, -)"
  # bookworm-slim's dpkg excludes (docs, man pages, locales): what the Dockerfile's base has.
  nice -n 10 mmdebstrap --quiet --variant=minbase --include="$include" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/*.log' \
    --skip=output/dev \
    bookworm "$work/rootfs.tar" \
    "deb http://deb.debian.org/debian bookworm main" \
    "deb http://deb.debian.org/debian bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
  mv "$work/rootfs.tar" "$base"
  echo "images.sh: rootfs ($include) in $(since "$s")s, $(( $(stat -c %s "$base") / 1048576 )) MiB"
fi

# blob FILE MEDIATYPE: stores FILE as a blob of the layout in $1dir, prints a descriptor.
blob() { # blob LAYOUT FILE MEDIATYPE [EXTRA-JSON]
  local d size
  d="$(sha256sum "$2" | cut -d' ' -f1)"; size="$(stat -c %s "$2")"
  mkdir -p "$1/blobs/sha256"
  cp "$2" "$1/blobs/sha256/$d"
  printf '{"mediaType":"%s","digest":"sha256:%s","size":%s%s}' "$3" "$d" "$size" "${4:-}"
}
diffid() { # the uncompressed digest of a gzip layer
  printf 'sha256:%s' "$(gzip -dc "$1" | sha256sum | cut -d' ' -f1)"
}

# image NAME REPO ENTRYPOINT-JSON LAYER.tar.gz...: an OCI archive $out/NAME.oci.tar, tag = content hash.
image() {
  local name="$1" repo="$2" entry="$3"; shift 3
  local layout="$work/$name" layers="" diffids="" l cfg manifest tag
  mkdir -p "$layout"
  for l in "$@"; do
    layers+="${layers:+,}$(blob "$layout" "$l" application/vnd.oci.image.layer.v1.tar+gzip)"
    diffids+="${diffids:+,}\"$(diffid "$l")\""
  done
  printf '{"architecture":"amd64","os":"linux","config":{"Entrypoint":%s,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$entry" "$diffids" >"$work/$name.config.json"
  cfg="$(blob "$layout" "$work/$name.config.json" application/vnd.oci.image.config.v1+json)"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":%s,"layers":[%s]}' \
    "$cfg" "$layers" >"$work/$name.manifest.json"
  tag="dev-$(sha256sum "$work/$name.manifest.json" | cut -c1-12)"
  manifest="$(blob "$layout" "$work/$name.manifest.json" application/vnd.oci.image.manifest.v1+json \
    ",\"platform\":{\"architecture\":\"amd64\",\"os\":\"linux\"},\"annotations\":{\"io.containerd.image.name\":\"$repo:$tag\",\"org.opencontainers.image.ref.name\":\"$tag\"}")"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$manifest" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  tar -C "$layout" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$out/$name.oci.tar" .
  echo "$name $repo $tag"
}

for b in "$bins/policyc-agent" "$bins/policyc" "$root/e2e/bin/pause"; do
  [ -x "$b" ] || { echo "images.sh: $b missing (cargo build -p policyc -p policyc-controller; e2e/apiserver/build.sh pause)" >&2; exit 1; }
done
s="$(now)"
if [ ! -s "$out/rootfs.tar.gz" ] || [ "$base" -nt "$out/rootfs.tar.gz" ]; then
  gzip -n -1 -c "$base" >"$work/rootfs.tar.gz" && mv "$work/rootfs.tar.gz" "$out/rootfs.tar.gz"
fi
# The binaries' layer: debug builds with their debug info left out (objcopy), 0755 root.
mkdir -p "$work/bin-layer/usr/local/bin" "$work/pause-layer"
objcopy --strip-debug "$bins/policyc-agent" "$work/bin-layer/usr/local/bin/policyc-agent"
objcopy --strip-debug "$bins/policyc" "$work/bin-layer/usr/local/bin/policyc"
cp "$root/e2e/bin/pause" "$work/pause-layer/pause"
chmod 0755 "$work"/bin-layer/usr/local/bin/* "$work/pause-layer/pause"
layer() { tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf - . | gzip -n -1 >"$2"; }
layer "$work/bin-layer" "$work/bin.tar.gz"
layer "$work/pause-layer" "$work/pause.tar.gz"

read -r _ prepo ptag < <(image policyc localhost/policyc/policyc '["/usr/local/bin/policyc-agent"]' "$out/rootfs.tar.gz" "$work/bin.tar.gz")
read -r _ srepo stag < <(image pause localhost/policyc/pause '["/pause"]' "$work/pause.tar.gz")
cat >"$out/images.env" <<ENV
POLICYC_IMAGE_REPOSITORY=$prepo
POLICYC_IMAGE_TAG=$ptag
PAUSE_IMAGE=$srepo:$stag
ENV
echo "images.sh: $prepo:$ptag $(( $(stat -c %s "$out/policyc.oci.tar") / 1048576 )) MiB (rootfs layer $(( $(stat -c %s "$out/rootfs.tar.gz") / 1048576 )) MiB gz, binaries $(( $(stat -c %s "$work/bin.tar.gz") / 1048576 )) MiB gz), $srepo:$stag $(( $(stat -c %s "$out/pause.oci.tar") / 1024 )) KiB; $(since "$s")s (total $(since "$t0")s)"
