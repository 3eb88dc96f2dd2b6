"""Exposed names and routes for the aggregated surface (pure: no I/O, no MCP types).

Listing and routing are derived from one table per kind (tools, prompts, resources), so what the
agent sees and what the proxy routes cannot drift apart. Inputs are the raw wire dicts each backend
sent; outputs are deep copies in which only ``name`` / ``uri`` / ``uriTemplate`` may differ.
Every result is independent of the iteration order of the ``per_backend`` mappings.
"""

from __future__ import annotations

import copy
import hashlib
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

SEPARATOR = "__"
URI_SEPARATOR = "+"
RESERVED_SCHEME = "fleet://"
COMPUTER_TOOL = "computer"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
ALIAS_PATTERN = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")

Modality = Literal["tool_use", "computer_use"]
Item = dict[str, Any]
RawItem = Mapping[str, Any]
PerBackend = Mapping[str, Sequence[RawItem]]

_MAX_NAME = 64
_HASH_LEN = 8
_MAX_ALIAS = 32
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_TEMPLATE_EXPRESSION = re.compile(r"\{([^{}]*)\}")
_TEMPLATE_OPERATORS = frozenset("+#./;?&=,!@|")


@dataclass(frozen=True, slots=True)
class Route:
    alias: str | None  # None for synthetic tools (answered by the proxy itself)
    original: str  # backend-side name / uri


@dataclass(frozen=True, slots=True)
class ToolCatalog:
    tools: tuple[Item, ...]  # exposed order: backends by alias, backend order, synthetic last
    routes: Mapping[str, Route]  # exposed name -> route, same order as ``tools``
    warnings: tuple[str, ...] = ()

    def route(self, exposed: str) -> Route | None:
        return self.routes.get(exposed)


@dataclass(frozen=True, slots=True)
class PromptCatalog:
    prompts: tuple[Item, ...]
    routes: Mapping[str, Route]
    warnings: tuple[str, ...] = ()

    def route(self, exposed: str) -> Route | None:
        return self.routes.get(exposed)


