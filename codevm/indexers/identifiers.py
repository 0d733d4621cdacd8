"""Code-aware terms: identifiers kept whole and split into camelCase/snake_case/digit parts.

The same functions turn chunk text into index terms and a query into query terms, so both
sides always agree. A leaf module (it imports nothing of codevm): the parsing workers make
each chunk's index text with it, and the database makes it again when it rebuilds the
lexical index.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# a letter or underscore, then letters, digits, underscores: in any script (`données_brutes`,
# `数据处理`, `Ñandú`), as Python, JS, Java, Go and Rust allow
IDENTIFIER_PATTERN = r"[^\W\d]\w*"
# not from inside a word: the `xFF` of 0xFF, the `U` of 10U, the `e5` of 1e5 are not names
# (in C, one name in ten was the tail of a number literal: 15k junk terms in 1,500 files)
_UNICODE_IDENTIFIER = re.compile(rf"(?<!\w){IDENTIFIER_PATTERN}")
# the same on ASCII text, twice as fast; a word boundary where the Unicode pattern looks
# behind: 36% faster than that lookbehind (9 runs over 24 MB of u-boot: 0.51 against 0.80 s)
_ASCII_IDENTIFIER = re.compile(r"\b[A-Za-z_]\w*", re.ASCII)


class _Identifiers:
    """IDENTIFIER.findall / finditer: the Unicode pattern, or its ASCII twin on ASCII text
    (most code; str.isascii costs a pass in C)."""

    def findall(self, text: str) -> list[str]:
        return (_ASCII_IDENTIFIER if text.isascii() else _UNICODE_IDENTIFIER).findall(text)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        return (_ASCII_IDENTIFIER if text.isascii() else _UNICODE_IDENTIFIER).finditer(text)


IDENTIFIER = _Identifiers()
_PARTS = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")

# Words too common in code or prose to tell chunks apart; dropping them keeps postings small.
STOPWORDS = frozenset(
    """a an and are as at be been but by can could did do does for from had has have he
    her his i if in into is it its me my no not of on or our she so such than that the
    their them then there these they this those to was we were what when where which who
    will with would you your self def return end var let const""".split()
)

_cache: dict[str, tuple[str, ...]] = {}  # expand_identifier's memo
_joined: dict[str, str] = {}  # terms_text's: each identifier's terms, joined by spaces
_MEMO_SIZE = 500_000
_MEMO_LENGTH = 200  # a longer name (a huge query word) is not kept

# Weights of a chunk's fields in its term frequencies (a cheap BM25F).
NAME_WEIGHT = 4
PATH_WEIGHT = 2
DOC_WEIGHT = 1  # on top of the docstring's occurrence in the body


def stem(word: str) -> str:
    # A light plural stemmer: "hooks" and "hook" must meet; no more than that.
    if len(word) > 3 and word[-1] == "s" and word[-2] not in "sui":
        if word.endswith("ies") and len(word) > 4:
            return word[:-3] + "y"
        return word[:-1]
    return word


def unicode_parts(ident: str) -> list[str]:
    """The camelCase/snake_case/digit parts of an identifier in any script (what _PARTS
    finds in an ASCII one): `donnéesBrutes2` -> données, Brutes, 2; a run of letters without
    case (CJK) stays whole."""
    parts: list[str] = []
    for piece in ident.split("_"):
        start = 0
        for i in range(1, len(piece)):
            prev, ch = piece[i - 1], piece[i]
            after = piece[i + 1] if i + 1 < len(piece) else ""
            if (ch.isdigit() != prev.isdigit() or (ch.isupper() and prev.islower())
                    or (ch.isupper() and prev.isupper() and after.islower())):
                parts.append(piece[start:i])
                start = i
        if piece[start:]:
            parts.append(piece[start:])
    return parts


def expand_identifier(ident: str) -> tuple[str, ...]:
    """Terms for one identifier (split_identifier), memoized: for queries and name lookups."""
    cached = _cache.get(ident)
    if cached is not None:
        return cached
    result = split_identifier(ident)
    if len(_cache) < _MEMO_SIZE and len(ident) <= _MEMO_LENGTH:
        _cache[ident] = result
    return result


def split_identifier(ident: str) -> tuple[str, ...]:
    """An identifier's terms, unmemoized: the whole name lowercased, then its camelCase,
    snake_case and digit parts (`parseHTTPHeader` -> parsehttpheader, parse, http, header),
    lightly stemmed, without stopwords or one-letter parts."""
    whole = ident.lower()
    terms: list[str] = []
    if len(whole) > 1 and whole not in STOPWORDS:
        terms.append(whole)
    if "_" in ident or not (ident.islower() or ident.isupper()) or any(c.isdigit() for c in ident):
        for part in _PARTS.findall(ident) if ident.isascii() else unicode_parts(ident):
            p = stem(part.lower())
            if len(p) > 1 and p != whole and p not in STOPWORDS and p not in terms:
                terms.append(p)
    elif terms:
        stemmed = stem(whole)
        if stemmed != whole:
            terms.append(stemmed)
    return tuple(terms)


def terms_text(idents: list[str], memo: dict[str, str] | None = None) -> str:
    """The terms of each identifier occurrence in `idents`, in order, separated by spaces
    (a term as often as it occurs). Joined in C from `memo` (by default the process's) of
    each identifier's terms."""
    memo = _joined if memo is None else memo
    missing = set(idents).difference(memo)
    if missing:
        if max(map(len, missing)) > _MEMO_LENGTH:  # a huge name is not kept: a memo for this call
            kept = memo
            memo = {ident: kept.get(ident) or " ".join(split_identifier(ident)) for ident in set(idents)}
        else:
            if len(memo) + len(missing) > _MEMO_SIZE:
                memo.clear()  # more distinct names than it holds (u-boot has 906k): start again
                missing = set(idents)
            for ident in missing:
                memo[ident] = " ".join(split_identifier(ident))
    return " ".join(filter(None, map(memo.__getitem__, idents)))


def index_text(path: str, text: str, names: str, docstring: str, memo: dict[str, str] | None = None) -> str:
    """A chunk's index terms as the lexical index takes them, each as often as its weighted
    count, separated by spaces: the terms of every identifier in the chunk's `text`, of
    the `names` it defines (or its qualified name) NAME_WEIGHT times, of its docstring
    DOC_WEIGHT times more, of its path PATH_WEIGHT times. Made by the parsing workers, and
    again from the database when the lexical index is rebuilt (with a `memo` of its own,
    dropped when it is done, not the process's)."""
    idents = IDENTIFIER.findall(text)
    for words, weight in ((names, NAME_WEIGHT), (docstring, DOC_WEIGHT),
                          (path.rsplit(".", 1)[0].replace("/", " "), PATH_WEIGHT)):
        if words:
            idents += IDENTIFIER.findall(words) * weight
    return terms_text(idents, memo)
