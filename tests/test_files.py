"""Browse and extract files from an image without restoring it (issue 13, items 1 and 2).

A GPT disk file whose ext4 partition holds the awkward files (a symbolic link, hard links,
a sparse file, an extended attribute, a FIFO, a name with spaces and UTF-8, a folder with
its own mode and times) is captured by rescueui, converted to qcow2 by qemu-img, compressed
by zstd (read only in order: staged first) and saved as a Clonezilla folder (the commands
``ocs-sr`` runs: partclone, zstd; see tests/clonezillafixtures.py); from each, ``rescueui
files`` lists and ``rescueui extract`` copies; every extracted file is compared with the
source (SHA-256, mode, owner, times, links, holes, xattrs). Nothing stays mounted; what a
killed process left (staging files too) is released by the next one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.clirun import rescueui
from tests.clonezillafixtures import SourceDisk, save_disk
from tests.loopdisk import run

pytestmark = [pytest.mark.root]

TOOLS = [
    t
    for t in ("qemu-img", "sfdisk", "mkfs.ext4", "zstd", "parted", "partclone.ext4")
    if shutil.which(t) is None
]
MiB = 1024 * 1024
PART_START = 1 * MiB
PART_SIZE = 96 * MiB
UTF8_NAME = "Grüße aus Köln – notes.txt"


def _populate(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/app.conf").write_text("listen 8080\n")
    os.chown(root / "etc/app.conf", 1001, 1002)
    os.chmod(root / "etc/app.conf", 0o640)
    (root / "data").mkdir(mode=0o750)
    (root / "data/random.bin").write_bytes(os.urandom(3 * MiB + 123))
    os.link(root / "data/random.bin", root / "data/random-hardlink.bin")
    os.symlink("../etc/app.conf", root / "data/conf-link")
    with open(root / "data/sparse.img", "wb") as f:
        f.seek(20 * MiB)
        f.write(b"end of a sparse file\n")
    with open(root / "data/big.bin", "wb") as f:  # large: read by its extents from our image
        f.write(os.urandom(5 * MiB + 77))
        f.seek(9 * MiB + 4096 + 5)  # a hole, then data again
        f.write(os.urandom(3 * MiB + 11))
    (root / "data" / UTF8_NAME).write_text("für alle\n")
    os.setxattr(root / "data/random.bin", "user.rescueui.note", b"kept")
    os.mkfifo(root / "data/queue")
    for i in range(50):
        (root / "data" / f"small-{i:03d}.txt").write_text(f"file {i}\n" * (i + 1))
    os.utime(root / "etc/app.conf", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    os.utime(root / "data", ns=(1_500_000_000_000_000_000, 1_500_000_000_000_000_000))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The disk file, a copy of its files (the reference), our image and a qcow2 of it."""
    if TOOLS:
        pytest.skip(f"missing tools: {', '.join(TOOLS)}")
    tmp = tmp_path_factory.mktemp("files")
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(PART_START + PART_SIZE + MiB)
    run(
        ["sfdisk", "--quiet", str(disk)],
        input=f"label: gpt\nstart=2048, size={PART_SIZE // 512}, type=L\n",
    )
    part = tmp / "p1.ext4"
    with open(part, "wb") as f:
        f.truncate(PART_SIZE)
    run(["mkfs.ext4", "-q", "-F", "-L", "data", str(part)])
    mnt = tmp / "mnt"
    mnt.mkdir()
    run(["mount", "-o", "loop", str(part), str(mnt)])
    try:
        _populate(mnt)
        ref = tmp / "reference"
        run(["cp", "-a", str(mnt), str(ref)])  # what extraction must reproduce
    finally:
        run(["umount", str(mnt)])
    run(
        [
            "dd",
            f"if={part}",
            f"of={disk}",
            "bs=1M",
            f"seek={PART_START // MiB}",
            "conv=notrunc,sparse",
            "status=none",
        ]
    )
    part.unlink()
    image = tmp / "img"
    cap = rescueui("capture", disk, image, "--quiet", check=False)
    assert cap.returncode == 0, cap.stderr
    qcow2 = tmp / "disk.qcow2"
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2)])
    zst = tmp / "disk.img.zst"
    run(["zstd", "-q", "-3", str(disk), "-o", str(zst)])
    size = PART_START + PART_SIZE + MiB
    layout = {1: (PART_START, PART_SIZE, "ext4")}
    clonezilla = save_disk(SourceDisk(disk, size, "gpt", layout), tmp / "clonezilla", comp="zst")
    return {
        "disk": disk,
        "ref": ref,
        "image": image,
        "qcow2": qcow2,
        "zst": zst,
        "clonezilla": clonezilla,
        "tmp": tmp,
    }


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def _owner_gone(path: str) -> bool:
    """Whether the view folder in ``path`` (/run/rescueui/view/<pid>-<n>/...) belongs to a
    process that has ended (views of other live processes are theirs, not leftovers)."""
    m = re.search(r"/run/rescueui/view/(\d+)-", path)
    if not m:
        return False
    return not Path(f"/proc/{m.group(1)}").exists()


