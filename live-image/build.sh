#!/usr/bin/env bash
# Build the rescueui live ISO: live-image/out/rescueui.iso (hybrid BIOS + UEFI, dd-able).
#
#   sudo live-image/build.sh              # squashfs lz4: fast to build (tests, CI)
#   sudo COMPRESS=zstd live-image/build.sh  # squashfs zstd -15: about 40% smaller (release)
#
# Stages:
#   1. base.sh: debootstrap --variant=minbase + packages.txt from the Debian mirror of this
#      machine's apt configuration. Cached as live-image/build/rootfs-<key>.tar.zst, keyed by
#      base.sh, packages.txt, the mirror and the suite: a rebuild skips it.
#   2. the project: wheels built on this host (the project from the working tree + its
#      dependencies as cp311 manylinux / pure-Python wheels), installed offline into a venv
#      at /opt/rescueui inside the image; the files of live-image/rootfs/ (units, launcher).
#   3. squashfs + kernel + initrd + grub.cfg -> grub-mkrescue (EFI image made with mtools).
# Environment: COMPRESS=lz4|zstd, LIVE_MIRROR=<url> (override the mirror), PYTHON=<host python>.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
build=$here/build
out=$here/out
COMPRESS=${COMPRESS:-lz4}
started=$(date +%s)

log() { printf '[live-image %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() {
    printf 'live-image: %s\n' "$*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and mounts need it): sudo make live-image"
for tool in debootstrap mksquashfs grub-mkrescue xorriso mformat zstd; do
    command -v "$tool" >/dev/null ||
        die "$tool is missing: apt-get install debootstrap squashfs-tools grub-pc-bin grub-efi-amd64-bin grub-common xorriso mtools zstd"
done
[ -d /usr/lib/grub/i386-pc ] || die "grub-pc-bin is missing (BIOS boot): apt-get install grub-pc-bin"
[ -d /usr/lib/grub/x86_64-efi ] || die "grub-efi-amd64-bin is missing (UEFI boot): apt-get install grub-efi-amd64-bin"
case $COMPRESS in
lz4) squash_comp=(-comp lz4) ;;
zstd) squash_comp=(-comp zstd -Xcompression-level 15) ;;
*) die "COMPRESS must be lz4 (fast) or zstd (small), not '$COMPRESS'" ;;
esac

# --- the Debian mirror and suite, from this machine's apt configuration -----------------
suite=${SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-}")}
[ "$suite" = bookworm ] || log "warning: built and tested on Debian 12 (bookworm); this host is '$suite'"
find_mirror() {
    # Preferred: what apt itself resolved (needs 'apt-get update' to have run once).
    apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER)' 2>/dev/null |
        awk -v s="$suite" '$2 == s && $3 == "Packages" { print $1; exit }'
}
find_mirror_in_sources() {
    # Fallback: read sources.list (one-line style) and *.sources (deb822 style) directly.
    python3 - "$suite" <<'PY'
import glob, re, sys
suite = sys.argv[1]
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            print(words[1]); sys.exit(0)
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in re.split(r"\n\s*\n", open(path).read()):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"])[0] == "no" or "deb" not in fields.get("types", []):
            continue
        if suite in fields.get("suites", []) and fields.get("uris"):
            print(fields["uris"][0]); sys.exit(0)
PY
}
mirror=${LIVE_MIRROR:-$(find_mirror)}
[ -n "$mirror" ] || mirror=$(find_mirror_in_sources)
[ -n "$mirror" ] || die "no Debian '$suite' mirror in /etc/apt/sources.list(.d); set LIVE_MIRROR=<url>"
log "mirror $mirror, suite $suite, squashfs $COMPRESS"

# Remove a build tree, but never through a mount (a leftover /dev bind mount from an
# interrupted build would otherwise take the host's device nodes with it).
safe_rm() {
    local d
    for d in "$@"; do
        [ -e "$d" ] || continue
        if awk -v p="$(realpath "$d")" '$2 == p || index($2, p "/") == 1 { found = 1 } END { exit !found }' /proc/mounts; then
            die "$d still has something mounted below it (an interrupted build?): umount -R $d first"
        fi
        rm -rf --one-file-system "$d"
    done
}

