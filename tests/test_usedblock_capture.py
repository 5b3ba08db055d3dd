"""Used-block capture (image format 2) and what a restore does with the space no filesystem
uses: real loop devices, filesystems whose free space holds deleted random data, partclone
for the comparison, fsck and file trees for the proof."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescueui.core.capture import capture
from rescueui.core.errors import CorruptImageError, UnsupportedImageError
from rescueui.core.identity import confirm_target, confirmation_code, identity_of
from rescueui.core.image import INDEX_HEADER, INDEX_RECORD, Image, save_manifest
from rescueui.core.report import JobReport
from rescueui.core.restore import plan_restore, restore
from tests import fsfixtures as fx
from tests.imagefixtures import STDLIB
from tests.loopdisk import LoopDisk, LoopFactory, have_root, run, udev_running

pytestmark = pytest.mark.skipif(
    not (have_root() and udev_running()),
    reason="needs root and a running udev (loop devices, partitions, mounts)",
)

MiB = 1024 * 1024
SWAP_UUID = "5b1c3f7e-2a44-4c3e-9d55-0e6f1a2b3c4d"
TABLE = """label: gpt
start=2048, size=524288, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
size=196608, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
size=65536, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"
size=32768, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="raw"
"""
DISK_MIB = 420


def _fill_free_space(mountpoint: Path, mib: int) -> None:
    """Write random data into the filesystem and delete it: free space with old data."""
    junk = mountpoint / "junk.bin"
    with open(junk, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
        os.fsync(f.fileno())
    junk.unlink()
    os.sync()


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _vfat_tree(dev: str, dest: Path) -> dict[str, str]:
    dest.mkdir(parents=True, exist_ok=True)
    run(["mcopy", "-s", "-n", "-i", dev, "::/", str(dest)])
    return _tree(dest)


@pytest.fixture(scope="module")
def factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopFactory]:
    f = LoopFactory(tmp_path_factory.mktemp("usedblocks"))
    try:
        yield f
    finally:
        f.cleanup()


@pytest.fixture(scope="module")
def source(factory: LoopFactory, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A GPT disk like a server's: ext4 and vfat whose free space holds deleted random data,
    a swap area with a label and UUID, and a partition without a filesystem."""
    tmp = tmp_path_factory.mktemp("src")
    disk = factory.create(DISK_MIB, table=TABLE)
    run(["mkfs.ext4", "-q", "-F", "-L", "root", disk.part(1)])
    run(["mkfs.vfat", "-n", "EFI", disk.part(2)])
    run(["mkswap", "-q", "-L", "swap0", "-U", SWAP_UUID, disk.part(3)])
    with open(disk.part(4), "wb") as f:
        f.write(os.urandom(16 * MiB))
    mnt = tmp / "mnt"
    disk.mount(1, mnt)
    _fill_free_space(mnt, 200)
    shutil.copytree(STDLIB / "email", mnt / "email")
    shutil.copytree(STDLIB / "json", mnt / "json")
    (mnt / "data.bin").write_bytes(os.urandom(12 * MiB))
    root_tree = _tree(mnt)
    disk.umount_all()
    junk = tmp / "junk.bin"
    junk.write_bytes(os.urandom(70 * MiB))
    run(["mcopy", "-i", disk.part(2), str(junk), "::/junk.bin"])
    run(["mdel", "-i", disk.part(2), "::/junk.bin"])
    run(["mcopy", "-s", "-i", disk.part(2), str(STDLIB / "json"), "::/"])
    efi_tree = _vfat_tree(disk.part(2), tmp / "efi")
    ids = {n: fx.blkid_ids(disk.part(n)) for n in (1, 2, 3)}
    with open(disk.part(4), "rb") as f:
        raw = hashlib.sha256(f.read()).hexdigest()
    image = tmp / "image"
    report = capture(disk.path, image)
    return {
        "disk": disk,
        "image": image,
        "report": report,
        "root_tree": root_tree,
        "efi_tree": efi_tree,
        "ids": ids,
        "raw": raw,
        "tmp": tmp,
    }


def test_capture_stores_only_used_blocks(source: dict) -> None:
    image = Image.open(source["image"])
    m = image.manifest
    assert m.version == 2
    p1, p2, p3, p4 = (m.partition_stream(n) for n in (1, 2, 3, 4))
    assert p1 and p2 and p3 and p4
    assert p1.used_map == "partclone.ext4" and p2.used_map.startswith("partclone.")
    # ext4: ~30 MiB of files in 256 MiB; the 200 MiB of deleted random data is not stored
    assert p1.used_bytes is not None and p1.used_bytes < 0.35 * p1.size_bytes
    assert p1.unused_chunks > 0 and p1.compressed_bytes < 40 * MiB
    assert p2.compressed_bytes < 10 * MiB
    # swap: a fresh header only; no filesystem: every byte, and why
    assert p3.used_bytes is not None and p3.used_bytes <= 64 * 1024
    assert p3.compressed_bytes < 64 * 1024
    assert p4.used_bytes is None and p4.all_blocks and "no filesystem" in p4.all_blocks
    # the image is about as small as what Clonezilla stores (partclone | zstd -3)
    tmp = source["tmp"]
    pc = fx.partclone_zstd_size(
        source["disk"].part(1), "ext4", tmp / "pc1.zst"
    ) + fx.partclone_zstd_size(source["disk"].part(2), "vfat", tmp / "pc2.zst")
    ours = p1.compressed_bytes + p2.compressed_bytes
    assert ours <= 1.10 * pc, (ours, pc)
    # the operator sees it: per partition used vs total, in the report
    notes = "\n".join(source["report"].notes)
    assert "p1 ext4:" in notes and "used of" in notes and "not copied" in notes
    assert "p3 swap:" in notes and "fresh swap header" in notes
    # progress counted the bytes moved, not the disk size
    assert source["report"].bytes_done < 0.5 * DISK_MIB * MiB


