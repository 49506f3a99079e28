"""Names users and files control, made safe to show: control and format characters as escapes.

A layer, class or phase name can hold anything (``"\\x1b]0;PWNED\\x07"`` retitles a
terminal; a chart draws such characters as missing glyphs). :func:`printable` shows them
as ``\\x..``/``\\u..`` escapes; the CLI prints through it and charts draw through it.
"""

from __future__ import annotations

import unicodedata


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: object, keep_newlines: bool = True) -> str:
    r"""``text`` with control characters (C0, DEL, C1) and invisible format characters (bidi
    overrides, zero widths) as ``\x..``/``\u..`` escapes; newlines kept unless ``keep_newlines=False``.

    Example:
        >>> printable("a\x1b]0;PWNED\x07b")
        'a\\x1b]0;PWNED\\x07b'
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(
        ch if (ch == "\n" and keep_newlines) or unicodedata.category(ch) not in ("Cc", "Cf") else _escape(ch)
        for ch in s
    )
