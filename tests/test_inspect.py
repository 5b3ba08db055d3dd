"""`rescueui inspect`: what an image is, for every kind, from real tools' files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rescueui.core.images.inspect import inspect_image
from tests.test_restore import capture_to

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def raw_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("inspect")
    raw = work / "disk.raw"
    with open(raw, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sfdisk", "-q", str(raw)], input="label: gpt\nsize=20MiB\nsize=30MiB\n",
                   text=True, check=True)  # fmt: skip
    with open(raw, "r+b") as f:  # some data in partition 1
        f.seek(2 * MiB)
        f.write(b"rescueui" * 100000)
    return raw


def test_inspect_each_kind(raw_disk: Path, tmp_path: Path) -> None:
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw_disk), str(qcow2)], check=True)
    ours = capture_to(raw_disk, tmp_path / "image")
    seen = {}
    for path in (raw_disk, qcow2, ours):
        info = inspect_image(path)
        seen[info["kind"]] = info
        assert info["disk_bytes"] == 64 * MiB
        assert info["partition_table"] == "gpt"
        assert [p["size_bytes"] for p in info["partitions"]] == [20 * MiB, 30 * MiB]
    assert set(seen) == {"raw", "vm-disk", "rescueui"}
    assert seen["rescueui"]["integrity"] == "chunk-blake3" and seen["rescueui"]["resumable"]
    vm = seen["vm-disk"]
    assert vm["format"] == "qcow2" and "qcow2" in vm["description"]
    assert vm["integrity"] == "none" and vm["resumable"]  # pieces re-read for their hashes


def test_inspect_cli_json_and_refusal(raw_disk: Path, tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "rescueui"]
    r = subprocess.run([*cli, "inspect", "--json", str(raw_disk)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "raw"
    folder = tmp_path / "not-an-image"
    folder.mkdir()
    r = subprocess.run([*cli, "inspect", str(folder)], capture_output=True, text=True)
    assert r.returncode != 0 and "not an image" in r.stdout + r.stderr


def test_verify_checks_what_each_kind_allows(raw_disk: Path, tmp_path: Path) -> None:
    from rescueui.core.errors import RescueError
    from rescueui.core.verify import verify_image

    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw_disk), str(qcow2)], check=True)
    report = verify_image(qcow2)
    assert report.outcome == "success"
    assert any("QEMU" in n for n in report.notes)  # the metadata check, said as such
    assert any("carries no checksums" in n for n in report.notes)  # and what was not checked
    zst = tmp_path / "disk.raw.zst"
    subprocess.run(["zstd", "-q", "-3", str(raw_disk), "-o", str(zst)], check=True)
    assert verify_image(zst).outcome == "success"
    cut = tmp_path / "cut.raw.zst"
    cut.write_bytes(zst.read_bytes()[: zst.stat().st_size // 2])
    with pytest.raises(RescueError) as exc:
        verify_image(cut)
    assert "truncated" in str(exc.value)
    assert exc.value.report.outcome == "failed"  # type: ignore[attr-defined]
    assert exc.value.report.report_files  # type: ignore[attr-defined]
