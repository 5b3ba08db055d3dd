"""Image discovery lists every kind with what it is: our folders, Clonezilla folders, VM
disks and raw/compressed raw image files found by content, from files made by the real
tools (sfdisk, qemu-img, zstd, xz, gzip, bmaptool) in a temporary folder."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from rescueui.core.session import (
    ImageSummary,
    Session,
    find_images,
    image_like_name,
    summarize_image,
)
from tests.test_restore import capture_to

MiB = 1024 * 1024
GPT = "label: gpt\nsize=6MiB, type=L, name=one\ntype=L, name=two\n"


def run(*cmd: str | Path, stdin: Path | None = None, stdout: Path | None = None) -> None:
    src = open(stdin, "rb") if stdin else None
    dst = open(stdout, "wb") if stdout else None
    try:
        subprocess.run([str(c) for c in cmd], stdin=src, stdout=dst, check=True)
    finally:
        for f in (src, dst):
            if f is not None:
                f.close()


def raw_disk(path: Path, size_mib: int = 16) -> Path:
    """A raw disk with a GPT (sfdisk) and 3 MiB of random data in its first partition."""
    with open(path, "wb") as f:
        f.truncate(size_mib * MiB)
    subprocess.run(["sfdisk", "-q", str(path)], input=GPT, text=True, check=True)
    with open(path, "r+b") as f:
        f.seek(2 * MiB)
        f.write(random.Random(7).randbytes(3 * MiB))
    return path


def by_name(found: list[ImageSummary]) -> dict[str, ImageSummary]:
    return {s.name: s for s in found}


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A medium as a technician would bring it: images of every kind and things that are not."""
    root = tmp_path_factory.mktemp("media")
    work = tmp_path_factory.mktemp("work")
    disk = raw_disk(work / "disk.raw")
    images = root / "images"
    images.mkdir()
    run("cp", "--sparse=always", disk, images / "web01.img")
    run("bmaptool", "-q", "create", "-o", images / "web01.img.bmap", images / "web01.img")
    run("qemu-img", "convert", "-O", "qcow2", disk, images / "vm01.qcow2")
    # through a pipe, zstd records no content size: the listing estimates it (GPT header)
    run("zstd", "-q", "-c", stdin=disk, stdout=images / "db01.img.zst")
    run("xz", "-0", "-T1", "-c", disk, stdout=images / "db02.img.xz")  # xz: size in its index
    # not images
    rnd = random.Random(42)
    (images / "junk.img").write_bytes(b"\x00" * 510 + b"\x55\xaa" + rnd.randbytes(2 * MiB))
    (images / "noise.img").write_bytes(rnd.randbytes(2 * MiB))
    (images / "noise.bin").write_bytes(rnd.randbytes(2 * MiB))
    run("gzip", "-1", "-c", images / "noise.img", stdout=images / "noise.img.gz")
    (images / "notes.txt.gz").write_bytes(b"")
    tiny = work / "tiny.img"
    with open(tiny, "wb") as f:
        f.truncate(512 * 1024)
    subprocess.run(["sfdisk", "-q", str(tiny)], input="label: gpt\ntype=L\n", text=True, check=True)
    shutil.copy(tiny, images / "tiny.img")
    (images / "vm01.xml").write_text("<domain type='kvm'><name>vm01</name></domain>\n")
    (images / "raw-copy.dd").write_bytes((images / "web01.img").read_bytes())
    os.symlink(images / "web01.img", images / "link.img")
    os.symlink(images, root / "linked-folder")
    # a Clonezilla folder: a 'disk' and a 'parts' file; nothing inside it is listed
    cz = root / "clonezilla" / "2026-11-20-sda"
    cz.mkdir(parents=True)
    (cz / "disk").write_text("sda\n")
    (cz / "parts").write_text("sda1 sda2\n")
    shutil.copy(disk, cz / "inside.img")
    # our own folder, captured from the raw disk (module scope: the per-test private writer
    # lock is not set up yet, so this capture gets its own, never the machine's)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESCUEUI_LOCK", str(work / "rescueui.lock"))
        capture_to(disk, root / "ours" / "server-a")
    # too deep: root/a/b/c/deep.img is four levels down
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    shutil.copy(disk, deep / "deep.img")
    return root


