#!/usr/bin/env python3
"""Restore/capture/verify benchmark of rescueui against dd, zstd|dd, bmaptool and qemu-img,
for our own images and for the other kinds (qcow2, raw.zst + bmap, raw).

Run as root (``make bench``). Everything is measured in the same run, on the same data,
with the page cache dropped before each run; each figure is the median of ``--runs``.
It only ever writes to loop devices and files it created under its work folder
(default: a temp dir on the disk holding /var/tmp) and to a tmpfs it mounts itself.

Throughput is logical bytes of the source disk per second of wall time, so a tool that
skips zero regions looks faster (that is the point of zero chunks).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from parts import used_ranges  # bench/parts.py: python puts bench/ on sys.path

MiB = 1024 * 1024
GiB = 1024 * MiB
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


RESCUEUI_CMD: list[str] = []  # --rescueui: another build to measure


def rescueui_cmd() -> list[str]:
    if RESCUEUI_CMD:
        return list(RESCUEUI_CMD)
    venv = REPO / ".venv" / "bin" / "rescueui"
    return [str(venv)] if venv.exists() else [sys.executable, "-m", "rescueui"]


def sh(cmd: Sequence[str] | str, **kw: object) -> subprocess.CompletedProcess[str]:
    shell = isinstance(cmd, str)
    return subprocess.run(cmd, shell=shell, check=True, text=True, capture_output=True, **kw)  # type: ignore[call-overload]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@dataclass
class Sample:
    wall: float
    cpu: float
    maxrss_kib: int


def timed(cmd: Sequence[str] | str) -> Sample:
    """Run a command (a shell pipeline if a str); wall time, CPU of the whole tree, peak RSS."""
    shell = isinstance(cmd, str)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd if not shell else ["bash", "-o", "pipefail", "-c", cmd],  # type: ignore[arg-type]
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {cmd}\n{err[-2000:]}")
    return Sample(wall=wall, cpu=ru.ru_utime + ru.ru_stime, maxrss_kib=ru.ru_maxrss)


@dataclass
class Result:
    name: str
    logical_bytes: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s.wall for s in self.samples)

    @property
    def cpu(self) -> float:
        return statistics.median(s.cpu for s in self.samples)

    @property
    def rss_mib(self) -> float:
        return max(s.maxrss_kib for s in self.samples) / 1024

    @property
    def rate(self) -> float:
        return self.logical_bytes / self.wall


LOCK_WAITS = 120  # 5 s each: how long a run waits for another job's writer lock


def measure(
    name: str,
    logical: int,
    runs: int,
    cmd: Sequence[str] | str,
    prep: Callable[[], object] | None = None,
    after: Callable[[], object] | None = None,
) -> Result:
    res = Result(name, logical)
    for _ in range(runs):
        for attempt in range(LOCK_WAITS + 1):
            if prep:
                prep()
            drop_caches()
            try:
                res.samples.append(timed(cmd))
                break
            except RuntimeError as exc:
                # rescueui refused before touching anything: another job (e.g. a test run on
                # this shared machine) holds the writer lock; wait for it, then run again
                if "writer lock" not in str(exc) or attempt == LOCK_WAITS:
                    raise
                print(f"  ({name}: another rescueui holds the writer lock; waiting)", flush=True)
                time.sleep(5)
        if after:
            after()
    print(
        f"  {name:<44} {res.rate / 1e6:8.1f} MB/s  wall {res.wall:6.2f}s  cpu {res.cpu:6.2f}s"
        f"  rss {res.rss_mib:7.1f} MiB",
        flush=True,
    )
    return res


class Workspace:
    """Loop devices, mounts and files of this run; all removed in :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.loops: list[str] = []
        self.mounts: list[Path] = []

    def attach(self, backing: Path, *, direct_io: bool = False) -> str:
        """A loop device; ``direct_io`` makes it write through to the backing store (no page
        cache of the backing file), so a target behaves like a real disk: what was written
        is on the medium after a flush, and a read-back reads the medium."""
        opts = ["--direct-io=on"] if direct_io else []
        dev = sh(["losetup", "-f", "--show", *opts, str(backing)]).stdout.strip()
        self.loops.append(dev)
        subprocess.run(["partx", "-a", dev], capture_output=True)
        subprocess.run(["udevadm", "settle"], capture_output=True)
        return dev

    def attach_range(self, backing: Path, offset: int, size: int, *, read_only: bool) -> str:
        """A loop device over ``size`` bytes of ``backing`` from ``offset``: one partition of
        a disk image file (this kernel has no partition parsers)."""
        ro = ["--read-only"] if read_only else []
        where = ["--offset", str(offset), "--sizelimit", str(size)]
        dev = sh(["losetup", "--find", "--show", *ro, *where, str(backing)]).stdout.strip()
        self.loops.append(dev)
        return dev

    def detach(self, dev: str) -> None:
        subprocess.run(["partx", "-d", dev], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)
        if dev in self.loops:
            self.loops.remove(dev)

    def mount(self, what: str, where: Path, *args: str) -> Path:
        where.mkdir(parents=True, exist_ok=True)
        sh(["mount", *args, what, str(where)])
        self.mounts.append(where)
        return where

    def umount(self, where: Path) -> None:
        subprocess.run(["umount", str(where)], capture_output=True)
        if where in self.mounts:
            self.mounts.remove(where)

    def close(self) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)
        for dev in list(self.loops):
            self.detach(dev)
        subprocess.run(["udevadm", "settle"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def last_phase_seconds(image_dir: Path, phase: str) -> float:
    """Seconds of ``phase`` in the newest restore report of ``image_dir``."""
    reports = sorted(
        (image_dir / "reports").glob("restore-*.json"), key=lambda p: p.stat().st_mtime
    )
    if not reports:
        raise RuntimeError(f"no restore report in {image_dir}/reports")
    data = json.loads(reports[-1].read_text())
    return float(data["phases"][phase]["seconds"])


FILL_SOURCES = ["/usr/lib/python3.11", "/usr/share/doc"]  # small steps: stop near half


def make_source_disk(ws: Workspace, path: Path, size: int, *, fill: str) -> int:
    """A GPT disk file with one ext4 partition; ``fill``="files" (real files up to about half,
    free space zeros), "used" (the same files, but the free space holds old data, as on a
    server's disk: the filesystem was first filled with random bytes that were then deleted)
    or "random" (partition full of incompressible data, no filesystem). Returns bytes used."""
    with open(path, "wb") as f:
        f.truncate(size)
    sh(["sfdisk", "--quiet", str(path)], input="label: gpt\nstart=2048, type=L, name=root\n")
    dev = ws.attach(path)
    part = f"{dev}p1"
    try:
        if fill == "random":
            psize = int(sh(["blockdev", "--getsize64", part]).stdout)
            sh(f"head -c {psize} /dev/urandom > {part}")
            return psize
        sh(["mkfs.ext4", "-q", "-F", "-L", "benchroot", part])
        mnt = ws.mount(part, ws.root / "srcmnt")
        if fill == "used":
            # old data in the free space: fill the filesystem, then delete (no discard)
            subprocess.run(
                f"head -c {size} /dev/urandom > {mnt}/old 2>/dev/null; sync; rm -f {mnt}/old",
                shell=True,
                check=True,
            )
        target = size // 2
        i = 0
        while shutil.disk_usage(mnt).used < target:
            src = FILL_SOURCES[i % len(FILL_SOURCES)]
            dst = mnt / f"copy{i}"
            subprocess.run(f"cp -a {src} {dst} 2>/dev/null; true", shell=True, check=True)
            i += 1
            if i > 200:
                break
        used = shutil.disk_usage(mnt).used
        ws.umount(mnt)
        return used
    finally:
        ws.detach(dev)


def run_restore_suite(args: argparse.Namespace, ws: Workspace, label: str, disk: Path) -> dict:
    size = disk.stat().st_size
    runs = args.runs
    img = ws.root / f"{label}.rescueui"
    raw_zst = ws.root / f"{label}.raw.zst"
    bmap = ws.root / f"{label}.bmap"
    qcow = ws.root / f"{label}.qcow2"
    print(f"\n== preparing {label} ({size / GiB:.1f} GiB)", flush=True)
    src_dev = ws.attach(disk)
    cap = measure(
        "capture: rescueui capture (level 3, hashing)",
        size,
        runs,
        [*rescueui_cmd(), "capture", src_dev, str(img)],
        prep=lambda: shutil.rmtree(img, ignore_errors=True),
    )
    capz = measure(
        "capture: dd bs=4M | zstd -3 -T0",
        size,
        runs,
        f"dd if={src_dev} bs=4M iflag=direct status=none | zstd -3 -T0 -q -f -o {raw_zst}",
    )
    ws.detach(src_dev)
    sh(["bmaptool", "create", "-o", str(bmap), str(disk)])
    sh(["qemu-img", "convert", "-O", "qcow2", str(disk), str(qcow)])
    results: dict[str, dict] = {
        "capture": {"rescueui": cap.__dict__ | {"rate": cap.rate}, "dd|zstd": capz.rate}
    }
    cap_ratio = cap.rate / capz.rate
    print(f"  ratio capture rescueui / (dd|zstd -T0): {cap_ratio:.2f}")
    results["capture_ratio"] = cap_ratio

    for tname in ("tmpfs", "disk"):
        if tname == "tmpfs":
            tdir = ws.mount(
                "tmpfs", ws.root / "tmpfs", "-t", "tmpfs", "-o", f"size={size + 64 * MiB}"
            )
        else:
            tdir = ws.root / "ondisk"
            tdir.mkdir(exist_ok=True)
        backing = tdir / "target.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        tdev = ws.attach(backing, direct_io=True)
        print(f"\n-- restore of {label} onto a loop device backed by {tname}", flush=True)
        rs = {}
        rs["rescueui"] = measure(
            "rescueui restore (inline BLAKE3, no read-back)",
            size,
            runs,
            [
                *rescueui_cmd(),
                "restore",
                str(img),
                tdev,
                "--yes",
                "--no-verify",
                "--no-grow",
            ],
        )
        verify_secs: list[float] = []
        rs["rescueui+verify"] = measure(
            "rescueui restore + read-back verify",
            size,
            runs,
            [*rescueui_cmd(), "restore", str(img), tdev, "--yes", "--no-grow", "--accept-warnings"],
            after=lambda secs=verify_secs: secs.append(last_phase_seconds(img, "verify")),
        )
        rs["zstd|dd"] = measure(
            "zstd -dc | dd bs=4M oflag=direct conv=fsync",
            size,
            runs,
            f"zstd -dc -q {raw_zst} | dd of={tdev} bs=4M oflag=direct iflag=fullblock conv=fsync status=none",
        )
        rs["dd"] = measure(
            "dd raw image bs=4M oflag=direct conv=fsync",
            size,
            runs,
            f"dd if={disk} of={tdev} bs=4M oflag=direct conv=fsync status=none",
        )
        rs["bmaptool"] = measure(
            "bmaptool copy (with .bmap)",
            size,
            runs,
            ["bmaptool", "-q", "copy", "--bmap", str(bmap), str(disk), tdev],
        )
        rs["qemu-img"] = measure(
            "qemu-img convert -t none (qcow2)",
            size,
            runs,
            ["qemu-img", "convert", "-t", "none", "-O", "raw", str(qcow), tdev],
        )
        rs["dd|b3sum"] = measure(
            "dd iflag=direct bs=4M | b3sum",
            size,
            runs,
            f"dd if={tdev} bs=4M iflag=direct status=none | b3sum --no-names",
        )
        r = rs["rescueui"].rate
        print(
            f"  ratios: rescueui / zstd|dd = {r / rs['zstd|dd'].rate:.2f}, "
            f"/ dd = {r / rs['dd'].rate:.2f}, / bmaptool = {r / rs['bmaptool'].rate:.2f}, "
            f"/ qemu-img = {r / rs['qemu-img'].rate:.2f}"
        )
        # The read-back verify's own time comes from the restore reports (phase "verify").
        vtime = statistics.median(verify_secs)
        vrate = size / vtime
        print(
            f"  read-back verify (phase of the restore report) {vrate / 1e6:.1f} MB/s; "
            f"ratio to dd iflag=direct | b3sum = {vrate / rs['dd|b3sum'].rate:.2f}"
        )
        rs_extra = {"verify_phase_rate": vrate}
        results[f"restore_{tname}"] = {
            k: {"rate": v.rate, "wall": v.wall, "cpu": v.cpu, "rss_mib": v.rss_mib}
            for k, v in rs.items()
        } | rs_extra
        ws.detach(tdev)
        backing.unlink()
        if tname == "tmpfs":
            ws.umount(tdir)
    shutil.rmtree(img, ignore_errors=True)
    for p in (raw_zst, bmap, qcow):
        p.unlink(missing_ok=True)
    return results


# ------------------------------------------------------------------ other image kinds


@dataclass
class ForeignCase:
    """One image kind made from a source disk, restored by rescueui and by the tool that
    kind's users would use otherwise (``reference``), onto the same target."""

    label: str  # e.g. "qcow2"
    image: Path  # what `rescueui restore` is given (its folder gets the reports)
    reference: str  # the other tool, for the table
    reference_cmd: Callable[[str], Sequence[str] | str]  # target device -> command
    verify: bool = False  # also measure the read-back verify's extra cost


def case_qcow2(ws: Workspace, disk: Path, folder: Path) -> ForeignCase:
    qcow = folder / "disk.qcow2"
    sh(["qemu-img", "convert", "-O", "qcow2", str(disk), str(qcow)])
    return ForeignCase(
        "qcow2",
        qcow,
        "qemu-img convert -n -t none -O raw",
        lambda dev: ["qemu-img", "convert", "-n", "-t", "none", "-O", "raw", str(qcow), dev],
        verify=True,
    )


def case_raw_zst_bmap(ws: Workspace, disk: Path, folder: Path) -> ForeignCase:
    """``bmaptool create`` then ``zstd``: the bmap lies next to the image as disk.img.bmap."""
    raw = folder / "disk.img"
    bmap = folder / "disk.img.bmap"
    sh(["cp", "--sparse=always", str(disk), str(raw)])
    sh(["bmaptool", "create", "-o", str(bmap), str(raw)])
    sh(["zstd", "-q", "-3", "-T0", "--rm", str(raw)])
    zst = folder / "disk.img.zst"
    return ForeignCase(
        "raw.zst + bmap",
        zst,
        "bmaptool copy",
        lambda dev: ["bmaptool", "-q", "copy", "--bmap", str(bmap), str(zst), dev],
    )


def case_raw_zeros(ws: Workspace, disk: Path, folder: Path) -> ForeignCase:
    """A raw image without a bmap whose free space holds written zeros (not holes): what a
    plain ``dd`` of a disk gives. rescueui finds the zero blocks as it reads them."""
    raw = folder / "disk.img"
    sh(["cp", "--sparse=never", str(disk), str(raw)])
    return ForeignCase(
        "raw .img, no bmap",
        raw,
        "dd bs=4M oflag=direct conv=fsync",
        lambda dev: f"dd if={raw} of={dev} bs=4M oflag=direct conv=fsync status=none",
    )


def case_clonezilla(ws: Workspace, disk: Path, folder: Path) -> ForeignCase:
    """A Clonezilla ``savedisk`` folder made with the commands ``ocs-sr`` runs (never ocs-sr
    itself: it re-reads every disk's table): ``sfdisk -d``, ``parted``, ``dd`` of the MBR and
    both GPTs, and per partition ``partclone.<fs> -c | zstd -3 -T0 | split`` (CRC32 strips:
    Debian's partclone has no XXH128). The reference is what Clonezilla's restore does: the
    table with ``sfdisk``, then per partition ``cat volumes | zstd -dc | partclone.restore``
    with Clonezilla's buffer size."""
    img = folder / "clonezilla-img"
    img.mkdir()
    dev = ws.attach(disk)
    parts: list[tuple[int, str]] = []
    try:
        table = json.loads(sh(["sfdisk", "--json", dev]).stdout)["partitiontable"]
        (img / "sda-pt.sf").write_text(sh(["sfdisk", "-d", dev]).stdout.replace(dev, "/dev/sda"))
        parted = sh(["parted", "-s", dev, "unit", "s", "print"]).stdout
        (img / "sda-pt.parted").write_text(parted.replace(dev, "/dev/sda"))
        sectors = disk.stat().st_size // 512
        sh(f"dd if={dev} of={img}/sda-mbr bs=512 count=1 status=none")
        sh(f"dd if={dev} of={img}/sda-gpt-1st bs=512 count=34 status=none")
        sh(f"dd if={dev} of={img}/sda-gpt-2nd bs=512 skip={sectors - 33} count=33 status=none")
        for i, _part in enumerate(table["partitions"], start=1):
            node = f"{dev}p{i}"
            fs = sh(["blkid", "-p", "-o", "value", "-s", "TYPE", node]).stdout.strip()
            tool = {"ext4": "ext4", "vfat": "vfat", "xfs": "xfs"}.get(fs, "dd")
            name = f"sda{i}.{tool}-ptcl-img.zst"
            clone = f"partclone.{tool} -q -c -a 1 -s {node} --output -"
            if tool == "dd":
                name = f"sda{i}.dd-ptcl-img.zst"
                clone = f"partclone.dd -q -s {node} --output -"
            sh(f"{clone} | zstd -q -3 -T0 | split -a 2 -b 1024M - {img}/{name}.")
            parts.append((i, name))
    finally:
        ws.detach(dev)
    (img / "disk").write_text("sda\n")
    (img / "parts").write_text(" ".join(f"sda{i}" for i, _ in parts) + "\n")

    def reference(tdev: str) -> str:
        steps = [
            f"sfdisk -q --no-reread --no-tell-kernel {tdev} < {img}/sda-pt.sf",
            f"(partx -u {tdev} 2>/dev/null || partx -a {tdev})",
            "udevadm settle",
        ]
        for i, name in parts:
            steps.append(
                f"cat {img}/{name}.* | zstd -dc | partclone.restore -q -z 10485760 -s - "
                f"-o {tdev}p{i}"
            )
        return " && ".join(steps)

    return ForeignCase(
        "Clonezilla zstd folder",
        img,
        "sfdisk + cat | zstd -dc | partclone.restore",
        reference,
        verify=True,
    )


# Each kind is one function: (workspace, source disk, empty folder) -> ForeignCase.
FOREIGN_CASES: list[Callable[[Workspace, Path, Path], ForeignCase]] = [
    case_qcow2,
    case_raw_zst_bmap,
    case_raw_zeros,
    case_clonezilla,
]


def _stored_bytes(image: Path) -> int:
    if image.is_dir():
        return sum(f.stat().st_size for f in image.iterdir() if f.is_file())
    return image.stat().st_size


def _reports_of(image: Path) -> Path:
    """Where a restore of ``image`` leaves its reports: inside a folder, next to a file."""
    return image if image.is_dir() else image.parent


def run_foreign_suite(args: argparse.Namespace, ws: Workspace, label: str, disk: Path) -> dict:
    """Every kind of :data:`FOREIGN_CASES` made from ``disk``, restored onto a loop device
    backed by tmpfs (``--direct-io=on``, as for our own images): rescueui without the
    read-back, the reference tool, and for cases with ``verify`` rescueui with it."""
    size = disk.stat().st_size
    runs = args.runs
    out: dict[str, dict] = {}
    tdir = ws.mount("tmpfs", ws.root / "ftmpfs", "-t", "tmpfs", "-o", f"size={size + 64 * MiB}")
    backing = tdir / "target.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    tdev = ws.attach(backing, direct_io=True)
    try:
        for make in FOREIGN_CASES:
            if args.case and make.__name__.removeprefix("case_") not in args.case:
                continue
            folder = ws.root / f"{label}-{make.__name__}"
            folder.mkdir()
            case = make(ws, disk, folder)
            print(f"\n-- {case.label} of {label} -> loop device on tmpfs", flush=True)
            restore = [*rescueui_cmd(), "restore", str(case.image), tdev, "--yes", "--no-grow"]
            ours = measure(
                f"rescueui restore {case.label} (no read-back)",
                size,
                runs,
                [*restore, "--no-verify", "--accept-warnings"],
            )
            ref = measure(case.reference, size, runs, case.reference_cmd(tdev))
            row = {
                "rescueui": {"wall": ours.wall, "rate": ours.rate, "rss_mib": ours.rss_mib},
                "reference": case.reference,
                "reference_wall": ref.wall,
                "reference_rate": ref.rate,
                "ratio": ref.wall / ours.wall,
                "image_bytes": _stored_bytes(case.image),
            }
            print(f"  ratio rescueui / {case.reference}: {row['ratio']:.2f}", flush=True)
            if case.verify:
                secs: list[float] = []
                reports = _reports_of(case.image)
                both = measure(
                    f"rescueui restore {case.label} + read-back",
                    size,
                    runs,
                    [*restore, "--accept-warnings"],
                    after=lambda s=secs, d=reports: s.append(last_phase_seconds(d, "verify")),
                )
                row["with_verify_wall"] = both.wall
                row["verify_extra_s"] = both.wall - ours.wall
                row["verify_phase_s"] = statistics.median(secs)
                print(
                    f"  read-back: +{row['verify_extra_s']:.2f} s wall, verify phase "
                    f"{row['verify_phase_s']:.2f} s ({size / row['verify_phase_s'] / 1e6:.0f} MB/s)",
                    flush=True,
                )
            out[case.label] = row
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        ws.detach(tdev)
        backing.unlink(missing_ok=True)
        ws.umount(tdir)
    return out


def foreign_table(results: dict[str, object]) -> str:
    """The README's table of the other image kinds (markdown)."""
    lines = ["| source disk | image | rescueui | reference | ratio |", "|---|---|---|---|---|"]
    for label in ("half_full", "used"):
        suite = results.get(f"foreign_{label}")
        if not isinstance(suite, dict):
            continue
        for kind, row in suite.items():
            extra = ""
            if "verify_extra_s" in row:
                extra = (
                    f"; read-back +{row['verify_extra_s']:.2f} s "
                    f"(phase {row['verify_phase_s']:.2f} s)"
                )
            lines.append(
                f"| {label.replace('_', '-')} | {kind} | {row['rescueui']['wall']:.2f} s"
                f"{extra} | {row['reference'].replace('|', chr(92) + '|')} "
                f"{row['reference_wall']:.2f} s "
                f"| {row['ratio']:.2f} × |"
            )
    return "\n".join(lines)


def rss_scaling(args: argparse.Namespace, ws: Workspace) -> dict:
    """Peak RSS of capture and restore for a 2 GiB and an 8 GiB sparse disk."""
    out = {}
    print("\n== peak RSS vs image size (sparse disks: a little data, mostly zeros)", flush=True)
    for gib in (2, 8):
        disk = ws.root / f"sparse{gib}.img"
        with open(disk, "wb") as f:
            f.truncate(gib * GiB)
            for off in range(0, gib * GiB, 512 * MiB):
                f.seek(off)
                f.write(os.urandom(4 * MiB))
        img = ws.root / f"sparse{gib}.rescueui"
        cap = measure(
            f"capture {gib} GiB sparse",
            gib * GiB,
            1,
            [*rescueui_cmd(), "capture", str(disk), str(img)],
        )
        target = ws.root / f"sparse{gib}.target"
        with open(target, "wb") as f:
            f.truncate(gib * GiB)
        tdev = ws.attach(target, direct_io=True)
        res = measure(
            f"restore {gib} GiB sparse (+verify)",
            gib * GiB,
            1,
            [*rescueui_cmd(), "restore", str(img), tdev, "--yes", "--no-grow", "--accept-warnings"],
        )
        ws.detach(tdev)
        out[f"{gib}GiB"] = {"capture_rss_mib": cap.rss_mib, "restore_rss_mib": res.rss_mib}
        shutil.rmtree(img, ignore_errors=True)
        disk.unlink()
        target.unlink()
    return out


# ------------------------------------------------------------------ dirty free space (issue 11)

DIRTY_USED = 0.35  # share of each filesystem that holds real files
MS_BASIC_DATA = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
PARTS = HERE / "parts.py"
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


@dataclass
class DirtyPart:
    number: int
    fs: str  # "ext4" | "vfat": also the partclone.<fs> that reads it
    start: int  # bytes from the start of the disk
    size: int
    map_file: Path  # partclone -D domain log, positions in bytes of the disk
    used: int = 0  # bytes partclone counts as in use
    dev: str = ""  # read-only loop device over the partition, while the suite runs


@dataclass
class DirtyDisk:
    path: Path
    size: int
    parts: list[DirtyPart]

    @property
    def used(self) -> int:
        return sum(p.used for p in self.parts)


def _tree_bytes(path: Path) -> int:
    if path.is_symlink() or not path.is_dir():
        return path.lstat().st_size
    return sum((Path(d) / f).lstat().st_size for d, _, files in os.walk(path) for f in files)


def file_batches(step: int = 16 * MiB) -> Iterator[list[str]]:
    """Endless batches of about ``step`` bytes of real files (entries of FILL_SOURCES in turn),
    each batch from one source folder, so its names are unique."""
    entries = [
        [(str(child), _tree_bytes(child)) for child in sorted(Path(src).iterdir())]
        for src in FILL_SOURCES
    ]
    while True:
        for source in entries:
            batch: list[str] = []
            n = 0
            for path, size in source:
                batch.append(path)
                n += size
                if n >= step:
                    yield batch
                    batch, n = [], 0
            if batch:
                yield batch


def fill_with_files(
    used: Callable[[], int], target: int, copy: Callable[[int, list[str]], object]
) -> None:
    batches = file_batches()
    for i in range(5000):
        if used() >= target:
            return
        copy(i, next(batches))


def _mdir_free(spec: str) -> int:
    out = subprocess.run(["mdir", "-i", spec, "::"], capture_output=True, text=True, env=MTOOLS_ENV)
    for line in out.stdout.splitlines():
        if line.strip().endswith("bytes free"):
            return int("".join(ch for ch in line if ch.isdigit()))
    raise RuntimeError(f"mdir -i {spec}: no 'bytes free' line\n{out.stdout}{out.stderr}")


def _mtools(*cmd: str, check: bool = False) -> None:
    """An mtools command (never waiting for an answer); ``check``: raise on failure (the
    copies of real files may skip a name FAT cannot hold, that is fine)."""
    done = subprocess.run(cmd, env=MTOOLS_ENV, stdin=subprocess.DEVNULL, capture_output=True)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed\n{done.stderr.decode(errors='replace')}")


def make_dirty_disk(ws: Workspace, path: Path, size: int) -> DirtyDisk:
    """A GPT disk image file like a server's disk that has run for a while: ext4 on about 80 %
    (p1) and vfat on the rest (p2), each about 35 % full of real files, their free space holding
    deleted random data (each filesystem was first filled with random bytes that were then
    deleted, without discard; then the files were copied). vfat does not mount in this kernel:
    mtools writes it. Ends with partclone -D's map of each partition."""
    sector = 512
    with open(path, "wb") as f:
        f.truncate(size)
    usable = size // sector - 2048 - 33
    p1 = usable * 8 // 10 // 2048 * 2048
    sh(
        ["sfdisk", "--quiet", str(path)],
        input=f"label: gpt\nstart=2048, size={p1}, type=L, name=root\n"
        f"type={MS_BASIC_DATA}, name=data\n",
    )
    table = json.loads(sh(["sfdisk", "--json", str(path)]).stdout)["partitiontable"]
    parts = [
        DirtyPart(
            i,
            fs,
            p["start"] * sector,
            p["size"] * sector,
            map_file=path.with_name(f"{path.stem}-p{i}.map"),
        )
        for i, (fs, p) in enumerate(zip(("ext4", "vfat"), table["partitions"], strict=True), 1)
    ]
    root, data = parts
    # p1: ext4, filled with random bytes, deleted, then real files
    dev = ws.attach_range(path, root.start, root.size, read_only=False)
    try:
        sh(["mkfs.ext4", "-q", "-F", "-L", "benchroot", dev])
        mnt = ws.mount(dev, ws.root / "dirtymnt")
        subprocess.run(
            f"head -c {root.size} /dev/urandom > {mnt}/old 2>/dev/null; sync -f {mnt}; "
            f"rm -f {mnt}/old; sync -f {mnt}",
            shell=True,
            check=True,
        )

        def cp(i: int, batch: list[str]) -> None:
            (mnt / f"copy{i}").mkdir()
            subprocess.run(["cp", "-a", *batch, str(mnt / f"copy{i}")], capture_output=True)

        fill_with_files(lambda: shutil.disk_usage(mnt).used, int(DIRTY_USED * root.size), cp)
        ws.umount(mnt)
    finally:
        ws.detach(dev)
    # p2: vfat (FAT32 where it is large enough), written by mtools on the image file itself
    dev = ws.attach_range(path, data.start, data.size, read_only=False)
    try:
        sh(["mkfs.vfat", *(["-F", "32"] if data.size >= 300 * MiB else []), "-n", "BENCHDATA", dev])
    finally:
        ws.detach(dev)
    spec = f"{path}@@{data.start}"
    free0 = _mdir_free(spec)
    rnd = ws.root / "dirty-random.tmp"
    sh(f"head -c {free0 - MiB} /dev/urandom > {rnd}")
    _mtools("mcopy", "-i", spec, str(rnd), "::/old", check=True)
    _mtools("mdel", "-i", spec, "::/old", check=True)
    rnd.unlink()

    def mcopy(i: int, batch: list[str]) -> None:
        _mtools("mmd", "-i", spec, f"::/copy{i}")
        _mtools("mcopy", "-i", spec, "-s", "-D", "o", *batch, f"::/copy{i}/")

    fill_with_files(lambda: free0 - _mdir_free(spec), int(DIRTY_USED * data.size), mcopy)
    # the used-block maps (for the sum-of-the-parts helper and the report)
    for p in parts:
        dev = ws.attach_range(path, p.start, p.size, read_only=True)
        try:
            p.map_file.unlink(missing_ok=True)
            sh(
                [
                    f"partclone.{p.fs}",
                    "-q",
                    "-D",
                    "-s",
                    dev,
                    "-o",
                    str(p.map_file),
                    f"--offset_domain={p.start}",
                ]
            )
        finally:
            ws.detach(dev)
        p.used = sum(n for _, n in used_ranges(p.map_file))
    return DirtyDisk(path, size, parts)


def scramble(dev: str, size: int) -> None:
    """Random bytes over the whole device, like a reused disk: 16 MiB from /dev/urandom written
    again and again with O_DIRECT through the device; partition nodes left by a previous
    run are removed first."""
    subprocess.run(["partx", "-d", dev], capture_output=True)
    buf = mmap.mmap(-1, 16 * MiB)
    buf.write(os.urandom(16 * MiB))
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    try:
        with memoryview(buf) as view:
            for off in range(0, size, 16 * MiB):
                os.pwrite(fd, view[: min(16 * MiB, size - off)], off)
        os.fdatasync(fd)
    finally:
        os.close(fd)
        buf.close()


def image_bytes(folder: Path) -> int:
    """Bytes of a rescueui image's data and index files (.zst + .idx)."""
    return sum(f.stat().st_size for f in folder.iterdir() if f.suffix in (".zst", ".idx"))


def run_parts(runs: int, *argv: str, prep: Callable[[], object] | None = None) -> dict:
    """``bench/parts.py`` ``runs`` times (caches dropped before each); the median run by
    total CPU seconds."""
    outs = []
    for _ in range(runs):
        if prep:
            prep()
        drop_caches()
        out = sh([str(REPO / ".venv" / "bin" / "python"), str(PARTS), *argv]).stdout
        outs.append(json.loads(out))
    outs.sort(key=lambda o: o["total"])
    return outs[len(outs) // 2]


def restore_overhead(img: Path, walls: list[float]) -> tuple[list[float], dict]:
    """Seconds of each restore (the newest reports of ``img``, one per wall time, in order)
    outside the phases of its report that move data (all but "partition-table": "write", and
    any phase that zeroes or checks ranges): the fixed cost of the job (start-up, imports,
    disk scan, pre-flight, partition table, reports). Also the last report's phases."""
    reports = [
        r
        for r in sorted((img / "reports").glob("restore-*.json"), key=lambda p: p.stat().st_mtime)
        if json.loads(r.read_text()).get("outcome") == "success"  # not one refused by the lock
    ]
    out = []
    phases: dict = {}
    for wall, rep in zip(walls, reports[-len(walls) :], strict=True):
        phases = json.loads(rep.read_text())["phases"]
        moving = sum(
            float(v.get("seconds", 0)) for k, v in phases.items() if k != "partition-table"
        )
        out.append(wall - moving)
    return out, phases


@dataclass
class Row:
    size_gib: int | str
    measure: str
    ours: str
    theirs: str
    ratio: float | None  # None: a limit, not a comparison
    target: str
    ok: bool

    def cells(self) -> list[str]:
        return [
            f"{self.size_gib} GiB" if isinstance(self.size_gib, int) else self.size_gib,
            self.measure,
            self.ours,
            self.theirs,
            "" if self.ratio is None else f"{self.ratio:.2f}",
            self.target,
            "met" if self.ok else "**MISSED**",
        ]


def run_dirty_size(args: argparse.Namespace, ws: Workspace, gib: int) -> tuple[dict, list[Row]]:
    size = gib * GiB
    runs = args.runs
    disk_path = ws.root / f"dirty{gib}.img"
    print(f"\n== dirty free space: building the {gib} GiB disk", flush=True)
    t0 = time.perf_counter()
    disk = make_dirty_disk(ws, disk_path, size)
    print(
        f"source: {gib} GiB GPT disk file, "
        + ", ".join(
            f"p{p.number} {p.fs} {p.used / MiB:.0f} of {p.size / MiB:.0f} MiB used"
            for p in disk.parts
        )
        + f", free space holding deleted random data (built in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    img = ws.root / f"dirty{gib}.rescueui"
    pc = ws.root / f"dirty{gib}.partclone"
    pc.mkdir()
    raw_zst = ws.root / f"dirty{gib}.raw.zst"
    out: dict = {
        "disk_bytes": size,
        "used_bytes": disk.used,
        "partitions": [
            {"number": p.number, "fs": p.fs, "size": p.size, "used": p.used} for p in disk.parts
        ],
    }
    for p in disk.parts:
        p.dev = ws.attach_range(disk.path, p.start, p.size, read_only=True)
    try:
        # -------------------------------------------------------------- capture
        print(f"-- capture of the {gib} GiB dirty disk", flush=True)
        cap = measure(
            "rescueui capture",
            size,
            runs,
            [*rescueui_cmd(), "capture", str(disk.path), str(img), "--quiet"],
            prep=lambda: shutil.rmtree(img, ignore_errors=True),
        )
        steps = [f"sfdisk -d {disk.path} > {pc}/table.sf"]
        steps += [
            f"partclone.{p.fs} -q -c -a 1 -s {p.dev} --output - | zstd -3 -T0 -q -f -o {pc}/p{p.number}.zst"
            for p in disk.parts
        ]
        pcap = measure(
            "sfdisk -d + partclone.<fs> -c | zstd -3 -T0", size, runs, " && ".join(steps)
        )
        dcap = measure(
            "dd iflag=direct bs=4M | zstd -3 -T0",
            size,
            runs,
            f"dd if={disk.path} iflag=direct bs=4M status=none | zstd -3 -T0 -q -f -o {raw_zst}",
        )
        ours_bytes = image_bytes(img)
        pc_bytes = sum(f.stat().st_size for f in pc.iterdir())
        out["image"] = {
            "rescueui": ours_bytes,
            "partclone_zstd": pc_bytes,
            "dd_zstd": raw_zst.stat().st_size,
        }
        print(
            f"  image: rescueui {ours_bytes / MiB:.1f} MiB (.zst + .idx), partclone|zstd "
            f"{pc_bytes / MiB:.1f} MiB (+ table), dd|zstd {raw_zst.stat().st_size / MiB:.1f} MiB",
            flush=True,
        )
        cparts = run_parts(
            runs,
            "capture",
            str(disk.path),
            *(str(p.map_file) for p in disk.parts),
            "--scratch",
            str(ws.root / "parts.zst"),
        )
        print(
            f"  parts of a capture: {cparts['bytes'] / MiB:.0f} MiB, "
            + ", ".join(f"{k} {v:.2f}" for k, v in cparts["seconds"].items())
            + f" = {cparts['total']:.2f} CPU-s; rescueui capture {cap.cpu:.2f} CPU-s",
            flush=True,
        )
        # -------------------------------------------------------------- restore
        print(
            f"-- restore of the {gib} GiB dirty disk onto a random-filled loop device on tmpfs",
            flush=True,
        )
        tdir = ws.mount("tmpfs", ws.root / "dtmpfs", "-t", "tmpfs", "-o", f"size={size + 64 * MiB}")
        backing = tdir / "target.img"
        with open(backing, "wb") as f:
            f.truncate(size)
        tdev = ws.attach(backing, direct_io=True)
        dio = Path(f"/sys/block/{Path(tdev).name}/loop/dio")
        out["target_direct_io"] = dio.read_text().strip() == "1" if dio.exists() else None
        try:
            fill = lambda: scramble(tdev, size)  # noqa: E731
            restore = [
                *rescueui_cmd(),
                "restore",
                str(img),
                tdev,
                "--yes",
                "--accept-warnings",
                "--quiet",
            ]
            res = measure(
                "rescueui restore --no-verify", size, runs, [*restore, "--no-verify"], prep=fill
            )
            fixed, phases = restore_overhead(img, [s.wall for s in res.samples])
            print(
                f"  fixed cost: wall minus the report's data phases {statistics.median(fixed):.2f} s"
                " (phases: "
                + ", ".join(f"{k} {v.get('seconds', 0):.2f} s" for k, v in phases.items())
                + ")",
                flush=True,
            )
            resv = measure("rescueui restore (read-back verify)", size, runs, restore, prep=fill)
            steps = [
                f"sfdisk -q --no-reread --no-tell-kernel {tdev} < {pc}/table.sf",
                f"(partx -u {tdev} 2>/dev/null || partx -a {tdev})",
                "udevadm settle",
            ]
            steps += [
                f"zstd -dc -q {pc}/p{p.number}.zst | partclone.restore -q -z 10485760 -s - -O {tdev}p{p.number}"
                for p in disk.parts
            ]
            steps.append(
                "blockdev --flushbufs " + " ".join(f"{tdev}p{p.number}" for p in disk.parts)
            )
            pres = measure(
                "sfdisk + zstd -dc | partclone.restore", size, runs, " && ".join(steps), prep=fill
            )
            dres = measure(
                "zstd -dc | dd oflag=direct bs=4M conv=fsync",
                size,
                runs,
                f"zstd -dc -q {raw_zst} | dd of={tdev} bs=4M oflag=direct iflag=fullblock conv=fsync status=none",
                prep=fill,
            )
            rparts = run_parts(runs, "restore", str(img), tdev, prep=fill)
            print(
                f"  parts of a restore: {rparts['bytes'] / MiB:.0f} MiB, "
                + ", ".join(f"{k} {v:.2f}" for k, v in rparts["seconds"].items())
                + f" = {rparts['total']:.2f} CPU-s; rescueui restore {res.cpu:.2f} CPU-s",
                flush=True,
            )
        finally:
            ws.detach(tdev)
            backing.unlink(missing_ok=True)
            ws.umount(tdir)
    finally:
        for p in disk.parts:
            ws.detach(p.dev)
    walls = {
        "capture": {"rescueui": cap.wall, "partclone|zstd": pcap.wall, "dd|zstd": dcap.wall},
        "restore": {
            "rescueui": res.wall,
            "rescueui+verify": resv.wall,
            "partclone": pres.wall,
            "zstd|dd": dres.wall,
        },
    }
    out["wall_s"] = walls
    out["cpu_s"] = {"capture": cap.cpu, "restore": res.cpu, "restore+verify": resv.cpu}
    out["rss_mib"] = {"capture": cap.rss_mib, "restore": max(res.rss_mib, resv.rss_mib)}
    out["parts"] = {"capture": cparts, "restore": rparts}
    out["fixed_cost_s"] = statistics.median(fixed)
    out["restore_phases"] = phases  # of the last restore without read-back
    shutil.rmtree(img, ignore_errors=True)
    shutil.rmtree(pc, ignore_errors=True)
    raw_zst.unlink(missing_ok=True)
    disk.path.unlink()
    for p in disk.parts:
        p.map_file.unlink(missing_ok=True)

    def speed(measure_name: str, ours: float, theirs: float, target: float, name: str) -> Row:
        ratio = theirs / ours
        return Row(
            gib,
            measure_name,
            f"{ours:.2f} s",
            f"{name} {theirs:.2f} s",
            ratio,
            f"≥ {target} ×",
            ratio >= target,
        )

    used_gib = disk.used / GiB

    def cpu(what: str, ours: float, parts: dict) -> Row:
        ratio = ours / parts["total"]
        return Row(
            gib,
            f"{what} CPU per GiB used",
            f"{ours / used_gib:.2f} s/GiB",
            f"sum of the parts {parts['total'] / used_gib:.2f} s/GiB",
            ratio,
            "≤ 1.5 ×",
            ratio <= 1.5,
        )

    size_ratio = ours_bytes / pc_bytes
    rows = [
        Row(
            gib,
            "image size",
            f"{ours_bytes / MiB:.1f} MiB",
            f"partclone|zstd {pc_bytes / MiB:.1f} MiB",
            size_ratio,
            "≤ 1.05 ×",
            size_ratio <= 1.05,
        ),
        speed("capture", cap.wall, pcap.wall, 1.2, "partclone|zstd"),
        speed("capture", cap.wall, dcap.wall, 3, "dd|zstd"),
        speed("restore, no read-back", res.wall, pres.wall, 1.5, "zstd -dc|partclone.restore"),
        speed("restore, no read-back", res.wall, dres.wall, 3, "zstd -dc|dd"),
        speed("restore + read-back", resv.wall, pres.wall, 1.0, "zstd -dc|partclone.restore"),
        Row(
            gib,
            "peak RSS capture",
            f"{cap.rss_mib:.0f} MiB",
            "",
            None,
            "< 256 MiB",
            cap.rss_mib < 256,
        ),
        Row(
            gib,
            "peak RSS restore",
            f"{out['rss_mib']['restore']:.0f} MiB",
            "",
            None,
            "< 256 MiB",
            out["rss_mib"]["restore"] < 256,
        ),
        cpu("capture", cap.cpu, cparts),
        cpu("restore", res.cpu, rparts),
        Row(
            gib,
            "fixed cost of a restore",
            f"{out['fixed_cost_s']:.2f} s",
            "",
            None,
            "< 0.3 s",
            out["fixed_cost_s"] < 0.3,
        ),
    ]
    return out, rows


def rss_flat_rows(per_size: dict[int, dict]) -> list[Row]:
    """Peak RSS of the largest size against the smallest: flat = within 10 % or 8 MiB."""
    if len(per_size) < 2:
        return []
    lo, hi = min(per_size), max(per_size)
    rows = []
    for job in ("capture", "restore"):
        a, b = per_size[lo]["rss_mib"][job], per_size[hi]["rss_mib"][job]
        rows.append(
            Row(
                f"{lo}→{hi} GiB",
                f"peak RSS {job} growth",
                f"{a:.0f} → {b:.0f} MiB",
                "",
                b / a,
                "flat (≤ 1.10 × or + 8 MiB)",
                b <= max(a * 1.10, a + 8),
            )
        )
    return rows


def dirty_table(rows: list[Row]) -> str:
    head = ["size", "measure", "rescueui", "baseline", "ratio", "target", ""]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def run_dirty_suite(args: argparse.Namespace, ws: Workspace) -> dict:
    """Issue 11's performance section: disks whose free space holds deleted data, captured
    and restored by rescueui and by partclone, dd and zstd, at each of ``--dirty-sizes``."""
    per_size: dict[int, dict] = {}
    rows: list[Row] = []
    for gib in args.dirty_sizes:
        per_size[gib], r = run_dirty_size(args, ws, gib)
        rows += r
    rows += rss_flat_rows(per_size)
    table = dirty_table(rows)
    print("\n" + table, flush=True)
    return {
        "sizes": {f"{g}GiB": v for g, v in per_size.items()},
        "rows": [r.__dict__ for r in rows],
        "table": table,
        "missed": [
            f"{r.cells()[0]}: {r.measure}: {r.ours}"
            + (f" vs {r.theirs}" if r.theirs else "")
            + f" (target {r.target})"
            for r in rows
            if not r.ok
        ],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-gib", type=int, default=2)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--skip-random", action="store_true", help="skip the incompressible disk")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument(
        "--skip-foreign",
        action="store_true",
        help="skip qcow2 / raw.zst+bmap / raw / Clonezilla vs their tools",
    )
    ap.add_argument(
        "--only-foreign",
        action="store_true",
        help="only the other image kinds (qcow2, raw.zst+bmap, raw, Clonezilla) vs their tools",
    )
    ap.add_argument(
        "--skip-used", action="store_true", help="no source disk whose free space holds old data"
    )
    ap.add_argument(
        "--case",
        action="append",
        help="only this kind of the other image kinds (qcow2, raw_zst_bmap, raw_zeros, "
        "clonezilla); repeatable",
    )
    ap.add_argument(
        "--only-dirty",
        action="store_true",
        help="only the disks whose free space holds deleted data (used-block capture, issue 11)",
    )
    ap.add_argument("--skip-dirty", action="store_true", help="leave those disks out")
    ap.add_argument(
        "--dirty-sizes",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=[2, 4, 8],
        metavar="GIB,GIB,...",
        help="sizes of the dirty-free-space disks in GiB (default 2,4,8)",
    )
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
        print("bench: needs root (loop devices, drop_caches)", file=sys.stderr)
        return 2
    # an installed rescueui (pip, the live image) runs from compiled bytecode; a shell with
    # PYTHONDONTWRITEBYTECODE would make every run compile every module again (~0.2 s)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(REPO / "rescueui")],
        env={k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"},
        check=True,
        stdout=subprocess.DEVNULL,
    )
    tools = ("zstd", "dd", "bmaptool", "qemu-img", "b3sum", "sfdisk", "losetup", "cp", "parted")
    if not (args.skip_dirty and not args.only_dirty):
        tools += ("partclone.vfat", "mkfs.vfat", "mcopy", "mdel", "mmd", "mdir", "partx")
    for tool in (*tools, "partclone.ext4", "partclone.restore"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (sudo make deps)", file=sys.stderr)
            return 2
    ws = Workspace(Path(tempfile.mkdtemp(prefix="rescueui-bench-", dir=args.workdir)))
    results: dict[str, object] = {"cpus": os.cpu_count(), "runs": args.runs}
    try:
        if args.only_dirty:
            results["dirty"] = run_dirty_suite(args, ws)
            return 0
        half = ws.root / "half.img"
        used = make_source_disk(ws, half, args.size_gib * GiB, fill="files")
        print(f"source: {args.size_gib} GiB GPT disk, ext4 with {used / GiB:.2f} GiB of real files")
        if not args.only_foreign:
            results["half_full"] = run_restore_suite(args, ws, "half-full", half)
        if not args.skip_foreign:
            results["foreign_half_full"] = run_foreign_suite(args, ws, "half-full", half)
        half.unlink()
        if not args.skip_foreign and not args.skip_used:
            disk = ws.root / "used.img"
            used = make_source_disk(ws, disk, args.size_gib * GiB, fill="used")
            print(
                f"\nsource: {args.size_gib} GiB GPT disk, ext4 with {used / GiB:.2f} GiB of real "
                "files, its free space holding old (random) data"
            )
            results["foreign_used"] = run_foreign_suite(args, ws, "used", disk)
            disk.unlink()
        if args.only_foreign:
            args.skip_random = args.skip_rss = True
        if not args.skip_random:
            rnd = ws.root / "random.img"
            make_source_disk(ws, rnd, 1 * GiB, fill="random")
            print("source: 1 GiB GPT disk, partition full of incompressible data")
            results["incompressible"] = run_restore_suite(args, ws, "incompressible", rnd)
            rnd.unlink()
        if not args.skip_rss:
            results["rss"] = rss_scaling(args, ws)
        if not args.skip_dirty and not args.only_foreign:
            results["dirty"] = run_dirty_suite(args, ws)
    finally:
        ws.close()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if not args.skip_foreign:
        print("\n" + foreign_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
