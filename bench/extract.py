#!/usr/bin/env python3
"""``rescueui extract`` of one large file from an image against ``zstd -dc`` of the same
stream, in the same run (issue 13: at least 0.8x its throughput).

For each size (``--sizes 1,2`` GiB) an ext4 partition holds one file of that size made of
real, compressible data (copies of /usr/lib, about 3:1 with zstd -3) next to a few thousand
small files; the disk is captured by rescueui. Then, page cache dropped before each run,
median of ``--runs``:

* ``zstd -dc pN.zst > /dev/shm/...``: decompressing the partition's stored stream (every
  chunk it holds: the big file and the rest);
* ``rescueui extract IMG --partition N /big.bin /dev/shm/...``: the file out of the image
  through its read-only view (helper process, FUSE file, loop device, ext4 mounted), with
  each chunk's BLAKE3 checked and the file's SHA-256 computed for the report.

Throughput is bytes of output per second of wall time (the extract: the file's size; zstd:
the bytes it wrote). Both write into tmpfs, so the disk's write speed is not measured.
Run as root; it writes only under its work folder and /dev/shm/rescueui-bench-*.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import GiB, MiB, Workspace, measure, rescueui_cmd, sh


def make_content(folder: Path, size: int) -> None:
    """One file of ``size`` bytes of real data, and 3000 small files."""
    folder.mkdir(parents=True)
    sources = [p for p in Path("/usr/lib").rglob("*") if p.is_file() and not p.is_symlink()]
    with open(folder / "big.bin", "wb") as out:
        written = 0
        for p in sources:
            if written >= size:
                break
            try:
                data = p.read_bytes()[: size - written]
            except OSError:
                continue
            out.write(data)
            written += len(data)
        while written < size:  # /usr/lib was not enough: repeat what is there
            with open(folder / "big.bin", "rb") as again:
                chunk = again.read(min(64 * MiB, size - written))
            out.write(chunk)
            written += len(chunk)
    small = folder / "small"
    small.mkdir()
    for i in range(3000):
        (small / f"f{i:05d}.txt").write_text(f"small file {i}\n" * (i % 50 + 1))


def run_size(ws: Workspace, gib: int, runs: int, shm: Path) -> dict[str, object]:
    size = gib * GiB
    content = ws.root / f"content-{gib}g"
    print(f"\n{gib} GiB file: making the disk ...", flush=True)
    make_content(content, size)
    part_size = size + size // 4 + 256 * MiB
    disk = ws.root / f"disk-{gib}g.img"
    with open(disk, "wb") as f:
        f.truncate(part_size + 2 * MiB)
    sh(
        ["sfdisk", "--quiet", str(disk)],
        input=f"label: gpt\nstart=2048, size={part_size // 512}, type=L\n",
    )
    part = ws.root / "p1.ext4"
    with open(part, "wb") as f:
        f.truncate(part_size)
    sh(["mkfs.ext4", "-q", "-F", "-d", str(content), str(part)])
    sh(
        [
            "dd",
            f"if={part}",
            f"of={disk}",
            "bs=4M",
            "seek=1M",
            "oflag=seek_bytes",
            "conv=notrunc,sparse",
            "status=none",
        ]
    )
    part.unlink()
    shutil.rmtree(content)
    image = ws.root / f"img-{gib}g"
    for _ in range(120):  # another rescueui job (tests on this machine) may hold the lock
        cap = subprocess.run(
            [*rescueui_cmd(), "capture", str(disk), str(image), "--quiet"],
            capture_output=True,
            text=True,
            check=False,
        )
        if cap.returncode == 0:
            break
        if "writer lock" not in cap.stdout + cap.stderr:
            raise RuntimeError(f"capture failed: {cap.stdout[-1000:]}{cap.stderr[-1000:]}")
        shutil.rmtree(image, ignore_errors=True)
        time.sleep(5)
    disk.unlink()
    stream = next(image.glob("p1*.zst"))
    out = shm / "out"

    def clear() -> None:
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()

    produced = {}

    def zstd_out() -> None:
        produced["zstd"] = (out / "p1.raw").stat().st_size

    r_zstd = measure(
        "zstd -dc pN.zst > tmpfs",
        0,
        runs,
        f"zstd -dc {stream} > {out}/p1.raw",
        prep=clear,
        after=zstd_out,
    )
    zstd_bytes = produced["zstd"]
    r_zstd.logical_bytes = zstd_bytes
    cmd = [
        *rescueui_cmd(),
        "extract",
        str(image),
        "--partition",
        "1",
        "/big.bin",
        str(out),
        "--quiet",
    ]
    r_ext = measure("rescueui extract /big.bin > tmpfs", size, runs, cmd, prep=clear)
    r_base = None
    if BASELINE:  # the same extract by another build, in the same run
        bcmd = [*BASELINE, *cmd[len(rescueui_cmd()) :]]
        r_base = measure("baseline extract /big.bin > tmpfs", size, runs, bcmd, prep=clear)
    clear()
    shutil.rmtree(image)
    zstd_rate = zstd_bytes / r_zstd.wall
    ext_rate = size / r_ext.wall
    row: dict[str, object] = {
        "size_gib": gib,
        "zstd_bytes": zstd_bytes,
        "zstd_s": round(r_zstd.wall, 2),
        "zstd_MBps": round(zstd_rate / 1e6),
        "extract_s": round(r_ext.wall, 2),
        "extract_MBps": round(ext_rate / 1e6),
        "ratio_extract_over_zstd": round(ext_rate / zstd_rate, 2),
    }
    if r_base is not None:
        base_rate = size / r_base.wall
        row["baseline_s"] = round(r_base.wall, 2)
        row["baseline_MBps"] = round(base_rate / 1e6)
        row["ratio_baseline_over_zstd"] = round(base_rate / zstd_rate, 2)
    return row


BASELINE: list[str] = []  # --baseline: another build's rescueui command, measured as well


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2", help="file sizes in GiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--baseline",
        help="also measure the extract with this rescueui command (e.g. an older checkout: "
        "'env PYTHONPATH=/path/to/old /path/to/python -m rescueui')",
    )
    args = ap.parse_args()
    if args.baseline:
        BASELINE[:] = shlex.split(args.baseline)
    if os.geteuid() != 0:
        print("run as root: the image view mounts through loop devices", file=sys.stderr)
        return 2
    ws = Workspace(Path(tempfile.mkdtemp(prefix="rescueui-bench-x-", dir=args.workdir)))
    shm = Path(tempfile.mkdtemp(prefix="rescueui-bench-", dir="/dev/shm"))
    rows = []
    try:
        for gib in (int(x) for x in args.sizes.split(",") if x.strip()):
            rows.append(run_size(ws, gib, args.runs, shm))
    finally:
        ws.close()
        shutil.rmtree(shm, ignore_errors=True)
    print(f"\n{'size':>5} {'zstd -dc':>14} {'extract':>14} {'ratio':>6}")
    for r in rows:
        base = ""
        if "baseline_MBps" in r:
            base = f"   baseline {r['baseline_MBps']:>6} MB/s {r['ratio_baseline_over_zstd']:>6}"
        print(
            f"{r['size_gib']:>4}G {r['zstd_MBps']:>8} MB/s {r['extract_MBps']:>8} MB/s "
            f"{r['ratio_extract_over_zstd']:>6}{base}"
        )
    print("ratio = extract throughput / zstd -dc throughput (issue 13 asks for at least 0.8)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    subprocess.run(["sync"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
