#!/usr/bin/env python3
"""Boot test of the live ISO in QEMU (``make live-test``; root, after ``make live-image``).

1. Prepares, on the host: a small source disk file (GPT: an EFI-style vfat partition and an
   ext4 partition with files), captures it with ``rescueui capture`` into an image folder,
   puts that folder on an ext4 filesystem labelled RESCUEIMG (second virtual disk), and a
   blank, larger raw target disk (third virtual disk, serial RESCUETGT01).
2. Boot A, through the ISO's own boot loader (SeaBIOS -> GRUB, ISO attached as a USB stick):
   the app must start on the serial console and list the disks (the target's serial shows).
3. Boot B, the kernel and initrd taken from the ISO, with the unattended options: the restore
   runs without questions, the console shows its progress and result, the VM powers off.
4. On the host: the target file has the source's partition table and the same files
   (vfat read with mtools, ext4 mounted read-only through a loop device), and the report lies
   next to the image.
QEMU runs with TCG (-cpu qemu64): KVM on this machine cannot run stock kernels. Everything
lives in live-image/build/test/ (serial logs stay there for inspection); loop devices and QEMU
processes started here are always cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MiB = 1024 * 1024
IMAGE_LABEL = "RESCUEIMG"
IMAGE_PATH = "/images/demo"
TARGET_SERIAL = "RESCUETGT01"
IMAGES_SERIAL = "RESCUEIMGDISK"
SOURCE_MIB = 64
TARGET_MIB = 80  # larger than the source: the last partition grows
ANSI = re.compile(
    rb"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78MDEHc])"
)


def log(msg: str) -> None:
    print(f"[live-test {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), text=True, capture_output=True, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        raise TestFailure(f"{' '.join(cmd)} failed (exit {r.returncode}): {r.stderr.strip()}")
    return r


def blank(path: Path, size: int) -> Path:
    """A new sparse file of ``size`` bytes (replacing any old one)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)
    return path


class TestFailure(Exception):
    pass


class GuestHang(TestFailure):
    """The guest kernel's watchdog reported a soft lockup: under TCG a vCPU (seen in the
    usb-storage thread of the emulated xhci stick) can stall for minutes. The boot is tried
    once more; a second hang fails the test."""


SOFT_LOCKUP = r"watchdog: BUG: soft lockup - CPU#\d+ stuck for \d+s! \[[^\]]*\]"


# --------------------------------------------------------------------------- the disks


def make_source(work: Path) -> tuple[Path, Path, Path]:
    """source.raw (GPT: p1 vfat ESP 16 MiB 'SRCEFI', p2 ext4 'SRCROOT' the rest) and the
    trees put into each partition (for comparing afterwards)."""
    tree_root = work / "tree-root"
    tree_efi = work / "tree-efi"
    for t in (tree_root, tree_efi):
        shutil.rmtree(t, ignore_errors=True)
    (tree_root / "etc").mkdir(parents=True)
    (tree_root / "etc" / "hostname").write_text("web01\n")
    (tree_root / "etc" / "motd").write_text("restored by rescueui\n" * 50)
    (tree_root / "srv" / "data" / "deep" / "deeper").mkdir(parents=True)
    rnd = hashlib.sha256(b"rescueui live-test").digest()
    blob = bytearray()
    while len(blob) < 3 * MiB:  # deterministic, incompressible-ish
        rnd = hashlib.sha256(rnd).digest()
        blob += rnd
    (tree_root / "srv" / "data" / "blob.bin").write_bytes(bytes(blob))
    (tree_root / "srv" / "data" / "deep" / "deeper" / "note.txt").write_text("deep file\n")
    (tree_root / "srv" / "empty").mkdir()
    os.symlink("../etc/hostname", tree_root / "srv" / "hostname-link")
    (tree_efi / "EFI" / "BOOT").mkdir(parents=True)
    (tree_efi / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(bytes(blob[: 200 * 1024]))
    (tree_efi / "README.TXT").write_text("EFI partition of the live-test source disk\n")

    source = work / "source.raw"
    blank(source, SOURCE_MIB * MiB)
    script = (
        "label: gpt\n"
        'start=2048, size=32768, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"\n'
        'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n'
    )
    run(["sfdisk", "--quiet", str(source)], input=script)
    parts = json.loads(run(["sfdisk", "--json", str(source)]).stdout)["partitiontable"][
        "partitions"
    ]
    p1, p2 = parts[0], parts[1]
    efi_img = work / "p1.img"
    root_img = work / "p2.img"
    root_img.unlink(missing_ok=True)
    blank(efi_img, p1["size"] * 512)
    run(["mkfs.vfat", "-n", "SRCEFI", str(efi_img)])
    run(
        [
            "mcopy",
            "-s",
            "-i",
            str(efi_img),
            str(tree_efi / "EFI"),
            str(tree_efi / "README.TXT"),
            "::/",
        ]
    )
    run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "SRCROOT",
            "-d",
            str(tree_root),
            str(root_img),
            f"{p2['size'] // 2}k",
        ]
    )
    with open(source, "r+b") as dst:
        for part, img in ((p1, efi_img), (p2, root_img)):
            dst.seek(part["start"] * 512)
            dst.write(img.read_bytes())
    efi_img.unlink()
    root_img.unlink()
    return source, tree_root, tree_efi


