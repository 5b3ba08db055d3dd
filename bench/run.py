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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1024 * 1024
GiB = 1024 * MiB
HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def rescueui_cmd() -> list[str]:
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
        if prep:
            prep()
        drop_caches()
        res.samples.append(timed(cmd))
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
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
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
    for tool in (*tools, "partclone.ext4", "partclone.restore"):
        if not shutil.which(tool):
            print(f"bench: {tool} is missing (sudo make deps)", file=sys.stderr)
            return 2
    ws = Workspace(Path(tempfile.mkdtemp(prefix="rescueui-bench-", dir=args.workdir)))
    results: dict[str, object] = {"cpus": os.cpu_count(), "runs": args.runs}
    try:
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
    finally:
        ws.close()
    if not args.skip_foreign:
        print("\n" + foreign_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
