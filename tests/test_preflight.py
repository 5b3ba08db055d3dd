"""Pre-flight findings: pure rules over manifest dicts, then real captured images."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescueui.core import parttable
from rescueui.core.errors import PreflightError
from rescueui.core.host import HostProfile, read_host_profile
from rescueui.core.image import Image, save_manifest
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
    run_preflight,
    unacknowledged,
)
from rescueui.core.units import GiB, MiB, TiB
from tests.loopdisk import LoopFactory, loop_factory, mkfs_ext4

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


def test_required_includes_a_trailing_tail_stream() -> None:
    m = manifest_dict(disk_mib=256)
    m["streams"].append(
        {"name": "tail", "kind": "tail", "partition_number": None,
         "start_bytes": 256 * MiB - 33 * 512, "size_bytes": 33 * 512}
    )  # fmt: skip
    need, how = required_bytes(ImageFacts.from_manifest(m))
    assert need == 256 * MiB and "backup GPT" in how
    assert run(m, target(256))["fit"].level == "ok"
    f = run(m, target(0, size_bytes=256 * MiB - 512))["fit"]
    assert f.level == "stop" and "(512 bytes)" in f.message


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
    assert big["fit.larger"].level == "info" and "vfat" in big["fit.larger"].message
    assert "keeps its size" in big["fit.larger"].message
    big = run(m, target(300, is_partition=True), partition=2)
    assert "ext4 filesystem will be grown" in big["fit.larger"].message
    big = run(m, target(300, is_partition=True), partition=2, grow=False)
    assert "growing turned off" in big["fit.larger"].message
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


def test_for_another_machine_the_bus_is_that_machines() -> None:
    from rescueui.core.preflight import on_other_machine

    nvme_host = _host(disks=[{"name": "nvme0n1", "bus": "nvme"}])
    docked = on_other_machine(target(256, bus="usb"), nvme_host)
    assert docked.bus == "nvme"
    assert run(manifest_dict(bus="virtio"), docked)["bus"].level == "warn"
    assert run(manifest_dict(bus="nvme"), docked)["bus"].level == "ok"
    mixed = _host(disks=[{"bus": "nvme"}, {"bus": "ata"}])
    assert on_other_machine(target(256, bus="usb"), mixed).bus == "unknown"
    assert (
        run(manifest_dict(bus="nvme"), on_other_machine(target(256), mixed))["bus"].level == "info"
    )
    file = target(256, bus="file", kind="file")
    assert on_other_machine(file, nvme_host) is file


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


# --------------------------------------------------------------------------- real images

SRC_TABLE = """label: gpt
start=2048, size=32MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="boot"
type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"
"""
REPO = Path(__file__).resolve().parents[1]


def make_captured(base: Path, lf: LoopFactory) -> dict[str, Any]:
    """Capture a real 256 MiB GPT loop disk (ext4 p1/p2, files on p2); the source is removed.

    Returns {"dir": image folder, "table": the source's sfdisk table, "base": base,
    "files": folder holding a copy of the files put on p2}.
    """
    from rescueui.core.capture import capture

    src = lf.create(256, table=SRC_TABLE)
    mkfs_ext4(src.part(1), "boot")
    mkfs_ext4(src.part(2), "root")
    mnt = src.mount(2, base / "mnt")
    files = Path(json.__file__).parent
    shutil.copytree(files, Path(mnt) / "json")
    src.umount_all()
    table = parttable.read_table(src.path)
    report = capture(src.path, base / "img")
    assert report.outcome == "success", report.error
    lf.remove(src)
    return {"dir": base / "img", "table": table, "base": base, "files": files}


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates loop devices")
    base = tmp_path_factory.mktemp("pf-real")
    (base / "loops").mkdir()
    with loop_factory(base / "loops") as lf:
        yield make_captured(base, lf)


def variant(captured: dict[str, Any], name: str, change: Any) -> Path:
    """A copy of the captured image whose manifest ``change(manifest)`` rewrote (hash valid)."""
    dst = captured["base"] / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(captured["dir"], dst)
    with Image.open(dst) as im:
        manifest = im.manifest
    change(manifest)
    save_manifest(dst, manifest)
    return dst


def findings_for(image_dir: Path, target: str, **kw: Any) -> dict[str, Finding]:
    with Image.open(image_dir) as im:
        return by_code(run_preflight(im, target, **kw))


@pytest.mark.root
@pytest.mark.udev
def test_real_image_same_size_target_is_clean(captured: dict, loops: LoopFactory) -> None:
    tgt = loops.create(256)
    f = findings_for(captured["dir"], tgt.path)
    bad = [x for x in f.values() if x.level in ("warn", "stop")]
    assert not bad, bad
    assert f["fit"].level == "ok" and f["bus"].level == "ok" and f["cpus"].level == "ok"
    with Image.open(captured["dir"]) as im:
        assert im.manifest.host == HostProfile.from_dict(im.manifest.host).to_dict()
        assert im.manifest.host["cpus"] == HERE.cpus


@pytest.mark.root
@pytest.mark.udev
def test_real_variants_each_give_their_finding(captured: dict, loops: LoopFactory) -> None:
    tgt = loops.create(256).path
    other_fw = "bios" if HERE.firmware == "uefi" else "uefi"
    cases: list[tuple[str, Any, str, str, list[str]]] = [
        ("cpus64", lambda m: m.host.update(cpus=64), "cpus", "warn", ["64", str(HERE.cpus)]),
        ("mem1t", lambda m: m.host.update(memory_bytes=TiB), "memory", "warn", ["1.0 TiB"]),
        (
            "uefi",
            lambda m: m.host.update(firmware=other_fw),
            "firmware",
            "warn",
            [other_fw.upper()],
        ),
        ("nvme", lambda m: m.source_disk.update(bus="nvme"), "bus", "warn", ["NVMe", "loop"]),
        (
            "vendor",
            lambda m: m.host.update(dmi_vendor="Dell Inc.", dmi_product="PowerEdge R640"),
            "model",
            "info",
            ["Dell Inc. PowerEdge R640"],
        ),
        (
            "sector4k",
            lambda m: m.source_disk.update(logical_sector_size=4096, physical_sector_size=4096),
            "sector_size",
            "stop",
            ["4096", "512"],
        ),
        (
            "baremetal" if HERE.virtual else "vm",
            lambda m: m.host.update(virtual=None if HERE.virtual else "kvm"),
            "virtual",
            "warn",
            [],
        ),
    ]
    for name, change, code, level, words in cases:
        d = variant(captured, name, change)
        f = findings_for(d, tgt)
        assert f[code].level == level, (name, f[code])
        for w in words:
            assert w in f[code].message, (name, w, f[code].message)
        others = [x for x in f.values() if x.level in ("warn", "stop") and x.code != code]
        assert not others, (name, others)


@pytest.mark.root
@pytest.mark.udev
def test_real_fit_too_small_names_shortfall(captured: dict, loops: LoopFactory) -> None:
    """A target smaller than the image's disk: the data fits (the plan, a warning) or the
    STOP names by how much it does not; a target larger by exactly that much fits."""
    # the image ends with the source's backup GPT (the tail stream): the whole 256 MiB
    with Image.open(captured["dir"]) as im:
        need = im.extent_bytes
        assert im.manifest.streams[-1].kind == "tail"
    assert need == 256 * MiB
    f = findings_for(captured["dir"], loops.create(200).path)
    assert "fit" not in f
    assert f["smaller.plan"].level == "warn"
    assert "partition 2 (ext4" in f["smaller.plan"].detail
    tgt = loops.create(24)
    stop = findings_for(captured["dir"], tgt.path)["smaller.fit"]
    assert stop.level == "stop"
    m = re.search(r"\(([0-9,]+) bytes\) short", stop.message)
    assert m, stop.message
    short = int(m.group(1).replace(",", ""))
    assert short > 0 and short % MiB == 0
    enough = findings_for(captured["dir"], loops.create(24 + short // MiB).path)
    assert enough["smaller.plan"].level == "warn", enough
    less = findings_for(captured["dir"], loops.create(24 + short // MiB - 1).path)
    assert less["smaller.fit"].level == "stop"
    # the CLI says STOP as a word and exits 3
    proc = subprocess.run(
        [sys.executable, "-m", "rescueui", "preflight", str(captured["dir"]), tgt.path],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 3, proc.stderr
    assert "[STOP]" in proc.stdout and f"{short:,}" in proc.stdout
    assert "\x1b[" not in proc.stdout  # not a terminal: no colour, the word carries it
    js = subprocess.run(
        [sys.executable, "-m", "rescueui", "preflight", "--json", str(captured["dir"]), tgt.path],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert js.returncode == 3
    data = json.loads(js.stdout)
    assert data["stops"] == 1
    assert {"level": "stop", "code": "smaller.fit"}.items() <= next(
        x for x in data["findings"] if x["code"] == "smaller.fit"
    ).items()


@pytest.mark.root
@pytest.mark.udev
def test_real_larger_target_and_existing_data(captured: dict, loops: LoopFactory) -> None:
    tgt = loops.create(512, table=SRC_TABLE.replace("32MiB", "100MiB"))
    mkfs_ext4(tgt.part(2), "olddata")
    loops_path = tgt.path
    subprocess.run(["udevadm", "settle"], check=False)
    f = findings_for(captured["dir"], loops_path)
    assert f["fit"].level == "ok" and f["fit.larger"].level == "info"
    assert "partition 2 (ext4) will be grown" in f["fit.larger"].message
    assert f["target.data"].level == "info"
    assert tgt.part(1) in f["target.data"].message and "'olddata'" in f["target.data"].message
    f = findings_for(captured["dir"], loops_path, grow=False)
    assert "unused" in f["fit.larger"].message
    proc = subprocess.run(
        [sys.executable, "-m", "rescueui", "preflight", str(captured["dir"]), loops_path],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0 and "[INFO]" in proc.stdout and "[OK]" in proc.stdout


@pytest.mark.root
@pytest.mark.udev
def test_real_partition_mode_fit(captured: dict, loops: LoopFactory) -> None:
    tgt = loops.create(128, table="label: gpt\nstart=2048, size=16MiB\nsize=40MiB\n")
    f = findings_for(captured["dir"], tgt.part(1), partition=1)
    # smaller than image partition 1 (32 MiB of ext4): its files would be copied, but a
    # filesystem made again needs its data plus room of its own, more than 16 MiB
    assert "fit" not in f
    assert f["smaller.fit"].level == "stop", f["smaller.fit"]
    assert "image partition 1 (32.0 MiB)" in f["smaller.fit"].message
    assert "bytes) short" in f["smaller.fit"].message
    f = findings_for(captured["dir"], tgt.part(2), partition=1)
    assert f["fit"].level == "ok" and f["fit.larger"].level == "info"
    assert tgt.part(2) in f["target.data"].message and tgt.part(1) not in f["target.data"].message


@pytest.mark.root
@pytest.mark.udev
def test_real_boot_code_read_from_head_stream(
    captured: dict, loops: LoopFactory, tmp_path: Path
) -> None:
    """MBR boot code written on the source is seen through the image's head stream."""
    from rescueui.core.capture import capture

    src = loops.create(64, table="label: dos\nstart=2048, type=83\n")
    fd = os.open(src.path, os.O_WRONLY)
    try:  # boot code area only (< 440 bytes)
        os.pwrite(fd, b"\xfa\xeb\x63\x90" + os.urandom(200), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    subprocess.run(["udevadm", "settle"], check=False)  # the close triggers a udev probe
    img = tmp_path / "bios-img"
    rep = capture(src.path, img)
    assert rep.outcome == "success", rep.error
    tgt = loops.create(64).path
    uefi_here = HostProfile.from_dict(HERE.to_dict() | {"firmware": "uefi"})
    bios_here = HostProfile.from_dict(HERE.to_dict() | {"firmware": "bios"})
    f = findings_for(img, tgt, host=uefi_here)["firmware"]
    assert f.level == "warn" and "BIOS only" in f.message and "CSM" in f.detail
    assert findings_for(img, tgt, host=bios_here)["firmware"].level == "ok"
    # the GPT image (no boot code) with p1 forged to an EFI system partition: UEFI only
    esp = variant(
        captured,
        "esp",
        lambda m: m.partition_table["partitions"][0].update(type=ESP),
    )
    f = findings_for(esp, tgt, host=bios_here)["firmware"]
    assert f.level == "warn" and "UEFI only" in f.message
    assert findings_for(esp, tgt, host=uefi_here)["firmware"].level == "ok"


# --------------------------------------------------------------------------- with the restore


def _digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def _confirm(path: str) -> Any:
    from rescueui.core.identity import confirm_target, confirmation_code, identity_of

    return confirm_target(path, confirmation_code(identity_of(path)))


@pytest.mark.root
@pytest.mark.udev
def test_restore_refuses_on_stop_before_writing(captured: dict, loops: LoopFactory) -> None:
    from rescueui.core.restore import plan_restore

    d = variant(
        captured,
        "sector4k-r",
        lambda m: m.source_disk.update(logical_sector_size=4096, physical_sector_size=4096),
    )
    tgt = loops.create(256, fill="random")
    before = _digest(tgt.backing)
    with pytest.raises(PreflightError, match="Sector size differs"):
        plan_restore(d, _confirm(tgt.path), accept_warnings=True)
    assert _digest(tgt.backing) == before


@pytest.mark.root
@pytest.mark.udev
def test_restore_needs_warnings_accepted(captured: dict, loops: LoopFactory) -> None:
    from rescueui.core.restore import plan_restore

    d = variant(captured, "cpus64-r", lambda m: m.host.update(cpus=64))
    tgt = loops.create(256, fill="random")
    before = _digest(tgt.backing)
    with pytest.raises(PreflightError, match="acknowledgement"):
        plan_restore(d, _confirm(tgt.path))
    assert _digest(tgt.backing) == before
    plan = plan_restore(d, _confirm(tgt.path), accept_warnings=True)
    try:
        assert [a.code for a in plan.acknowledgements] == ["cpus"]
        assert plan.acknowledgements[0].by == "all warnings accepted at once"
        assert any(f.code == "cpus" and f.level == "warn" for f in plan.findings)
    finally:
        plan.image.close()
    # acknowledged one by one (the TUI's way): another code does not count
    with pytest.raises(PreflightError, match="acknowledgement"):
        plan_restore(d, _confirm(tgt.path), accepted_codes=["memory"])
    plan = plan_restore(d, _confirm(tgt.path), accepted_codes=["cpus"], acknowledged_by="tech")
    try:
        assert [(a.code, a.by) for a in plan.acknowledgements] == [("cpus", "tech")]
    finally:
        plan.image.close()
    assert _digest(tgt.backing) == before  # planning writes nothing


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rescueui", *args], capture_output=True, text=True, cwd=REPO
    )