def test_zstd_dc_of_a_used_block_stream_is_the_partition(source: dict, tmp_path: Path) -> None:
    """What `zstd -dc p1.zst` yields (docs/image-format.md): the whole partition, with the
    space the filesystem does not use as zeros — a filesystem fsck finds clean."""
    raw = tmp_path / "p1.raw"
    subprocess.run(f"zstd -q -dc {source['image'] / 'p1.zst'} > {raw}", shell=True, check=True)
    assert raw.stat().st_size == 256 * MiB
    run(["e2fsck", "-fn", str(raw)])


def _restore_onto(
    factory: LoopFactory, image: Path, *, rotational: str, exact: bool = False
) -> tuple[LoopDisk, JobReport]:
    return fx.restore_onto(factory, image, DISK_MIB, rotational=rotational, exact=exact)


def _check_restored(source: dict, target: LoopDisk, tmp: Path) -> None:
    run(["e2fsck", "-fn", target.part(1)])
    run(["fsck.vfat", "-n", target.part(2)])
    for n in (1, 2, 3):
        assert fx.blkid_ids(target.part(n)) == source["ids"][n], n
    with open(target.part(4), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == source["raw"]
    mnt = tmp / "restored"
    target.mount(1, mnt, options="ro")
    try:
        assert _tree(mnt) == source["root_tree"]
    finally:
        target.umount_all()
    assert _vfat_tree(target.part(2), tmp / "efi") == source["efi_tree"]


def _unused_space_reads_zero(image: Path, target: LoopDisk) -> bool:
    """Whether the target's first MiB of the last range p1's filesystem does not use is
    zeros (the target was random before the restore)."""
    img = Image.open(image)
    s = img.manifest.partition_stream(1)
    assert s is not None
    first, _count = img.unused_runs(s)[-1]
    with open(target.path, "rb") as f:
        f.seek(s.start_bytes + first * s.chunk_size)
        return f.read(MiB) == bytes(MiB)


def test_restore_onto_spinning_disk_leaves_unused_space(
    source: dict, factory: LoopFactory, tmp_path: Path
) -> None:
    target, report = _restore_onto(factory, source["image"], rotational="1")
    try:
        unused = report.details["unused_space"]
        assert unused["zeroed"] is False and "spinning" in unused["reason"]
        assert unused["left_bytes"] > 100 * MiB and unused["zeroed_bytes"] == 0
        assert any("left as it was" in n for n in report.notes)
        # the pre-flight said so before anything was written
        said = [f for f in report.findings if f.code == "unused-space"]
        assert said and "left as it is" in said[0].message and "spinning" in said[0].detail
        # the old (random) bytes are still there: nothing was written in that space
        assert not _unused_space_reads_zero(source["image"], target)
        _check_restored(source, target, tmp_path)
    finally:
        factory.remove(target)


def test_restore_exact_zeroes_unused_space_on_a_spinning_disk(
    source: dict, factory: LoopFactory, tmp_path: Path
) -> None:
    target, report = _restore_onto(factory, source["image"], rotational="1", exact=True)
    try:
        unused = report.details["unused_space"]
        assert unused["zeroed"] is True and unused["left_bytes"] == 0
        assert unused["zeroed_bytes"] > 100 * MiB
        assert _unused_space_reads_zero(source["image"], target)
        _check_restored(source, target, tmp_path)
    finally:
        factory.remove(target)


def test_restore_zeroes_unused_space_where_the_target_does_it_fast(
    source: dict, factory: LoopFactory, tmp_path: Path
) -> None:
    target, report = _restore_onto(factory, source["image"], rotational="0")
    try:
        unused = report.details["unused_space"]
        assert unused["zeroed"] is True and "WRITE ZEROES" in unused["reason"]
        said = [f for f in report.findings if f.code == "unused-space"]
        assert said and "made zero" in said[0].message
        assert "blkzeroout" in report.details["zero_methods"]
        assert _unused_space_reads_zero(source["image"], target)
        _check_restored(source, target, tmp_path)
    finally:
        factory.remove(target)


def test_format_1_images_still_restore(source: dict, factory: LoopFactory, tmp_path: Path) -> None:
    """An image in the previous release's format (written by the version-1 code path: every
    byte, index version 1) opens and restores."""
    image = tmp_path / "v1"
    capture(source["disk"].path, image, format_version=1)
    m = json.loads((image / "manifest.json").read_text())
    assert m["version"] == 1
    for s in m["streams"]:
        with open(image / s["index_file"], "rb") as f:
            assert INDEX_HEADER.unpack(f.read(INDEX_HEADER.size))[1] == 1
        assert s["used_bytes"] is None and s["unused_chunks"] == 0
    target, report = _restore_onto(factory, image, rotational="1")
    try:
        assert report.details["unused_space"]["left_bytes"] == 0
        _check_restored(source, target, tmp_path)
    finally:
        factory.remove(target)


def _copy_image(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("reports", ".rescueui-*"))
    return dst


def _patch_flags(image: Path, stream: str, chunk: int, flags: int) -> None:
    """Rewrite one index record's flags and re-hash index and manifest (a careful forger)."""
    import blake3

    idx = image / f"{stream}.idx"
    data = bytearray(idx.read_bytes())
    data[INDEX_HEADER.size + chunk * INDEX_RECORD.size + 16] = flags
    idx.write_bytes(bytes(data))
    img_manifest = json.loads((image / "manifest.json").read_text())
    for s in img_manifest["streams"]:
        if s["name"] == stream:
            s["index_blake3"] = blake3.blake3(bytes(data)).hexdigest()
    (image / "manifest.json").write_text(json.dumps(img_manifest))
    from rescueui.core.image import manifest_hash

    img_manifest.pop("manifest_blake3", None)
    img_manifest["manifest_blake3"] = manifest_hash(img_manifest)
    (image / "manifest.json").write_text(json.dumps(img_manifest))


def test_unused_flag_without_zero_is_refused(source: dict, tmp_path: Path) -> None:
    image = _copy_image(source["image"], tmp_path / "img")
    img = Image.open(image)
    s = img.manifest.partition_stream(1)
    assert s is not None
    first, _ = img.unused_runs(s)[0]
    _patch_flags(image, "p1", first, 0x02)
    with pytest.raises(CorruptImageError, match="impossible flags"):
        Image.open(image)


def test_unused_count_must_match_the_manifest(source: dict, tmp_path: Path) -> None:
    image = _copy_image(source["image"], tmp_path / "img")
    img = Image.open(image)
    s = img.manifest.partition_stream(1)
    assert s is not None
    first, _ = img.unused_runs(s)[0]
    _patch_flags(image, "p1", first, 0x01)  # zero, no longer unused
    with pytest.raises(CorruptImageError, match="unused by the"):
        Image.open(image)


def test_a_format_1_manifest_refuses_a_version_2_index(source: dict, tmp_path: Path) -> None:
    image = _copy_image(source["image"], tmp_path / "img")
    m = Image.open(image).manifest
    m.version = 1
    save_manifest(image, m)
    with pytest.raises(UnsupportedImageError, match="version-1 rescueui index"):
        Image.open(image)


def test_swap_and_raw_partitions_in_the_report(source: dict) -> None:
    streams = {s["name"]: s for s in source["report"].streams}
    assert streams["p3"]["fs_uuid"] == SWAP_UUID and streams["p3"]["used_map"] == "mkswap"
    assert streams["p4"]["all_blocks"]


def test_a_target_that_only_pretends_to_zero_fast_keeps_its_unused_space(
    source: dict, tmp_path: Path
) -> None:
    """A loop device on tmpfs offers WRITE ZEROES, but tmpfs cannot zero a range in place:
    the kernel writes the zeros instead (and then drops WRITE ZEROES). The restore probes
    the first unused range before its writes, sees it, and leaves the unused space."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=512m", "tmpfs", str(mnt)])
    dev = ""
    try:
        backing = mnt / "target.img"
        with open(backing, "wb") as f:
            for _ in range(DISK_MIB):
                f.write(os.urandom(MiB))
        dev = run(["losetup", "--find", "--show", "--direct-io=on", str(backing)]).stdout.strip()
        name = os.path.basename(dev)
        Path(f"/sys/block/{name}/queue/rotational").write_text("0")
        assert int(Path(f"/sys/block/{name}/queue/write_zeroes_max_bytes").read_text()) > 0
        plan = plan_restore(
            source["image"],
            confirm_target(dev, confirmation_code(identity_of(dev))),
            accept_warnings=True,
        )
        assert plan.unused.zero  # what the queue says, before the probe
        report = restore(plan)
        unused = report.details["unused_space"]
        assert unused["zeroed"] is False and "after all" in unused["reason"], unused
        assert unused["left_bytes"] > 100 * MiB and unused["zeroed_bytes"] == 0
        assert report.outcome == "success"
    finally:
        if dev:
            subprocess.run(["losetup", "-d", dev], check=False)
        subprocess.run(["umount", "-l", str(mnt)], check=False)
