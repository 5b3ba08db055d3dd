#!/usr/bin/env python3
"""``rescueui restore --to-vm`` against what a technician does by hand, in the same run.

For each size (``--sizes 1,2`` GiB) a disk like a server's (bench/run.py's dirty disk: ext4
and vfat about a third full of real files, their free space holding deleted random data) is
the source of:

* our image (``rescueui capture``) -> ``rescueui restore IMG --to-vm DIR`` (qcow2 + libvirt
  domain; restore with inline BLAKE3 and the read-back, convert, compare), against
  ``qemu-img convert -O qcow2`` of the raw disk (a dd image made into a VM disk: no check);
* a qcow2 of that disk (``qemu-img convert``) -> ``rescueui restore SRC.qcow2 --to-vm DIR``,
  against ``qemu-img convert -O qcow2 SRC.qcow2 DST.qcow2``.

Printed per case: wall time (median of ``--runs``, page cache dropped before each run), the
ratio rescueui / the tool, and the size of the VM disk each one made (a disk whose free space
holds old data costs the plain copy that data; the used-block image does not carry it).
Run as root (it makes loop devices); it writes only under its own work folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import GiB, Workspace, make_dirty_disk, measure, rescueui_cmd, sh


def _clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)


def _size(path: Path) -> int:
    return os.stat(path).st_blocks * 512  # allocated bytes: what the VM disk takes


def run_size(ws: Workspace, gib: int, runs: int) -> list[dict[str, object]]:
    size = gib * GiB
    disk = ws.root / f"dirty-{gib}g.raw"
    print(f"\n{gib} GiB disk, free space holding old data: making it ...", flush=True)
    dirty = make_dirty_disk(ws, disk, size)
    image = ws.root / f"img-{gib}g"
    sh([*rescueui_cmd(), "capture", str(disk), str(image), "--quiet"])
    qcow2_src = ws.root / f"src-{gib}g.qcow2"
    sh(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(qcow2_src)])
    out = ws.root / "vms"
    rows: list[dict[str, object]] = []
    flags = ["--no-adapt", "--accept-warnings", "--quiet", "--name", "bench"]

    def case(label: str, ours: list[str], theirs: list[str], tool: str, src_fmt: str) -> None:
        r_ours = measure(
            f"rescueui --to-vm from {label}", size, runs, ours, prep=lambda: _clear(out)
        )
        made_ours = _size(out / "bench.qcow2")
        r_tool = measure(f"{tool} from {label}", size, runs, theirs, prep=lambda: _clear(out))
        made_tool = _size(out / "tool.qcow2")
        # the same, made durable and read back from the medium like rescueui's disk
        dst = out / "tool.qcow2"
        checked = (
            " ".join(theirs) + f" && sync {dst} && qemu-img compare -T none -f {src_fmt} "
            f"-F qcow2 {theirs[-2]} {dst}"
        )
        r_checked = measure(
            "  + sync + compare -T none", size, runs, checked, prep=lambda: _clear(out)
        )
        rows.append(
            {
                "size_gib": gib,
                "source": label,
                "used_bytes": dirty.used,
                "rescueui_s": round(r_ours.wall, 2),
                "tool": tool,
                "tool_s": round(r_tool.wall, 2),
                "ratio_rescueui_over_tool": round(r_ours.wall / r_tool.wall, 2),
                "tool_checked_s": round(r_checked.wall, 2),
                "ratio_rescueui_over_tool_checked": round(r_ours.wall / r_checked.wall, 2),
                "vm_disk_bytes_rescueui": made_ours,
                "vm_disk_bytes_tool": made_tool,
            }
        )

    case(
        "our image",
        [*rescueui_cmd(), "restore", str(image), "--to-vm", str(out), *flags],
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(disk), str(out / "tool.qcow2")],
        "qemu-img convert (raw disk)",
        "raw",
    )
    case(
        "qcow2",
        [*rescueui_cmd(), "restore", str(qcow2_src), "--to-vm", str(out), *flags],
        [
            "qemu-img",
            "convert",
            "-f",
            "qcow2",
            "-O",
            "qcow2",
            str(qcow2_src),
            str(out / "tool.qcow2"),
        ],
        "qemu-img convert (qcow2)",
        "qcow2",
    )
    for p in (disk, qcow2_src):
        p.unlink()
    shutil.rmtree(image, ignore_errors=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    lines = [
        f"{'size':>5} {'source':<10} {'used':>6} {'rescueui':>9} {'convert':>8} {'ratio':>6} "
        f"{'+check':>8} {'ratio':>6} {'VM disk: rescueui':>18} {'tool':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['size_gib']:>4}G {r['source']:<10} {int(r['used_bytes']) / GiB:5.2f}G "  # type: ignore[call-overload]
            f"{r['rescueui_s']:>8}s {r['tool_s']:>7}s {r['ratio_rescueui_over_tool']:>6} "
            f"{r['tool_checked_s']:>7}s {r['ratio_rescueui_over_tool_checked']:>6} "
            f"{int(r['vm_disk_bytes_rescueui']) / GiB:17.2f}G {int(r['vm_disk_bytes_tool']) / GiB:6.2f}G"  # type: ignore[call-overload]
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2", help="disk sizes in GiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", default="/var/tmp")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root: the dirty disk is made through loop devices", file=sys.stderr)
        return 2
    ws = Workspace(Path(tempfile.mkdtemp(prefix="rescueui-bench-vm-", dir=args.workdir)))
    rows: list[dict[str, object]] = []
    try:
        for gib in (int(x) for x in args.sizes.split(",") if x.strip()):
            rows += run_size(ws, gib, args.runs)
    finally:
        ws.close()
    print("\n" + table(rows))
    print(
        "ratio = rescueui wall / tool wall (below 1: rescueui is faster). convert: the bare "
        "qemu-img convert (cache mode unsafe: not yet on the medium when it ends, nothing "
        "checked); +check: the same, synced and read back with qemu-img compare -T none. "
        "rescueui: the checked restore (BLAKE3 per chunk), its O_DIRECT read-back, the "
        "conversion, fsync, compare -T none and the definition."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    subprocess.run(["sync"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