@dataclass(frozen=True, slots=True)
class ResourceCatalog:
    resources: tuple[Item, ...]
    templates: tuple[Item, ...]
    routes: Mapping[str, Route]  # exposed resource uri -> route (templates are not readable uris)
    warnings: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # every backend seen, sorted
    # Non-rewritten templates per backend, compiled once; rewritten ones are reached via the prefix.
    _matchers: tuple[tuple[str, tuple[re.Pattern[str], ...]], ...] = field(default=(), repr=False)
    _exposed: Mapping[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def route_uri(self, uri: str) -> tuple[str, str] | None:
        """``(alias, original_uri)`` for a uri the agent sent, or None if it cannot be placed."""
        route = self.routes.get(uri)
        if route is not None and route.alias is not None:
            return route.alias, route.original
        # Nothing we expose starts with ``{alias}+`` unless we put the prefix there (see _rewrite_uris),
        # so the prefix also routes instances of rewritten templates.
        alias, sep, rest = uri.partition(URI_SEPARATOR)
        if sep and alias in self.aliases:
            return alias, rest
        if _is_reserved_uri(uri):  # the proxy's own scheme; backends' fleet:// uris are always prefixed
            return None
        matches = {a for a, patterns in self._matchers if any(p.fullmatch(uri) for p in patterns)}
        if len(matches) == 1:
            return matches.pop(), uri
        if not matches and len(self.aliases) == 1:
            return self.aliases[0], uri
        return None

    def exposed_uri(self, alias: str, original_uri: str) -> str:
        """Inverse of :meth:`route_uri`, for relaying ``notifications/resources/updated``."""
        listed = self._exposed.get((alias, original_uri))
        if listed is not None:
            return listed
        if self.route_uri(original_uri) == (alias, original_uri):
            return original_uri
        return f"{alias}{URI_SEPARATOR}{original_uri}"  # always routes back via the prefix rule


def validate_alias(alias: str) -> str:
    if not isinstance(alias, str) or not ALIAS_PATTERN.match(alias):
        raise ValueError(
            f"invalid environment alias {alias!r}: it must start with a lowercase letter followed by "
            f"at most {_MAX_ALIAS - 1} of a-z, 0-9 or '-' (pattern {ALIAS_PATTERN.pattern})"
        )
    return alias


def alias_from(text: str) -> str:
    """A valid alias derived deterministically from any text: ``Fira_V2.beta`` -> ``fira-v2-beta``.

    Not injective (``a_b`` and ``a.b`` give the same alias): callers that need distinct aliases must
    check. Over-long results are shortened with a hash so long keys sharing a prefix stay distinct.
    """
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if not slug[:1].isalpha():
        slug = f"env-{slug}".rstrip("-")
    if len(slug) > _MAX_ALIAS:
        slug = f"{slug[: _MAX_ALIAS - _HASH_LEN - 1].rstrip('-')}-{_digest(text)}"
    return validate_alias(slug)


def build_tool_catalog(
    per_backend: PerBackend,
    synthetic: Sequence[RawItem] = (),
    modality: Modality | None = None,
) -> ToolCatalog:
    keep = _MODALITY_FILTERS.get(modality)
    if keep is None:
        raise ValueError(f"unknown modality {modality!r}; expected None, 'tool_use' or 'computer_use'")
    items, routes, warnings = _build_named(per_backend, synthetic, "tool", keep)
    return ToolCatalog(items, routes, warnings)


def build_prompt_catalog(per_backend: PerBackend) -> PromptCatalog:
    items, routes, warnings = _build_named(per_backend, (), "prompt", _always)
    return PromptCatalog(items, routes, warnings)


def build_resource_catalog(resources: PerBackend, templates: PerBackend | None = None) -> ResourceCatalog:
    templates = templates if templates is not None else {}
    aliases = tuple(sorted({validate_alias(a) for a in (*resources, *templates)}))
    warnings: list[str] = []
    res_items, res_routes = _rewrite_uris(resources, aliases, "uri", "resource", warnings)
    tpl_items, tpl_routes = _rewrite_uris(templates, aliases, "uriTemplate", "resource template", warnings)
    unprefixed: dict[str, list[re.Pattern[str]]] = {}
    for exposed_template, route in tpl_routes.items():
        if route.alias is not None and exposed_template == route.original:
            unprefixed.setdefault(route.alias, []).append(_template_regex(route.original))
    matchers = tuple((alias, tuple(patterns)) for alias, patterns in unprefixed.items())
    exposed = {(r.alias, r.original): uri for uri, r in res_routes.items() if r.alias is not None}
    return ResourceCatalog(
        resources=res_items,
        templates=tpl_items,
        routes=MappingProxyType(res_routes),
        warnings=tuple(warnings),
        aliases=aliases,
        _matchers=matchers,
        _exposed=MappingProxyType(exposed),
    )


# --- internals -------------------------------------------------------------------------------------


def _always(_name: str) -> bool:
    return True


_MODALITY_FILTERS: dict[Modality | None, Callable[[str], bool]] = {
    None: _always,
    "tool_use": lambda name: name != COMPUTER_TOOL,
    "computer_use": lambda name: name == COMPUTER_TOOL,
}


def _digest(*parts: str) -> str:
    # surrogatepass: JSON can carry lone surrogates, which must not crash hashing.
    data = "\0".join(parts).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()[:_HASH_LEN]


def _copy_with(item: RawItem, key: str, value: str) -> Item:
    # Deep copy so callers may mutate what they list without corrupting a backend's cached list;
    # assigning an existing key keeps its position, so the copy serialises like the original.
    out = copy.deepcopy(dict(item))
    out[key] = value
    return out


def _dedupe(
    alias: str,
    items: Sequence[RawItem],
    key: str,
    kind: str,
    keep: Callable[[str], bool],
    warnings: list[str],
) -> list[tuple[str, RawItem]]:
    """Filtered items of one backend with their key; later duplicates are dropped and reported."""
    seen: set[str] = set()
    kept: list[tuple[str, RawItem]] = []
    for index, item in enumerate(items):
        value = item.get(key)
        if not isinstance(value, str):
            warnings.append(f"backend {alias!r}: {kind} #{index} has no string {key!r}; dropped")
        elif not keep(value):
            continue
        elif value in seen:
            warnings.append(f"backend {alias!r}: duplicate {kind} {value!r} at #{index} dropped (kept the first)")
        else:
            seen.add(value)
            kept.append((value, item))
    return kept


def _renamed(alias: str, name: str, taken: set[str]) -> str:
    plain = f"{alias}{SEPARATOR}{name}"
    if NAME_PATTERN.match(plain) and plain not in taken:
        return plain
    # Sanitise + truncate, then a stable hash keeps the result unique and within 64 chars; the salt
    # only matters if the hashed form itself is taken (adversarial names).
    stem = _INVALID_NAME_CHARS.sub("_", plain)[: _MAX_NAME - _HASH_LEN - 1]
    salt = 0
    while True:
        candidate = f"{stem}_{_digest(alias, name, *([str(salt)] if salt else []))}"
        if candidate not in taken:
            return candidate
        salt += 1


def _build_named(
    per_backend: PerBackend, synthetic: Sequence[RawItem], kind: str, keep: Callable[[str], bool]
) -> tuple[tuple[Item, ...], Mapping[str, Route], tuple[str, ...]]:
    aliases = sorted(validate_alias(a) for a in per_backend)
    warnings: list[str] = []
    kept = {a: _dedupe(a, per_backend[a], "name", kind, keep, warnings) for a in aliases}
    reserved: list[str] = []
    for item in synthetic:
        name = item.get("name")
        if not isinstance(name, str) or name in reserved:
            raise ValueError(f"synthetic {kind} names must be distinct strings; got {name!r}")
        reserved.append(name)
    counts = Counter(name for a in aliases for name, _ in kept[a])
    # Unchanged names are claimed before any rename, so a rename never steals a backend's own name.
    taken = set(reserved) | {n for n, c in counts.items() if c == 1 and n not in reserved}
    items: list[Item] = []
    routes: dict[str, Route] = {}
    for alias in aliases:
        for name, item in kept[alias]:
            exposed = name if counts[name] == 1 and name not in reserved else _renamed(alias, name, taken)
            taken.add(exposed)
            routes[exposed] = Route(alias, name)
            items.append(_copy_with(item, "name", exposed))
    for item in synthetic:
        routes[item["name"]] = Route(None, item["name"])
        items.append(copy.deepcopy(dict(item)))
    return tuple(items), MappingProxyType(routes), tuple(warnings)


def _is_reserved_uri(uri: str) -> bool:
    return uri[: len(RESERVED_SCHEME)].lower() == RESERVED_SCHEME  # schemes are case-insensitive


def _rewrite_uris(
    per_backend: PerBackend, aliases: Sequence[str], key: str, kind: str, warnings: list[str]
) -> tuple[tuple[Item, ...], dict[str, Route]]:
    kept = {a: _dedupe(a, per_backend.get(a, ()), key, kind, _always, warnings) for a in aliases}
    counts = Counter(uri for a in aliases for uri, _ in kept[a])
    # A uri that already looks prefixed is prefixed again: then only rewritten uris start with
    # "{alias}+", and as aliases contain no "+" the exposed uris are unique and the prefix invertible.
    prefixes = tuple(f"{a}{URI_SEPARATOR}" for a in aliases)
    items: list[Item] = []
    routes: dict[str, Route] = {}
    for alias in aliases:
        for uri, item in kept[alias]:
            clash = counts[uri] > 1 or _is_reserved_uri(uri) or uri.startswith(prefixes)
            exposed = f"{alias}{URI_SEPARATOR}{uri}" if clash else uri
            routes[exposed] = Route(alias, uri)
            items.append(_copy_with(item, key, exposed))
    return tuple(items), routes


def _template_regex(template: str) -> re.Pattern[str]:
    """Simplified RFC 6570 matcher: ``{var}`` is one path segment, operator expressions match anything."""
    parts: list[str] = []
    pos = 0
    for match in _TEMPLATE_EXPRESSION.finditer(template):
        parts.append(re.escape(template[pos : match.start()]))
        parts.append(".*" if match.group(1)[:1] in _TEMPLATE_OPERATORS else "[^/]+")
        pos = match.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts), re.DOTALL)
