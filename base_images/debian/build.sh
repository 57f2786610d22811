#!/usr/bin/env bash
# Build the Debian base every Schooner base image starts FROM, locally, without pulling
# anything from an image registry: debootstrap a minimal Debian bookworm (Python 3.11,
# the version pickled closures need) from Debian's package mirror and import it.
#
#   sudo base_images/debian/build.sh [TAG]        # default tag: schooner/debian-python:3.11
#
# Needs root, debootstrap and a running Docker engine. Behind a TLS-inspecting proxy, set
# CA_BUNDLE to a PEM bundle that trusts it (e.g. /etc/ssl/certs/ca-certificates.crt of the
# host): it becomes the image's CA bundle, so pip in the images can reach the index.
set -euo pipefail
tag=${1:-schooner/debian-python:3.11}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /tmp/schooner-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT

debootstrap --variant=minbase \
  --include=python3,python3-pip,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror"
if [ -n "${CA_BUNDLE:-}" ]; then
  cp "$CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi
# Debian marks its Python as externally managed; the image is ours to manage.
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$tag"
echo "built $tag"