def rescueui_cli() -> list[str]:
    venv = REPO / ".venv" / "bin" / "rescueui"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("rescueui")
    if found:
        return [found]
    raise TestFailure("no rescueui command on the host: run `make venv` first")


def make_image_disk(work: Path, source: Path) -> Path:
    """images.raw: ext4 labelled RESCUEIMG holding /images/demo captured from source.raw."""
    staging = work / "images-fs"
    shutil.rmtree(staging, ignore_errors=True)
    image_dir = staging / IMAGE_PATH.lstrip("/")
    image_dir.parent.mkdir(parents=True)
    cmd = [*rescueui_cli(), "capture", str(source), str(image_dir)]
    log("capture: " + " ".join(cmd))
    r = subprocess.run(cmd, text=True, capture_output=True)
    if r.returncode != 0 or not (image_dir / "manifest.json").exists():
        raise TestFailure(
            f"`rescueui capture` of the source disk failed (exit {r.returncode}):\n"
            f"{r.stdout[-2000:]}{r.stderr[-2000:]}"
        )
    used = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
    size_mib = max(64, 2 * used // MiB + 32)
    disk = work / "images.raw"
    disk.unlink(missing_ok=True)
    run(["mkfs.ext4", "-q", "-F", "-L", IMAGE_LABEL, "-d", str(staging), str(disk), f"{size_mib}M"])
    log(
        f"image disk: {disk.name} ({size_mib} MiB, ext4 {IMAGE_LABEL}, {used // 1024} KiB of image)"
    )
    return disk


# --------------------------------------------------------------------------- QEMU


class Qemu:
    """One QEMU run; the serial console (stdio) is copied to a log file and searchable."""

    def __init__(self, args: list[str], serial_log: Path) -> None:
        self.serial_log = serial_log
        self.buf = bytearray()
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.serial_log, "wb") as f:
            while True:
                data = self.proc.stdout.read1(65536)  # type: ignore[attr-defined]
                if not data:
                    break
                f.write(data)
                f.flush()
                with self.lock:
                    self.buf += data

    def text(self) -> str:
        with self.lock:
            raw = bytes(self.buf)
        return ANSI.sub(b"", raw).replace(b"\r", b"").decode("utf-8", "replace")

    def wait_for(self, patterns: Sequence[str], timeout: float, fail: Sequence[str] = ()) -> str:
        """Wait until every regex in ``patterns`` is in the console text; return the text."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            hang = re.search(SOFT_LOCKUP, text)
            if hang:
                raise GuestHang(f"console shows '{hang.group(0)}' (see {self.serial_log})")
            for bad in fail:
                m = re.search(bad, text)
                if m:
                    raise TestFailure(f"console shows '{m.group(0)}' (see {self.serial_log})")
            if all(re.search(p, text) for p in patterns):
                return text
            if self.proc.poll() is not None:
                time.sleep(0.5)
                text = self.text()
                if all(re.search(p, text) for p in patterns):
                    return text
                raise TestFailure(
                    f"QEMU exited (code {self.proc.returncode}) before the console showed "
                    f"{[p for p in patterns if not re.search(p, text)]} (see {self.serial_log}):\n"
                    + tail(text)
                )
            if time.monotonic() > deadline:
                raise TestFailure(
                    f"timeout after {timeout:.0f} s waiting for "
                    f"{[p for p in patterns if not re.search(p, text)]} (see {self.serial_log}):\n"
                    + tail(text)
                )
            time.sleep(1)

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait_exit(self, timeout: float) -> bool:
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.reader.join(timeout=5)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


@contextlib.contextmanager
def qemu(args: list[str], serial_log: Path) -> Iterator[Qemu]:
    vm = Qemu(args, serial_log)
    try:
        yield vm
    finally:
        vm.stop()


def booted(args: list[str], serial_log: Path, what: str, body: Callable[[Qemu], None]) -> None:
    """Run ``body`` on a QEMU started with ``args``; once more (log ``*.retry.log``) if the
    guest hung in the emulation (:class:`GuestHang`)."""
    try:
        with qemu(args, serial_log) as vm:
            body(vm)
        return
    except GuestHang as exc:
        log(f"{what}: the guest hung ({exc}); booting it once more")
    with qemu(args, serial_log.with_suffix(".retry.log")) as vm:
        body(vm)


def qemu_base(iso: Path, images: Path, target: Path, *, smp: int, memory: str) -> list[str]:
    accel = os.environ.get("LIVE_TEST_ACCEL", "tcg")
    cpu = "qemu64" if accel == "tcg" else "host"
    return [
        "qemu-system-x86_64", "-accel", accel, "-cpu", cpu, "-smp", str(smp), "-m", memory,
        # no floppy, no CD drive: only the disks of the test (as on a server); the serial
        # console on stdio, a VGA card for tty1
        "-nodefaults", "-nographic", "-serial", "stdio", "-vga", "std", "-no-reboot",
        # the ISO as a USB stick, as dd put it on one
        "-device", "qemu-xhci,id=xhci",
        "-drive", f"if=none,id=stick,file={iso},format=raw,readonly=on",
        "-device", "usb-storage,bus=xhci.0,drive=stick",
        "-drive", f"if=none,id=images,file={images},format=raw",
        "-device", f"virtio-blk-pci,drive=images,serial={IMAGES_SERIAL}",
        "-drive", f"if=none,id=target,file={target},format=raw",
        "-device", f"virtio-blk-pci,drive=target,serial={TARGET_SERIAL}",
    ]  # fmt: skip


def extract_from_iso(iso: Path, member: str, dest: Path) -> Path:
    dest.unlink(missing_ok=True)
    run(["xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", member, str(dest)])
    return dest


# --------------------------------------------------------------------------- checks on the host


def sfdisk_json(path: Path) -> dict:
    return json.loads(run(["sfdisk", "--json", str(path)]).stdout)["partitiontable"]


def check_table(source: Path, target: Path) -> list[dict]:
    src, dst = sfdisk_json(source), sfdisk_json(target)
    if src.get("label") != dst.get("label"):
        raise TestFailure(f"target table is {dst.get('label')}, source {src.get('label')}")
    sp, dp = src["partitions"], dst["partitions"]
    if len(sp) != len(dp):
        raise TestFailure(f"target has {len(dp)} partitions, source {len(sp)}")
    for i, (a, b) in enumerate(zip(sp, dp, strict=True), start=1):
        for key in ("start", "type", "name"):
            if a.get(key) != b.get(key):
                raise TestFailure(f"partition {i}: {key} is {b.get(key)}, source {a.get(key)}")
        last = i == len(sp)
        if (b["size"] < a["size"]) if last else (b["size"] != a["size"]):
            raise TestFailure(f"partition {i}: size {b['size']} sectors, source {a['size']}")
    return dp


def compare_trees(a: Path, b: Path) -> list[str]:
    """Differences between two trees: names, types, symlink targets, file contents."""
    diffs: list[str] = []

    def walk(rel: Path) -> None:
        da, db = a / rel, b / rel
        names_a = {n for n in os.listdir(da) if n != "lost+found"}
        names_b = {n for n in os.listdir(db) if n != "lost+found"}
        for n in sorted(names_a ^ names_b):
            diffs.append(f"{rel / n}: only in {'source' if n in names_a else 'target'}")
        for n in sorted(names_a & names_b):
            pa, pb = da / n, db / n
            if pa.is_symlink() or pb.is_symlink():
                if not (pa.is_symlink() and pb.is_symlink()) or os.readlink(pa) != os.readlink(pb):
                    diffs.append(f"{rel / n}: symlink differs")
            elif pa.is_dir() and pb.is_dir():
                walk(rel / n)
            elif pa.is_file() and pb.is_file():
                if not filecmp.cmp(pa, pb, shallow=False):
                    diffs.append(f"{rel / n}: contents differ")
            else:
                diffs.append(f"{rel / n}: type differs")

    walk(Path("."))
    return diffs


def check_files(
    target: Path, parts: list[dict], tree_root: Path, tree_efi: Path, work: Path
) -> None:
    # p1: vfat, read with mtools (this kernel cannot mount vfat)
    efi_out = work / "check-efi"
    shutil.rmtree(efi_out, ignore_errors=True)
    efi_out.mkdir()
    offset = parts[0]["start"] * 512
    run(["mcopy", "-s", "-n", "-i", f"{target}@@{offset}", "::/EFI", "::/README.TXT", str(efi_out)])
    diffs = compare_trees(tree_efi, efi_out)
    if diffs:
        raise TestFailure("vfat partition differs from the source: " + "; ".join(diffs))
    log("target p1 (vfat): same files as the source")
    # p2: ext4, fsck then mount read-only through a loop device made here
    p2 = parts[1]
    loop = run(
        ["losetup", "--find", "--show", "--read-only", "--offset", str(p2["start"] * 512),
         "--sizelimit", str(p2["size"] * 512), str(target)]
    ).stdout.strip()  # fmt: skip
    mnt = Path(tempfile.mkdtemp(prefix="live-test-mnt-"))
    try:
        fsck = subprocess.run(["e2fsck", "-fn", loop], text=True, capture_output=True)
        if fsck.returncode != 0:
            raise TestFailure(
                f"e2fsck of the restored ext4 partition failed:\n{fsck.stdout}{fsck.stderr}"
            )
        run(["mount", "-o", "ro", loop, str(mnt)])
        try:
            diffs = compare_trees(tree_root, mnt)
            label = run(["blkid", "-o", "value", "-s", "LABEL", loop]).stdout.strip()
        finally:
            subprocess.run(["umount", str(mnt)], check=False)
        if diffs:
            raise TestFailure("ext4 partition differs from the source: " + "; ".join(diffs))
        if label != "SRCROOT":
            raise TestFailure(f"ext4 partition label is '{label}', expected SRCROOT")
        log("target p2 (ext4): fsck clean, same files as the source, label SRCROOT")
    finally:
        subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(mnt, ignore_errors=True)


def check_report(images: Path) -> str:
    """The restore report (JSON + text) lies next to the image, in <image>/reports."""
    folder = f"{IMAGE_PATH}/reports"
    listing = run(["debugfs", "-R", f"ls -l {folder}", str(images)]).stdout
    names = re.findall(r"(restore-\S+\.(?:json|txt))\s*$", listing, re.M)
    if not any(n.endswith(".json") for n in names) or not any(n.endswith(".txt") for n in names):
        raise TestFailure(f"no restore report in {IMAGE_LABEL}:{folder}:\n{listing}")
    newest = sorted(n for n in names if n.endswith(".json"))[-1]  # boot C's abort report is older
    report = json.loads(run(["debugfs", "-R", f"cat {folder}/{newest}", str(images)]).stdout)
    if report.get("outcome") != "success":
        raise TestFailure(f"the report says {report.get('outcome')}: {report.get('error')}")
    return f"{folder}/" + ", ".join(sorted(names))


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--iso", type=Path, default=HERE / "out" / "rescueui.iso")
    ap.add_argument("--work", type=Path, default=HERE / "build" / "test")
    ap.add_argument("--smp", type=int, default=int(os.environ.get("LIVE_TEST_SMP", "2")))
    ap.add_argument("--memory", default="2G")
    ap.add_argument("--boot-timeout", type=float, default=360, help="seconds to the app (boot A)")
    ap.add_argument("--restore-timeout", type=float, default=480, help="seconds for boot B")
    ap.add_argument("--only", choices=("app", "unattended"), help="run one of the two boots")
    ap.add_argument(
        "--firmware",
        choices=("bios", "uefi"),
        default=os.environ.get("LIVE_TEST_FIRMWARE", "bios"),
        help="firmware for boot A (uefi: OVMF, package ovmf)",
    )
    args = ap.parse_args(argv)

    # a plain `kill` (or CI's timeout) still stops QEMU and frees the loop device
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("live-test: run as root (loop devices, mount): sudo make live-test", file=sys.stderr)
        return 2
    if not args.iso.exists():
        print(f"live-test: {args.iso} not found: run `make live-image` first", file=sys.stderr)
        return 2
    for tool in (
        "qemu-system-x86_64",
        "xorriso",
        "sfdisk",
        "mkfs.ext4",
        "mkfs.vfat",
        "mcopy",
        "debugfs",
    ):
        if shutil.which(tool) is None:
            print(f"live-test: {tool} is missing (see .ci/packages.txt)", file=sys.stderr)
            return 2
    t0 = time.monotonic()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        source, tree_root, tree_efi = make_source(work)
        target = work / "target.raw"
        blank(target, TARGET_MIB * MiB)
        images = make_image_disk(work, source) if args.only != "app" else work / "images.raw"
        if args.only == "app" and not images.exists():
            blank(images, 16 * MiB)
        base = qemu_base(args.iso, images, target, smp=args.smp, memory=args.memory)
        if args.only != "unattended":
            boot_app(base, work, args.boot_timeout, args.firmware)
        if args.only != "app":
            boot_unattended_mismatch(base, args.iso, work, args.restore_timeout)
            boot_unattended(base, args.iso, work, args.restore_timeout)
            parts = check_table(source, target)
            log(f"target partition table matches the source ({len(parts)} partitions)")
            check_files(target, parts, tree_root, tree_efi, work)
            log(f"report next to the image: {check_report(images)}")
    except TestFailure as exc:
        log(f"FAILED: {exc}")
        return 1
    log(f"PASSED in {time.monotonic() - t0:.0f} s (serial logs in {work})")
    return 0


def uefi_firmware(work: Path) -> list[str]:
    code = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    vars_template = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    if not code.exists() or not vars_template.exists():
        raise TestFailure("UEFI firmware (OVMF) not found: apt-get install ovmf")
    nvram = work / "OVMF_VARS.fd"
    shutil.copyfile(vars_template, nvram)
    return [
        "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
        "-drive", f"if=pflash,format=raw,unit=1,file={nvram}",
    ]  # fmt: skip


def boot_app(base: list[str], work: Path, timeout: float, firmware: str) -> None:
    log(f"boot A: ISO boot loader ({firmware.upper()}, USB stick) -> the app on the serial console")
    args = [*base, *(uefi_firmware(work) if firmware == "uefi" else [])]
    usb = next(i for i, a in enumerate(args) if a.startswith("usb-storage"))
    args[usb] += ",bootindex=0"  # firmware boots the stick (with -kernel, QEMU boots itself)

    def body(vm: Qemu) -> None:
        vm.wait_for([r"GNU GRUB|rescueui \(screen tty1"], 120, fail=[r"Kernel panic"])
        log(f"boot A: GRUB menu after {vm.elapsed():.0f} s")
        # The app's disk list names the USB stick (sda; with loglevel=3 the kernel does not
        # print it). The virtio disks may be below the fold of an 80x24 table.
        text = vm.wait_for(
            [r"\bsda\b"],
            timeout,
            fail=[
                r"Kernel panic",
                r"Traceback \(most recent call last\)",
                r"Unable to find a medium",
            ],
        )
        time.sleep(3)
        below = "" if re.search(r"\bvda\b", vm.text()) else " (vda below the fold)"
        log(f"boot A: the app lists the disks on ttyS0 after {vm.elapsed():.0f} s{below}")
        # Quit the app on the serial line: a shell with the hint; the tty1 instance still runs.
        time.sleep(2)
        for key in (b"q", b"\x11", b"y"):  # q; ctrl+q (Textual's quit); y if it asks to confirm
            vm.send(key)
            try:
                vm.wait_for([r"Start it again: rescueui-console"], 15)
                break
            except TestFailure:
                if key == b"y":
                    raise
        vm.send(
            b"p=$(pgrep -t tty1 -f 'bin/rescueui( |$)' | head -n 1); echo TTY1-APP=${p:-0} "
            b"TTY1-TERM=$(tr '\\0' '\\n' </proc/${p:-self}/environ | sed -n 's/^TERM=//p')\n"
        )
        text = vm.wait_for([r"TTY1-APP=\d+ TTY1-TERM=\S*"], 30)
        vm.send(b'echo DISKS=$(rescueui disks --json | grep -c -e \'"serial": "RESCUE\')\n')
        disks = vm.wait_for([r"DISKS=\d+"], 60)
        n = re.search(r"DISKS=(\d+)", disks)
        if n is None or int(n.group(1)) != 2:
            raise TestFailure(
                f"`rescueui disks` in the live system does not list both test disks: {n and n.group(0)}"
            )
        m = re.search(r"TTY1-APP=(\d+) TTY1-TERM=(\S*)", text)
        assert m is not None
        if m.group(1) == "0" or m.group(2) != "linux":
            raise TestFailure(f"the app is not running on tty1 with TERM=linux: {m.group(0)}")
        log(f"boot A: quitting gives a shell with the hint; the app runs on tty1 ({m.group(0)})")
        log("boot A: `rescueui disks` in the live system lists both test disks by serial")
        # What the app draws on tty1 must be in the console font (no replacement boxes).
        vm.send(b"rescueui-glyph-check 1; echo GLYPHS=$?\n")
        text = vm.wait_for([r"GLYPHS=\d"], 60)
        g = re.search(r"(tty1: .*)\n(.*\n)*?GLYPHS=(\d)", text)
        if g is None or g.group(3) != "0":
            raise TestFailure(f"glyph check of tty1: {g.group(1) if g else tail(text, 5)}")
        log(f"boot A: {g.group(1).strip()}")

    booted(args, work / "serial-app.log", "boot A", body)


def unattended_args(
    base: list[str], iso: Path, work: Path, target_size: int
) -> tuple[list[str], str]:
    kernel = extract_from_iso(iso, "/live/vmlinuz", work / "vmlinuz")
    initrd = extract_from_iso(iso, "/live/initrd.img", work / "initrd.img")
    append = (
        "boot=live quiet loglevel=3 console=ttyS0,115200n8 "
        f"rescueui.image={IMAGE_LABEL}:{IMAGE_PATH} "
        f"rescueui.target=serial:{TARGET_SERIAL},size:{target_size} "
        "rescueui.unattended=1 rescueui.poweroff=always"
    )
    return [*base, "-kernel", str(kernel), "-initrd", str(initrd), "-append", append], append


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def boot_unattended_mismatch(base: list[str], iso: Path, work: Path, timeout: float) -> None:
    """The pinned size is one sector off: the run must abort, say why, and write nothing."""
    target = work / "target.raw"
    before = file_sha256(target)
    args, append = unattended_args(base, iso, work, target.stat().st_size + 512)
    log(f"boot C: unattended with a target pin that does not match: {append}")

    def body(vm: Qemu) -> None:
        text = vm.wait_for([r"rescueui-unattended \S+ RESULT \w+"], timeout, fail=[r"Kernel panic"])
        m = re.search(r"rescueui-unattended \S+ RESULT (\w+).*", text)
        assert m is not None
        if m.group(1) != "aborted" or "identity differs" not in text:
            raise TestFailure(f"a differing target was not refused: {m.group(0).strip()}")
        why = re.search(r"ABORTED, nothing written: .*", text)
        log(f"boot C: {why.group(0)[:160] if why else m.group(0)} ({vm.elapsed():.0f} s)")
        vm.wait_exit(30)

    booted(args, work / "serial-mismatch.log", "boot C", body)  # `before`: from the start
    if file_sha256(target) != before:
        raise TestFailure("the target changed although the unattended run aborted")
    log("boot C: the target is untouched")


def boot_unattended(base: list[str], iso: Path, work: Path, timeout: float) -> None:
    args, append = unattended_args(base, iso, work, (work / "target.raw").stat().st_size)
    log(f"boot B: kernel + initrd from the ISO, unattended: {append}")

    def body(vm: Qemu) -> None:
        text = vm.wait_for(
            [r"rescueui-unattended \S+ RESULT \w+"],
            timeout,
            fail=[r"Kernel panic", r"Unable to find a medium"],
        )
        m = re.search(r"rescueui-unattended \S+ RESULT (\w+).*", text)
        assert m is not None
        log(f"boot B: {m.group(0).strip()} after {vm.elapsed():.0f} s")
        lines = [ln for ln in text.splitlines() if ln.startswith("rescueui-unattended")]
        print("---- serial console, unattended restore ----")
        print("\n".join(dict.fromkeys(lines)))  # each line once (two consoles may show it)
        print("--------------------------------------------")
        if m.group(1) != "success":
            raise TestFailure(f"the unattended restore did not succeed: {m.group(0).strip()}")
        if vm.wait_exit(60):
            log(f"boot B: powered off after {vm.elapsed():.0f} s")
        else:
            log("boot B: did not power off within 60 s of the result (stopping QEMU)")

    booted(args, work / "serial-unattended.log", "boot B", body)


if __name__ == "__main__":
    sys.exit(main())
