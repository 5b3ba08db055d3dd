"""Host profile: the real machine against nproc, /proc/meminfo, /sys/firmware/efi, DMI files;
detection rules against small fake /sys and /proc trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rescueui.core import host
from rescueui.core.host import HostProfile, read_host_profile

DMI = Path("/sys/class/dmi/id")


def _dmi(name: str) -> str | None:
    try:
        return (DMI / name).read_text().strip() or None
    except OSError:
        return None


def _cli_json() -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "rescueui", "host", "--json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout)


def test_cli_host_json_matches_this_machine() -> None:
    d = _cli_json()
    nproc = int(subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout)
    assert d["cpus"] == nproc
    meminfo = Path("/proc/meminfo").read_text()
    kib = next(
        int(line.split()[1]) for line in meminfo.splitlines() if line.startswith("MemTotal:")
    )
    assert d["memory_bytes"] == kib * 1024
    assert d["firmware"] == ("uefi" if Path("/sys/firmware/efi").exists() else "bios")
    assert d["dmi_vendor"] == _dmi("sys_vendor")
    assert d["dmi_product"] == _dmi("product_name")
    assert d["dmi_version"] == _dmi("product_version")
    assert d["board_vendor"] == _dmi("board_vendor")
    assert d["board_name"] == _dmi("board_name")
    # every network interface but lo, with its MAC
    want = {
        n: (Path("/sys/class/net") / n / "address").read_text().strip()
        for n in os.listdir("/sys/class/net")
        if n != "lo"
    }
    assert {n["name"]: n["mac"] for n in d["nics"]} == want
    # round trip through the dataclass
    assert HostProfile.from_dict(d).to_dict() == d


def test_cli_host_text_names_the_facts() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "rescueui", "host"],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ).stdout
    p = read_host_profile()
    assert f"{p.cpus} logical" in out
    assert p.firmware.upper() in out
    for nic in p.nics:
        assert nic["name"] in out


def test_disks_match_sysfs() -> None:
    p = read_host_profile()
    for d in p.disks:
        q = Path("/sys/class/block") / d["name"] / "queue"
        assert d["logical_sector_size"] == int((q / "logical_block_size").read_text())
        assert d["physical_sector_size"] == int((q / "physical_block_size").read_text())
        sectors = int((Path("/sys/class/block") / d["name"] / "size").read_text())
        assert d["size_bytes"] == sectors * 512
        assert not d["name"].startswith(("loop", "zram", "ram"))
    if Path("/sys/class/block/vda").exists():
        vda = next(d for d in p.disks if d["name"] == "vda")
        assert vda["bus"] == "virtio"
        assert any("virtio_blk" in c for c in p.storage_controllers)


def test_from_dict_tolerates_unknown_and_missing_keys() -> None:
    p = HostProfile.from_dict({"cpus": "4", "firmware": "UEFI", "future_field": [1, 2]})
    assert p.cpus == 4 and p.firmware == "uefi" and p.memory_bytes == 0
    assert p.dmi_vendor is None and p.nics == [] and p.disks == []
    bad = HostProfile.from_dict({"cpus": "many", "nics": "eth0", "disks": [1, {"name": "sda"}]})
    assert bad.cpus == 0 and bad.nics == [] and bad.disks == [{"name": "sda"}]
    assert HostProfile.from_dict(None).firmware == "unknown"  # type: ignore[arg-type]


def _fake_tree(tmp: Path, files: dict[str, str]) -> tuple[Path, Path]:
    for rel, text in files.items():
        f = tmp / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp / "sys").mkdir(exist_ok=True)
    (tmp / "proc").mkdir(exist_ok=True)
    return tmp / "sys", tmp / "proc"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"sys/class/dmi/id/sys_vendor": "QEMU\n"}, "qemu"),
        ({"sys/class/dmi/id/sys_vendor": "VMware, Inc.\n"}, "vmware"),
        ({"sys/class/dmi/id/product_name": "VirtualBox\n"}, "virtualbox"),
        (
            {
                "sys/class/dmi/id/sys_vendor": "Microsoft Corporation\n",
                "sys/class/dmi/id/product_name": "Virtual Machine\n",
            },
            "hyper-v",
        ),
        ({"sys/hypervisor/type": "xen\n"}, "xen"),
        (
            {
                "proc/cpuinfo": "flags\t\t: fpu vme hypervisor lahf_lm\n",
                "sys/bus/pci/devices/0000:00:02.0/vendor": "0x1af4\n",
            },
            "kvm",
        ),
        ({"proc/cpuinfo": "flags\t\t: fpu vme hypervisor\n"}, "virtual"),
        (
            {
                "sys/class/dmi/id/sys_vendor": "Dell Inc.\n",
                "sys/class/dmi/id/product_name": "PowerEdge R640\n",
                "proc/cpuinfo": "flags\t\t: fpu vme sse2\n",
            },
            None,
        ),
    ],
)
def test_detect_virtual(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    sysd, procd = _fake_tree(tmp_path, files)
    dmi = host.read_dmi(sysd)
    assert host.detect_virtual(dmi, sysd, procd) == expected


def test_dmi_missing_file_is_none_and_efi_flag(tmp_path: Path) -> None:
    sysd, procd = _fake_tree(
        tmp_path,
        {
            "sys/class/dmi/id/sys_vendor": "Supermicro\n",
            "sys/class/dmi/id/board_name": "\n",
            "proc/meminfo": "MemTotal:        1024 kB\nMemFree: 1 kB\n",
        },
    )
    dmi = host.read_dmi(sysd)
    assert dmi["sys_vendor"] == "Supermicro"
    assert dmi["product_name"] is None and dmi["board_name"] is None
    assert host.firmware_mode(sysd) == "bios"
    (sysd / "firmware" / "efi").mkdir(parents=True)
    assert host.firmware_mode(sysd) == "uefi"
    assert host.memory_bytes(procd) == 1024 * 1024


def test_nics_skip_lo(tmp_path: Path) -> None:
    sysd, _ = _fake_tree(
        tmp_path,
        {
            "sys/class/net/lo/address": "00:00:00:00:00:00\n",
            "sys/class/net/eno1/address": "aa:bb:cc:dd:ee:ff\n",
            "sys/class/net/eno1/device/vendor": "0x8086\n",
        },
    )
    nics = host.read_nics(sysd)
    assert nics == [{"name": "eno1", "mac": "aa:bb:cc:dd:ee:ff", "driver": None, "physical": True}]