def leftovers() -> list[str]:
    """FUSE files, loop devices and mounts of image views whose process has ended."""
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    dead_loops = {line.split(":", 1)[0] for line in loops.splitlines() if _owner_gone(line)}
    found = [line for line in loops.splitlines() if _owner_gone(line)]
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, where = line.split()[:2]
        if _owner_gone(where) or source in dead_loops:
            found.append(line)
    return found


ALL_KINDS = ["image", "qcow2", "zst", "clonezilla"]  # the last two are read only in order


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_list_a_folder_of_any_image(source: dict[str, Path], kind: str) -> None:
    proc = rescueui("files", source[kind], "--partition", "1", "/data", "--json", check=False)
    assert proc.returncode == 0, proc.stderr
    entries = {e["name"]: e for e in json.loads(proc.stdout)["entries"]}
    assert (
        entries["random.bin"]["size"] == 3 * MiB + 123 and entries["random.bin"]["hard_links"] == 2
    )
    assert (
        entries["conf-link"]["kind"] == "link"
        and entries["conf-link"]["link_target"] == "../etc/app.conf"
    )
    assert entries["queue"]["kind"] == "fifo"
    assert UTF8_NAME in entries
    assert len([n for n in entries if n.startswith("small-")]) == 50
    plain = rescueui("files", source[kind], "--partition", "1", check=False)
    assert "data/" in plain.stdout and "etc/" in plain.stdout
    assert leftovers() == []


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_extract_keeps_everything(source: dict[str, Path], kind: str, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    proc = rescueui(
        "extract", source[kind], "--partition", "1", "/data", "/etc/app.conf", dest,
        "--onto-image-medium", "--json", "--quiet", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["outcome"] == "success"
    listed = {f["path"]: f for f in report["details"]["files"]}
    ref = source["ref"]
    rels = ("data/random.bin", "data/sparse.img", "data/big.bin", f"data/{UTF8_NAME}",
            "data/small-049.txt")  # fmt: skip
    for rel in rels:
        got, want = dest / rel, ref / rel
        assert sha256(got) == sha256(want), rel
        assert listed["/" + rel]["sha256"] == sha256(want), rel  # the report's hash is right
        a, b = os.lstat(got), os.lstat(want)
        assert (a.st_mode, a.st_uid, a.st_gid, a.st_mtime_ns) == (
            b.st_mode,
            b.st_uid,
            b.st_gid,
            b.st_mtime_ns,
        ), rel
    text = next(Path(f) for f in report["report_files"] if f.endswith(".txt")).read_text()
    assert sha256(ref / "data/random.bin") in text  # the text report lists the hashes too
    conf = dest / "app.conf"
    assert conf.read_text() == "listen 8080\n"
    st = os.lstat(conf)
    assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o640", 1001, 1002)
    assert st.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.readlink(dest / "data/conf-link") == "../etc/app.conf"
    assert (
        os.lstat(dest / "data/random.bin").st_ino
        == os.lstat(dest / "data/random-hardlink.bin").st_ino
    )
    assert os.getxattr(dest / "data/random.bin", "user.rescueui.note") == b"kept"
    assert os.lstat(dest / "data/sparse.img").st_blocks * 512 < 1 * MiB  # the hole stayed a hole
    assert os.lstat(dest / "data/big.bin").st_blocks * 512 < 9 * MiB  # its hole too
    # our image's large files are read by their extents, straight from the image (each
    # chunk checked there); the other kinds through the view
    assert report["details"]["read_by_extents"] == (2 if kind == "image" else 0), report["details"]
    assert (dest / "data/queue").is_fifo()
    data = os.lstat(dest / "data")
    assert data.st_mtime_ns == 1_500_000_000_000_000_000 and oct(data.st_mode & 0o777) == "0o750"
    assert leftovers() == []


def test_extract_refuses_the_image_medium_and_existing_files(
    source: dict[str, Path], tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    refused = rescueui(
        "extract", source["image"], "--partition", "1", "/etc", dest, "--quiet", check=False
    )
    assert refused.returncode != 0
    assert (
        "medium that holds the image" in refused.stderr and "--onto-image-medium" in refused.stderr
    )
    assert list(dest.iterdir()) == []
    (dest / "etc").mkdir()
    again = rescueui(
        "extract", source["image"], "--partition", "1", "/etc", dest, "--onto-image-medium", "--quiet",
        check=False,
    )  # fmt: skip
    assert again.returncode != 0 and "already exists" in again.stderr
    assert leftovers() == []


def _mounted_or_attached(*paths: Path | str) -> list[str]:
    """Lines of /proc/self/mountinfo and ``losetup -j`` that still name one of ``paths``."""
    found = []
    info = Path("/proc/self/mountinfo").read_text()
    for p in paths:
        found += [line for line in info.splitlines() if f" {p} " in line]
        loops = subprocess.run(["losetup", "-j", str(p)], capture_output=True, text=True)
        found += loops.stdout.splitlines()
    return found


@pytest.mark.parametrize("kind", ["zst", "clonezilla"])
def test_a_staged_view_is_sparse_and_leaves_nothing(source: dict[str, Path], kind: str) -> None:
    """A partition read only in order is staged into the view's folder: a sparse file of
    the partition's size holding only its data, read through a read-only loop device, the
    progress counted up to its total; all of it is gone when the view ends."""
    from rescueui.core.images.view import partition_view

    seen: list[tuple[int, int]] = []
    with partition_view(source[kind], 1, progress=lambda d, t: seen.append((d, t))) as view:
        backing = subprocess.run(
            ["losetup", "--noheadings", "-O", "BACK-FILE", view.device],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        staged = Path(backing)
        assert staged.parent.parent == Path("/run/rescueui/view") and staged.is_file()
        st = os.stat(staged)
        assert st.st_size == PART_SIZE
        assert st.st_blocks * 512 < PART_SIZE // 2  # holes where the filesystem has no data
        assert (view.root / "etc/app.conf").read_text() == "listen 8080\n"
        assert sha256(view.root / "data/random.bin") == sha256(source["ref"] / "data/random.bin")
        ro = subprocess.run(
            ["blockdev", "--getro", view.device], capture_output=True, text=True, check=True
        )
        assert ro.stdout.strip() == "1"
        root, device = view.root, view.device
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
    assert not staged.exists() and not staged.parent.exists()
    assert _mounted_or_attached(root, staged) == []
    assert device not in Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def small_tmpfs(tmp_path: Path):  # type: ignore[no-untyped-def]
    where = tmp_path / "small"
    where.mkdir()
    run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "tmpfs", str(where)])
    try:
        yield where
    finally:
        run(["umount", str(where)])


def test_too_little_staging_space_is_refused_clearly(
    source: dict[str, Path], small_tmpfs: Path
) -> None:
    """A staging folder with less free space than the partition's data: refused before a
    byte is written, the message names the needed and the free bytes and what to do."""
    from rescueui.core.errors import RescueError
    from rescueui.core.images.view import partition_view

    for kind in ("zst", "clonezilla"):
        with pytest.raises(RescueError) as caught:
            with partition_view(source[kind], 1, staging_dir=small_tmpfs):
                pytest.fail("the view was opened")
        exc = caught.value
        msg = str(exc)
        assert "staging file in " + str(small_tmpfs) in exc.message, msg
        need, free = re.findall(r"\((\d+) bytes\)", exc.message)
        assert int(need) > int(free) and int(free) <= 8 * MiB, msg
        assert exc.hint and "staging folder" in exc.hint and "restore the partition" in exc.hint
        assert "--" not in msg  # no command-line flags in the engine's words
        assert list(small_tmpfs.iterdir()) == []
    assert leftovers() == []


def test_staging_into_a_chosen_folder(source: dict[str, Path], tmp_path: Path) -> None:
    """The staging file goes where it is asked to; it is removed when the view ends."""
    from rescueui.core.images.view import partition_view

    place = tmp_path / "stage"
    place.mkdir()
    with partition_view(source["zst"], 1, staging_dir=place) as view:
        files = list(place.iterdir())
        assert len(files) == 1 and files[0].name.startswith("rescueui-view-")
        assert (view.root / "etc/app.conf").is_file()
        root = view.root
    assert list(place.iterdir()) == []
    assert _mounted_or_attached(root, files[0]) == []


def test_a_damaged_stream_is_not_served(source: dict[str, Path], tmp_path: Path) -> None:
    """A byte of the compressed stream altered (raw.zst; a Clonezilla partition image): the
    view is refused, the error names the file and the place; nothing is extracted."""
    zst = tmp_path / "disk.img.zst"
    blob = bytearray(source["zst"].read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    zst.write_bytes(bytes(blob))
    folder = tmp_path / "clonezilla"
    shutil.copytree(source["clonezilla"], folder)
    stream = next(folder.glob("sda1.ext4-ptcl-img.zst*"))
    blob = bytearray(stream.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    stream.write_bytes(bytes(blob))
    for image, named in ((zst, str(zst)), (folder, str(stream.name))):
        dest = tmp_path / f"out-{image.name}"
        dest.mkdir()
        proc = rescueui(
            "extract", image, "--partition", "1", "/data", dest, "--onto-image-medium",
            "--quiet", check=False,
        )  # fmt: skip
        assert proc.returncode != 0
        assert named in proc.stderr and "damaged" in proc.stderr, proc.stderr
        assert re.search(r"(byte|blocks) \d+", proc.stderr), proc.stderr
        assert list(dest.iterdir()) == []
    assert leftovers() == []


def test_a_partclone_checksum_mismatch_is_not_served(
    source: dict[str, Path], tmp_path: Path
) -> None:
    """An uncompressed Clonezilla partition image with one data byte altered: partclone's
    block checksum catches it while staging; the view is refused."""
    size = PART_START + PART_SIZE + MiB
    layout = {1: (PART_START, PART_SIZE, "ext4")}
    folder = save_disk(
        SourceDisk(source["disk"], size, "gpt", layout), tmp_path / "cz", comp="uncomp"
    )
    stream = next(folder.glob("sda1.ext4-ptcl-img.uncomp*"))
    blob = bytearray(stream.read_bytes())
    blob[len(blob) * 3 // 4] ^= 0x01
    stream.write_bytes(bytes(blob))
    proc = rescueui("files", folder, "--partition", "1", "/data", check=False)
    assert proc.returncode != 0
    assert stream.name in proc.stderr and "checksum" in proc.stderr.lower(), proc.stderr
    assert "random.bin" not in proc.stdout
    assert leftovers() == []


def _view_killed(image: Path, extra: str = "") -> str:
    """A process that opens a view of partition 1 of ``image`` (``extra``: more arguments
    of partition_view) and is killed while it holds it; the view's root."""
    script = (
        "import sys, time\n"
        "from rescueui.core.images.view import partition_view\n"
        f"with partition_view({str(image)!r}, 1{extra}) as v:\n"
        "    print(v.root, flush=True)\n"
        "    time.sleep(600)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        root = proc.stdout.readline().strip()
        assert root and (Path(root) / "etc/app.conf").is_file()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    return root


def test_a_killed_process_leaves_nothing_after_the_next_start(source: dict[str, Path]) -> None:
    root = _view_killed(source["image"])
    assert leftovers() != []  # the killed process could not clean up
    listing = rescueui("files", source["image"], "--partition", "1", "/etc", check=False)
    assert listing.returncode == 0 and "app.conf" in listing.stdout
    deadline = time.monotonic() + 10
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers() == []
    assert not os.path.exists(root)


def test_a_killed_staged_view_leaves_nothing_after_the_next_start(
    source: dict[str, Path], tmp_path: Path
) -> None:
    """A killed process that staged a partition into a chosen folder: the next view
    detaches its device and removes the staging file."""
    place = tmp_path / "stage"
    place.mkdir()
    root = _view_killed(source["zst"], f", staging_dir={str(place)!r}")
    staged = list(place.iterdir())
    assert len(staged) == 1 and _mounted_or_attached(root, staged[0]) != []
    listing = rescueui("files", source["image"], "--partition", "1", "/etc", check=False)
    assert listing.returncode == 0 and "app.conf" in listing.stdout
    assert list(place.iterdir()) == []
    assert _mounted_or_attached(root, staged[0]) == []
    assert not os.path.exists(root)


def test_a_damaged_chunk_is_not_served(source: dict[str, Path], tmp_path: Path) -> None:
    """Every data chunk of the partition altered: nothing of it is served; the failure
    names the chunk."""
    from rescueui.core.image import Image

    image = tmp_path / "img"
    shutil.copytree(source["image"], image, ignore=shutil.ignore_patterns("reports"))
    with Image.open(image) as im:
        stream = next(s for s in im.streams if s.partition_number == 1)
        chunks = [im.chunk(stream, i) for i in range(stream.chunk_count)]
        data = image / stream.data_file
    blob = bytearray(data.read_bytes())
    damaged = 0
    for c in chunks:
        if not c.zero and not c.unused and c.length > 64:
            blob[c.offset + c.length // 2] ^= 0xFF
            damaged += 1
    assert damaged
    data.write_bytes(bytes(blob))
    dest = tmp_path / "out"
    dest.mkdir()
    proc = rescueui(
        "extract", image, "--partition", "1", "/data/random.bin", dest, "--onto-image-medium",
        "--quiet", "--json", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    report = json.loads(proc.stdout)
    assert report["outcome"] == "failed"
    assert re.search(r"stream 'p1', chunk \d+", report["error"]), report["error"]
    assert list(dest.iterdir()) == []
    # a large file, read by its extents straight from the image: the same
    proc = rescueui(
        "extract", image, "--partition", "1", "/data/big.bin", dest, "--onto-image-medium",
        "--quiet", "--json", check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    report = json.loads(proc.stdout)
    assert re.search(r"stream 'p1', chunk \d+", report["error"]), report["error"]
    assert leftovers() == []
