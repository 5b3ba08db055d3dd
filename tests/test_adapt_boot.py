"""Restored systems boot on other hardware after the fix-ups, proven in QEMU.

The bootable Debian 12 disks of :mod:`tests.bootsystem` (a BIOS/grub-pc one whose fstab
names ``/dev/vda1``, a UEFI/grub-efi one without GRUB's BIOS files; both with a host-only
initramfs for virtio and a NIC rule pinning the source's MAC) are captured with rescueui
once, then restored onto loop devices with ``--for-host`` profiles of the QEMU guest's
hardware, and booted:

* BIOS image, no fix-ups, on NVMe: the initramfs has no NVMe driver, the boot stops (the
  test can fail);
* the same image with the fix-ups for an NVMe + UEFI machine: boots under OVMF, from NVMe;
* the UEFI image with the fix-ups for a BIOS machine: boots under SeaBIOS;
* a failing ``update-initramfs`` (a hook that exits 1 in the restored system): the restore
  fails with the step named, the data written and verified, the other fix-ups applied.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import bootsystem
from tests.clirun import capture, loop, rescueui
from tests.loopdisk import run, settle

TOOLS = ("debootstrap", "sfdisk", "partx", "mkfs.vfat", "fusefat", "mdir", "qemu-system-x86_64",
         "unshare", "chroot")  # fmt: skip
MISSING = [t for t in TOOLS if shutil.which(t) is None]
OVMF_MISSING = not any(
    Path(p).exists() for p in ("/usr/share/ovmf/OVMF.fd", "/usr/share/OVMF/OVMF_CODE.fd")
)
RESCUE_GRUB_MISSING = [
    p for p in ("i386-pc", "x86_64-efi") if not Path(f"/usr/lib/grub/{p}/modinfo.sh").is_file()
]

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        bool(MISSING), reason=f"missing tools: {', '.join(MISSING)} (.ci/packages.txt)"
    ),
    pytest.mark.skipif(
        bool(RESCUE_GRUB_MISSING),
        reason=f"GRUB platform files missing: {RESCUE_GRUB_MISSING} (grub-pc-bin, "
        "grub-efi-amd64-bin)",
    ),
]

TARGET_BYTES = 2048 * 1024 * 1024  # larger than the 1.5 GiB source: room for a new ESP
GUEST_MAC = "52:54:00:ab:cd:ef"


def profile(firmware: str, drivers: list[str], *, nic: bool) -> dict[str, Any]:
    """What `rescueui host --json` says inside the QEMU guest these tests boot."""
    return {
        "cpus": 1,
        "memory_bytes": 1024 * 1024 * 1024,
        "firmware": firmware,
        "dmi_vendor": "QEMU",
        "dmi_product": "Standard PC (i440FX + PIIX, 1996)",
        "virtual": "qemu",
        "storage_controllers": [],
        "storage_drivers": drivers,
        "disks": [],
        "nics": [{"name": "ens3", "mac": GUEST_MAC, "driver": "e1000", "physical": True}]
        if nic
        else [],
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adapt-boot")


@pytest.fixture(scope="module")
def bios_image(work: Path) -> Path:
    return capture(bootsystem.debian_disk("bios"), work / "bios-img")


@pytest.fixture(scope="module")
def uefi_image(work: Path) -> Path:
    return capture(bootsystem.debian_disk("uefi"), work / "uefi-img")


def write_profile(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def restore(image: Path, target: Path, *extra: str | Path, check: bool = True) -> tuple[Any, str]:
    """Restore ``image`` onto a loop device over ``target``; (JSON report, stderr)."""
    with loop(target) as dev:
        proc = rescueui(
            "restore", image, dev, "--yes", "--quiet", "--json", "--accept-warnings", *extra,
            check=check,
        )  # fmt: skip
        settle()
    return json.loads(proc.stdout), proc.stderr


def new_target(path: Path) -> Path:
    with open(path, "wb") as f:
        f.truncate(TARGET_BYTES)
    return path


def steps(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["fixup"]: s for s in report["details"]["adapt"]["steps"] if s["fixup"] != "all"}


@contextlib.contextmanager
def restored_root(target: Path, part: int) -> Iterator[Path]:
    """The restored root filesystem, mounted read-only through a loop device."""
    with loop(target, read_only=True) as dev:
        run(["partx", "-a", dev])
        where = target.parent / f"mnt-{part}"
        where.mkdir(exist_ok=True)
        run(["mount", "-o", "ro,noload", f"{dev}p{part}", str(where)])
        try:
            yield where
        finally:
            run(["umount", str(where)])


def read_root_file(target: Path, part: int, path: str) -> str:
    with restored_root(target, part) as root:
        return (root / path.lstrip("/")).read_text()


def backups(target: Path, part: int) -> list[str]:
    with restored_root(target, part) as root:
        base = root / "var/backups"
        return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- the tests


@pytest.mark.timeout(1800)
def test_bios_image_boots_from_nvme_under_uefi_only_with_the_fixups(
    bios_image: Path, work: Path
) -> None:
    prof = write_profile(work / "nvme-uefi.json", profile("uefi", ["nvme"], nic=True))

    # What the pre-flight shows, from the image alone (capture recorded the system).
    target = new_target(work / "nvme.raw")
    with loop(target) as dev:
        pf = json.loads(
            rescueui("preflight", bios_image, dev, "--for-host", prof, "--json", check=False).stdout
        )
    codes = {f["code"]: f for f in pf["findings"]}
    for name in ("drivers", "boot-loader", "names", "nic-rules"):
        assert codes[f"adapt.{name}"]["level"] == "info", codes.get(f"adapt.{name}")
    assert "nvme" in codes["adapt.drivers"]["message"]
    assert "UEFI" in codes["adapt.boot-loader"]["message"]
    assert "/dev/vda1 -> UUID=" in codes["adapt.names"]["detail"]
    assert codes["firmware"]["level"] == "info"  # answered by the boot-loader fix-up
    assert "Debian GNU/Linux 12" in codes["adapt.system"]["message"]

    # Without the fix-ups, on NVMe (BIOS, so the boot loader is not what fails): no boot.
    plain, _ = restore(bios_image, target, "--for-host", prof, "--no-adapt")
    assert plain["outcome"] == "success"
    assert "steps" not in plain["details"].get("adapt", {})
    result = bootsystem.boot(target, firmware="bios", bus="nvme", log=work / "nvme-plain.log")
    assert not result.marker, "booted from NVMe without the nvme driver: the test proves nothing"
    assert "ALERT" in result.output or "Gave up" in result.output, result.tail()

    # With them: the restore adapts the system, and it boots by UEFI from NVMe.
    report, _ = restore(bios_image, target, "--for-host", prof)
    assert report["outcome"] == "success", report.get("error")
    done = steps(report)
    assert set(done) >= {"drivers", "boot-loader", "names", "nic-rules"}
    assert all(s["status"] == "done" for s in done.values()), done
    assert all(s["status"] == "written and verified" for s in report["streams"])
    drivers = done["drivers"]
    assert any(c["command"] == "update-initramfs -u -k all" and c["exit_status"] == 0
               for c in drivers["commands"])  # fmt: skip
    assert any("nvme" in c for c in drivers["checks"])
    changed = {f["path"]: f for s in done.values() for f in s["files"]}
    for path in ("/etc/fstab", "/etc/udev/rules.d/70-persistent-net.rules",
                 "/etc/initramfs-tools/modules", "/etc/network/interfaces"):  # fmt: skip
        assert changed[path]["sha256_before"] != changed[path]["sha256_after"]
        assert changed[path]["backup"].startswith("/var/backups/rescueui-")
    assert any("BOOTX64.EFI" in c for c in done["boot-loader"]["checks"])
    text = Path(next(f for f in report["report_files"] if f.endswith(".txt"))).read_text()
    assert "Fix-ups of the restored system:" in text and "[DONE] drivers" in text

    table = json.loads(run(["sfdisk", "--json", str(target)]).stdout)["partitiontable"]
    esp = [p for p in table["partitions"] if p["type"].lower() == "ef"]
    assert len(esp) == 1  # the new EFI system partition after the grown root
    fstab = read_root_file(target, 1, "/etc/fstab")
    assert "/dev/vda1" not in fstab and "UUID=" in fstab
    rules = read_root_file(target, 1, "/etc/udev/rules.d/70-persistent-net.rules")
    assert bootsystem.SOURCE_MAC not in rules
    assert "ens3" in read_root_file(target, 1, "/etc/network/interfaces")
    saved = backups(target, 1)
    assert any(p.endswith("etc/fstab") for p in saved), saved

    result = bootsystem.boot(
        target, firmware="uefi", bus="nvme", nic_mac=GUEST_MAC, log=work / "nvme-uefi.log"
    )
    assert result.marker, f"{result.reason} after {result.seconds:.0f} s:\n{result.tail()}"
    assert result.marker_line is not None and "root=/dev/nvme0n1p1" in result.marker_line


@pytest.mark.timeout(1800)
def test_uefi_image_boots_under_seabios_after_the_boot_loader_fixup(
    uefi_image: Path, work: Path
) -> None:
    prof = write_profile(
        work / "virtio-bios.json", profile("bios", ["virtio_blk", "virtio_pci"], nic=False)
    )
    target = new_target(work / "bios.raw")
    report, _ = restore(uefi_image, target, "--for-host", prof)
    assert report["outcome"] == "success", report.get("error")
    done = steps(report)
    assert "drivers" not in done  # virtio is in its initramfs already
    boot = done["boot-loader"]
    assert boot["status"] == "done"
    assert any(
        "--target=i386-pc" in c["command"] and "--directory=" in c["command"]
        for c in boot["commands"]
    )  # fmt: skip  (GRUB's BIOS files from this medium)
    assert any("grub-pc" in c for c in boot["checks"])  # the package to install, named
    table = json.loads(run(["sfdisk", "--json", str(target)]).stdout)["partitiontable"]
    bios_boot = [p for p in table["partitions"]
                 if p["type"] == "21686148-6449-6E6F-744E-656564454649"]  # fmt: skip
    assert len(bios_boot) == 1 and bios_boot[0]["start"] < 2048

    result = bootsystem.boot(target, firmware="bios", bus="virtio", log=work / "seabios.log")
    assert result.marker, f"{result.reason} after {result.seconds:.0f} s:\n{result.tail()}"


@pytest.mark.timeout(1200)
def test_a_failing_fixup_is_reported_and_the_data_stays_verified(work: Path) -> None:
    # A copy of the BIOS disk whose update-initramfs fails (a hook that exits 1).
    source = bootsystem.copy_disk("bios", work / "failing-src.raw")
    with loop(source) as dev:
        run(["partx", "-a", dev])
        where = work / "failing-mnt"
        where.mkdir(exist_ok=True)
        run(["mount", f"{dev}p1", str(where)])
        try:
            hook = where / "etc/initramfs-tools/hooks/zz-rescueui-test-fails"
            hook.write_text(
                '#!/bin/sh\n[ "$1" = prereqs ] && exit 0\necho broken hook >&2\nexit 1\n'
            )
            os.chmod(hook, 0o755)
        finally:
            run(["umount", str(where)])
    image = capture(source, work / "failing-img")
    prof = write_profile(work / "nvme-bios.json", profile("bios", ["nvme"], nic=False))
    target = new_target(work / "failing.raw")
    with loop(target) as dev:
        proc = rescueui(
            "restore", image, dev, "--yes", "--quiet", "--json", "--accept-warnings",
            "--for-host", prof, check=False,
        )  # fmt: skip
    assert proc.returncode != 0
    assert "drivers" in proc.stderr and "written and verified" in proc.stderr
    assert "rebuild its initramfs" in proc.stderr  # the next step, in the operator's words
    report = json.loads(proc.stdout)
    assert report["outcome"] == "failed"
    assert all(s["status"] == "written and verified" for s in report["streams"])
    done = steps(report)
    failed = done["drivers"]
    assert failed["status"] == "failed"
    assert any(c["exit_status"] != 0 and "update-initramfs" in c["command"]
               for c in failed["commands"])  # fmt: skip
    assert "broken hook" in failed["commands"][-1]["output_tail"]
    assert failed["next_step"]
    assert done["names"]["status"] == "done"  # the other fix-ups still ran
    assert report["details"]["adapt"]["result"] == "failed"
