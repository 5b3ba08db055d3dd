"""Untrusted XML (bmap files, VM configurations): one hardened parser setup.

``expat`` with every document type declaration, entity declaration, external reference and
skipped entity refused (no entity expansion, no "billion laughs", nothing fetched), so a
hostile file can neither make the parse grow nor reach outside the bytes given. The caller
bounds the input size and its own element and text counts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.parsers import expat


def parse_untrusted_xml(
    data: bytes,
    *,
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None],
    chars: Callable[[str], None],
    refuse: Callable[[str], BaseException],
    what: str,
) -> None:
    """Feed ``data`` to the handlers; ``refuse(reason)`` builds the exception raised for a
    DTD, an entity or malformed XML (``what`` names the kind of file, e.g. "a bmap")."""

    def refuse_dtd(*_: Any) -> None:
        raise refuse(f"it holds a document type declaration (DTD); {what} has none")

    def refuse_entity(*_: Any) -> None:
        raise refuse(f"it declares or uses XML entities; {what} has none")

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse_dtd
    parser.EntityDeclHandler = refuse_entity
    parser.UnparsedEntityDeclHandler = refuse_entity
    parser.ExternalEntityRefHandler = refuse_entity
    parser.SkippedEntityHandler = refuse_entity
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise refuse(
            f"it is not well-formed XML ({expat.ErrorString(exc.code)}, line {exc.lineno})"
        ) from None
