"""What makes two usernames the same name: no Django here.

Django authenticates the NFKC-normalized username, so `"bob "` (stripped by the form) and
`"ｂｏｂ"` (full-width) both sign in as bob. Rate limits and uniqueness must therefore key on the
normalized form too, and go one step further: a username that merely *looks* like another one
(`аlice` with a Cyrillic а) is refused at sign-up, because people would be rung by an impostor.
The skeleton follows Unicode UTS #39: each character that is confusable with a Latin one is
replaced by it, using the confusables data that confusable-homoglyphs ships.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from confusable_homoglyphs import confusables


def username_key(name: str) -> str:
    """The form a username is compared in: stripped, NFKC-normalized, case-folded."""
    return unicodedata.normalize("NFKC", name.strip()).casefold()


# ASCII look-alikes that UTS #39 folds together, after case-folding: 1 and l, 0 and o, rn and m.
_ASCII_FOLDS = {"1": "l", "|": "l", "0": "o"}


@lru_cache(maxsize=4096)
def _ascii_lookalike(ch: str) -> str:
    if ch.isascii():
        return _ASCII_FOLDS.get(ch, ch)
    # Any script, Latin included (dotless ı looks like i): the first ASCII homoglyph.
    found = confusables.is_confusable(ch, preferred_aliases=[], greedy=True) or []
    for info in found:
        for glyph in info.get("homoglyphs", []):
            if glyph["c"].isascii():
                return _ASCII_FOLDS.get(glyph["c"].casefold(), glyph["c"].casefold())
    return ch


def username_skeleton(name: str) -> str:
    """Two usernames with the same skeleton look alike: `alice`, `Alice `, `ａｌｉｃｅ`, `аlice`
    (Cyrillic а), `alıce` (dotless ı) and `a1ice` all have the skeleton `alice`."""
    key = unicodedata.normalize("NFD", username_key(name))
    mapped = "".join(_ascii_lookalike(ch) for ch in key if not unicodedata.combining(ch))
    return unicodedata.normalize("NFKC", mapped).casefold().replace("rn", "m")
