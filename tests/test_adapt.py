"""The adapt core without QEMU: examining a system's files, planning fix-ups, editing files.

The systems here are folders laid out like an installed Linux (a real one is examined and
booted in tests/test_adapt_boot.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from rescueui.core.adapt import fixup_lines
from rescueui.core.adapt.apply import AdaptStep, Files, _apply_names, _apply_nic_rules
from rescueui.core.adapt.chroot import MountedSystem, PartitionInfo, match_spec
from rescueui.core.adapt.plan import (
    ESP_BYTES,
    DiskLayout,
    parse_selection,
    plan_adaptation,
    settle_findings,
)
from rescueui.core.adapt.rootview import RootView
from rescueui.core.adapt.system import InstalledSystem, examine
from rescueui.core.errors import RescueError
from rescueui.core.host import HostProfile, load_profile
from rescueui.core.preflight import Finding
from rescueui.core.units import MiB

GiB = 1024 * MiB
ROOT_UUID = "c24ff7ac-925a-470c-8ad0-2a6f34db940e"
SOURCE_MAC = "52:54:00:12:34:56"


def write(root: Path, path: str, text: str) -> Path:
    p = root / path.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def debian_root(root: Path, *, grub: str = "i386-pc", policy: str = "list",
                initramfs_modules: tuple[str, ...] = ("virtio_blk", "ext4")) -> Path:  # fmt: skip
    """A folder laid out like a Debian 12 system with one kernel."""
    write(root, "/usr/lib/os-release", 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n')
    (root / "etc").mkdir(parents=True, exist_ok=True)
    os.symlink("../usr/lib/os-release", root / "etc/os-release")
    write(root, "/etc/fstab", "# comment\n/dev/vda1\t/\text4\terrors=remount-ro 0 1\n"
          "/dev/vda5 none swap sw 0 0\n")  # fmt: skip
    write(root, "/etc/crypttab", "")
    write(root, "/etc/default/grub",
          'GRUB_CMDLINE_LINUX="console=ttyS0 isolcpus=2-7 hugepages=100000"\n')  # fmt: skip
    write(root, "/etc/sysctl.d/90-huge.conf", "vm.nr_hugepages = 4096\n")
    write(root, "/etc/systemd/system.conf", "[Manager]\nCPUAffinity=0-3\n")
    write(root, "/etc/udev/rules.d/70-persistent-net.rules",
          f'SUBSYSTEM=="net", ATTR{{address}}=="{SOURCE_MAC}", NAME="eth0"\n')  # fmt: skip
    write(root, "/etc/network/interfaces",
          "auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n")  # fmt: skip
    write(root, "/etc/initramfs-tools/initramfs.conf", f"MODULES={policy}\n")
    write(root, "/usr/sbin/update-initramfs", "#!/bin/sh\n")
    write(root, "/var/lib/dpkg/status",
          "Package: grub-pc\nStatus: install ok installed\n\n"
          "Package: grub-efi-amd64\nStatus: deinstall ok config-files\n\n")  # fmt: skip
    version = "6.1.0-18-amd64"
    write(root, f"/lib/modules/{version}/modules.dep",
          "kernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n"
          "kernel/drivers/block/virtio_blk.ko:\nkernel/fs/ext4/ext4.ko:\n"
          "kernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n"
          "kernel/sound/core/snd.ko:\n")  # fmt: skip
    write(root, f"/lib/modules/{version}/modules.builtin", "kernel/drivers/ata/libata.ko\n")
    (root / f"lib/modules/{version}/kernel").mkdir(parents=True, exist_ok=True)
    write(root, f"/boot/initrd.img-{version}", "not a real initramfs")
    (root / f"boot/grub/{grub}").mkdir(parents=True, exist_ok=True)
    (root / f"usr/lib/grub/{grub}").mkdir(parents=True, exist_ok=True)
    return root


def examined(root: Path, modules: tuple[str, ...] = ("virtio_blk", "ext4")) -> InstalledSystem:
    return examine(RootView(root), list_initramfs=lambda k, tool: list(modules))


def host(firmware: str = "uefi", drivers: tuple[str, ...] = ("nvme",), **kw: Any) -> HostProfile:
    d: dict[str, Any] = {
        "cpus": 4,
        "memory_bytes": 8 * GiB,
        "firmware": firmware,
        "storage_drivers": list(drivers),
        "nics": [{"name": "ens3", "mac": "52:54:00:ab:cd:ef", "driver": "e1000", "physical": True}],
    }
    d.update(kw)
    return HostProfile.from_dict(d)


def dos_layout(target: int = 2 * GiB, source: int = GiB) -> DiskLayout:
    table = {
        "label": "dos",
        "sectorsize": 512,
        "partitions": [
            {"node": "/dev/x1", "start": 2048, "size": source // 512 - 2048, "type": "83"}
        ],
    }
    return DiskLayout(table, target, {1: ROOT_UUID})


def gpt_layout(first: int = 2048) -> DiskLayout:
    table = {
        "label": "gpt",
        "sectorsize": 512,
        "firstlba": 34,
        "lastlba": 4194270,
        "partitions": [
            {
                "node": "/dev/x1",
                "start": first,
                "size": 131072,
                "type": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
            },
            {
                "node": "/dev/x2",
                "start": first + 131072,
                "size": 2000000,
                "type": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            },
        ],
    }
    return DiskLayout(table, 2 * GiB, {2: ROOT_UUID})


# --------------------------------------------------------------------------- reading


def test_rootview_keeps_links_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write(root, "/etc/real", "inside")
    secret = write(tmp_path, "/secret", "outside")
    (root / "etc/abs").symlink_to("/etc/real")
    (root / "etc/escape").symlink_to("../../../../secret")
    (root / "etc/to-host").symlink_to(str(secret))
    (root / "etc/loop").symlink_to("loop")
    (root / "etc/dev").symlink_to("/dev/zero")
    view = RootView(root)
    assert view.read_text("/etc/abs") == "inside"
    assert view.read_text("/etc/escape") is None  # ../ stops at the root: /secret is not there
    assert view.read_text("/etc/to-host") is None  # re-rooted: <root>/<tmp>/secret
    assert view.read_text("/etc/loop") is None
    assert view.read_text("/etc/dev") is None  # <root>/dev/zero does not exist
    os.mkfifo(root / "etc/fifo")
    assert view.read_text("/etc/fifo") is None  # never opened blindly
    write(root, "/etc/big", "x" * 100)
    assert view.read_text("/etc/big", limit=10) is None


def test_examine_reads_what_ties_the_system_to_its_hardware(tmp_path: Path) -> None:
    s = examined(debian_root(tmp_path))
    assert s.found and s.os_id == "debian" and "bookworm" in s.os_name
    assert [(e.spec, e.mountpoint) for e in s.fstab] == [("/dev/vda1", "/"), ("/dev/vda5", "none")]
    assert [k.version for k in s.kernels] == ["6.1.0-18-amd64"]
    k = s.kernels[0]
    assert k.initramfs == "/boot/initrd.img-6.1.0-18-amd64"
    assert {"nvme", "virtio_blk", "ext4", "e1000", "libata"} <= set(k.modules)
    assert "snd" not in k.modules  # only disk, network and filesystem drivers are kept
    assert k.builtin == ["libata"]
    assert (s.initramfs_tool, s.initramfs_policy) == ("initramfs-tools", "MODULES=list")
    assert s.boot_loader == "grub-pc" and s.boots_by() == {"bios"}
    assert s.packages == ["grub-pc"]  # grub-efi-amd64 is only config-files
    assert [x.value for x in s.kernel_names] == ["/dev/vda1", "/dev/vda5"]
    assert [x.value for x in s.nic_rules] == [SOURCE_MAC]
    assert {x.value for x in s.interfaces} == {"eth0"} and s.network == ["ifupdown"]
    kinds = {(x.kind, x.text.split("=")[0].strip()) for x in s.hardware_settings}
    assert kinds >= {("cpu", "isolcpus"), ("memory", "hugepages"), ("cpu", "CPUAffinity"),
                     ("memory", "vm.nr_hugepages")}  # fmt: skip
    again = InstalledSystem.from_dict(json.loads(json.dumps(s.to_dict())))
    assert again == s


def test_a_folder_without_a_system_is_not_one(tmp_path: Path) -> None:
    s = examine(RootView(tmp_path))
    assert not s.found and "os-release" in s.reason
    write(tmp_path, "/etc/fstab", "LABEL=rootfs / ext4 defaults 0 1\n")  # a data disk's etc
    assert not examine(RootView(tmp_path)).found


def test_a_hostile_record_is_coerced_never_trusted() -> None:
    s = InstalledSystem.from_dict(
        {
            "found": "yes",
            "kernels": [{"version": 5, "modules": "nvme"}] * 100,
            "fstab": "x",
            "root_partition": -3,
            "nic_rules": [{"path": "/etc/x", "line": "7"}],
        }
    )
    assert s.found is False  # only a real true counts
    assert len(s.kernels) == 16 and s.kernels[0].version == "" and s.kernels[0].modules == []
    assert s.fstab == [] and s.root_partition == 0 and s.nic_rules[0].line == 0
    assert InstalledSystem.from_dict("nonsense").found is False


# --------------------------------------------------------------------------- planning


def codes(findings: list[Finding]) -> dict[str, Finding]:
    return {f.code: f for f in findings}


def test_bios_system_for_an_nvme_uefi_machine(tmp_path: Path) -> None:
    s = examined(debian_root(tmp_path))
    plan = plan_adaptation(s, host(), dos_layout(), rescue_grub_platforms=("x86_64-efi",))
    names = [f.name for f in plan.selected()]
    assert names == ["drivers", "boot-loader", "names", "nic-rules"]
    drivers = plan.get("drivers")
    assert drivers is not None and drivers.params["modules"] == ["nvme", "e1000"]
    boot = plan.get("boot-loader")
    assert boot is not None and boot.params["platform"] == "x86_64-efi"
    assert boot.params["new_partition"] == "end" and boot.params["number"] == 2
    assert boot.params["files_from"] == "rescue medium"
    assert plan.reserve_end_bytes == ESP_BYTES + MiB
    names_fix = plan.get("names")
    assert names_fix is not None and f"/dev/vda1 -> UUID={ROOT_UUID}" in " ".join(names_fix.changes)
    nic = plan.get("nic-rules")
    assert nic is not None and nic.params["mapping"] == {"eth0": "ens3"}
    found = codes(plan.findings)
    assert all(found[f"adapt.{n}"].level == "info" for n in names)
    # settings bound to the source: CPUs 2-7 on a 4-CPU machine, 100000 hugepages
    warned = [
        f.message
        for f in plan.findings
        if f.code.startswith("adapt.hardware") and f.level == "warn"
    ]
    assert any("isolcpus=2-7" in m and "CPU 7" in m for m in warned)
    assert any("hugepages=100000" in m for m in warned)
    assert not any("CPUAffinity" in m for m in warned)  # CPUs 0-3 exist here


def test_no_room_for_an_esp_stops_and_deselecting_turns_it_into_a_warning(tmp_path: Path) -> None:
    s = examined(debian_root(tmp_path))
    plan = plan_adaptation(s, host(), dos_layout(target=GiB), rescue_grub_platforms=("x86_64-efi",))
    f = codes(plan.findings)["adapt.boot-loader"]
    assert f.level == "stop" and "no room" in f.message
    off = plan_adaptation(s, host(), dos_layout(), selection={"drivers"},
                          rescue_grub_platforms=("x86_64-efi",))  # fmt: skip
    assert [x.name for x in off.selected()] == ["drivers"]
    assert codes(off.findings)["adapt.boot-loader"].level == "warn"
    none = plan_adaptation(
        s, host(), dos_layout(), selection=set(), rescue_grub_platforms=("x86_64-efi",)
    )
    assert none.selected() == [] and none.reserve_end_bytes == 0


def test_uefi_system_for_a_bios_machine_gets_a_bios_boot_partition(tmp_path: Path) -> None:
    s = examined(debian_root(tmp_path, grub="x86_64-efi"))
    plan = plan_adaptation(s, host("bios", ("virtio_blk",)), gpt_layout(),
                           rescue_grub_platforms=("i386-pc",))  # fmt: skip
    boot = plan.get("boot-loader")
    assert boot is not None and boot.params["platform"] == "i386-pc"
    assert (boot.params["start"], boot.params["sectors"]) == (34, 2014)
    tight = plan_adaptation(
        s, host("bios"), gpt_layout(first=40), rescue_grub_platforms=("i386-pc",)
    )
    assert codes(tight.findings)["adapt.boot-loader"].level == "stop"
    no_files = plan_adaptation(s, host("bios"), gpt_layout(), rescue_grub_platforms=())
    assert codes(no_files.findings)["adapt.boot-loader"].level == "stop"


def test_drivers_the_kernel_lacks_stop_and_drivers_present_need_nothing(tmp_path: Path) -> None:
    s = examined(debian_root(tmp_path))
    stop = plan_adaptation(s, host(drivers=("megaraid_sas",)), dos_layout())
    assert codes(stop.findings)["adapt.drivers"].level == "stop"
    assert "megaraid_sas" in codes(stop.findings)["adapt.drivers"].message
    have = examined(debian_root(tmp_path / "b"), modules=("nvme", "e1000", "ext4"))
    ok = plan_adaptation(have, host(firmware="bios"), dos_layout())
    assert ok.get("drivers") is None and codes(ok.findings)["adapt.drivers"].level == "ok"
    # the boot medium's USB drivers are never asked for
    usb = plan_adaptation(
        have, host("bios", ("nvme", "usb_storage", "uas", "xhci_pci")), dos_layout()
    )
    assert usb.get("drivers") is None


def test_settled_warnings_say_which_fixup_answers_them(tmp_path: Path) -> None:
    s = examined(debian_root(tmp_path))
    plan = plan_adaptation(s, host(), dos_layout(), rescue_grub_platforms=("x86_64-efi",))
    fw = Finding("warn", "firmware", "The image boots by BIOS only.")
    bus = Finding("warn", "bus", "Disk bus changes.")
    out = codes(settle_findings([fw, bus], plan))
    assert out["firmware"].level == "info" and "boot-loader" in out["firmware"].message
    assert out["bus"].level == "info" and "drivers" in out["bus"].message
    off = plan_adaptation(s, host(), dos_layout(), selection={"names"},
                          rescue_grub_platforms=("x86_64-efi",))  # fmt: skip
    assert codes(settle_findings([fw], off))["firmware"].level == "warn"


def test_a_system_the_image_does_not_record_is_examined_after_the_restore() -> None:
    plan = plan_adaptation(
        InstalledSystem(found=False, reason="not recorded"), host(), dos_layout()
    )
    assert plan.fixups == [] and "after the restore" in plan.findings[0].message
    assert plan.chosen == {"drivers", "boot-loader", "names", "nic-rules"}


def test_parse_selection() -> None:
    assert parse_selection("") == parse_selection("all") == {"drivers", "boot-loader", "names",
                                                               "nic-rules"}  # fmt: skip
    assert parse_selection("none") == set()
    assert parse_selection("Drivers, names") == {"drivers", "names"}
    with pytest.raises(ValueError, match=r"unknown fix-up.*grub"):
        parse_selection("drivers,grub")


# --------------------------------------------------------------------------- applying


def mounted(root: Path) -> MountedSystem:
    parts = {
        1: PartitionInfo(1, "/dev/loop9p1", "ext4", ROOT_UUID),
        5: PartitionInfo(5, "/dev/loop9p5", "swap", "5f1a-swap"),
    }
    return MountedSystem("/dev/loop9", root, 1, parts, read_only=False)


def test_names_are_rewritten_with_backups_and_hashes(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    (root / "var").mkdir(exist_ok=True)
    s = examined(root)
    ms = mounted(root)
    files = Files(ms, "20261202-030000")
    step = AdaptStep("names", "t")
    s.kernel_names = [x for x in s.kernel_names if x.path == "/etc/fstab"]  # no update-grub here
    _apply_names(ms, files, None, s, step)  # type: ignore[arg-type]
    fstab = (root / "etc/fstab").read_text()
    assert f"UUID={ROOT_UUID}\t/\text4" in fstab and "UUID=5f1a-swap none swap" in fstab
    assert fstab.startswith("# comment\n")  # the rest of the file untouched
    backup = root / "var/backups/rescueui-20261202-030000/etc/fstab"
    assert "/dev/vda1" in backup.read_text()
    [change] = step.files
    assert (
        change.path == "/etc/fstab"
        and change.backup == "/var/backups/rescueui-20261202-030000/etc/fstab"
    )
    assert change.before and change.after and change.before != change.after


def test_nic_rules_are_removed_and_the_interface_renamed(tmp_path: Path) -> None:
    root = debian_root(tmp_path)
    (root / "var").mkdir(exist_ok=True)
    s = examined(root)
    plan = plan_adaptation(s, host(), dos_layout(), rescue_grub_platforms=("x86_64-efi",))
    fix = plan.get("nic-rules")
    ms = mounted(root)
    step = AdaptStep("nic-rules", "t")
    _apply_nic_rules(ms, Files(ms, "x"), fix, s, step)  # type: ignore[arg-type]
    assert SOURCE_MAC not in (root / "etc/udev/rules.d/70-persistent-net.rules").read_text()
    interfaces = (root / "etc/network/interfaces").read_text()
    assert "allow-hotplug ens3\niface ens3 inet dhcp" in interfaces and "eth0" not in interfaces
    assert "iface lo inet loopback" in interfaces
    assert any("ens3" in c for c in step.checks)


def test_a_file_that_is_a_symlink_out_of_the_root_is_never_written(tmp_path: Path) -> None:
    root = debian_root(tmp_path / "root")
    outside = write(tmp_path, "/outside", "keep")
    (root / "etc/fstab").unlink()
    (root / "etc/fstab").symlink_to(str(outside))  # re-rooted: <root>/<tmp>/outside, absent
    ms = mounted(root)
    with pytest.raises(RescueError):
        Files(ms, "x").write(AdaptStep("names", "t"), "/etc/fstab", "new")
    assert outside.read_text() == "keep"


def test_spec_matching() -> None:
    parts = {
        1: PartitionInfo(1, "/dev/sdb1", "vfat", "0685-5AC5", "EFI SYS", "aa-bb", "esp"),
        2: PartitionInfo(2, "/dev/sdb2", "ext4", ROOT_UUID, "root"),
    }
    assert match_spec(f"UUID={ROOT_UUID.upper()}", "ext4", parts) is parts[2]
    assert match_spec("LABEL=root", "", parts) is parts[2]
    assert match_spec("/dev/disk/by-label/EFI\\x20SYS", "", parts) is parts[1]
    assert match_spec("PARTUUID=AA-BB", "", parts) is parts[1]
    assert match_spec("/dev/vda2", "ext4", parts) is parts[2]
    assert (
        match_spec("/dev/vda2", "xfs", parts) is None
    )  # a kernel name counts only if the type agrees
    assert match_spec("/dev/mapper/vg-root", "ext4", parts) is None


def test_fixup_lines_render_a_report_block() -> None:
    lines = fixup_lines(
        {
            "system": "Debian",
            "steps": [
                {
                    "fixup": "drivers",
                    "title": "rebuild",
                    "status": "failed",
                    "commands": [{"command": "update-initramfs -u -k all", "exit_status": 1}],
                    "files": [
                        {
                            "path": "/etc/initramfs-tools/modules",
                            "sha256_before": "a" * 64,
                            "sha256_after": "b" * 64,
                            "backup": "/var/backups/rescueui-x/m",
                        }
                    ],
                    "checks": [],
                    "error": "it failed",
                    "next_step": "do it by hand",
                },
                "junk",
            ],
            "result": "failed",
        }
    )
    text = "\n".join(lines)
    assert "[FAILED] drivers: rebuild" in text and "(exit 1)" in text
    assert "sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb, backup /var/backups/rescueui-x/m" in text
    assert "next step: do it by hand" in text and "Result: failed" in text
    assert fixup_lines("junk") == []


# --------------------------------------------------------------------------- profiles


def test_load_profile(tmp_path: Path) -> None:
    good = write(
        tmp_path,
        "/p.json",
        json.dumps({"firmware": "uefi", "cpus": 2, "storage_drivers": ["nvme"]}),
    )
    p = load_profile(str(good))
    assert p.firmware == "uefi" and p.storage_drivers == ["nvme"]
    bad = write(tmp_path, "/bad.json", "{not json")
    with pytest.raises(RescueError, match=r"bad\.json is not JSON"):
        load_profile(str(bad))
    with pytest.raises(RescueError, match="does not exist"):
        load_profile(str(tmp_path / "missing.json"))
    nofw = write(tmp_path, "/nofw.json", json.dumps({"cpus": 2}))
    with pytest.raises(RescueError, match="does not say how that machine boots"):
        load_profile(str(nofw))
    (tmp_path / "link.json").symlink_to(good)
    with pytest.raises(RescueError):
        load_profile(str(tmp_path / "link.json"))


def test_unattended_adapt_option() -> None:
    from rescueui.core.unattended import UnattendedError, parse_cmdline

    assert parse_cmdline("rescueui.adapt=drivers,names").adapt == frozenset({"drivers", "names"})
    assert parse_cmdline("rescueui.adapt=all").adapt is None
    assert parse_cmdline("rescueui.adapt=none").adapt == frozenset()
    assert parse_cmdline("quiet").adapt is None
    with pytest.raises(UnattendedError, match=r"rescueui\.adapt=grub"):
        parse_cmdline("rescueui.adapt=grub")
