"""Sizes the operator types: one reading for the CLI, the TUI and the kernel options."""

from __future__ import annotations

import pytest

from rescueui.core.units import GiB, MiB, parse_size


@pytest.mark.parametrize(
    ("text", "plain", "expected"),
    [
        ("4096", 1, 4096),
        ("4096", MiB, 4096 * MiB),  # memory: a plain number is MiB
        ("512B", MiB, 512),  # "B" alone is bytes whatever the plain unit
        ("4G", 1, 4 * GiB),
        ("4g", MiB, 4 * GiB),
        ("512MiB", 1, 512 * MiB),
        ("1GB", 1, GiB),  # binary, as disks are sized in this tool
        (" 2 T ", 1, 2 << 40),
        ("1_073_741_824", 1, GiB),
    ],
)
def test_sizes_are_read(text: str, plain: int, expected: int) -> None:
    assert parse_size(text, plain=plain) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "G",
        "4X",
        "4.5G",
        "-1",
        "1_",
        "_1",
        "\u00b2",
        "\u0663G",
        "4 G B",
        "0x10",
        "9" * 5000,
    ],
)
def test_what_is_not_a_size_is_none(text: str) -> None:
    assert parse_size(text) is None
