"""Pre-flight findings: pure rules over manifest dicts, then real captured images."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from rescueui.core.errors import PreflightError
from rescueui.core.host import HostProfile, read_host_profile
from rescueui.core.preflight import (
    Finding,
    ImageFacts,
    TargetInfo,
    analyse_boot,
    check,
    gate,
    gpt_backup_bytes,
    preflight_report,
    required_bytes,
    unacknowledged,
)
from rescueui.core.units import GiB, MiB, TiB

ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"


def by_code(findings: list[Finding]) -> dict[str, Finding]:
    codes = [f.code for f in findings]
    assert len(codes) == len(set(codes)), f"duplicate codes: {codes}"
    return {f.code: f for f in findings}


def manifest_dict(
    *,
    disk_mib: int = 256,
    p1_type: str = LINUX,
    host: dict[str, Any] | None = None,
    bus: str = "loop",
    sector: int = 512,
) -> dict[str, Any]:
    """A manifest like capture writes: GPT, p1 at 1 MiB (64 MiB), p2 to the end."""
    spm = MiB // sector
    total = disk_mib * spm
    last = total - 34 if sector == 512 else total - 6
    p2_start = 65 * spm
    p2_size = (last + 1 - p2_start) // spm * spm
    table = {
        "label": "gpt",
        "id": "5F1E2B0A-0000-4000-8000-000000000001",
        "device": "/dev/loop9",
        "unit": "sectors",
        "firstlba": 2048 if sector == 512 else 256,
        "lastlba": last,
        "sectorsize": sector,
        "partitions": [
            {"node": "/dev/loop9p1", "start": spm, "size": 64 * spm, "type": p1_type},
            {"node": "/dev/loop9p2", "start": p2_start, "size": p2_size, "type": LINUX},
        ],
    }
    return {
        "source_disk": {
            "path": "/dev/loop9",
            "size_bytes": disk_mib * MiB,
            "logical_sector_size": sector,
            "physical_sector_size": sector,
            "bus": bus,
        },
        "partition_table": table,
        "host": host if host is not None else read_host_profile().to_dict(),
        "streams": [
            {"name": "head", "kind": "head", "partition_number": None, "start_bytes": 0,
             "size_bytes": MiB},
            {"name": "p1", "kind": "partition", "partition_number": 1, "start_bytes": MiB,
             "size_bytes": 64 * MiB, "fs_type": "vfat", "label": "EFI"},
            {"name": "p2", "kind": "partition", "partition_number": 2,
             "start_bytes": p2_start * sector, "size_bytes": p2_size * sector,
             "fs_type": "ext4", "label": "root"},
        ],
        "complete": True,
        "warnings": [],
    }  # fmt: skip


def target(size_mib: int, **kw: Any) -> TargetInfo:
    base: dict[str, Any] = {
        "path": "/dev/loop8",
        "size_bytes": size_mib * MiB,
        "logical_sector_size": 512,
        "physical_sector_size": 512,
        "bus": "loop",
        "kind": "block",
    }
    base.update(kw)
    return TargetInfo(**base)


HERE = read_host_profile()
MBR_ZERO = bytes(512)
MBR_CODE = b"\xeb\x63\x90" + bytes(437) + bytes(72)


def run(m: dict[str, Any], t: TargetInfo, *, mbr: bytes | None = MBR_ZERO, **kw: Any) -> dict:
    facts = ImageFacts.from_manifest(m, mbr=mbr)
    return by_code(check(facts, t, host=kw.pop("host", HERE), **kw))


def test_same_machine_same_size_all_quiet() -> None:
    f = run(manifest_dict(), target(256))
    assert f["fit"].level == "ok"
    assert "free after it" in f["fit"].message
    for code in ("sector_size", "cpus", "memory", "bus", "virtual", "target.data"):
        assert f[code].level == "ok", f[code]
    assert not [x for x in f.values() if x.level in ("warn", "stop")]


def test_fit_stop_names_shortfall_in_bytes() -> None:
    m = manifest_dict(disk_mib=256)
    need, _ = required_bytes(ImageFacts.from_manifest(m))
    t = target(200)
    f = run(m, t)["fit"]
    assert f.level == "stop"
    short = need - 200 * MiB
    assert short > 50 * MiB
    assert f"{short:,} bytes" in f.message
    assert "too small" in f.message


def test_required_is_last_partition_end_plus_gpt_backup() -> None:
    m = manifest_dict(disk_mib=256)
    p2 = m["partition_table"]["partitions"][1]
    facts = ImageFacts.from_manifest(m)
    need, how = required_bytes(facts)
    assert need == (p2["start"] + p2["size"]) * 512 + 33 * 512
    assert "GPT" in how
    assert gpt_backup_bytes(m["partition_table"]) == 33 * 512
    # exactly enough fits, one sector less does not
    t = target(0, size_bytes=need)
    assert run(m, t)["fit"].level == "ok"
    t = target(0, size_bytes=need - 512)
    assert run(m, t)["fit"].level == "stop"


def test_larger_target_says_what_grows() -> None:
    f = run(manifest_dict(disk_mib=256), target(512))
    assert f["fit"].level == "ok"
    assert f["fit.larger"].level == "info"
    assert "partition 2 (ext4) will be grown" in f["fit.larger"].message
    f = run(manifest_dict(disk_mib=256), target(512), grow=False)
    assert "unused" in f["fit.larger"].message


def test_partition_fit() -> None:
    m = manifest_dict()
    small = target(40, path="/dev/loop8p1", is_partition=True)
    f = run(m, small, partition=1)["fit"]
    assert f.level == "stop"
    assert f"{(64 - 40) * MiB:,} bytes" in f.message
    ok = run(m, target(64, is_partition=True), partition=1)
    assert ok["fit"].level == "ok" and "fit.larger" not in ok
    big = run(m, target(100, is_partition=True), partition=1)
    assert big["fit.larger"].level == "info"
    missing = run(m, target(100, is_partition=True), partition=7)["fit"]
    assert missing.level == "stop" and "no partition 7" in missing.message


def test_sector_size_differs_stops_whole_disk_warns_partition() -> None:
    m = manifest_dict(sector=512)
    f = run(m, target(256, logical_sector_size=4096, physical_sector_size=4096))
    assert f["sector_size"].level == "stop"
    assert "512" in f["sector_size"].message and "4096" in f["sector_size"].message
    assert "cannot convert" in f["sector_size"].detail
    f = run(m, target(256, logical_sector_size=4096, is_partition=True), partition=2)
    assert f["sector_size"].level == "warn"
    m4k = manifest_dict(sector=4096)
    assert run(m4k, target(256))["sector_size"].level == "stop"
    assert run(m4k, target(256, logical_sector_size=4096))["sector_size"].level == "ok"


def test_physical_sector_size_info() -> None:
    f = run(manifest_dict(), target(256, physical_sector_size=4096))
    assert f["sector_size"].level == "ok"
    assert f["sector_size.physical"].level == "info"


def _host(**kw: Any) -> HostProfile:
    d = HERE.to_dict()
    d.update(kw)
    return HostProfile.from_dict(d)


def test_boot_analysis() -> None:
    m = manifest_dict(p1_type=ESP)
    assert analyse_boot(m["partition_table"], MBR_ZERO).mode == "uefi"
    assert analyse_boot(m["partition_table"], MBR_CODE).mode == "both"
    plain = manifest_dict()
    assert analyse_boot(plain["partition_table"], MBR_CODE).mode == "bios"
    assert analyse_boot(plain["partition_table"], MBR_ZERO).mode == "none"
    assert analyse_boot(plain["partition_table"], None).mode == "unknown"
    grub = manifest_dict(p1_type=BIOS_BOOT)
    assert analyse_boot(grub["partition_table"], MBR_ZERO).mode == "bios"
    dos = {"label": "dos", "partitions": [{"node": "/dev/sda1", "type": "ef"}]}
    assert analyse_boot(dos, MBR_ZERO).mode == "uefi"


def test_firmware_uefi_image_on_bios_machine_warns() -> None:
    m = manifest_dict(p1_type=ESP)
    f = run(m, target(256), host=_host(firmware="bios"))["firmware"]
    assert f.level == "warn" and "UEFI only" in f.message and "BIOS" in f.message
    f = run(m, target(256), host=_host(firmware="uefi"))["firmware"]
    assert f.level == "ok"
    # ESP and MBR boot code: boots either way
    f = run(m, target(256), mbr=MBR_CODE, host=_host(firmware="bios"))["firmware"]
    assert f.level == "ok" and "both" in f.message


def test_firmware_bios_image_on_uefi_machine_warns_csm() -> None:
    m = manifest_dict()
    f = run(m, target(256), mbr=MBR_CODE, host=_host(firmware="uefi"))["firmware"]
    assert f.level == "warn" and "CSM" in f.detail
    f = run(m, target(256), mbr=MBR_CODE, host=_host(firmware="bios"))["firmware"]
    assert f.level == "ok"


def test_firmware_falls_back_to_source_mode() -> None:
    src = HERE.to_dict() | {"firmware": "uefi"}
    f = run(manifest_dict(host=src), target(256), host=_host(firmware="bios"))["firmware"]
    assert f.level == "warn" and "UEFI" in f.message
    f = run(manifest_dict(host=src), target(256), host=_host(firmware="uefi"))["firmware"]
    assert f.level == "info"  # no boot loader recognised, same mode


def test_cpus_and_memory_fewer_warn_with_both_numbers() -> None:
    src = HERE.to_dict() | {"cpus": 64, "memory_bytes": TiB}
    f = run(manifest_dict(host=src), target(256))
    assert f["cpus"].level == "warn"
    assert "64" in f["cpus"].message and str(HERE.cpus) in f["cpus"].message
    assert f["memory"].level == "warn"
    assert "1.0 TiB" in f["memory"].message
    # within the tolerance: ok
    src = HERE.to_dict() | {"memory_bytes": HERE.memory_bytes + 10 * MiB}
    assert run(manifest_dict(host=src), target(256))["memory"].level == "ok"


def test_bus_change_warns_initramfs() -> None:
    f = run(manifest_dict(bus="nvme"), target(256, bus="ata"))["bus"]
    assert f.level == "warn"
    assert "NVMe" in f.message and "SATA" in f.message
    assert "initramfs" in f.detail and "ahci" in f.detail
    assert run(manifest_dict(bus="nvme"), target(256, bus="nvme"))["bus"].level == "ok"
    f = run(manifest_dict(bus="nvme"), target(256, bus="file", kind="file"))["bus"]
    assert f.level == "info"


def test_virtual_physical() -> None:
    vm = HERE.to_dict() | {"virtual": "kvm"}
    metal = HERE.to_dict() | {"virtual": None}
    f = run(manifest_dict(host=vm), target(256), host=_host(virtual=None))["virtual"]
    assert f.level == "warn" and "virtual machine (kvm)" in f.message and "physical" in f.message
    f = run(manifest_dict(host=metal), target(256), host=_host(virtual="kvm"))["virtual"]
    assert f.level == "warn" and "virtio" in f.detail
    f = run(manifest_dict(host=vm), target(256), host=_host(virtual="vmware"))["virtual"]
    assert f.level == "warn"
    f = run(manifest_dict(host=metal), target(256), host=_host(virtual=None))["virtual"]
    assert f.level == "ok"


def test_model_and_nics_info() -> None:
    src = HERE.to_dict() | {
        "dmi_vendor": "Dell Inc.",
        "dmi_product": "PowerEdge R640",
        "nics": [{"name": "eno1", "mac": "aa:bb:cc:00:11:22", "physical": True}],
    }
    f = run(manifest_dict(host=src), target(256))
    assert f["model"].level == "info" and "PowerEdge R640" in f["model"].message
    assert f["nics"].level == "info" and "aa:bb:cc:00:11:22" in f["nics"].detail
    same = run(manifest_dict(), target(256))
    assert same["nics"].level == "ok"


def test_target_data_lists_partitions() -> None:
    parts = [
        {"path": "/dev/loop8p1", "number": 1, "size_bytes": 100 * MiB, "fs_type": "vfat",
         "label": "EFI"},
        {"path": "/dev/loop8p2", "number": 2, "size_bytes": GiB, "fs_type": "ext4",
         "label": "data", "part_label": "x"},
    ]  # fmt: skip
    f = run(manifest_dict(), target(2048, partitions=parts))["target.data"]
    assert f.level == "info"
    for s in ("/dev/loop8p1", "vfat", "'EFI'", "100.0 MiB", "ext4", "'data'", "1.0 GiB"):
        assert s in f.message


def test_target_refused_reasons_stop() -> None:
    f = run(manifest_dict(), target(256, reasons=["mounted: /mnt/x"]))["target.refused"]
    assert f.level == "stop" and "/mnt/x" in f.message


def test_incomplete_image_stops_and_capture_warnings_warn() -> None:
    m = manifest_dict()
    m["complete"] = False
    m["warnings"] = ["p2 was mounted read-write during capture"]
    f = run(m, target(256))
    assert f["image.incomplete"].level == "stop"
    assert f["image.warnings"].level == "warn"


def test_missing_host_in_manifest_is_info_not_crash() -> None:
    m = manifest_dict()
    m["host"] = {}
    f = run(m, target(256))
    assert f["cpus"].level == "info" and f["virtual"].level == "info"


def test_gate_and_acknowledgements() -> None:
    src = HERE.to_dict() | {"cpus": HERE.cpus + 8, "memory_bytes": HERE.memory_bytes * 4}
    findings = check(ImageFacts.from_manifest(manifest_dict(host=src)), target(256), host=HERE)
    warns = [f.code for f in findings if f.level == "warn"]
    assert set(warns) == {"cpus", "memory"}
    with pytest.raises(PreflightError, match="acknowledgement"):
        gate(findings)
    with pytest.raises(PreflightError):
        gate(findings, accepted_codes=["cpus"])
    assert [f.code for f in unacknowledged(findings, ["cpus"])] == ["memory"]
    acks = gate(findings, accepted_codes=["cpus", "memory"], by="operator (TUI)")
    assert {a.code for a in acks} == {"cpus", "memory"} and acks[0].by == "operator (TUI)"
    acks = gate(findings, accept_all_warnings=True)
    assert len(acks) == 2
    rep = preflight_report(findings, acks)
    assert rep["warnings"] == 2 and rep["stops"] == 0
    assert Finding.from_dict(rep["findings"][0]) == findings[0]
    # a stop can never be accepted
    stopped = check(ImageFacts.from_manifest(manifest_dict()), target(100), host=HERE)
    with pytest.raises(PreflightError, match="too small"):
        gate(stopped, accept_all_warnings=True, accepted_codes=["fit"])


def test_finding_rejects_unknown_level() -> None:
    with pytest.raises(ValueError):
        Finding("fatal", "x", "y")


def test_manifest_dict_not_modified() -> None:
    m = manifest_dict()
    before = copy.deepcopy(m)
    run(m, target(512))
    assert m == before