def test_every_kind_is_listed_with_what_it_is(media: Path) -> None:
    t0 = time.monotonic()
    found = find_images([media])
    took = time.monotonic() - t0
    names = by_name(found)
    assert set(names) == {
        "web01.img", "vm01.qcow2", "db01.img.zst", "db02.img.xz", "raw-copy.dd",
        "2026-11-20-sda", "server-a",
    }, sorted(names)  # fmt: skip
    # listing is bounded work per image, not a restore's worth of reading
    assert took < 30, took

    raw = names["web01.img"]
    assert raw.ok and raw.kind == "raw" and raw.kind_label == "raw"
    assert raw.description.startswith("raw disk image") and "bmap web01.img.bmap" in raw.description
    assert raw.integrity.startswith("range-") and "web01.img.bmap" in raw.integrity_words
    assert raw.extent_bytes == 16 * MiB and not raw.size_is_estimate
    assert raw.table_type == "gpt"
    assert [s.size_bytes for s in raw.streams] == [6 * MiB, 8 * MiB]  # sfdisk aligns to 1 MiB

    vm = names["vm01.qcow2"]
    assert vm.ok and vm.kind == "vm-disk" and vm.format == "qcow2" and vm.kind_label == "qcow2"
    assert "qcow2" in vm.description and "VM disk" in vm.description
    assert vm.integrity == "none" and vm.extent_bytes == 16 * MiB and vm.table_type == "gpt"
    assert not vm.size_is_estimate

    zst = names["db01.img.zst"]
    assert zst.ok and zst.kind == "raw" and zst.format == "zstd" and zst.kind_label == "raw.zst"
    assert zst.size_is_estimate, zst.description
    assert "not exact" in zst.description and zst.extent_bytes == 16 * MiB
    assert zst.table_type == "gpt"

    xz = names["db02.img.xz"]
    assert xz.ok and xz.kind_label == "raw.xz" and not xz.size_is_estimate
    assert xz.extent_bytes == 16 * MiB

    cz = names["2026-11-20-sda"]
    assert cz.kind == "clonezilla"
    # the kind module may not be there yet; either way the entry says what it is or why not
    assert cz.ok or "clonezilla" in (cz.error or "").lower() or "Clonezilla" in (cz.error or "")

    ours = names["server-a"]
    assert ours.ok and ours.kind == "rescueui" and ours.integrity == "chunk-blake3"
    assert ours.description.startswith("rescueui image") and not ours.size_is_estimate
    assert ours.created and ours.stored_bytes > 0


def test_symlinks_tiny_files_and_non_images_are_not_listed(media: Path) -> None:
    paths = {s.path for s in find_images([media])}
    images = media / "images"
    for name in (
        "link.img",  # a symlink to an image: not followed
        "junk.img",  # an MBR signature, but no valid table entries
        "noise.img",  # no partition table: not a disk image by its first sectors
        "noise.bin",  # not named like an image
        "noise.img.gz",  # compressed, but decompresses to no disk
        "notes.txt.gz",
        "tiny.img",  # a table, but under 1 MiB
        "web01.img.bmap",
        "vm01.xml",
    ):
        assert images / name not in paths, name
    assert not any("linked-folder" in p.parts for p in paths)
    assert not any(p.name in ("inside.img", "deep.img") for p in paths)
    # one level deeper is found when the search starts lower
    assert [s.name for s in find_images([media / "a"])] == ["deep.img"]


def test_a_typed_file_is_shown_whatever_its_name(media: Path) -> None:
    """The operator typed the path: it is opened and shown (or refused with the reason)."""
    session = Session(mount_media=False)
    session.image_roots = lambda: []  # type: ignore[method-assign]  # no media of this machine
    found = by_name(
        session.find_images([media / "images" / "noise.bin", media / "images" / "vm01.qcow2"])
    )
    assert set(found) == {"noise.bin", "vm01.qcow2"}
    assert found["noise.bin"].kind == "raw" and found["noise.bin"].table_type is None
    assert found["vm01.qcow2"].kind_label == "qcow2"
    missing = session.find_images([media / "images" / "gone.img"])
    assert len(missing) == 1 and not missing[0].ok and "No such file" in (missing[0].error or "")


def test_damaged_images_are_listed_with_the_reason(tmp_path: Path) -> None:
    disk = raw_disk(tmp_path / "disk.raw")
    folder = tmp_path / "media"
    folder.mkdir()
    run("qemu-img", "convert", "-O", "qcow2", disk, folder / "cut.qcow2")
    with open(folder / "cut.qcow2", "r+b") as f:  # a header that names a bad size
        f.seek(24)
        f.write(b"\xff" * 8)
    run("gzip", "-1", "-c", disk, stdout=folder / "bad.img.gz")
    data = bytearray((folder / "bad.img.gz").read_bytes())
    data[20:4000] = random.Random(3).randbytes(3980)  # garbage after the magic
    (folder / "bad.img.gz").write_bytes(bytes(data))
    found = by_name(find_images([folder]))
    assert set(found) == {"cut.qcow2", "bad.img.gz"}, found
    for s in found.values():
        assert not s.ok and s.error and str(folder) in s.error, s
    assert found["cut.qcow2"].kind == "qcow2"
    assert found["bad.img.gz"].kind == "raw"


def test_estimated_size_only_while_listing(media: Path) -> None:
    """A restore's facts are measured: the same image opened for a restore is exact."""
    path = media / "images" / "db01.img.zst"
    listed = summarize_image(path, measure=False)
    assert listed.size_is_estimate
    measured = summarize_image(path)
    assert measured.ok and not measured.size_is_estimate and measured.extent_bytes == 16 * MiB
    assert "not exact" not in measured.description


@pytest.mark.parametrize(
    ("name", "like"),
    [
        ("sda.img", True), ("SDA.IMG", True), ("disk.raw", True), ("disk.dd", True),
        ("disk.img.gz", True), ("disk.img.zst", True), ("disk.raw.xz", True),
        ("disk.dd.bz2", True), ("disk.iso", False), ("disk.bin", False), ("disk.gz", False),
        ("disk.img.bmap", False), ("img", False), ("disk.img.tar", False),
    ],
)  # fmt: skip
def test_image_like_names(name: str, like: bool) -> None:
    assert image_like_name(name) is like
