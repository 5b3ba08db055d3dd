"""Restore into a new virtual machine (``--to-vm``): the VM's values and why, fitted to the
host that runs it; the disk written, compared and named by a definition that validates.

The boots (the VM a definition describes, started from its own values) are in
``tests/test_vm_boot.py``; here: the rules, and the job on small real images (qcow2 with
the libvirt domain of its old VM next to it, made by qemu-img from a real GPT disk).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.adapt.system import InstalledSystem, Kernel
from rescueui.core.units import GiB, MiB
from rescueui.core.vm.machine import SATA_DISK, VIRTIO_DISK, _choose_bus, fitted_memory
from tests.imagefixtures import checked_ext_partition, make_disk

NEEDS = [t for t in ("qemu-img", "sfdisk", "mkfs.ext4", "mkfs.vfat") if shutil.which(t) is None]
needs_tools = pytest.mark.skipif(bool(NEEDS), reason=f"missing tools: {', '.join(NEEDS)}")


def rescueui(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rescueui", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --------------------------------------------------------------------------- the rules


def system(initramfs: list[str] | None, modules: list[str] | None = None) -> InstalledSystem:
    mods = modules if modules is not None else [*VIRTIO_DISK, *SATA_DISK, "virtio_net", "e1000"]
    return InstalledSystem(
        found=True,
        os_name="Debian GNU/Linux 12",
        kernels=[
            Kernel(
                "6.1.0-50-amd64",
                initramfs="/boot/initrd.img-6.1.0-50-amd64",
                initramfs_modules=initramfs,
                modules=mods,
            )
        ],
        initramfs_tool="initramfs-tools",
        initramfs_policy="MODULES=dep",
    )


def test_virtio_when_the_initramfs_has_it() -> None:
    bus, by_fixup, why, level = _choose_bus(
        system(["virtio_blk", "virtio_pci", "ext4"]), None, False, True
    )
    assert (bus, by_fixup, level) == ("virtio", False, "ok")
    assert "has the virtio disk drivers" in why


def test_virtio_only_by_the_drivers_fixup_else_sata() -> None:
    sata_only = system(["ahci", "libahci", "sd_mod", "ext4"])
    bus, by_fixup, why, _ = _choose_bus(sata_only, None, True, True)
    assert (bus, by_fixup) == ("virtio", True)
    assert "lacks virtio_blk, virtio_pci" in why and "fix-up drivers adds them" in why
    bus, by_fixup, why, level = _choose_bus(sata_only, None, False, True)
    assert (bus, by_fixup, level) == ("sata", False, "info")
    assert "fix-up drivers is off" in why and "e1000" in why


def test_neither_virtio_nor_ahci_and_no_fixup_warns() -> None:
    nvme_only = system(["nvme", "ext4"])
    bus, _, why, level = _choose_bus(nvme_only, None, False, True)
    assert (bus, level) == ("sata", "warn")
    assert "lacks ahci, sd_mod too" in why


def test_a_kernel_without_virtio_gets_sata_even_with_the_fixup() -> None:
    old = system(["ahci", "sd_mod"], modules=["ahci", "sd_mod", "e1000"])
    bus, by_fixup, why, _ = _choose_bus(old, None, True, True)
    assert (bus, by_fixup) == ("sata", False)
    assert "has no virtio disk driver" in why


def test_unrecorded_system_follows_the_source_vm_bus() -> None:
    assert _choose_bus(None, "virtio", True, True)[0] == "virtio"
    bus, _, why, _ = _choose_bus(None, "ata", True, True)
    assert bus == "sata" and "not known" in why


def test_vmware_definitions_never_get_virtio() -> None:
    bus, _, why, _ = _choose_bus(system(["virtio_blk", "virtio_pci"]), "virtio", True, False)
    assert bus == "sata" and "no virtio" in why
    assert "fix-up drivers adds ahci, sd_mod" in why


def test_fitted_memory_keeps_room_for_the_host() -> None:
    assert fitted_memory(4 * GiB) == 3 * GiB
    assert fitted_memory(64 * GiB) == 56 * GiB
    assert fitted_memory(1 * GiB) == 256 * MiB  # never below 256 MiB
    assert fitted_memory(10 * GiB + 77) % (128 * MiB) == 0


# --------------------------------------------------------------------------- the job

LIBVIRT = """<domain type='kvm'>
  <name>web01</name>
  <memory unit='KiB'>8388608</memory>
  <vcpu placement='static'>4</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/web01.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""


