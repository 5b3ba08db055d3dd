"""The VM's own configuration next to its disk -> the source machine in pre-flight."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from rescueui.core.host import HostProfile, read_host_profile
from rescueui.core.images.source import open_image
from rescueui.core.images.vmconfig import find_vm_config
from rescueui.core.preflight import ImageFacts, TargetInfo, check
from rescueui.core.units import GiB, MiB

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")

LIBVIRT = """<domain type='kvm'>
  <name>web01</name>
  <uuid>4dea22b3-1d52-d8f3-2516-782e98ab3fa0</uuid>
  <memory unit='KiB'>67108864</memory>
  <currentMemory unit='KiB'>67108864</currentMemory>
  <vcpu placement='static'>4</vcpu>
  <os firmware='efi'>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram>/var/lib/libvirt/qemu/nvram/web01_VARS.fd</nvram>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <source file='/var/lib/libvirt/images/debian.iso'/>
      <target dev='sda' bus='sata'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6b:3c:58'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
"""

VMX = """.encoding = "UTF-8"
config.version = "8"
virtualHW.version = "19"
displayName = "web01"
firmware = "efi"
numvcpus = "4"
memsize = "65536"
scsi0.present = "TRUE"
scsi0.virtualDev = "lsilogic"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{disk}"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.addressType = "generated"
ethernet0.generatedAddress = "00:0c:29:aa:bb:cc"
"""

OVF = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope vmw:buildId="build-1" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
 xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
 xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
 xmlns:vmw="http://www.vmware.com/schema/ovf">
  <References>
    <File ovf:href="{disk}" ovf:id="file1" ovf:size="1000"/>
  </References>
  <DiskSection>
    <Info>Virtual disk information</Info>
    <Disk ovf:capacity="64" ovf:capacityAllocationUnits="byte * 2^20" ovf:diskId="vmdisk1"
     ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html"/>
  </DiskSection>
  <VirtualSystem ovf:id="web01">
    <Info>A virtual machine</Info>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemType>vmx-19</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:ElementName>4 virtual CPU(s)</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>4</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:ElementName>65536MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>65536</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:ElementName>SATA Controller 0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>vmware.sata.ahci</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>Hard Disk 1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:Address>00:50:56:aa:bb:cc</rasd:Address>
        <rasd:ElementName>Network adapter 1</rasd:ElementName>
        <rasd:InstanceID>5</rasd:InstanceID>
        <rasd:ResourceSubType>VmxNet3</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""

VBOX = """<?xml version="1.0"?>
<VirtualBox xmlns="http://www.virtualbox.org/" version="1.19-linux">
  <Machine uuid="{{0b6c1a6e-0000-4000-8000-000000000001}}" name="web01" OSType="Debian_64">
    <MediaRegistry>
      <HardDisks>
        <HardDisk uuid="{{7d3c2a11-0000-4000-8000-00000000000a}}" location="{disk}"
         format="VDI" type="Normal"/>
      </HardDisks>
    </MediaRegistry>
    <Hardware>
      <CPU count="4"/>
      <Memory RAMSize="65536"/>
      <Firmware type="EFI"/>
      <Network>
        <Adapter slot="0" enabled="true" MACAddress="080027AABBCC" type="virtio"/>
        <Adapter slot="1" enabled="false" type="82540EM"/>
      </Network>
      <StorageControllers>
        <StorageController name="NVMe" type="NVMe" PortCount="1" Bootable="true">
          <AttachedDevice type="HardDisk" hotpluggable="false" port="0" device="0">
            <Image uuid="{{7d3c2a11-0000-4000-8000-00000000000a}}"/>
          </AttachedDevice>
        </StorageController>
      </StorageControllers>
    </Hardware>
  </Machine>
