"""The VM definition files: a libvirt domain (always), a VMware ``.vmx`` or an OVF
descriptor where asked. Each names the disk file it was written with, by its full path
(libvirt) or by its name next to the definition (VMware, OVF), and carries what
:mod:`rescueui.core.vm.check` reads back.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from rescueui.core.units import KiB, MiB
from rescueui.core.vm.machine import VmMachine

NAMESPACE = "https://rescueui.invalid/vm/1"  # our metadata inside the libvirt domain

LIBVIRT_BUS = {"virtio": ("vda", "virtio"), "sata": ("sda", "sata")}
# The disk format as libvirt's <driver type> names it.
LIBVIRT_TYPE = {"qcow2": "qcow2", "vmdk": "vmdk", "vhdx": "vhdx", "raw": "raw"}


def libvirt_xml(vm: VmMachine, disk: Path, *, image: str, created: str) -> str:
    """A libvirt domain for ``vm`` whose disk is ``disk`` (an absolute path)."""
    dev, bus = LIBVIRT_BUS[vm.disk_bus]
    memory_kib = vm.memory_bytes // KiB
    firmware = ' firmware="efi"' if vm.firmware == "uefi" else ""
    balloon = (
        '<memballoon model="virtio"/>' if vm.disk_bus == "virtio" else '<memballoon model="none"/>'
    )
    description = (
        f"Restored by rescueui from {image} (source machine: {vm.source}) on {created}. "
        f"Disk bus {vm.disk_bus}, network card {vm.nic_model}: {vm.why.get('disk_bus', '')}."
    )
    return f"""<domain type="kvm">
  <name>{escape(vm.name)}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <description>{escape(description)}</description>
  <metadata>
    <rescueui:vm xmlns:rescueui="{NAMESPACE}">
      <rescueui:disk file={quoteattr(str(disk))} format="{vm.disk_format}" virtual-size="{vm.disk_bytes}"/>
      <rescueui:image>{escape(image)}</rescueui:image>
      <rescueui:created>{escape(created)}</rescueui:created>
    </rescueui:vm>
  </metadata>
  <memory unit="KiB">{memory_kib}</memory>
  <currentMemory unit="KiB">{memory_kib}</currentMemory>
  <vcpu placement="static">{vm.vcpus}</vcpu>
  <os{firmware}>
    <type arch="x86_64" machine="{vm.machine_type}">hvm</type>
    <boot dev="hd"/>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode="host-model" check="partial"/>
  <clock offset="utc"/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="{LIBVIRT_TYPE[vm.disk_format]}" discard="unmap"/>
      <source file={quoteattr(str(disk))}/>
      <target dev="{dev}" bus="{bus}"/>
    </disk>
    <interface type="network">
      <mac address="{vm.mac}"/>
      <source network="default"/>
      <model type="{vm.nic_model}"/>
    </interface>
    <serial type="pty">
      <target port="0"/>
    </serial>
    <console type="pty">
      <target type="serial" port="0"/>
    </console>
    <input type="keyboard" bus="ps2"/>
    <graphics type="vnc" port="-1" autoport="yes" listen="127.0.0.1"/>
    <video>
      <model type="vga"/>
    </video>
    {balloon}
  </devices>
</domain>
"""


def vmx_text(vm: VmMachine, disk: Path) -> str:
    """A VMware ``.vmx`` for ``vm``; the disk (vmdk) lies next to it."""
    lines = [
        '.encoding = "UTF-8"',
        'config.version = "8"',
        'virtualHW.version = "14"',
        f'displayName = "{vm.name}"',
        'guestOS = "other5xlinux-64"',
        f'numvcpus = "{vm.vcpus}"',
        f'memSize = "{vm.memory_bytes // MiB}"',
        f'firmware = "{"efi" if vm.firmware == "uefi" else "bios"}"',
    ]
    # VMware has neither a virtio disk nor a virtio card: the plan chose SATA and e1000.
    lines += [
        'sata0.present = "TRUE"',
        'sata0:0.present = "TRUE"',
        f'sata0:0.fileName = "{disk.name}"',
        'ethernet0.present = "TRUE"',
        'ethernet0.virtualDev = "e1000"',
        'ethernet0.addressType = "generated"',
        'serial0.present = "FALSE"',
    ]
    return "\n".join(lines) + "\n"


def ovf_text(vm: VmMachine, disk: Path) -> str:
    """An OVF 1.0 descriptor for ``vm`` with its stream-optimized vmdk next to it."""
    size = disk.stat().st_size if disk.exists() else 0
    firmware = "efi" if vm.firmware == "uefi" else "bios"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:id="file1" ovf:href={quoteattr(disk.name)} ovf:size="{size}"/>
  </References>
  <DiskSection>
    <Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="{vm.disk_bytes}" ovf:capacityAllocationUnits="byte"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Networks</Info>
    <Network ovf:name="default"><Description>The network of the restored machine</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id={quoteattr(vm.name)}>
    <Info>Restored by rescueui</Info>
    <Name>{escape(vm.name)}</Name>
    <OperatingSystemSection ovf:id="101">
      <Info>Linux</Info>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>{vm.vcpus} virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>{vm.vcpus}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>{vm.memory_bytes // MiB} MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>{vm.memory_bytes // MiB}</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Address>0</rasd:Address>
        <rasd:ElementName>SATA controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AutomaticAllocation>true</rasd:AutomaticAllocation>
        <rasd:Connection>default</rasd:Connection>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="{firmware}"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def write_new(path: Path, text: str) -> None:
    """Write ``text`` to the new file ``path`` (never over an existing file or a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        data = text.encode()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
