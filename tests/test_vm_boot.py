"""A captured server restored into a new VM boots, started from its definition's values.

The bootable Debian 12 disk of :mod:`tests.bootsystem` (BIOS, grub-pc, a host-only
initramfs with virtio) and a "physical server" variant of it (its initramfs rebuilt with
the SATA drivers and no virtio, fstab by UUID) are captured with rescueui, restored with
``--to-vm`` into qcow2 disks with libvirt domains, checked with ``rescueui vm-check`` and
booted in QEMU from the values the domain names (machine, firmware, vCPUs, memory, disk
bus and format, NIC model and MAC: :func:`tests.bootsystem.qemu_command_from_libvirt`;
libvirt itself does not run here):

* the virtio system -> virtio disk and NIC; fitted to a 1-CPU host it gets 1 vCPU and the
  pre-flight warned;
* the SATA-only system without fix-ups -> SATA (AHCI) and e1000, and the report says why;
* the SATA-only system with the drivers fix-up -> virtio, because the fix-up adds it (its
  domain checked, not booted: test_adapt_boot boots a system whose initramfs the fix-up gave
  a new disk driver).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.units import GiB, MiB
from tests import bootsystem
from tests.clirun import capture, rescueui
from tests.marks import needs

TOOLS = ("debootstrap", "sfdisk", "partx", "qemu-system-x86_64", "qemu-img", "unshare", "chroot")
pytestmark = needs(*TOOLS, slow=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm-boot")


@pytest.fixture(scope="module")
def virtio_image(work: Path) -> Path:
    return capture(bootsystem.debian_disk("bios"), work / "virtio-img")


@pytest.fixture(scope="module")
def sata_image(work: Path) -> Path:
    disk = bootsystem.sata_server_disk(work / "sata-server.raw")
    try:
        return capture(disk, work / "sata-img")
    finally:
        disk.unlink()


def domain(xml: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    root = ET.parse(xml).getroot()
    disk = next(d for d in root.iter("disk") if d.get("device") == "disk")
    iface = next(root.iter("interface"))
    return {
        "vcpus": int(root.findtext("vcpu") or 0),
        "memory": int(root.findtext("memory") or 0) * 1024,
        "bus": disk.find("target").get("bus"),  # type: ignore[union-attr]
        "nic": iface.find("model").get("type"),  # type: ignore[union-attr]
        "mac": iface.find("mac").get("address"),  # type: ignore[union-attr]
    }


def to_vm(image: Path, out: Path, *extra: str) -> dict[str, Any]:
    out.mkdir()
    proc = rescueui(
        "restore", image, "--to-vm", out, "--memory", "1G", "--quiet", "--json",
        "--accept-warnings", *extra,
    )  # fmt: skip
    return json.loads(proc.stdout)


def boots(xml: Path, work: Path) -> str:
    """Boot the VM ``xml`` describes; the marker line (the test fails with the console's
    tail when it does not come)."""
    check = json.loads(rescueui("vm-check", xml, "--json").stdout)
    assert check["problems"] == [], check
    log = work / f"{xml.stem}-console.log"
    result = bootsystem.boot_libvirt_xml(xml, timeout=420, log=log)
    assert result.marker, f"{xml.name} did not boot ({result.reason}):\n{result.tail()}"
    return result.marker_line


@pytest.mark.timeout(1500)
def test_virtio_system_as_a_vm_fitted_to_a_one_cpu_host_boots(
    virtio_image: Path, work: Path
) -> None:
    out = work / "vm-virtio"
    pf = rescueui(
        "preflight", virtio_image, "--to-vm", work, "--name", "probe", "--host-cpus", "1",
        "--memory", "1G", "--json", check=False,
    )  # fmt: skip
    found = {f["code"]: f for f in json.loads(pf.stdout)["findings"]}
    assert found["vm.cpus"]["level"] == "warn"
    assert "the definition gets 1" in found["vm.cpus"]["message"]
    assert (
        found["vm.disk"]["level"] == "ok"
        and "has the virtio disk drivers" in found["vm.disk"]["message"]
    )

    # a VM disk 256 MiB larger than the source's: the root partition and filesystem grown
    size = json.loads(pf.stdout)["vm"]["disk_bytes"] + 256 * MiB
    report = to_vm(
        virtio_image, out, "--name", "web01", "--host-cpus", "1", "--disk-size", str(size)
    )
    assert report["outcome"] == "success"
    assert report["details"]["vm"]["disk_bytes"] == size
    assert any("partition 1" in n and "grown from" in n for n in report["notes"]), report["notes"]
    assert "vm.cpus" in {a["code"] for a in report["acknowledgements"]}
    vm = report["details"]["vm"]
    assert (vm["vcpus"], vm["disk_bus"], vm["nic_model"], vm["firmware"]) == (
        1,
        "virtio",
        "virtio",
        "bios",
    )
    d = domain(out / "web01.xml")
    assert (d["vcpus"], d["memory"], d["bus"], d["nic"]) == (1, 1 * GiB, "virtio", "virtio")
    assert report["details"]["adapt"]["result"] == "applied"
    line = boots(out / "web01.xml", work)
    assert "root=/dev/vda1" in line


@pytest.mark.timeout(1500)
def test_physical_system_without_virtio_gets_sata_and_e1000_and_boots(
    sata_image: Path, work: Path
) -> None:
    out = work / "vm-sata"
    report = to_vm(sata_image, out, "--name", "db01", "--no-adapt")
    assert report["outcome"] == "success"
    vm = report["details"]["vm"]
    assert (vm["disk_bus"], vm["nic_model"], vm["virtio_by_fixup"]) == ("sata", "e1000", False)
    assert "lacks virtio_blk, virtio_pci" in vm["why"]["disk_bus"]
    assert "fix-up drivers is off" in vm["why"]["disk_bus"]  # the report says which and why
    d = domain(out / "db01.xml")
    assert (d["bus"], d["nic"]) == ("sata", "e1000")
    line = boots(out / "db01.xml", work)
    assert "root=/dev/sda1" in line


@pytest.mark.timeout(1500)
def test_physical_system_gets_virtio_from_the_drivers_fixup(sata_image: Path, work: Path) -> None:
    out = work / "vm-fixed"
    report = to_vm(sata_image, out, "--name", "db02")
    assert report["outcome"] == "success"
    vm = report["details"]["vm"]
    assert (vm["disk_bus"], vm["nic_model"], vm["virtio_by_fixup"]) == ("virtio", "virtio", True)
    assert "the fix-up drivers adds them" in vm["why"]["disk_bus"]
    steps = {s["fixup"]: s for s in report["details"]["adapt"]["steps"]}
    assert steps["drivers"]["status"] == "done"
    assert any("virtio_blk" in c for c in steps["drivers"]["checks"])
    d = domain(out / "db02.xml")
    assert (d["bus"], d["nic"]) == ("virtio", "virtio")
    check = json.loads(rescueui("vm-check", out / "db02.xml", "--json").stdout)
    assert check["problems"] == [] and check["bus"] == "virtio"
    # Not booted (a minute of CI): a system whose initramfs the drivers fix-up gave a new
    # disk driver boots from it in tests/test_adapt_boot.py (virtio -> NVMe).