@pytest.fixture(scope="module")
def web01(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A qcow2 (a real GPT disk: ESP + ext4) with its old VM's libvirt domain next to it:
    4 vCPUs, 8 GiB, UEFI, virtio."""
    if NEEDS:
        pytest.skip(f"missing tools: {', '.join(NEEDS)}")
    tmp = tmp_path_factory.mktemp("web01")
    disk = make_disk(tmp / "src", size_mib=64)
    vms = tmp / "libvirt"
    vms.mkdir()
    qcow2 = vms / "web01.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(disk.path), str(qcow2)],
        check=True,
    )
    (vms / "web01.xml").write_text(LIBVIRT)
    return qcow2


def codes(findings: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["code"]: f for f in findings}


def xml_values(path: Path) -> dict[str, Any]:
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    disk = next(d for d in root.iter("disk") if d.get("device") == "disk")
    return {
        "vcpus": int(root.findtext("vcpu") or 0),
        "memory_kib": int(root.findtext("memory") or 0),
        "firmware": (root.find("os").get("firmware") if root.find("os") is not None else None),
        "bus": disk.find("target").get("bus"),
        "file": disk.find("source").get("file"),
        "format": disk.find("driver").get("type"),
        "nic": next(root.iter("interface")).find("model").get("type"),
    }


@needs_tools
@pytest.mark.parametrize("how", ["values", "profile"])
def test_4_vcpu_8g_vm_fitted_to_a_2_cpu_4g_host(web01: Path, tmp_path: Path, how: str) -> None:
    out = tmp_path / "vms"
    out.mkdir()
    if how == "values":
        host = ["--host-cpus", "2", "--host-memory", "4G"]
    else:  # the host's own `rescueui host --json`, trimmed to what matters
        profile = tmp_path / "hyper.json"
        profile.write_text(json.dumps({"cpus": 2, "memory_bytes": 4 * GiB, "firmware": "uefi"}))
        host = ["--for-host", str(profile)]

    pf = rescueui("preflight", web01, "--to-vm", out, *host, "--json")
    assert pf.returncode == 0, pf.stderr
    found = codes(json.loads(pf.stdout)["findings"])
    assert found["vm.cpus"]["level"] == "warn"
    assert "had 4 vCPUs; the host has 2" in found["vm.cpus"]["message"]
    assert "the definition gets 2" in found["vm.cpus"]["message"]
    assert found["vm.memory"]["level"] == "warn"
    assert "had 8.0 GiB" in found["vm.memory"]["message"]
    assert "the definition gets 3.0 GiB" in found["vm.memory"]["message"]
    assert "cpus" not in found and "memory" not in found  # the VM's findings replace them
    assert list(out.iterdir()) == []  # a pre-flight makes nothing

    refused = rescueui("restore", web01, "--to-vm", out, *host, "--quiet")
    assert refused.returncode != 0
    assert "acknowledge" in refused.stderr
    assert list(out.iterdir()) == []  # refused: the disk file made for it is gone again

    done = rescueui(
        "restore", web01, "--to-vm", out, *host, "--accept-warnings", "--quiet", "--json"
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["outcome"] == "success"
    assert {a["code"] for a in report["acknowledgements"]} == {"vm.cpus", "vm.memory"}
    vm = report["details"]["vm"]
    assert sorted(p.name for p in out.iterdir()) == ["web01.qcow2", "web01.xml"]
    values = xml_values(out / "web01.xml")
    assert values["vcpus"] == 2 and values["memory_kib"] == 3 * GiB // 1024
    assert values["firmware"] == "efi"  # the disk boots by UEFI (an ESP, no BIOS code)
    assert values["bus"] == "virtio" and values["nic"] == "virtio"
    assert "the source VM's disk was on virtio" in vm["why"]["disk_bus"]  # says which and why
    assert values["file"] == str(out / "web01.qcow2") and values["format"] == "qcow2"
    # the VM disk holds exactly the image's disk (no system on it: nothing adapted)
    same = subprocess.run(["qemu-img", "compare", str(web01), str(out / "web01.qcow2")])
    assert same.returncode == 0
    assert set(report["phases"]) >= {"write", "verify", "convert", "compare"}
    assert any("qemu-img compare" in c for c in vm["checks"])

    check = rescueui("vm-check", out / "web01.xml", "--json")
    assert check.returncode == 0, check.stdout + check.stderr
    result = json.loads(check.stdout)
    assert result["disk"] == str(out / "web01.qcow2") and result["disk_format"] == "qcow2"
    assert (result["vcpus"], result["memory_bytes"]) == (2, 3 * GiB)
    if shutil.which("virt-xml-validate") and shutil.which("xmllint"):
        assert result["validated_by"].startswith("virt-xml-validate")


@needs_tools
@pytest.mark.parametrize("kind", ["vmx", "ovf"])
def test_vmdk_with_a_vmx_or_ovf_reads_back_as_written(
    web01: Path, tmp_path: Path, kind: str
) -> None:
    out = tmp_path / "vmware"
    out.mkdir()
    done = rescueui(
        "restore", web01, "--to-vm", out, "--format", "vmdk", "--definition", kind,
        "--name", "web01-vmw", "--vcpus", "2", "--memory", "2G", "--host-cpus", "8",
        "--host-memory", "32G", "--quiet", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["web01-vmw.vmdk", f"web01-vmw.{kind}", "web01-vmw.xml"])
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out / "web01-vmw.vmdk")],
            capture_output=True, check=True,
        ).stdout
    )  # fmt: skip
    assert info["format"] == "vmdk"
    subformat = info["format-specific"]["data"]["create-type"]
    assert subformat == {"vmx": "monolithicSparse", "ovf": "streamOptimized"}[kind]
    for definition in (f"web01-vmw.{kind}", "web01-vmw.xml"):
        check = json.loads(rescueui("vm-check", out / definition, "--json").stdout)
        assert check["problems"] == [], check
        assert (check["vcpus"], check["memory_bytes"]) == (2, 2 * GiB)
        assert check["bus"] == "ata"  # VMware has no virtio: SATA
        assert check["firmware"] == "uefi"


@needs_tools
def test_refusals_leave_nothing_and_say_what_to_do(web01: Path, tmp_path: Path) -> None:
    out = tmp_path / "vms"
    out.mkdir()
    (out / "web01.qcow2").write_bytes(b"keep me")
    taken = rescueui(
        "restore", web01, "--to-vm", out, "--name", "web01", "--accept-warnings", "--quiet"
    )
    assert taken.returncode != 0
    assert "already exists" in taken.stderr and "another --name" in taken.stderr
    assert (out / "web01.qcow2").read_bytes() == b"keep me"
    assert sorted(p.name for p in out.iterdir()) == ["web01.qcow2"]
    # the default name does not refuse the job: it takes the next free one
    pf = rescueui("preflight", web01, "--to-vm", out, "--json")
    assert json.loads(pf.stdout)["vm"]["name"] == "web01-2"

    missing = rescueui("restore", web01, "--to-vm", tmp_path / "nope", "--quiet")
    assert missing.returncode != 0 and "Create the folder first" in missing.stderr

    vmx_qcow2 = rescueui("restore", web01, "--to-vm", out, "--definition", "vmx", "--quiet")
    assert vmx_qcow2.returncode != 0 and "needs the disk as vmdk" in vmx_qcow2.stderr

    both = rescueui("restore", web01, "/dev/null", "--to-vm", out, "--quiet")
    assert both.returncode == 2 and "TARGET" in both.stderr

    stray = rescueui("restore", web01, str(tmp_path / "x.img"), "--vcpus", "2", "--quiet")
    assert stray.returncode == 2 and "only apply with --to-vm" in stray.stderr


@needs_tools
def test_a_larger_vm_disk_gets_the_last_partition_and_filesystem_grown(
    web01: Path, tmp_path: Path
) -> None:
    """--disk-size: the VM disk is as large as asked; the GPT is fitted to it and the last
    partition and its ext4 grown (the restore's own steps onto a larger disk). Smaller than
    the source is a STOP that makes nothing; a size that cannot be read is refused."""
    out = tmp_path / "vms"
    out.mkdir()
    small = rescueui("preflight", web01, "--to-vm", out, "--disk-size", "32M", "--json")
    found = codes(json.loads(small.stdout)["findings"])
    assert found["vm.size"]["level"] == "stop", found["vm.size"]
    assert "smaller than the source disk, 64.0 MiB (67108864 bytes)" in found["vm.size"]["message"]
    refused = rescueui(
        "restore", web01, "--to-vm", out, "--disk-size", "32M", "--accept-warnings", "--quiet"
    )
    assert refused.returncode != 0 and "smaller than the source disk" in refused.stderr
    assert list(out.iterdir()) == []
    bad = rescueui("restore", web01, "--to-vm", out, "--disk-size", "big", "--quiet")
    assert bad.returncode != 0 and "--disk-size 'big': cannot read this size" in bad.stderr

    done = rescueui(
        "restore", web01, "--to-vm", out, "--disk-size", "96M", "--name", "big",
        "--accept-warnings", "--quiet", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["details"]["vm"]["disk_bytes"] == 96 * MiB
    assert any("partition 2" in n and "grown from" in n for n in report["notes"]), report["notes"]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", str(out / "big.qcow2")],
            capture_output=True, text=True, check=True,
        ).stdout
    )  # fmt: skip
    assert info["virtual-size"] == 96 * MiB
    raw = tmp_path / "big.img"
    subprocess.run(
        ["qemu-img", "convert", "-O", "raw", str(out / "big.qcow2"), str(raw)], check=True
    )
    verify = subprocess.run(["sfdisk", "--verify", str(raw)], capture_output=True, text=True)
    assert verify.returncode == 0 and "problem" not in verify.stdout.lower(), verify.stdout
    table = json.loads(
        subprocess.run(
            ["sfdisk", "-J", str(raw)], capture_output=True, text=True, check=True
        ).stdout
    )["partitiontable"]
    last = table["partitions"][-1]
    assert (last["start"] + last["size"]) * 512 > 90 * MiB  # was 47 MiB
    part = checked_ext_partition(raw, last, tmp_path / "p2.img")
    head = subprocess.run(["dumpe2fs", "-h", str(part)], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in head.splitlines() if ":" in line)
    assert int(fields["Block count"]) * int(fields["Block size"]) > 70 * MiB  # was 30 MiB


@needs_tools
def test_a_failed_restore_removes_the_vm_files(web01: Path, tmp_path: Path) -> None:
    """An image whose data is damaged: the restore fails at the chunk, and the disk file
    made for the VM is removed again; the report says so."""
    out = tmp_path / "vms"
    out.mkdir()
    raw = tmp_path / "bad.img"
    subprocess.run(["qemu-img", "convert", "-q", "-O", "raw", str(web01), str(raw)], check=True)
    image = tmp_path / "img"
    cap = rescueui("capture", raw, image, "--quiet")
    assert cap.returncode == 0, cap.stderr
    data = next(p for p in sorted(image.glob("p*.zst")) if p.stat().st_size > 64 * 1024)
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    failed = rescueui("restore", image, "--to-vm", out, "--accept-warnings", "--quiet", "--json")
    assert failed.returncode != 0
    report = json.loads(failed.stdout)
    assert report["outcome"] == "failed"
    assert list(out.iterdir()) == []
    assert any("Removed again" in n for n in report["notes"])
    assert re.search(
        r"chunk \d+",
        report["error"]["message"]
        if isinstance(report.get("error"), dict)
        else str(report.get("error")),
    )


def test_unknown_host_capacity_is_not_fitted() -> None:
    from rescueui.core.vm.machine import RunsOn, _fit

    where = RunsOn(0, 0, "the profile of the host (unknown machine)")
    value, finding = _fit("vCPUs", "vm.cpus", 16, None, 0, 0, where, str, 2)
    assert value == 16 and finding.level == "info" and "not known" in finding.message


def test_vm_check_refuses_a_definition_without_its_disk(tmp_path: Path) -> None:
    xml = tmp_path / "ghost.xml"
    xml.write_text(
        LIBVIRT.replace("/var/lib/libvirt/images/web01.qcow2", str(tmp_path / "gone.qcow2"))
    )
    res = rescueui("vm-check", xml)
    assert res.returncode == 1
    assert "FAILED" in res.stdout and "is not there" in res.stdout
