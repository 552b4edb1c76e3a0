#!/usr/bin/env bash
# Builds the taskforge base image once: from debian:bookworm-slim when a registry answers,
# else offline through debootstrap + `docker import`. Skips the build when an image with the
# same content hash of envs/base/ is already there.
# Usage: envs/build-base.sh IMAGE_TAG
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tag=${1:?usage: build-base.sh IMAGE_TAG}
content_hash=$(cat "$here"/base/* | sha256sum | cut -c1-16)

existing=$(docker image inspect -f '{{ index .Config.Labels "taskforge.base.hash" }}' "$tag" 2>/dev/null || true)
if [ "$existing" = "$content_hash" ]; then
  echo "base image $tag is up to date ($content_hash)"
  exit 0
fi

if timeout 60 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
  echo "building $tag from debian:bookworm-slim"
  docker build -q --label "taskforge.base.hash=$content_hash" -t "$tag" "$here/base" >/dev/null
  exit 0
fi

echo "no registry answers: building $tag offline with debootstrap"
if ! command -v debootstrap >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "debootstrap is missing; install it (apt-get install debootstrap) or run as root" >&2; exit 1; }
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
mirror=$( (cat /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null || true) | grep -oE 'https?://[^ ]+/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
mirror=${mirror:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /tmp/taskforge-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
packages=$(grep -v '^#' "$here/base/packages.txt" | paste -sd, -)
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >/tmp/taskforge-debootstrap.log 2>&1 \
  || { echo "debootstrap failed; see /tmp/taskforge-debootstrap.log" >&2; exit 1; }
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
tar -C "$rootfs" -c . | docker import \
  -c "LABEL taskforge.base.hash=$content_hash" \
  -c 'ENV LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'WORKDIR /root' -c 'CMD ["bash"]' - "$tag" >/dev/null
echo "built $tag offline"
