"""A system restored onto a smaller disk boots (issue 13, item 3), proven in QEMU.

The BIOS disk of :mod:`tests.bootsystem` (1.5 GiB, DOS label, p1 ext4 "testroot" over the
whole disk, GRUB for BIOS in the MBR and the gap after it, about 630 MiB used) is captured
with rescueui, then restored onto a loop device over a file 30 % smaller than the source
disk: the pre-flight plans the copy (``smaller.plan``), the restore makes the root
filesystem again smaller, copies its files and installs GRUB again (the boot-loader fix-up),
and the restored file boots under SeaBIOS from virtio to the marker. The restore is fitted to the QEMU guest's
hardware (``--for-host``, as the other boot tests do) so the boot depends neither on the
machine running the tests nor on a fix-up: the source system already boots there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import bootsystem
from tests import smallerfixtures as sf
from tests.clirun import capture, loop, rescueui
from tests.loopdisk import settle
from tests.marks import needs

TOOLS = ("debootstrap", "sfdisk", "partx", "mkfs.ext4", "qemu-system-x86_64", "unshare",
         "chroot")  # fmt: skip
pytestmark = needs(*TOOLS, slow=True)

MiB = 1024 * 1024
SHRINK = 0.30  # the target is this much smaller than the source disk
HEADROOM = 1.3  # ... and still holds the root's used space with this much to spare

GUEST = {  # what `rescueui host --json` says inside the QEMU guest booted below
    "cpus": 1,
    "memory_bytes": 1024 * MiB,
    "firmware": "bios",
    "dmi_vendor": "QEMU",
    "dmi_product": "Standard PC (i440FX + PIIX, 1996)",
    "virtual": "qemu",
    "storage_controllers": [],
    "storage_drivers": ["virtio_blk", "virtio_pci"],
    "disks": [],
    "nics": [],
}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smaller-boot")


@pytest.fixture(scope="module")
def source(work: Path) -> dict[str, Any]:
    """The BIOS disk, how full its root is (df, mounted read-only), and its image."""
    disk = bootsystem.debian_disk("bios")
    with sf.partitions(disk, read_only=True) as parts:
        with sf.mounted(parts[1], work / "src-root") as top:
            df = shutil.disk_usage(top)
    image = capture(disk, work / "bios-img")
    return {"disk": disk, "size": disk.stat().st_size, "used": df.used, "image": image}


def run_cli(*args: str | Path) -> tuple[int, dict[str, Any], str]:
    proc = rescueui(*args, check=False)
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {}
    return proc.returncode, out, proc.stderr


def explain(code: int, report: dict[str, Any], stderr: str) -> str:
    found = "\n".join(
        f"  [{f['level']}] {f['code']}: {f['message']}\n      {f['detail']}"
        for f in report.get("findings", [])
        if f["level"] != "ok"
    )
    return f"exit {code}\nstderr:\n{stderr}\nfindings:\n{found}"


@pytest.mark.timeout(1500)
def test_system_restored_onto_a_smaller_disk_boots(source: dict[str, Any], work: Path) -> None:
    size = int(source["size"] * (1 - SHRINK)) // MiB * MiB
    assert source["used"] * HEADROOM < size, (
        f"the root holds {source['used'] // MiB} MiB: a {size // MiB} MiB target is too tight "
        "for this test; change SHRINK"
    )
    target = work / "smaller.raw"
    sf.pattern_file(target, size // MiB)  # old data on the target
    profile = work / "guest.json"
    profile.write_text(json.dumps(GUEST))

    with loop(target) as dev:
        code, pf, err = run_cli("preflight", source["image"], dev, "--for-host", profile, "--json")
        found = {f["code"]: f for f in pf.get("findings", [])}
        print(explain(code, pf, err))
        assert code == 0, explain(code, pf, err)
        assert found["smaller.plan"]["level"] == "warn", explain(code, pf, err)

        code, report, err = run_cli(
            "restore", source["image"], dev, "--yes", "--quiet", "--json", "--accept-warnings",
            "--for-host", profile,
        )  # fmt: skip
        settle()
    assert code == 0 and report.get("outcome") == "success", explain(code, report, err)
    assert isinstance(report["details"].get("smaller"), dict), report["details"]

    old, new = sf.gpt(source["disk"]), sf.gpt(target)
    assert (new["label"], new["id"]) == (old["label"], old["id"])  # dos, same disk id
    p_old, p_new = old["partitions"][0], new["partitions"][0]
    assert p_new["type"] == p_old["type"] and p_new.get("bootable") == p_old.get("bootable")
    assert p_new["size"] < p_old["size"]
    with sf.partitions(target, read_only=True) as parts:
        ids = sf.blkid(parts[1])
        with sf.partitions(source["disk"], read_only=True) as src_parts:
            want = sf.blkid(src_parts[1])
        assert {k: ids.get(k) for k in ("TYPE", "UUID", "LABEL")} == {
            k: want.get(k) for k in ("TYPE", "UUID", "LABEL")
        }
        sf.run(["e2fsck", "-f", "-n", parts[1]])

    result = bootsystem.boot(target, firmware="bios", bus="virtio", log=work / "smaller.log")
    assert result.marker, f"{result.reason} after {result.seconds:.0f} s:\n{result.tail()}"
    assert result.marker_line is not None and "root=/dev/vda1" in result.marker_line
