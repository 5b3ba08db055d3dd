"""A whole-disk restore onto a disk smaller than the image's (issue 13, item 3).

The source (:mod:`tests.smallerfixtures`): a 1 GiB GPT disk, p1 ESP 64 MiB FAT32, p2 ext4
"root" 480 MiB, p3 xfs "data" ~478 MiB, both Linux filesystems about 30 % used over old
data in their free space, captured with rescueui once (cached). Targets are files filled
with a known pattern (old data) on loop devices:

* 600 MiB: the data fits. The pre-flight warns (``smaller.plan``: per partition, what
  happens); the restore keeps the GPT identities (disk GUID, types, names, PARTUUIDs, in
  order), copies the ESP bit for bit at its size (boot sector, FATs and used clusters; its
  free clusters, old data on the source, are not compared), makes the data filesystems
  again smaller with their type, UUID and label, and copies their files: the file trees
  (type, mode, owner, mtime, size, content, symlink targets, device numbers, xattrs and
  ACLs, hard-link groups) equal the source's, the filesystems check clean.
* 200 MiB: it does not fit. The pre-flight stops (``smaller.fit``, the shortfall named),
  the restore is refused and not one byte of the target changes.

The helpers themselves are checked against the source (the tree comparison finds what a
changed copy changed; the ESP comparison sees a changed FAT, used and free cluster; the
pattern hash sees one written byte), so a passing test means something.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import smallerfixtures as sf
from tests.clirun import loop, rescueui
from tests.loopdisk import settle
from tests.marks import needs

pytestmark = needs(*sf.TOOLS, udev=True)

MiB = sf.MiB
PART = r"partition (\d+) \((\w+) \"([^\"]*)\"[^)]*\): "
"""``partition N (TYPE "LABEL"[, more]): `` opening each partition's part of the plan's
detail (one line each, or joined by "; ")."""
SIZE = r"([\d.]+ [KMG]iB)"
DATA_LINE = re.compile(
    PART + rf"{SIZE} used, {SIZE} -> {SIZE}, filesystem made again, files copied"
)
KEPT_LINE = re.compile(PART + r"[^;\n]*\bkept\b[^;\n]*copied block for block")
UNITS = {"KiB": 1024, "MiB": MiB, "GiB": 1024 * MiB}


def size_of(text: str) -> float:
    """``"480.0 MiB"`` -> bytes."""
    number, unit = text.split()
    return float(number) * UNITS[unit]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def src() -> sf.Source:
    return sf.source()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("smaller")


@pytest.fixture(scope="module")
def image(src: sf.Source, work: Path) -> Path:
    """A private copy of the cached image folder (restores write their reports into it)."""
    return sf.copy_image(src.image, work / "image")


@dataclass
class Run:
    """One CLI run against a target file."""

    target: Path
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    hash_before: str
    hash_after: str

    @property
    def json(self) -> dict[str, Any]:
        try:
            return json.loads(self.stdout)
        except json.JSONDecodeError as exc:
            raise AssertionError(
                f"no JSON on stdout ({exc}):\n{self.stdout}\n{self.stderr}"
            ) from None

    def findings(self) -> dict[str, dict[str, Any]]:
        return {f["code"]: f for f in self.json.get("findings", [])}

    def explain(self) -> str:
        """What to show when an assertion fails: exit status, stderr, the findings that are
        not OK."""
        try:
            found = [
                f"  [{f['level']}] {f['code']}: {f['message']}\n      {f['detail']}"
                for f in self.json.get("findings", [])
                if f["level"] != "ok"
            ]
        except AssertionError:
            found = ["  (no JSON report)"]
        return (
            f"exit {self.returncode} after {self.seconds:.1f} s\nstderr:\n{self.stderr}\n"
            "findings:\n" + "\n".join(found)
        )


def run_cli(command: str, image: Path, target: Path, *extra: str) -> Run:
    """``rescueui COMMAND IMAGE <loop device over target> ...``; the target file's SHA-256
    before and after (the loop device detached first, so every write has reached the file)."""
    before = sf.sha256_file(target)
    started = time.monotonic()
    with loop(target) as dev:
        proc = rescueui(command, image, dev, *extra, check=False)
        settle()
    seconds = time.monotonic() - started
    return Run(target, proc.returncode, proc.stdout, proc.stderr, seconds, before,
               sf.sha256_file(target))  # fmt: skip


RESTORE = ("--yes", "--quiet", "--json", "--accept-warnings")


@pytest.fixture(scope="module")
def restored(image: Path, work: Path) -> Run:
    """The restore onto the 600 MiB target, once for the tests that check its result."""
    target = sf.pattern_file(work / "target-600.raw", sf.TARGET_MIB)
    result = run_cli("restore", image, target, *RESTORE)
    print(f"restore onto {sf.TARGET_MIB} MiB: exit {result.returncode} in {result.seconds:.1f} s")
    return result


def succeeded(r: Run) -> dict[str, Any]:
    """The report of a restore that must have succeeded (else fail with its stderr)."""
    assert r.returncode == 0, r.explain()
    report = r.json
    assert report["outcome"] == "success", r.explain()
    return report


@pytest.fixture(scope="module")
def mounts(work: Path) -> Path:
    """A folder for mount points (every mount below it is undone by the test that made it)."""
    where = work / "mnt"
    where.mkdir(exist_ok=True)
    return where


def trees(src: sf.Source, target: Path, where: Path, n: int) -> tuple[sf.Tree, sf.Tree]:
    """The file trees of partition ``n`` of the source disk and of the target, both mounted
    read-only through read-only loop devices."""
    with sf.partitions(src.disk, read_only=True) as a, sf.partitions(target, read_only=True) as b:
        with sf.mounted(a[n], where / f"src-{n}") as top:
            tree_a = sf.snapshot(top)
        with sf.mounted(b[n], where / f"dst-{n}") as top:
            tree_b = sf.snapshot(top)
    return tree_a, tree_b


# --------------------------------------------------------------------------- pre-flight


def test_preflight_plans_the_copy_onto_a_smaller_disk(image: Path, work: Path) -> None:
    target = sf.pattern_file(work / "preflight-600.raw", sf.TARGET_MIB)
    r = run_cli("preflight", image, target, "--json")
    assert r.hash_after == r.hash_before, "the pre-flight wrote to the target"
    found = r.findings()
    assert "smaller.plan" in found, r.explain()
    plan = found["smaller.plan"]
    assert plan["level"] == "warn", r.explain()
    assert "smaller" in plan["message"].lower() and "file" in plan["message"].lower(), plan
    assert not [f for f in found.values() if f["level"] == "stop"], r.explain()
    assert r.returncode == 0, r.explain()

    # Per partition: the ESP kept and copied block for block, the two filesystems made again
    # smaller, each at least as large as what it holds.
    detail = plan["detail"]
    kept = {int(m.group(1)): m for m in KEPT_LINE.finditer(detail)}
    assert set(kept) == {1}, detail
    assert (kept[1].group(2), kept[1].group(3)) == ("vfat", "EFI"), detail
    data = {int(m.group(1)): m for m in DATA_LINE.finditer(detail)}
    assert set(data) == {2, 3}, detail
    for n, m in data.items():
        assert (m.group(2), m.group(3)) == (sf.FS_TYPES[n], sf.LABELS[n]), m.group(0)
        used, before, after = (size_of(m.group(i)) for i in (4, 5, 6))
        assert used <= after < before, m.group(0)
    assert size_of(data[2].group(5)) == sf.ROOT_MIB * MiB, data[2].group(0)
    # all of it on the target: the ESP and the two new sizes (shown rounded to 0.1 MiB)
    total = sf.ESP_MIB * MiB + size_of(data[2].group(6)) + size_of(data[3].group(6))
    assert total <= sf.TARGET_MIB * MiB, detail


def test_preflight_stops_when_the_data_does_not_fit(image: Path, work: Path) -> None:
    target = sf.pattern_file(work / "preflight-200.raw", sf.TOO_SMALL_MIB)
    r = run_cli("preflight", image, target, "--json")
    assert r.hash_after == r.hash_before, "the pre-flight wrote to the target"
    assert r.returncode == 3, r.explain()
    found = r.findings()
    assert "smaller.fit" in found, r.explain()
    fit = found["smaller.fit"]
    assert fit["level"] == "stop", fit
    assert re.search(r"\d+(\.\d+)? MiB", fit["message"]), fit  # the shortfall, named


# --------------------------------------------------------------------------- refusal


def test_restore_that_does_not_fit_is_refused_and_writes_nothing(image: Path, work: Path) -> None:
    target = sf.pattern_file(work / "target-200.raw", sf.TOO_SMALL_MIB)
    r = run_cli("restore", image, target, *RESTORE)
    assert r.hash_after == r.hash_before, f"the refused restore wrote to the target\n{r.explain()}"
    assert r.returncode != 0, r.explain()
    report = r.json
    assert report["outcome"] == "refused", r.explain()
    found = r.findings()
    assert "smaller.fit" in found, r.explain()
    assert found["smaller.fit"]["level"] == "stop", r.explain()
    assert re.search(r"\d+(\.\d+)? MiB", found["smaller.fit"]["message"]), r.explain()


# --------------------------------------------------------------------------- the restore


def test_restore_onto_a_smaller_disk_succeeds(restored: Run) -> None:
    report = succeeded(restored)
    found = restored.findings()
    assert found["smaller.plan"]["level"] == "warn", restored.explain()
    acknowledged = {a["code"] for a in report["acknowledgements"]}
    assert "smaller.plan" in acknowledged, report["acknowledgements"]
    smaller = report["details"].get("smaller")
    assert isinstance(smaller, dict), report["details"]
    planned = {p["number"]: p for p in smaller["partitions"]}
    assert planned[1]["how"] == "block" and planned[1]["new_bytes"] == planned[1]["old_bytes"]
    for n in (2, 3):
        p = planned[n]
        assert (p["how"], p["fs_type"], p["label"]) == ("files", sf.FS_TYPES[n], sf.LABELS[n])
        assert p["used_bytes"] < p["new_bytes"] < p["old_bytes"], p
    # the GPT read back has the planned sizes, in bytes
    sizes = {i + 1: q["size"] * 512 for i, q in enumerate(sf.gpt(restored.target)["partitions"])}
    assert sizes == {n: p["new_bytes"] for n, p in planned.items()}, (sizes, planned)
    done = {r["partition"]: r for r in smaller["results"]}
    assert done[1]["read_back"] is True, done[1]
    for n in (2, 3):
        assert done[n]["fsck"].endswith("clean"), done[n]
        assert done[n]["tree"]["entries"] > 1700, done[n]
    # the text report next to the image shows the same
    texts = [f for f in report["report_files"] if f.endswith(".txt")]
    assert texts, report["report_files"]
    text = Path(texts[-1]).read_text()
    assert "Onto a smaller target (files copied):" in text, text
    assert "e2fsck -f -n: clean" in text and "xfs_repair -n: clean" in text, text
    print(f"restore took {restored.seconds:.1f} s; details.smaller = {smaller}")


def test_partition_table_keeps_its_identities(src: sf.Source, restored: Run) -> None:
    succeeded(restored)
    old, new = sf.gpt(src.disk), sf.gpt(restored.target)
    assert new["label"] == "gpt"
    assert new["id"] == old["id"], "the disk GUID changed"
    assert int(new["lastlba"]) < sf.TARGET_MIB * 2048, new  # the table fits the target
    keys = ("type", "uuid", "name")
    assert [{k: p.get(k) for k in keys} for p in new["partitions"]] == [
        {k: p.get(k) for k in keys} for p in old["partitions"]
    ]
    esp_old, esp_new = old["partitions"][0], new["partitions"][0]
    assert esp_new["size"] == esp_old["size"], "the ESP's size changed"
    for p_old, p_new in zip(old["partitions"][1:], new["partitions"][1:], strict=True):
        assert p_new["size"] < p_old["size"], (p_old, p_new)
    ends = [(p["start"], p["start"] + p["size"]) for p in new["partitions"]]
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(ends)), ends
    assert ends[-1][1] - 1 <= int(new["lastlba"]), (ends, new["lastlba"])
    verify = subprocess.run(["sfdisk", "--verify", str(restored.target)],
                            capture_output=True, text=True)  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_esp_is_copied_bit_for_bit(src: sf.Source, restored: Run) -> None:
    succeeded(restored)
    old = sf.gpt(src.disk)["partitions"][0]
    new = sf.gpt(restored.target)["partitions"][0]
    assert new["size"] == old["size"]
    # Bit for bit where the filesystem is: boot sector, reserved sectors, FATs and every
    # used cluster. Its free clusters hold the source's old data (a deleted file) and are
    # not compared: the restore copies used blocks (it leaves zeros there today).
    diff = sf.fat32_differences(src.disk, old["start"] * 512, restored.target, new["start"] * 512)
    print(f"ESP: {diff}")
    assert diff["metadata sectors"] == 0 and diff["used clusters"] == 0, diff


def test_filesystems_keep_type_uuid_label_and_check_clean(src: sf.Source, restored: Run) -> None:
    succeeded(restored)
    with sf.partitions(restored.target, read_only=True) as parts:
        for n in (1, 2, 3):
            ids = sf.blkid(parts[n])
            want = src.facts["filesystems"][str(n)]
            for key in ("TYPE", "UUID", "LABEL"):
                assert ids.get(key) == want[key], f"partition {n} {key}: {ids} vs {want}"
        checks = {1: ["fsck.vfat", "-n"], 2: ["e2fsck", "-f", "-n"], 3: ["xfs_repair", "-n"]}
        for n, cmd in checks.items():
            sf.run([*cmd, parts[n]])  # raises with the checker's output when not clean


@pytest.mark.parametrize("n", [2, 3], ids=["ext4-root", "xfs-data"])
def test_file_trees_equal_the_source(src: sf.Source, restored: Run, mounts: Path, n: int) -> None:
    succeeded(restored)
    tree_src, tree_dst = trees(src, restored.target, mounts, n)
    assert len(tree_src.entries) > 1700, sf.summary(tree_src)  # the fixture is what it says
    diff = sf.differences(tree_src, tree_dst)
    assert diff == [], f"partition {n}:\n" + "\n".join(diff)


@pytest.mark.parametrize("n", [2, 3], ids=["ext4-root", "xfs-data"])
def test_sparse_file_stays_sparse(restored: Run, mounts: Path, n: int) -> None:
    # Beyond the written contract: a copy that fills holes would not fit servers' disks
    # full of sparse VM images and databases.
    succeeded(restored)
    with sf.partitions(restored.target, read_only=True) as parts:
        with sf.mounted(parts[n], mounts / f"sparse-{n}") as top:
            st = (top / "sparse/sparse-20M.img").stat()
    assert st.st_size == 20 * MiB
    assert st.st_blocks * 512 < 1 * MiB, f"{st.st_blocks * 512} bytes allocated"


# --------------------------------------------------------------------------- one partition


PART_TABLE = "label: gpt\nstart=2048, size={mib}MiB, type=linux\n"


def restore_partition(image: Path, work: Path, name: str, mib: int) -> tuple[Run, str]:
    """Image partition 2 (ext4 "root", 480 MiB) restored onto an existing partition of
    ``mib`` MiB (the first of a disk file filled with old data); (the run, the command's
    stdout)."""
    target = sf.pattern_file(work / name, mib + 2)
    sf.run(["sfdisk", "--quiet", target], input=PART_TABLE.format(mib=mib))
    before = sf.sha256_file(target)
    started = time.monotonic()
    with sf.partitions(target) as parts:
        proc = rescueui("restore", image, parts[1], "--partition", "2", *RESTORE, check=False)
        settle()
    return Run(target, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started,
               before, sf.sha256_file(target)), proc.stdout  # fmt: skip


def test_one_partition_onto_a_smaller_partition(
    src: sf.Source, image: Path, work: Path, mounts: Path
) -> None:
    r, _ = restore_partition(image, work, "part-300.raw", 300)
    report = succeeded(r)
    assert r.findings()["smaller.plan"]["level"] == "warn", r.explain()
    assert report["details"]["smaller"]["partition"] == 2
    with sf.partitions(src.disk, read_only=True) as a, sf.partitions(r.target, read_only=True) as b:
        ids = sf.blkid(b[1])
        want = src.facts["filesystems"]["2"]
        assert [ids.get(k) for k in ("TYPE", "UUID", "LABEL")] == [
            want[k] for k in ("TYPE", "UUID", "LABEL")
        ], ids
        sf.run(["e2fsck", "-f", "-n", b[1]])
        with sf.mounted(a[2], mounts / "p-src") as top:
            tree_src = sf.snapshot(top)
        with sf.mounted(b[1], mounts / "p-dst") as top:
            tree_dst = sf.snapshot(top)
    assert sf.differences(tree_src, tree_dst) == []


def test_one_partition_onto_a_too_small_partition_is_refused(image: Path, work: Path) -> None:
    r, _ = restore_partition(image, work, "part-100.raw", 100)
    assert r.returncode != 0, r.explain()
    assert r.hash_after == r.hash_before, "the refused restore wrote to the target"
    assert r.json["outcome"] == "refused", r.explain()
    assert "does not fit" in r.json["error"], r.explain()


# --------------------------------------------------------------------------- the helpers


def test_tree_comparison_finds_what_a_changed_copy_changed(
    src: sf.Source, work: Path, mounts: Path
) -> None:
    """The comparison used above: equal for the source and itself, and it names every kind
    of change made to a copy of the source disk."""
    copy = work / "changed.raw"
    subprocess.run(["cp", "--sparse=always", str(src.disk), str(copy)], check=True)
    copy.chmod(0o644)
    try:
        with sf.partitions(copy) as parts, sf.mounted(parts[2], mounts / "changed",
                                                      read_only=False) as top:  # fmt: skip
            f = top / "small/d00/f0003.txt"
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0x01  # one bit, same size
            f.write_bytes(bytes(data))
            (top / "meta/secret").chmod(0o640)
            subprocess.run(["chown", "4321", str(top / "meta/owned-by-1234")], check=True)
            (top / "own folder").touch()  # a new mtime (the folder's)
            os.removexattr(top / "meta/tagged", "user.rescueui.comment")
            os.removexattr(top / "meta/with-acl", "system.posix_acl_access")
            (top / "links/relative").unlink()
            os.symlink("../small/d00/f0002.txt", top / "links/relative")
            hard_b = top / "links/hard-b"
            content = hard_b.read_bytes()
            hard_b.unlink()
            hard_b.write_bytes(content)  # same content, no longer the same file
            (top / "special/fifo").unlink()
            (top / "special/fifo").write_text("")
            (top / "names with spaces/ünïcödé folder/ça va.txt").unlink()
            (top / "new file").write_text("only in the copy\n")
        same_a, same_b = trees(src, src.disk, mounts, 2)
        assert sf.differences(same_a, same_b) == []
        tree_src, tree_copy = trees(src, copy, mounts, 2)
    finally:
        copy.unlink()
    diff = "\n".join(sf.differences(tree_src, tree_copy, limit=100))
    for expected in (
        "'small/d00/f0003.txt': sha256",
        "'meta/secret': mode '0o600' in the source, '0o640'",
        "'meta/owned-by-1234': uid 1234 in the source, 4321",
        "'own folder': mtime_ns",
        "'meta/tagged': xattrs",
        "'meta/with-acl': xattrs",
        "'links/relative': target",
        "hard links ['links/hard-a', 'links/hard-b', 'small/d02/hard-c'] are not one file",
        "'special/fifo': kind 'fifo' in the source, 'file'",
        "'names with spaces/ünïcödé folder/ça va.txt': missing in the copy",
        "'new file': only in the copy",
    ):
        assert expected in diff, f"{expected!r} not found in:\n{diff}"


def test_target_hash_sees_one_written_byte(work: Path) -> None:
    """The "nothing written" check above: one byte written through the loop device, in the
    middle of the file, changes the hash taken after the device is detached."""
    target = sf.pattern_file(work / "one-byte.raw", 8)
    before = sf.sha256_file(target)
    with loop(target) as dev:
        with open(dev, "r+b") as f:
            f.seek(5 * MiB + 123)
            f.write(b"X")
    assert sf.sha256_file(target) != before
    target.unlink()


def test_esp_comparison_sees_changed_bytes(src: sf.Source, work: Path) -> None:
    """The ESP check above: a changed byte in the FATs and one in a used cluster (the root
    folder's) are found, the source's free clusters zeroed are told apart."""
    esp = sf.gpt(src.disk)["partitions"][0]
    copy = work / "esp.img"
    with open(src.disk, "rb") as fin:
        fin.seek(esp["start"] * 512)
        copy.write_bytes(fin.read(esp["size"] * 512))
    assert sf.fat32_differences(src.disk, esp["start"] * 512, copy, 0) == {
        "metadata sectors": 0,
        "used clusters": 0,
        "free clusters": 0,
    }
    boot = copy.read_bytes()[:512]
    reserved = int.from_bytes(boot[14:16], "little")
    meta = (reserved + boot[16] * int.from_bytes(boot[36:40], "little")) * 512
    root = int.from_bytes(boot[44:48], "little")  # the root folder's first cluster
    with open(copy, "r+b") as f:
        for off in (reserved * 512 + 4096, meta + (root - 2) * boot[13] * 512 + 100):
            f.seek(off)
            byte = f.read(1)
            f.seek(off)
            f.write(bytes([byte[0] ^ 0xFF]))
        f.seek(meta + 100_000 * boot[13] * 512)  # a free cluster (old data), zeroed
        f.write(bytes(boot[13] * 512))
    diff = sf.fat32_differences(src.disk, esp["start"] * 512, copy, 0)
    copy.unlink()
    assert diff == {"metadata sectors": 1, "used clusters": 1, "free clusters": 1}, diff


def test_fixture_is_what_the_tests_expect(src: sf.Source) -> None:
    facts = src.facts
    parts = facts["table"]["partitions"]
    assert [p["name"] for p in parts] == [sf.GPT_NAMES[n] for n in (1, 2, 3)]
    assert [p["size"] for p in parts[:2]] == [sf.ESP_MIB * 2048, sf.ROOT_MIB * 2048]
    for n in (1, 2, 3):
        fs = facts["filesystems"][str(n)]
        assert (fs["TYPE"], fs["LABEL"]) == (sf.FS_TYPES[n], sf.LABELS[n]), fs
    for n, size in ((2, sf.ROOT_MIB * MiB), (3, parts[2]["size"] * 512)):
        share = facts["used_bytes"][str(n)] / size
        assert 0.2 < share < 0.4, f"partition {n} is {share:.0%} used"
