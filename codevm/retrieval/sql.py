"""SQL pieces that the retrieval signals share."""

from __future__ import annotations

# Chunks by id: `FROM chunks c {BY_IDS}` with the ids as the list parameter $ids. An
# inlined IN list of literals took 2-4x as long (800 ids of django: 7.3 ms against 1.6).
BY_IDS = "SEMI JOIN (SELECT unnest($ids::BIGINT[]) AS id) wanted ON c.id = wanted.id"
INLINE_IDS = 200  # up to this many, an inlined list is faster on a big index (u-boot: 60 ids 2.9 ms, against 8.8)


def by_ids(ids: list[int]) -> tuple[str, dict[str, object] | None]:
    """What follows `FROM chunks c` to read the chunks of `ids`, and its parameters: the
    faster form for their number (an inlined list reads few ids through the index on
    chunks.id; a join scans the id column once, whatever their number)."""
    if len(ids) <= INLINE_IDS:
        return "WHERE c.id IN (" + ", ".join(str(int(i)) for i in ids) + ")", None
    return BY_IDS, {"ids": ids}


def chunk_filters(language: str | None, path_glob: str | None,
                  kind: str | None) -> tuple[str, dict[str, object]]:
    """A WHERE clause over `chunks c` for the search filters, and its parameters."""
    filters = ["TRUE"]
    params: dict[str, object] = {}
    if language:
        filters.append("c.language = $language")
        params["language"] = language
    if path_glob:
        filters.append("(c.path GLOB $glob OR c.path GLOB $glob_any)")
        params["glob"] = path_glob
        params["glob_any"] = "*/" + path_glob.lstrip("/") if not path_glob.startswith("*") else path_glob
    if kind:
        filters.append("c.kind = $kind")
        params["kind"] = kind
    return " AND ".join(filters), params
