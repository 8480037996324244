#!/usr/bin/env bash
# Build (once) the cached Debian 13 root filesystem every test machine is copied from.
# The cache key is a hash of this recipe and the mirror, so editing the recipe rebuilds it.
# Usage: nspawn-base-image.sh [--force]   prints the path of the cached rootfs
set -euo pipefail
# shellcheck source=scripts/nspawn-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/nspawn-lib.sh"
require_root

PACKAGES=systemd,systemd-sysv,dbus,udev,libpam-systemd,openssh-server,python3,python3-apt,iproute2,procps,sudo,ca-certificates
MIRROR=$(host_mirror debian)
SECURITY_MIRROR=$(host_mirror security)
force=false
[[ ${1:-} == --force ]] && force=true

key=$( { cat "${BASH_SOURCE[0]}"; echo "$MIRROR $SECURITY_MIRROR $APPLIANCE_SUITE"; } | sha256sum | cut -c1-16)
base_root=$APPLIANCE_CACHE/base
final=$base_root/$key
install -d -m 0755 "$base_root"

exec 9>"$base_root/.lock"
flock 9   # concurrent scenarios wait for a single build

if [[ -f $final/.complete && $force == false ]]; then
  printf '%s\n' "$final/rootfs"
  exit 0
fi

start=$(date +%s)
tmp=$base_root/.build-$key-$$
rm -rf "$tmp" && install -d "$tmp"
trap 'rm -rf --one-file-system "$tmp"' EXIT
log "debootstrap $APPLIANCE_SUITE from $MIRROR (recipe $key)"
debootstrap --variant=minbase --include="$PACKAGES" "$APPLIANCE_SUITE" "$tmp/rootfs" "$MIRROR" \
  >"$tmp/debootstrap.log" 2>&1 || { tail -n 30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }
root=$tmp/rootfs

rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: $APPLIANCE_SUITE $APPLIANCE_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $APPLIANCE_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
# Keep what apt downloads: machines share their .deb files (scripts/nspawn-machine.sh).
cat >"$root/etc/apt/apt.conf.d/90-test-platform-keep-debs" <<'APT'
APT::Keep-Downloaded-Packages "true";
Binary::apt::APT::Keep-Downloaded-Packages "true";
APT
rm -f "$root/etc/apt/apt.conf.d/docker-clean"

chroot "$root" useradd --create-home --shell /bin/bash --comment "Molecule test driver" molecule
install -m 0440 /dev/stdin "$root/etc/sudoers.d/molecule" <<'SUDO'
molecule ALL=(ALL:ALL) NOPASSWD: ALL
SUDO
systemctl --root="$root" enable systemd-networkd.service ssh.service >/dev/null 2>&1
# Every copy gets a fresh identity on first boot.
: >"$root/etc/machine-id"
rm -f "$root/etc/hostname" "$root/var/lib/dbus/machine-id"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin

rm -rf "$final"
mv "$tmp" "$final"
trap - EXIT
touch "$final/.complete"
# Older recipes are dead weight.
find "$base_root" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf --one-file-system {} +
log "base image built in $(( $(date +%s) - start ))s: $final/rootfs ($(du -sh "$final/rootfs" | cut -f1))"
printf '%s\n' "$final/rootfs"