mkdir -p "$build" "$out"
rootfs=$build/rootfs
isodir=$build/iso
cleanup_mounts() {
    for m in dev/pts dev sys proc; do
        if mountpoint -q "$rootfs/$m" 2>/dev/null; then umount "$rootfs/$m" || umount -l "$rootfs/$m"; fi
    done
}
trap cleanup_mounts EXIT

# --- stage 1: the cached Debian root filesystem ------------------------------------------
key=$( (cat "$here/base.sh" "$here/packages.txt" && echo "$mirror $suite") | sha256sum | cut -c1-16)
cache=$build/rootfs-$key.tar.zst
if [ -f "$cache" ]; then
    log "stage 1: cached root filesystem $(basename "$cache")"
else
    log "stage 1: debootstrap (not cached yet; takes a few minutes)"
    base=$build/base-$key
    safe_rm "$base"
    if ! "$here/base.sh" "$base" "$mirror" "$suite" "$here/packages.txt"; then
        log "stage 1 failed; trying once more (a mirror hiccup?)"
        for m in dev/pts dev sys proc; do umount "$base/$m" 2>/dev/null || true; done
        safe_rm "$base"
        "$here/base.sh" "$base" "$mirror" "$suite" "$here/packages.txt"
    fi
    tar -C "$base" --numeric-owner --xattrs -cf - . | zstd -q -T0 -3 -o "$cache.tmp"
    mv "$cache.tmp" "$cache"
    safe_rm "$base" "$base.debootstrap.log"
    # keep only the newest cache
    find "$build" -maxdepth 1 -name 'rootfs-*.tar.zst' ! -name "$(basename "$cache")" -delete
fi
cleanup_mounts
safe_rm "$rootfs"
mkdir -p "$rootfs"
zstd -q -dc "$cache" | tar -C "$rootfs" --numeric-owner --xattrs -xf -

# --- stage 2: the project, offline, from wheels built here ------------------------------
log "stage 2: wheels of the project (working tree) and its dependencies"
py=${PYTHON:-}
if [ -z "$py" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then
        py=$repo/.venv/bin/python
    else # no development venv (Debian's python3 has no pip): a small one just for pip
        [ -x "$build/host-venv/bin/python" ] || python3 -m venv "$build/host-venv" ||
            die "python3 -m venv failed: apt-get install python3-venv"
        py=$build/host-venv/bin/python
    fi
fi
wheels=$build/wheels
rm -rf "$wheels"
mkdir -p "$wheels"
"$py" -m pip wheel -q --no-deps -w "$wheels" "$repo" >"$build/pip.log" 2>&1 ||
    {
        tail -n 20 "$build/pip.log" >&2
        die "building the rescueui wheel failed (see $build/pip.log)"
    }
project_wheel=$(ls "$wheels"/rescueui-*.whl)
# Dependencies as binary wheels for the image's Python (Debian 12: CPython 3.11, glibc 2.36),
# whatever the host Python is: pure-Python or cp311 manylinux wheels only.
"$py" -m pip download -q --only-binary=:all: --dest "$wheels" \
    --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none \
    --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    "$project_wheel" >>"$build/pip.log" 2>&1 ||
    {
        tail -n 20 "$build/pip.log" >&2
        die "downloading the dependency wheels failed (see $build/pip.log)"
    }
log "wheels: $(cd "$wheels" && ls | tr '\n' ' ')"

# Commands inside the image get a clean environment (no PIP_* or proxy settings of this host).
inchroot() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 chroot "$rootfs" "$@"; }
mount -t proc proc "$rootfs/proc"
mount -t sysfs sys "$rootfs/sys"
mount --bind /dev "$rootfs/dev"
mount -t devpts devpts "$rootfs/dev/pts"
rm -rf "$rootfs/tmp/wheels"
cp -r "$wheels" "$rootfs/tmp/wheels"
inchroot python3 -m venv /opt/rescueui
inchroot /opt/rescueui/bin/pip install -q --no-index --no-cache-dir \
    --find-links /tmp/wheels rescueui
