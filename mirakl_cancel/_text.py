"""Text from users and servers made safe to show: on a terminal, and in a spreadsheet.

Ids, messages and file cells are data, not instructions. Printed raw, an id holding
``ESC ] ... BEL`` can retitle or rewrite a terminal and hide a line of the output; opened
in a spreadsheet, a report cell starting with ``=`` runs as a formula. These two helpers
are the one home of those rules: use them wherever such data leaves the program.
"""

from __future__ import annotations

import re

__all__ = ["neutralise_cell", "printable"]

#: C0 and C1 control characters, DEL, lone surrogates, and the Unicode format
#: characters that reorder or hide text (bidi overrides and isolates, zero-width ones).
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
#: Cells a spreadsheet would take as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str, limit: int | None = 200) -> str:
    """`text` with every control or invisible character escaped (``\\x1b``, ``\\u202e``).

    Printable text, accents and non-Latin scripts included, is left as it is. Past
    `limit` characters the text is cut and the cut is said, so that one 100 KiB cell
    cannot flood a terminal; pass ``limit=None`` to keep it whole.
    """
    if limit is not None and len(text) > limit:
        suffix = f"... ({len(text)} characters, cut)"
        text = text[:limit]
    else:
        suffix = ""
    return _UNPRINTABLE.sub(_escape, text) + suffix


def neutralise_cell(value: str) -> str:
    """A CSV cell that a spreadsheet shows as text, never evaluates (OWASP's rule).

    A cell starting with ``= + - @``, a tab or a carriage return gets a leading ``'``,
    which spreadsheets hide and which tells them the cell is text. Applied to CSV
    reports only: JSON reports are for programs and keep every value exactly.
    """
    return "'" + value if value.startswith(_FORMULA_START) else value