@pytest.mark.root
@pytest.mark.udev
@pytest.mark.slow
def test_cli_restore_stop_and_warnings(captured: dict, loops: LoopFactory) -> None:
    tgt = loops.create(256, fill="random")
    before = _digest(tgt.backing)
    # a STOP: refused even with --accept-warnings, nothing written
    stop = variant(
        captured,
        "sector4k-cli",
        lambda m: m.source_disk.update(logical_sector_size=4096, physical_sector_size=4096),
    )
    r = _cli("restore", str(stop), tgt.path, "--yes", "--quiet", "--accept-warnings")
    assert r.returncode != 0
    assert "Sector size differs" in r.stderr + r.stdout
    assert _digest(tgt.backing) == before
    # a WARN: refused without --accept-warnings, nothing written
    warn = variant(captured, "cpus64-cli", lambda m: m.host.update(cpus=64))
    r = _cli("restore", str(warn), tgt.path, "--yes", "--quiet")
    assert r.returncode != 0
    assert "--accept-warnings" in r.stderr + r.stdout and "64" in r.stderr + r.stdout
    assert _digest(tgt.backing) == before
    # preflight says the same: WARN, exit 0
    r = _cli("preflight", str(warn), tgt.path)
    assert r.returncode == 0 and "[WARN]" in r.stdout and "64 logical CPUs" in r.stdout
    # accepted: restored, findings and the acknowledgement in the report
    r = _cli("restore", str(warn), tgt.path, "--yes", "--quiet", "--accept-warnings", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["outcome"] == "success"
    assert any(f["code"] == "cpus" and f["level"] == "warn" for f in rep["findings"])
    acks = rep["acknowledgements"]
    assert [a["code"] for a in acks] == ["cpus"] and acks[0]["by"] == "--accept-warnings"
    assert acks[0]["at"] and "64" in acks[0]["message"]
    assert _digest(tgt.backing) != before


@pytest.mark.root
@pytest.mark.udev
def test_real_mounted_target_stops(captured: dict, loops: LoopFactory, tmp_path: Path) -> None:
    tgt = loops.create(300, table="label: gpt\nstart=2048, size=100MiB\nsize=100MiB\n")
    mkfs_ext4(tgt.part(1), "busy")
    tgt.mount(1, tmp_path / "busy")
    whole = findings_for(captured["dir"], tgt.path)
    assert whole["target.refused"].level == "stop"
    assert str(tmp_path / "busy") in whole["target.refused"].message
    f = findings_for(captured["dir"], tgt.part(1), partition=2)
    assert f["target.refused"].level == "stop"
    f = findings_for(captured["dir"], tgt.part(2), partition=1)
    assert "target.refused" not in f  # another partition of the disk being mounted is fine
    assert f["fit"].level == "ok"


def test_cli_format_has_word_and_colour() -> None:
    from rich.console import Console

    from rescueui.cli.preflight import format_finding, summary

    console = Console(force_terminal=True, color_system="standard", width=200, record=True)
    findings = [
        Finding("stop", "fit", "Target too small by 1 B", "detail line"),
        Finding("warn", "cpus", "Fewer CPUs"),
        Finding("info", "model", "Other model [x]"),
        Finding("ok", "bus", "Same bus"),
    ]
    for f in findings:
        console.print(format_finding(f))
    out = console.export_text(styles=True, clear=False)
    plain = console.export_text()
    for word in ("[STOP]", "[WARN]", "[INFO]", "[OK]"):
        assert word in plain
    assert "Other model [x]" in plain and "       detail line" in plain
    assert "\x1b[31m" in out or "\x1b[1;31m" in out  # red for STOP
    assert "\x1b[33m" in out and "\x1b[32m" in out and "\x1b[36m" in out
    assert summary(findings).startswith("STOP")
    assert summary(findings[1:]).startswith("WARN")
    assert summary(findings[2:]).startswith("OK")


@pytest.mark.root
@pytest.mark.udev
def test_real_4k_sector_target_stops(captured: dict, tmp_path: Path) -> None:
    backing = tmp_path / "4kn.img"
    backing.touch()
    os.truncate(backing, 300 * MiB)
    dev = subprocess.run(
        ["losetup", "-f", "--show", "-b", "4096", str(backing)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        subprocess.run(["udevadm", "settle"], check=False)
        info = TargetInfo.from_path(dev)
        assert info.logical_sector_size == 4096
        f = findings_for(captured["dir"], dev)["sector_size"]
        assert f.level == "stop" and "4096-byte" in f.message and "512-byte" in f.message
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
