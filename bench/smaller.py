#!/usr/bin/env python3
"""``rescueui restore`` onto a smaller disk against what a technician does by hand, in the
same run, on the same target.

For each size (``--sizes 1,2`` GiB) the source is a disk like a server's, a GPT disk image
file under the work folder:

* p1 EFI system partition, 64 MiB, FAT32 "EFI" (mtools: vfat does not mount in this kernel),
  a few boot files after a deleted 24 MiB one;
* p2 ext4 "root" and p3 xfs "data", half of the rest each, each first filled with random
  bytes that were deleted (old data in the free space, no discard), then about 30 % used by
  real files (copies of ``/usr/lib/python3.11`` and ``/usr/share/doc`` in 16 MiB batches).

It is captured once (``rescueui capture``). The targets are files on a tmpfs this bench
mounts, each behind a loop device with ``--direct-io=on`` (what is written reaches the
backing store; a read-back reads it), filled with random bytes before every run (a reused
disk): one of 60 % of the source's size, one of its full size. Then, page cache dropped
before each run, median of ``--runs``:

(a) ``rescueui restore IMAGE SMALL --yes --quiet --json --accept-warnings``: the whole job
    (plan and pre-flight, new table, the ESP copied block for block and read back, ext4 and
    xfs made again with their UUID, label and features, the files copied from the image's
    read-only view with each chunk's BLAKE3 checked, fsck, the trees compared);
(b) the same command onto the full-size target: the ordinary block-for-block restore (with
    its read-back), for reference;
(c) by hand on SMALL, from the source disk file: ``sfdisk`` of a smaller table (the same
    disk and partition ids, the ESP kept, the rest split in proportion to the old sizes,
    xfs at least the 301 MiB mkfs.xfs needs), ``partx -a``, read-only loop devices over the
    source partitions, ``dd`` of the ESP, ``mkfs.ext4 -U -L`` and ``mkfs.xfs -m uuid= -L``,
    the source filesystems mounted read-only, ``cp -a`` (rsync is not installed here),
    ``sync``, ``umount``: nothing checked;
(d) (c), then a check: the ESP read back with ``O_DIRECT`` and ``cmp``'d with the source's,
    both new filesystems mounted again (read-only, so their files are read from the target)
    and compared with the source's by a listing (``find -printf``: type, mode, owner, size,
    mtime, link target) and ``b3sum`` of every regular file.

What differs: rescueui checks every chunk it reads against the image's BLAKE3, reads the
ESP back, fscks both new filesystems and compares the trees (content, metadata, xattrs);
(c) checks nothing, (d) compares contents and the listing but runs no fsck and compares no
xattrs. rescueui reads its image (compressed, used blocks only); the hand way reads the
source disk file itself.

Run as root: ``sudo .venv/bin/python bench/smaller.py [--sizes 1,2] [--runs 3]``. It
writes only to loop devices and files it creates (a temp folder under ``--workdir`` and a
tmpfs it mounts there) and removes them afterwards. Set ``RESCUEUI_LOCK`` to a file of your
own to keep the measured rescueui out of the machine's writer lock.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    RESCUEUI_CMD,
    GiB,
    MiB,
    Result,
    Workspace,
    _mtools,
    fill_with_files,
    measure,
    rescueui_cmd,
    scramble,
    sh,
)

REPO = Path(__file__).resolve().parent.parent
SECTOR = 512
ESP_BYTES = 64 * MiB
USED_SHARE = 0.30  # of each Linux filesystem, in real files
TARGET_SHARE = 0.60  # the smaller target, of the source's size
XFS_LEAST = 301 * MiB  # mkfs.xfs refuses a smaller filesystem
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
TOOLS = ("sfdisk", "partx", "losetup", "blkid", "mkfs.vfat", "mcopy", "mdel", "mmd",
         "mkfs.ext4", "mkfs.xfs", "cp", "dd", "cmp", "b3sum", "find", "udevadm")  # fmt: skip


@dataclass
class Part:
    number: int
    fs: str  # "vfat" | "ext4" | "xfs"
    label: str
    start: int  # bytes from the start of the disk
    size: int
    fs_uuid: str = ""
    used: int = 0  # bytes the filesystem uses (statvfs)
    entries: int = 0  # files, folders and links in it


@dataclass
class ServerDisk:
    path: Path
    size: int
    table: dict  # sfdisk --json's partitiontable
    parts: list[Part] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(p.used for p in self.parts)


def _fs_uuid(dev: str) -> str:
    return sh(["blkid", "-p", "-o", "value", "-s", "UUID", dev]).stdout.strip()


def _old_data(mnt: Path) -> None:
    """Random bytes over the filesystem's free space, deleted (no discard): old data."""
    subprocess.run(
        f"head -c {shutil.disk_usage(mnt).free} /dev/urandom > {mnt}/old 2>/dev/null; "
        f"sync -f {mnt}; rm -f {mnt}/old; sync -f {mnt}",
        shell=True,
        check=True,
    )