rm -rf "$rootfs/tmp/wheels"
ln -sf /opt/rescueui/bin/rescueui "$rootfs/usr/local/bin/rescueui"
# Fail the build, not the boot, when a dependency does not import in the image's Python.
inchroot /opt/rescueui/bin/python -c \
    'import blake3, pyudev, rich, textual, zstandard, rescueui.cli, rescueui.core.unattended'
version=$(inchroot /opt/rescueui/bin/rescueui --version)
log "installed: $version, $(inchroot /opt/rescueui/bin/python --version)"

log "stage 2: system configuration (live-image/rootfs/)"
cp -a "$here/rootfs/." "$rootfs/"
echo rescueui >"$rootfs/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\trescueui\n' >"$rootfs/etc/hosts"
: >"$rootfs/etc/fstab"
inchroot passwd -d root >/dev/null
# Autologin consoles: the app on tty1 and ttyS0 (launcher from root's .bash_profile),
# plain shells on tty2 and tty3. No logind/dbus here, so gettys are enabled one by one.
inchroot systemctl enable -q getty@tty1.service getty@tty2.service getty@tty3.service \
    serial-getty@ttyS0.service rescueui-unattended.service
# Nothing here needs these at boot; they would only cost time.
inchroot systemctl mask -q apt-daily.timer apt-daily-upgrade.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer smartmontools.service 2>/dev/null || true
# Compiled bytecode of the project: the squashfs is read-only, so compile it now.
inchroot /opt/rescueui/bin/python -m compileall -q /opt/rescueui/lib >/dev/null || true
printf '%s\nbuilt %s from %s (%s), squashfs %s\n' "$version" "$(date -u +%Y-%m-%dT%H:%MZ)" \
    "$mirror" "$suite" "$COMPRESS" >"$rootfs/etc/rescueui-release"
cleanup_mounts

# --- stage 3: squashfs, kernel, initrd, boot menu, ISO -----------------------------------
log "stage 3: squashfs ($COMPRESS)"
safe_rm "$isodir"
mkdir -p "$isodir/live" "$isodir/boot/grub"
kernel=$(ls "$rootfs"/boot/vmlinuz-* | sort -V | tail -n 1)
initrd=$(ls "$rootfs"/boot/initrd.img-* | sort -V | tail -n 1)
cp "$kernel" "$isodir/live/vmlinuz"
cp "$initrd" "$isodir/live/initrd.img"
mksquashfs "$rootfs" "$isodir/live/filesystem.squashfs" -noappend -quiet -no-progress \
    "${squash_comp[@]}" -wildcards -e 'boot/*' 'proc/*' 'sys/*' 'dev/*' 'run/*' 'tmp/*' >/dev/null
cp "$here/grub.cfg" "$isodir/boot/grub/grub.cfg"
cp "$rootfs/etc/rescueui-release" "$isodir/rescueui-release.txt"

log "stage 3: grub-mkrescue (BIOS + UEFI)"
iso=$out/rescueui.iso
rm -f "$iso"
grub-mkrescue -o "$iso.tmp" --compress=xz --locales= --themes= --fonts= \
    --product-name=rescueui --product-version="${version#rescueui }" \
    "$isodir" -- -volid RESCUEUI >"$build/grub-mkrescue.log" 2>&1 ||
    {
        tail -n 20 "$build/grub-mkrescue.log" >&2
        die "grub-mkrescue failed (see $build/grub-mkrescue.log)"
    }
mv "$iso.tmp" "$iso"
(cd "$out" && sha256sum rescueui.iso >rescueui.iso.sha256)
size=$(stat -c %s "$iso")
log "done in $(($(date +%s) - started)) s: $iso ($((size / 1048576)) MiB, squashfs $COMPRESS)"
if [ "$size" -gt $((400 * 1048576)) ]; then
    log "warning: the ISO is larger than the 400 MiB goal"
fi
