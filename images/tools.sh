#!/usr/bin/env bash
# What `make images` and tests/images need: mmdebstrap (the Debian base), runc (the image
# tests run the images with it), skopeo (the release pushes with it; tests/images reads the archives
# with it), debian-archive-keyring (mmdebstrap's keys on non-Debian hosts).
# Idempotent: installs only what is missing, with apt-get, as root (or with sudo -n).
set -euo pipefail
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v runc >/dev/null || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v skopeo >/dev/null || missing+=(skopeo)
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || missing+=(debian-archive-keyring)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=(); elif sudo -n true 2>/dev/null; then sudo=(sudo -n); else
  echo "[images] error: missing ${missing[*]} and not root: apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "[images] installing ${missing[*]} (apt-get)"
"${sudo[@]}" apt-get update -q >/dev/null
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
