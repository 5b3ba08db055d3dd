#!/usr/bin/env bash
# After `dd` of rescueui.iso to a USB stick: turn the rest of the stick into an ext4 partition
# (label RESCUEIMG) for images and reports. The stick still boots (BIOS and UEFI).
#
#   sudo live-image/add-data-partition.sh /dev/sdX [LABEL]
#
# It moves the backup GPT header to the real end of the stick, appends one Linux partition
# over the free space, and formats it. Asks for the device name again before writing.
set -euo pipefail
die() {
    echo "add-data-partition: $*" >&2
    exit 1
}
[ $# -ge 1 ] || die "usage: $0 /dev/sdX [LABEL]"
dev=$1
label=${2:-RESCUEIMG}
[ "$(id -u)" = 0 ] || die "run as root"
[ -b "$dev" ] || die "$dev is not a block device"
[ "$(lsblk -dno TYPE "$dev")" = disk ] || [ "$(lsblk -dno TYPE "$dev")" = loop ] ||
    die "$dev is not a whole disk"
if lsblk -lnpo MOUNTPOINTS "$dev" 2>/dev/null | grep -q .; then
    die "$dev (or one of its partitions) is mounted; unmount it first"
fi
blkid -p -o value -s LABEL "$dev" 2>/dev/null | grep -qx RESCUEUI ||
    die "$dev does not hold the rescueui ISO (no ISO 9660 volume RESCUEUI); dd it first"
lsblk -o NAME,SIZE,MODEL,SERIAL,LABEL "$dev"
read -r -p "Add an ext4 partition '$label' over the free space of $dev? Type the device name ($dev): " answer
[ "$answer" = "$dev" ] || die "not confirmed; nothing written"

out=$(sfdisk --quiet --relocate gpt-bak-std "$dev" 2>&1) || die "moving the backup GPT failed: $out"
out=$(echo "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"$label\"" |
    sfdisk --quiet --append --no-reread --no-tell-kernel "$dev" 2>&1) ||
    die "adding the partition failed: $out"
partx -u "$dev" 2>/dev/null || partx -a "$dev" 2>/dev/null || true
udevadm settle --timeout=30 || true
part=$(lsblk -lnpo NAME,TYPE "$dev" | awk '$2 == "part" { p = $1 } END { print p }')
[ -b "$part" ] || die "the new partition did not appear (try: partprobe $dev)"
mkfs.ext4 -q -F -L "$label" "$part"
echo "done: $part is ext4 '$label'. Put images in it (e.g. rescueui capture ... /mnt/images/NAME)."
