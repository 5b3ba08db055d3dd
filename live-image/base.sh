#!/usr/bin/env bash
# Stage 1 of the live image: a Debian root filesystem with every package the image needs.
# Called by build.sh as: base.sh ROOTFS MIRROR SUITE PACKAGES_FILE
# The result is cached by build.sh (keyed by this file, the package list and the mirror),
# so keep everything that depends on the project itself OUT of this stage.
set -euo pipefail
rootfs=$1 mirror=$2 suite=$3 packages_file=$4

log() { printf '[base %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

packages=$(grep -v '^\s*#' "$packages_file" | awk 'NF {print $1}' | paste -sd, -)

log "debootstrap --variant=minbase $suite from $mirror"
debootstrap --variant=minbase --components=main --include="$packages" \
    "$suite" "$rootfs" "$mirror" >"$rootfs.debootstrap.log" 2>&1 || {
    tail -n 30 "$rootfs.debootstrap.log" >&2
    exit 1
}

cleanup() {
    for m in dev/pts dev sys proc; do
        mountpoint -q "$rootfs/$m" && umount "$rootfs/$m" || true
    done
}
trap cleanup EXIT
mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount -t devpts devpts "$rootfs/dev/pts"

# Only the kernel's storage, filesystem, input, USB, console and platform drivers are
# useful here: drop sound, video capture, wireless, bluetooth and the big GPU drivers
# (the console runs on the firmware framebuffer or VGA text mode).
kver=$(basename "$(ls -d "$rootfs"/lib/modules/* | sort -V | tail -n 1)")
mods="$rootfs/lib/modules/$kver/kernel"
log "trimming kernel modules of $kver"
rm -rf "$mods"/sound "$mods"/drivers/media "$mods"/drivers/net/wireless \
    "$mods"/net/wireless "$mods"/net/mac80211 "$mods"/net/bluetooth "$mods"/drivers/bluetooth \
    "$mods"/drivers/gpu/drm/amd "$mods"/drivers/gpu/drm/nouveau "$mods"/drivers/gpu/drm/radeon \
    "$mods"/drivers/gpu/drm/i915 "$mods"/drivers/staging "$mods"/drivers/iio \
    "$mods"/drivers/infiniband "$mods"/drivers/isdn "$mods"/drivers/input/joystick \
    "$mods"/drivers/net/can "$mods"/drivers/hid/amd-sfh-hid
chroot "$rootfs" depmod -a "$kver"

log "initramfs (live-boot)"
chroot "$rootfs" update-initramfs -u -k "$kver" >/dev/null

log "removing documentation, caches and package lists"
# (the copyright files stay: the ISO is redistributable only with them)
find "$rootfs/usr/share/doc" -type f ! -name copyright -delete
find "$rootfs/usr/share/doc" -xtype l -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/usr/share/locale/*
find "$rootfs/usr/lib/python3" "$rootfs/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} + 2>/dev/null || true
log "done"
