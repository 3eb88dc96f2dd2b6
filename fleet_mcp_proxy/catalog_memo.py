"""One copy of each distinct list and catalog in the process, shared by every episode that has it.

Hundreds of episodes of one environment hold the same tool, prompt and resource lists; each link parsing its
own and each episode building its own renamed copies cost about 27 KB per idle episode (tracemalloc, the
`memory` benchmark). Lists and catalogs are keyed by a digest of their canonical JSON and kept in bounded LRU
tables, so memory stays bounded however many distinct environments come and go.

What is shared is read-only by contract: handlers serialize catalog items and never change them, and a backend
whose lists change gets new objects (a new digest), never edits to the old ones.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .catalog import (
    Modality,
    PerBackend,
    PromptCatalog,
    RawItem,
    ResourceCatalog,
    ToolCatalog,
    build_prompt_catalog,
    build_resource_catalog,
    build_tool_catalog,
)

_T = TypeVar("_T")
_MAX_LISTS = 1024
_MAX_CATALOGS = 256


class _Lru:
    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get_or_make(self, key: str, make: Callable[[], _T]) -> _T:
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
            return found  # type: ignore[no-any-return]
        made = make()
        self._items[key] = made
        if len(self._items) > self._size:
            self._items.popitem(last=False)
        return made

    def __len__(self) -> int:
        return len(self._items)


_LISTS = _Lru(_MAX_LISTS)
_CATALOGS = _Lru(_MAX_CATALOGS)


def _digest(value: Any) -> str:
    # surrogatepass: JSON from a backend can carry lone surrogates.
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def shared_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`items`, or an equal list already held (which the caller must not change)."""
    return _LISTS.get_or_make(_digest(items), lambda: items)


def tool_catalog(
    per_backend: PerBackend, synthetic: Sequence[RawItem] = (), modality: Modality | None = None
) -> ToolCatalog:
    key = "tools:" + _digest([_sorted(per_backend), list(synthetic), modality])
    return _CATALOGS.get_or_make(key, lambda: build_tool_catalog(per_backend, synthetic, modality))


def prompt_catalog(per_backend: PerBackend) -> PromptCatalog:
    key = "prompts:" + _digest(_sorted(per_backend))
    return _CATALOGS.get_or_make(key, lambda: build_prompt_catalog(per_backend))


def resource_catalog(resources: PerBackend, templates: PerBackend) -> ResourceCatalog:
    key = "resources:" + _digest([_sorted(resources), _sorted(templates)])
    return _CATALOGS.get_or_make(key, lambda: build_resource_catalog(resources, templates))


def _sorted(per_backend: Mapping[str, Sequence[RawItem]]) -> list[Any]:
    # Catalogs do not depend on the mapping's order (catalog.py), so neither may their key.
    return [[alias, list(per_backend[alias])] for alias in sorted(per_backend)]
