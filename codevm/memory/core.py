"""Core memory: a few labelled, size-capped blocks that are always in main context."""

from __future__ import annotations

from codevm.api import CORE_BLOCKS, CoreBlock
from codevm.db.store import Store
from codevm.errors import InvalidArgument


class CoreMemory:
    def __init__(self, store: Store):
        self.store = store

    def blocks(self) -> list[CoreBlock]:
        stored = dict(self.store.cursor().execute(
            "SELECT label, value FROM core_blocks").fetchall())
        return [CoreBlock(label, stored.get(label) or "", limit, description)
                for label, (limit, description) in CORE_BLOCKS.items()]

    def get(self, label: str) -> CoreBlock:
        for block in self.blocks():
            if block.label == label:
                return block
        raise InvalidArgument(f"unknown core memory block {label!r}; "
                              f"blocks are: {', '.join(CORE_BLOCKS)}")

    def update(self, label: str, text: str, mode: str = "replace", old: str | None = None) -> CoreBlock:
        """mode: replace (the whole block, or `old` by `text`) or append."""
        block = self.get(label)
        if mode == "append":
            value = f"{block.value}\n{text}".strip("\n") if block.value else text
        elif mode == "replace":
            if old:
                if old not in block.value:
                    raise InvalidArgument(f"the text to replace is not in the {label!r} block")
                value = block.value.replace(old, text, 1)
            else:
                value = text
        else:
            raise InvalidArgument(f"mode must be 'replace' or 'append', got {mode!r}")
        if len(value) > block.limit:
            raise InvalidArgument(
                f"the {label!r} block would hold {len(value)} characters, over its limit of "
                f"{block.limit}: shorten it, or move details to archival notes")
        with self.store.lock:
            self.store.cursor().execute(
                "INSERT OR REPLACE INTO core_blocks VALUES (?, ?, ?, current_localtimestamp())",
                [label, value, block.limit])
        block.value = value
        return block
