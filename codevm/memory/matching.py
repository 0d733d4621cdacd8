"""Text matching shared by the notes and the recall storage: a query's code-aware terms,
each counted once per record that contains it."""

from __future__ import annotations

from datetime import datetime

from codevm.errors import InvalidArgument
from codevm.indexers.identifiers import IDENTIFIER, expand_identifier


def iso(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def text_terms(query: str) -> list[str]:
    """Lowercase terms of a query, as the code index splits identifiers."""
    terms: list[str] = []
    for ident in IDENTIFIER.findall(query):
        for term in expand_identifier(ident):
            if term not in terms:
                terms.append(term)
    return terms[:32]


def match_sql(column: str, terms: list[str]) -> str:
    # contains(), not LIKE: '_' is a wildcard there and identifiers are full of them
    return " + ".join(f"contains(lower({column}), $t{i})::INTEGER" for i in range(len(terms))) or "0"


def match_params(query: str) -> tuple[list[str], dict[str, object]]:
    if not query or not query.strip():
        raise InvalidArgument("the search query is empty")
    terms = text_terms(query)
    return terms, {f"t{i}": t for i, t in enumerate(terms)}