</VirtualBox>
"""

HERE = read_host_profile()
# This machine's profile, made smaller than the VM so the comparison has something to say.
SMALL = HostProfile.from_dict({**HERE.to_dict(), "cpus": 2, "memory_bytes": 8 * GiB})


def _qcow2(folder: Path, name: str = "disk.qcow2") -> Path:
    p = folder / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(p), "64M"], check=True)
    return p


def _host_of(path: Path) -> tuple[dict, dict, list[str]]:
    with open_image(path) as img:
        m = img.manifest
        return dict(m.host), dict(m.source_disk), list(m.warnings)


def _target(bus: str) -> TargetInfo:
    return TargetInfo(
        path="/dev/sdz",
        size_bytes=1 * GiB,
        logical_sector_size=512,
        physical_sector_size=512,
        bus=bus,
        kind="block",
    )


def _findings(path: Path, bus: str) -> dict:
    with open_image(path) as img:
        facts = ImageFacts.from_image(img)
    return {f.code: f for f in check(facts, _target(bus), host=SMALL)}


def test_libvirt_domain_gives_source_machine(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    (tmp_path / "web01.xml").write_text(LIBVIRT.format(disk="disk.qcow2"))
    host, sd, _ = _host_of(disk)
    assert host["cpus"] == 4
    assert host["memory_bytes"] == 64 * GiB
    assert host["firmware"] == "uefi"
    assert host["virtual"] == "kvm"
    assert host["source"] == "libvirt domain web01.xml"
    assert sd["bus"] == "virtio"
    assert [n["model"] for n in host["nics"]] == ["virtio"]
    assert host["nics"][0]["mac"] == "52:54:00:6b:3c:58"

    f = _findings(disk, "ata")
    assert f["cpus"].level == "warn"
    assert "4" in f["cpus"].message and "2" in f["cpus"].message
    assert f["memory"].level == "warn" and "64" in f["memory"].message
    assert f["bus"].level == "warn"
    assert "virtio on the source" in f["bus"].message
    assert "initramfs may lack ahci" in f["bus"].detail
    assert _findings(disk, "nvme")["bus"].level == "warn"
    assert _findings(disk, "virtio")["bus"].level == "ok"


def test_vmx_gives_source_machine(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path, "web01.vmdk.qcow2")
    (tmp_path / "web01.vmx").write_text(VMX.format(disk="web01.vmdk.qcow2"))
    host, sd, _ = _host_of(disk)
    assert (host["cpus"], host["memory_bytes"], host["firmware"]) == (4, 64 * GiB, "uefi")
    assert host["virtual"] == "vmware"
    assert sd["bus"] == "scsi"
    assert host["storage_controllers"] == ["lsilogic"]
    assert host["nics"][0]["driver"] == "vmxnet3"
    f = _findings(disk, "nvme")
    assert f["cpus"].level == "warn" and f["bus"].level == "warn"


def test_ovf_and_ova(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    (tmp_path / "web01.ovf").write_text(OVF.format(disk="disk.qcow2"))
    host, sd, _ = _host_of(disk)
    assert (host["cpus"], host["memory_bytes"], host["firmware"]) == (4, 64 * GiB, "uefi")
    assert sd["bus"] == "ata" and host["virtual"] == "vmware"
    assert host["nics"][0]["model"] == "VmxNet3"

    other = tmp_path / "ova"
    other.mkdir()
    disk2 = _qcow2(other)
    data = OVF.format(disk="disk.qcow2").encode()
    with tarfile.open(other / "web01.ova", "w") as tar:
        info = tarfile.TarInfo("web01.ovf")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    host, sd, _ = _host_of(disk2)
    assert host["source"] == "OVF descriptor web01.ova"
    assert host["cpus"] == 4 and sd["bus"] == "ata"


def test_vbox_gives_source_machine(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    (tmp_path / "web01.vbox").write_text(VBOX.format(disk=str(tmp_path / "disk.qcow2")))
    host, sd, _ = _host_of(disk)
    assert (host["cpus"], host["memory_bytes"], host["firmware"]) == (4, 64 * GiB, "uefi")
    assert sd["bus"] == "nvme" and host["virtual"] == "virtualbox"
    assert host["nics"] == [
        {
            "name": "net0",
            "mac": "08:00:27:aa:bb:cc",
            "model": "virtio",
            "driver": "virtio_net",
            "physical": True,
        }
    ]


def test_raw_image_gets_it_too(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(16 * MiB)
    (tmp_path / "web01.xml").write_text(LIBVIRT.format(disk="disk.img"))
    host, sd, _ = _host_of(disk)
    assert host["cpus"] == 4 and sd["bus"] == "virtio"


def test_no_config_no_host(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    (tmp_path / "notes.xml").write_text("<notes>nothing</notes>")
    host, _, warnings = _host_of(disk)
    assert host == {} and warnings == []


ENTITY_BOMB = """<?xml version="1.0"?>
<!DOCTYPE domain [
 <!ENTITY a "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
]>
<domain type='kvm'><name>&e;</name><vcpu>4</vcpu>
<devices><disk type='file' device='disk'><source file='disk.qcow2'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>
"""


def test_entity_bomb_ignored_with_warning(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    (tmp_path / "web01.xml").write_text(ENTITY_BOMB)
    (tmp_path / "web01.vbox").write_text('<!DOCTYPE x SYSTEM "file:///etc/passwd"><VirtualBox/>')
    t0 = time.monotonic()
    host, _, warnings = _host_of(disk)
    assert time.monotonic() - t0 < 30
    assert host == {}
    assert any("web01.xml" in w and "DTD" in w for w in warnings), warnings
    assert any("web01.vbox" in w for w in warnings), warnings


def test_config_of_another_disk_ignored(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    (tmp_path / "web02.xml").write_text(LIBVIRT.format(disk="other.qcow2"))
    (tmp_path / "web02.vmx").write_text(VMX.format(disk="other.vmdk"))
    host, _, warnings = _host_of(disk)
    assert host == {}
    assert any("web02.xml" in w and "other.qcow2" in w for w in warnings), warnings
    assert any("web02.vmx" in w and "other.vmdk" in w for w in warnings), warnings


def test_symlinked_config_ignored(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "web01.xml").write_text(LIBVIRT.format(disk="disk.qcow2"))
    vm = tmp_path / "vm"
    vm.mkdir()
    disk = _qcow2(vm)
    os.symlink(elsewhere / "web01.xml", vm / "web01.xml")
    warnings: list[str] = []
    assert find_vm_config(disk, warnings) is None
    assert any("symbolic link" in w for w in warnings), warnings
    host, _, _ = _host_of(disk)
    assert host == {}


def test_huge_config_ignored(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    big = tmp_path / "web01.vmx"
    with open(big, "wb") as f:
        f.write(VMX.format(disk="disk.qcow2").encode())
        f.truncate(100 * MiB)
    warnings: list[str] = []
    t0 = time.monotonic()
    assert find_vm_config(disk, warnings) is None
    assert time.monotonic() - t0 < 5
    assert any("web01.vmx" in w for w in warnings), warnings


def test_fifo_config_does_not_hang(tmp_path: Path) -> None:
    disk = _qcow2(tmp_path)
    os.mkfifo(tmp_path / "web01.vmx")
    warnings: list[str] = []
    assert find_vm_config(disk, warnings) is None
    assert any("web01.vmx" in w for w in warnings), warnings
