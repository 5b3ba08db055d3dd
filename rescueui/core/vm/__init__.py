"""A failed server back as a virtual machine: an image restored into a VM disk, with a VM
definition fitted to the host that will run it.

* :mod:`.machine` -- what the VM gets (firmware, disk bus, NIC, vCPUs, memory) and why;
* :mod:`.job` -- the restore into the VM's disk file and its final step (disk format,
  compare, definitions);
* :mod:`.definition` -- the libvirt domain, ``.vmx`` and OVF texts;
* :mod:`.check` -- a definition checked against the disk it names.
"""

from typing import Any

from rescueui.core.units import human_size

FILE_WORDS = {
    "disk": "disk",
    "libvirt": "libvirt definition",
    "vmx": "VMware .vmx",
    "ovf": "OVF descriptor",
}


def _size(value: Any) -> str:
    """A size from a report (untrusted): in words, or "?"."""
    try:
        return human_size(int(value or 0)) if value else "?"
    except (TypeError, ValueError):
        return "?"


def vm_lines(details: Any) -> list[str]:
    """The VM section of a report (``report.details["vm"]``) as plain lines: what the VM
    got and why, the files made, the checks. The one rendering the text report and the
    front ends share. Untrusted (a report file may be read back): every field becomes text."""
    if not isinstance(details, dict) or not details.get("name"):
        return []
    memory, disk = (_size(details.get(k)) for k in ("memory_bytes", "disk_bytes"))
    out = [
        f"VM {details['name']}: {details.get('vcpus', '?')} vCPU(s), {memory}, "
        f"{str(details.get('firmware', '?')).upper()}, disk {disk} on "
        f"{details.get('disk_bus', '?')}, network card {details.get('nic_model', '?')}"
    ]
    why = details.get("why")
    if isinstance(why, dict) and why.get("disk_bus"):
        out.append(f"  Why this bus: {why['disk_bus']}")
    files = details.get("files")
    if isinstance(files, dict) and files:
        out.append("Files made:")
        out += [f"  {FILE_WORDS.get(str(k), str(k))}: {v}" for k, v in files.items()]
    else:
        out.append("Files made: none kept (the job did not finish; see the notes)")
    checks = details.get("checks")
    if isinstance(checks, list) and checks:
        out.append("Checks:")
        out += [f"  {c}" for c in checks]
    return out
