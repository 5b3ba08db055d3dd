"""Check a VM definition against the disk it names (``rescueui vm-check``).

The definition is read the way a configuration found next to a VM disk is read
(:mod:`rescueui.core.images.vmconfig`: bounded, no links, no DTD), a libvirt domain is
validated against libvirt's schema by ``virt-xml-validate`` where it is installed, and the
disk it names must be there, a regular file in the format the definition says
(``qemu-img info``), at least as large as recorded.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rescueui.core.errors import RescueError
from rescueui.core.images.vmconfig import CONFIG_LIMIT, parse_config_xml, read_definition
from rescueui.core.safefile import read_regular
from rescueui.core.text import safe_text
from rescueui.core.tools import find_tool, require_tool
from rescueui.core.units import human_size

KINDS = {".xml": "libvirt", ".vmx": "vmx", ".ovf": "ovf"}
_VMX_FILE = re.compile(r'^\s*(?:sata|scsi|nvme|ide)\d+:\d+\.fileName\s*=\s*"([^"]*)"', re.I | re.M)


@dataclass
class DefinitionCheck:
    path: str
    kind: str
    disk: str = ""
    disk_format: str = ""
    virtual_size: int = 0
    vcpus: int | None = None
    memory_bytes: int | None = None
    firmware: str | None = None
    bus: str | None = None
    nic_models: list[str] = field(default_factory=list)
    validated_by: str = ""
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        if self.problems:
            return "FAILED: " + " ".join(self.problems)
        mem = human_size(self.memory_bytes) if self.memory_bytes else "?"
        return (
            f"{Path(self.path).name} names the disk {self.disk} ({self.disk_format}, "
            f"{human_size(self.virtual_size)}); {self.vcpus} vCPU(s), {mem}, "
            f"{(self.firmware or '?').upper()}, disk on {self.bus}, network "
            f"{', '.join(self.nic_models) or 'none'}; "
            + (f"valid by {self.validated_by}" if self.validated_by else "not schema-validated")
            + "."
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _disk_ref(kind: str, data: bytes, where: Path) -> tuple[str, str]:
    """(disk path as named, format) from the definition's text."""
    if kind == "libvirt":
        root = parse_config_xml(data)
        for disk in root.iter("disk"):
            if disk.attrs.get("device", "disk") != "disk":
                continue
            src = disk.find("source")
            drv = disk.find("driver")
            if src is not None and src.attrs.get("file"):
                return src.attrs["file"], (
                    drv.attrs.get("type", "raw") if drv is not None else "raw"
                )
        raise RescueError(f"The VM definition {where} names no disk file.")
    if kind == "vmx":
        m = _VMX_FILE.search(data.decode("utf-8", errors="replace"))
        if not m:
            raise RescueError(f"The VM definition {where} names no disk file.")
        return m.group(1), "vmdk"
    root = parse_config_xml(data)
    for f in root.iter("File"):
        if f.attrs.get("href"):
            return f.attrs["href"], "vmdk"
    raise RescueError(f"The VM definition {where} names no disk file.")


def _disk_path(named: str, definition: Path, out: DefinitionCheck) -> Path:
    p = Path(named)
    if not p.is_absolute():
        return definition.parent / p
    if os.path.lexists(p):
        return p
    beside = definition.parent / p.name
    if os.path.lexists(beside):
        out.notes.append(
            f"The disk is not at {named} (the path written in the definition) but next to "
            f"the definition; change the path on the host that runs the VM."
        )
        return beside
    return p


def _qemu_info(disk: Path, fmt: str) -> dict[str, Any]:
    qemu_img = require_tool("qemu-img")
    res = subprocess.run(
        [qemu_img, "info", "--output=json", "-f", fmt, str(disk)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if res.returncode != 0:
        from rescueui.core.images.qemu import tool_message

        raise RescueError(f"qemu-img cannot read {disk} as {fmt}: {tool_message(res.stderr)}")
    info = json.loads(res.stdout or b"{}")
    return info if isinstance(info, dict) else {}


def check_definition(path: str | Path) -> DefinitionCheck:
    """Check one definition; never raises for a bad definition (its ``problems`` say)."""
    definition = Path(os.path.abspath(path))
    kind = KINDS.get(definition.suffix.lower(), "")
    out = DefinitionCheck(path=str(definition), kind=kind or "unknown")
    try:
        if not kind:
            raise RescueError(
                f"{definition.name}: a VM definition ends in .xml (libvirt), .vmx or .ovf."
            )
        data = read_regular(definition, CONFIG_LIMIT, what="VM definition")
        named, fmt = _disk_ref(kind, data, definition)
        disk = _disk_path(named, definition, out)
        out.disk, out.disk_format = str(disk), fmt
        try:
            st = os.lstat(disk)
        except OSError as exc:
            raise RescueError(f"The disk {disk} it names is not there ({exc.strerror}).") from None
        if not stat.S_ISREG(st.st_mode):
            raise RescueError(f"The disk {disk} it names is not a regular file.")
        info = _qemu_info(disk, fmt)
        out.virtual_size = int(info.get("virtual-size") or 0)
        cfg = read_definition(definition, disk.name)
        out.vcpus, out.memory_bytes, out.firmware = cfg.cpus, cfg.memory_bytes, cfg.firmware
        out.bus = cfg.bus
        out.nic_models = [str(n.get("model")) for n in cfg.nics if n.get("model")]
        if kind == "libvirt":
            root = parse_config_xml(data)
            recorded = next(
                (
                    int(e.attrs.get("virtual-size") or 0)
                    for e in root.iter("disk")
                    if e.attrs.get("virtual-size")
                ),
                0,
            )
            if recorded and out.virtual_size < recorded:
                out.problems.append(
                    f"The disk {disk} is {out.virtual_size} bytes, smaller than the "
                    f"{recorded} bytes written with the definition: it is another disk."
                )
            _validate(definition, out)
    except RescueError as exc:
        out.problems.append(safe_text(str(exc)))
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        out.problems.append(safe_text(f"{definition}: {exc}"))
    return out


def _validate(definition: Path, out: DefinitionCheck) -> None:
    tool = find_tool("virt-xml-validate")
    if tool is None or find_tool("xmllint") is None:  # the first runs the second
        out.notes.append(
            "Not validated against libvirt's schema: virt-xml-validate (libvirt-clients) and "
            "xmllint (libxml2-utils) are not both installed here."
        )
        return
    res = subprocess.run(
        [tool, str(definition), "domain"], capture_output=True, timeout=120, check=False
    )
    if res.returncode != 0:
        text = (res.stderr or res.stdout).decode("utf-8", errors="replace").strip()
        out.problems.append(
            "libvirt's schema refuses it (virt-xml-validate): " + safe_text(text[-600:])
        )
        return
    out.validated_by = "virt-xml-validate (libvirt's domain schema)"