def _synced_used(mnt: Path) -> int:
    sh(["sync", "-f", str(mnt)])
    return shutil.disk_usage(mnt).used


def make_server_disk(ws: Workspace, path: Path, size: int) -> ServerDisk:
    """The source disk (see the module doc)."""
    with open(path, "wb") as f:
        f.truncate(size)
    rest = size // SECTOR - 2048 - 34 - ESP_BYTES // SECTOR
    root = rest // 2 // 2048 * 2048
    sh(
        ["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(path)],
        input=f"label: gpt\nstart=2048, size={ESP_BYTES // SECTOR}, type={ESP_TYPE}, "
        f'name="EFI system partition"\nsize={root}, type={LINUX_TYPE}, name=rootfs\n'
        f"type={LINUX_TYPE}, name=srv-data\n",
    )
    table = json.loads(sh(["sfdisk", "--json", str(path)]).stdout)["partitiontable"]
    disk = ServerDisk(path, size, table)
    for n, (fs, label, p) in enumerate(
        zip(("vfat", "ext4", "xfs"), ("EFI", "root", "data"), table["partitions"], strict=True), 1
    ):
        disk.parts.append(Part(n, fs, label, p["start"] * SECTOR, p["size"] * SECTOR))
    esp, *linux = disk.parts
    # p1: FAT32 ESP, written by mtools on the disk file itself
    dev = ws.attach_range(path, esp.start, esp.size, read_only=False)
    try:
        sh(["mkfs.vfat", "-F", "32", "-s", "1", "-n", esp.label, dev])
    finally:
        ws.detach(dev)
    spec = f"{path}@@{esp.start}"
    files = ws.root / "esp-files"
    files.mkdir()
    (files / "junk.bin").write_bytes(os.urandom(24 * MiB))
    (files / "BOOTX64.EFI").write_bytes(b"MZ" + os.urandom(256 * 1024))
    (files / "grub.cfg").write_text(
        "search --no-floppy --label root --set=root\nconfigfile /boot/grub/grub.cfg\n"
    )
    _mtools("mcopy", "-i", spec, str(files / "junk.bin"), "::/junk.bin", check=True)
    _mtools("mdel", "-i", spec, "::/junk.bin", check=True)
    _mtools("mmd", "-i", spec, "::/EFI", "::/EFI/BOOT", "::/EFI/debian", check=True)
    _mtools("mcopy", "-i", spec, str(files / "BOOTX64.EFI"), "::/EFI/BOOT/", check=True)
    _mtools("mcopy", "-i", spec, str(files / "grub.cfg"), "::/EFI/debian/", check=True)
    shutil.rmtree(files)
    # p2, p3: ext4 and xfs, old data in their free space, then about 30 % real files
    for p in linux:
        dev = ws.attach_range(path, p.start, p.size, read_only=False)
        try:
            if p.fs == "ext4":
                sh(["mkfs.ext4", "-q", "-F", "-L", p.label, dev])
            else:
                sh(["mkfs.xfs", "-q", "-f", "-L", p.label, dev])
            mnt = ws.mount(dev, ws.root / f"build-{p.number}")
            _old_data(mnt)

            def cp(i: int, batch: list[str], mnt: Path = mnt) -> None:
                (mnt / f"copy{i}").mkdir()
                subprocess.run(["cp", "-a", *batch, str(mnt / f"copy{i}")], capture_output=True)

            # synced first: xfs counts its delayed allocations' reservations as used
            fill_with_files(lambda mnt=mnt: _synced_used(mnt), int(USED_SHARE * p.size), cp)
            sh(["sync", "-f", str(mnt)])
            p.used = shutil.disk_usage(mnt).used
            p.entries = sum(len(d) + len(f) for _, d, f in os.walk(mnt))
            ws.umount(mnt)
        finally:
            ws.detach(dev)
    for p in disk.parts:
        dev = ws.attach_range(path, p.start, p.size, read_only=True)
        try:
            p.fs_uuid = _fs_uuid(dev)
        finally:
            ws.detach(dev)
    return disk


def hand_table(disk: ServerDisk, target_bytes: int) -> str:
    """The technician's sfdisk script for the smaller disk: the source's disk and partition
    ids, types and names; the ESP as it was; the rest split between ext4 and xfs in
    proportion to their old sizes, xfs at least XFS_LEAST."""
    mib = MiB // SECTOR
    end = (target_bytes // SECTOR - 34) // mib * mib  # partitions end on a MiB boundary
    esp, root, data = disk.parts
    first = esp.start // SECTOR + esp.size // SECTOR
    left = end - first
    xfs = max(XFS_LEAST // SECTOR, left * data.size // (root.size + data.size) // mib * mib)
    rows = [f"label: gpt\nlabel-id: {disk.table['id']}"]
    starts = [esp.start // SECTOR, first, first + left - xfs]
    sizes = [esp.size // SECTOR, left - xfs, xfs]
    for src, start, size in zip(disk.table["partitions"], starts, sizes, strict=True):
        rows.append(
            f"start={start}, size={size}, type={src['type']}, uuid={src['uuid']}, "
            f'name="{src["name"]}"'
        )
    return "\n".join(rows) + "\n"


def hand_script(disk: ServerDisk, target: str, table: Path, mnt: Path, *, verify: bool) -> str:
    """The technician's commands (a bash script; its trap unmounts and detaches what it set
    up, also when a command fails)."""
    q = shlex.quote
    _esp, root, data = disk.parts
    src, m = q(str(disk.path)), q(str(mnt))
    lines = [
        "set -euo pipefail",
        f"T={q(target)}; SRC={src}; M={m}; LOOPS=()",
        "cleanup() {",
        '  for d in t3 t2 s3 s2; do mountpoint -q "$M/$d" && umount "$M/$d"; done',
        '  for l in "${LOOPS[@]}"; do losetup -d "$l"; done',
        "}",
        "trap cleanup EXIT",
        'mkdir -p "$M/s2" "$M/s3" "$M/t2" "$M/t3"',
        f'sfdisk --quiet --no-reread --no-tell-kernel --wipe always "$T" < {q(str(table))}',
        'partx -a "$T"',
        "udevadm settle",
    ]
    for p in disk.parts:
        lines += [
            f"s{p.number}=$(losetup --find --show --read-only --offset {p.start} "
            f'--sizelimit {p.size} "$SRC")',
            f'LOOPS+=("$s{p.number}")',
        ]
    lines += [
        'dd if="$s1" of="${T}p1" bs=4M oflag=direct conv=fsync status=none',
        f'mkfs.ext4 -q -F -U {root.fs_uuid} -L {root.label} "${{T}}p2"',
        f'mkfs.xfs -q -f -m uuid={data.fs_uuid} -L {data.label} "${{T}}p3"',
        'mount -o ro "$s2" "$M/s2"',
        'mount -o ro "$s3" "$M/s3"',
        'mount "${T}p2" "$M/t2"',
        'mount -o nouuid "${T}p3" "$M/t3"',  # the same UUID as the mounted source's
        'cp -a "$M/s2/." "$M/t2/"',
        'cp -a "$M/s3/." "$M/t3/"',
        'sync -f "$M/t2"; sync -f "$M/t3"',
        'umount "$M/t2" "$M/t3"',
    ]
    if verify:
        listing = (
            r"find . -type d -printf '%P\td\t%m\t%U\t%G\n' -o "
            r"-printf '%P\t%y\t%m\t%U\t%G\t%s\t%T@\t%l\n' | sort"
        )
        sums = "find . -type f -print0 | sort -z | xargs -0r b3sum"
        lines += [
            'blockdev --flushbufs "${T}p1"',
            'dd if="${T}p1" iflag=direct bs=4M status=none | cmp - "$s1"',
            'mount -o ro "${T}p2" "$M/t2"',
            'mount -o ro,nouuid "${T}p3" "$M/t3"',
            "for n in 2 3; do",
            "  for w in s t; do",
            f'    (cd "$M/$w$n" && {listing}) > "$M/list-$w"',
            f'    (cd "$M/$w$n" && {sums}) > "$M/sums-$w"',
            "  done",
            '  test -s "$M/sums-s"',  # not an empty mount
            '  diff "$M/list-s" "$M/list-t" >&2',
            '  diff "$M/sums-s" "$M/sums-t" >&2',
            "done",
        ]
    return "\n".join(lines) + "\n"


def newest_report(image: Path) -> dict:
    reports = sorted((image / "reports").glob("restore-*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(reports[-1].read_text()) if reports else {}


@dataclass
class Case:
    key: str  # "a", "b", "c", "d"
    what: str
    wall: float | None = None  # median seconds; None: failed
    walls: list[float] = field(default_factory=list)
    error: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # (a), (b): medians


def run_case(
    case: Case, size: int, runs: int, cmd: list[str] | str, prep, image: Path | None
) -> Case:
    """Measure ``cmd``; for a rescueui restore, check each run's report and keep its
    phases. A failure is recorded with the report's error (or the command's output)."""
    phases: list[dict[str, float]] = []
    outcomes: list[str] = []

    def after() -> None:
        if image is None:
            return
        rep = newest_report(image)
        outcomes.append(str(rep.get("outcome")))
        phases.append({k: float(v.get("seconds", 0)) for k, v in rep.get("phases", {}).items()})

    try:
        res: Result = measure(f"({case.key}) {case.what}", size, runs, cmd, prep=prep, after=after)
    except RuntimeError as exc:
        rep = newest_report(image) if image is not None else {}
        case.error = (
            f"{rep.get('error')} ({rep.get('error_type')}; hint: {rep.get('hint')})"
            if rep.get("outcome") == "failed"
            else str(exc)[-1500:]
        )
        print(f"  ({case.key}) FAILED: {case.error}", flush=True)
        return case
    if any(o != "success" for o in outcomes):
        case.error = f"report outcomes {outcomes}"
        print(f"  ({case.key}) report says {outcomes}", flush=True)
    case.walls = [s.wall for s in res.samples]
    case.wall = res.wall
    if phases:
        names = dict.fromkeys(k for ph in phases for k in ph)
        case.phases = {k: statistics.median(ph.get(k, 0.0) for ph in phases) for k in names}
    return case


def run_size(args: argparse.Namespace, ws: Workspace, gib: int) -> dict:
    size = gib * GiB
    small = int(size * TARGET_SHARE) // MiB * MiB
    print(f"\n== {gib} GiB source disk: making it ...", flush=True)
    disk = make_server_disk(ws, ws.root / f"server-{gib}g.raw", size)
    for p in disk.parts:
        print(
            f"  p{p.number} {p.fs} {p.label!r} {p.size / MiB:.0f} MiB"
            + (f", {p.used / MiB:.0f} MiB used, {p.entries} entries" if p.used else ""),
            flush=True,
        )
    image = ws.root / f"img-{gib}g"
    res = measure("rescueui capture (once)", size, 1, [*rescueui_cmd(), "capture",
                  str(disk.path), str(image), "--quiet"])  # fmt: skip
    capture_s = res.wall
    tdir = ws.mount(
        "tmpfs", ws.root / f"targets-{gib}g", "-t", "tmpfs", "-o", f"size={small + size + 64 * MiB}"
    )
    small_file, full_file = tdir / "small.img", tdir / "full.img"
    for f, n in ((small_file, small), (full_file, size)):
        with open(f, "wb") as fh:
            fh.truncate(n)
    sdev = ws.attach(small_file, direct_io=True)
    fdev = ws.attach(full_file, direct_io=True)
    table = ws.root / f"hand-{gib}g.sfdisk"
    table.write_text(hand_table(disk, small))
    mnt = ws.root / "hand"
    scripts = {}
    for verify in (False, True):
        s = ws.root / f"hand-{gib}g{'-verify' if verify else ''}.sh"
        s.write_text(hand_script(disk, sdev, table, mnt, verify=verify))
        scripts[verify] = s
    flags = ["--yes", "--quiet", "--json", "--accept-warnings"]
    cases: list[Case] = []
    try:
        print(
            f"-- onto a {small / MiB:.0f} MiB target ({sdev}) and a {gib} GiB one ({fdev}), "
            "both random-filled before each run",
            flush=True,
        )
        fill_small = lambda: scramble(sdev, small)  # noqa: E731
        fill_full = lambda: scramble(fdev, size)  # noqa: E731
        cases.append(
            run_case(
                Case("a", f"rescueui restore onto the {small / MiB:.0f} MiB disk"),
                size,
                args.runs,
                [*rescueui_cmd(), "restore", str(image), sdev, *flags],
                fill_small,
                image,
            )
        )
        cases.append(
            run_case(
                Case("b", f"rescueui restore block for block onto the {gib} GiB disk"),
                size,
                args.runs,
                [*rescueui_cmd(), "restore", str(image), fdev, *flags],
                fill_full,
                image,
            )
        )
        cases.append(
            run_case(
                Case("c", "by hand: sfdisk, dd ESP, mkfs -U -L, cp -a, sync"),
                size,
                args.runs,
                f"bash {scripts[False]}",
                fill_small,
                None,
            )
        )
        cases.append(
            run_case(
                Case("d", "by hand + verify (cmp ESP, find listing, b3sum)"),
                size,
                args.runs,
                f"bash {scripts[True]}",
                fill_small,
                None,
            )
        )
    finally:
        ws.detach(sdev)
        ws.detach(fdev)
        ws.umount(tdir)
        shutil.rmtree(image, ignore_errors=True)
        disk.path.unlink(missing_ok=True)
    return {
        "size_gib": gib,
        "target_mib": small // MiB,
        "used": {p.fs: p.used for p in disk.parts if p.used},
        "entries": {p.fs: p.entries for p in disk.parts if p.entries},
        "capture_s": capture_s,
        "hand_table": table.read_text(),
        "cases": [c.__dict__ for c in cases],
    }


def _fmt(x: float | None) -> str:
    return "FAILED" if x is None else f"{x:.2f} s"


def table(results: list[dict], runs: int) -> str:
    head = f"| size | case | wall (median of {runs}) | runs (min-max) | rescueui (a) / this |"
    lines = [head, "|---|---|---|---|---|"]
    for r in results:
        cases = {c["key"]: c for c in r["cases"]}
        a = cases.get("a", {}).get("wall")
        for c in r["cases"]:
            ratio = f"{a / c['wall']:.2f}" if a and c["wall"] else ""
            spread = f"{min(c['walls']):.2f}-{max(c['walls']):.2f} s" if c["walls"] else ""
            lines.append(
                f"| {r['size_gib']} GiB | ({c['key']}) {c['what']} | {_fmt(c['wall'])} "
                f"| {spread} | {ratio} |"
            )
    return "\n".join(lines)


def phase_lines(results: list[dict]) -> list[str]:
    out = []
    for r in results:
        for c in r["cases"]:
            if c["key"] not in ("a", "b") or c["wall"] is None:
                continue
            ph = c["phases"]
            rest = c["wall"] - sum(ph.values())
            out.append(
                f"{r['size_gib']} GiB ({c['key']}): "
                + ", ".join(f"{k} {v:.2f} s" for k, v in ph.items())
                + f"; outside the phases (start-up, plan and pre-flight, reports) {rest:.2f} s"
            )
    return out


NOTE = (
    "(a) checks every chunk it reads against the image's BLAKE3, reads the ESP back, fscks "
    "both new filesystems and compares the trees with the image's; (c) checks nothing; (d) "
    "compares the ESP, a listing (type, mode, owner, size, mtime, link) and every file's "
    "BLAKE3, but runs no fsck and compares no xattrs. (a) reads its image (compressed, used "
    "blocks only); (c) and (d) read the source disk file. (b) is the ordinary block-for-block "
    "restore onto a disk of the source's size, read-back included."
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2", help="source disk sizes in GiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument(
        "--rescueui",
        metavar="CMD",
        help="the command to measure as rescueui (default: this checkout's .venv/bin/rescueui)",
    )
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if args.rescueui:
        RESCUEUI_CMD[:] = shlex.split(args.rescueui)
    if os.geteuid() != 0:
        print("bench: needs root (loop devices, mounts, drop_caches)", file=sys.stderr)
        return 2
    missing = [t for t in TOOLS if not shutil.which(t)]
    if missing:
        print(f"bench: missing {', '.join(missing)} (sudo make deps)", file=sys.stderr)
        return 2
    # an installed rescueui runs from compiled bytecode (see bench/run.py)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "rescueui")],
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    ws = Workspace(Path(tempfile.mkdtemp(prefix="rescueui-bench-smaller-", dir=args.workdir)))
    results: list[dict] = []
    try:
        for gib in (int(x) for x in args.sizes.split(",") if x.strip()):
            results.append(run_size(args, ws, gib))
    finally:
        # a hand-way run that was killed leaves its loop devices over the source: ours
        for disk in ws.root.glob("server-*.raw"):
            for line in sh(["losetup", "-j", str(disk)]).stdout.splitlines():
                subprocess.run(["losetup", "-d", line.split(":", 1)[0]], capture_output=True)
        ws.close()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    print("\n" + table(results, args.runs))
    for line in phase_lines(results):
        print(line)
    for r in results:
        print(
            f"{r['size_gib']} GiB: target {r['target_mib']} MiB; used "
            + ", ".join(f"{k} {v / MiB:.0f} MiB" for k, v in r["used"].items())
            + f"; capture {r['capture_s']:.2f} s"
        )
        for c in r["cases"]:
            if c["error"]:
                print(f"  ({c['key']}) error: {c['error']}")
    print("\n" + NOTE)
    return 0 if all(not c["error"] for r in results for c in r["cases"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
