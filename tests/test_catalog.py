"""Tests for fleet_mcp_proxy.catalog: exposed names, routes and their invariants."""

from __future__ import annotations

import copy
import hashlib
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_mcp_proxy.catalog import (
    NAME_PATTERN,
    SEPARATOR,
    Modality,
    Route,
    alias_from,
    build_prompt_catalog,
    build_resource_catalog,
    build_tool_catalog,
    validate_alias,
)

# ~150 examples per property keeps the whole file well under 10 s on a loaded 2-core runner.
PROPERTY = settings(max_examples=150, deadline=None)
SYNTHETIC_NAMES = ("submit_final_answer", "view_tool_output")
ALIASES = ("a", "b", "c", "files", "tracker")


def tool(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "inputSchema": {"type": "object", "properties": {}}, **extra}


def synthetic(*names: str) -> list[dict[str, Any]]:
    return [tool(n, description=f"proxy-provided {n}") for n in names]


def names(items: Sequence[Mapping[str, Any]], key: str = "name") -> list[str]:
    return [item[key] for item in items]


def hashed_form(alias: str, name: str) -> str:
    """The documented fallback form, computed independently of the module."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", f"{alias}{SEPARATOR}{name}")[:55]
    digest = hashlib.sha256(f"{alias}\0{name}".encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{stem}_{digest}"


def without(item: Mapping[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in item.items() if k != key}


# --- strategies --------------------------------------------------------------------------------------

BASE_NAMES = ("echo", "search", "computer", "x", "x.y", "a__x", "__", "a__", "naïve-🚀", "do it!", "x" * 128)


# Names that equal other backends' renamed forms, plain and hashed; built once to keep examples cheap.
FORGED_NAMES = tuple(f"{a}{SEPARATOR}{n}" for a in ALIASES for n in BASE_NAMES[:5]) + tuple(
    hashed_form(a, n) for a in ALIASES for n in ("x.y", "x" * 128, "naïve-🚀")
)
STATIC_POOL = (*BASE_NAMES, *FORGED_NAMES, *SYNTHETIC_NAMES)


def name_pools() -> st.SearchStrategy[list[str]]:
    return st.lists(st.text(max_size=12), max_size=2).map(lambda extra: [*STATIC_POOL, *extra])


# Prebuilt payloads: recursive JSON strategies made the suite several times slower for no extra coverage.
JSON_SAMPLES: tuple[Any, ...] = (
    None,
    {},
    [],
    {"type": "object", "properties": {"q": {"type": "string"}}},
    {"é": ["🚀", 1.5, True]},
)


@st.composite
def tool_worlds(
    draw: st.DrawFn,
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]], Modality | None]:
    pool = draw(name_pools())
    aliases = draw(st.lists(st.sampled_from(ALIASES), unique=True, max_size=len(ALIASES)))
    per_backend: dict[str, list[dict[str, Any]]] = {}
    for alias in aliases:
        tool_names = draw(st.lists(st.sampled_from(pool), max_size=8))  # may be empty
        per_backend[alias] = [
            {"name": name, "_meta": {"i": i}, "inputSchema": JSON_SAMPLES[i % len(JSON_SAMPLES)]}
            for i, name in enumerate(tool_names)
        ]
    synth = synthetic(*draw(st.lists(st.sampled_from(pool), unique=True, max_size=3)))
    modality: Modality | None = draw(st.sampled_from([None, "tool_use", "computer_use"]))
    return per_backend, synth, modality


def keeps(modality: Modality | None, name: str) -> bool:
    return {None: True, "tool_use": name != "computer", "computer_use": name == "computer"}[modality]


def kept_tools(
    per_backend: Mapping[str, Sequence[Mapping[str, Any]]], modality: Modality | None = None
) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(alias, name) -> first tool of that name in the backend, after the modality filter."""
    kept: dict[tuple[str, str], Mapping[str, Any]] = {}
    for alias, items in per_backend.items():
        for item in items:
            if keeps(modality, item["name"]):
                kept.setdefault((alias, item["name"]), item)
    return kept


# --- tool properties ---------------------------------------------------------------------------------


@PROPERTY
@given(tool_worlds())
def test_exposed_tool_names_are_unique_and_listing_matches_routing(world: Any) -> None:
    per_backend, synth, modality = world
    catalog = build_tool_catalog(per_backend, synth, modality)
    exposed = names(catalog.tools)
    assert len(exposed) == len(set(exposed))
    assert exposed == list(catalog.routes)


@PROPERTY
@given(tool_worlds())
def test_every_renamed_tool_name_is_valid_and_only_clashing_tools_are_renamed(world: Any) -> None:
    per_backend, synth, modality = world
    catalog = build_tool_catalog(per_backend, synth, modality)
    counts = Counter(name for _, name in kept_tools(per_backend, modality))
    for exposed, route in catalog.routes.items():
        if route.alias is None:
            continue
        clashes = counts[route.original] > 1 or route.original in names(synth)
        assert (exposed != route.original) == clashes
        if clashes:
            assert NAME_PATTERN.match(exposed), exposed
            assert exposed.startswith(f"{route.alias}{SEPARATOR}")


@PROPERTY
@given(tool_worlds(), st.randoms(use_true_random=False))
def test_tool_catalog_does_not_depend_on_backend_iteration_order(world: Any, rnd: Any) -> None:
    per_backend, synth, modality = world
    shuffled_items = list(per_backend.items())
    rnd.shuffle(shuffled_items)
    one = build_tool_catalog(per_backend, synth, modality)
    two = build_tool_catalog(dict(shuffled_items), synth, modality)
    assert one.tools == two.tools
    assert list(one.routes.items()) == list(two.routes.items())
    assert one.warnings == two.warnings


@PROPERTY
@given(tool_worlds())
def test_every_kept_tool_is_reachable_by_exactly_one_exposed_name(world: Any) -> None:
    per_backend, synth, modality = world
    catalog = build_tool_catalog(per_backend, synth, modality)
    kept = kept_tools(per_backend, modality)
    backend_routes = [(r.alias, r.original) for r in catalog.routes.values() if r.alias is not None]
    assert sorted(backend_routes) == sorted(kept)  # same set, no tool twice
    for item in catalog.tools:
        route = catalog.route(item["name"])
        assert route is not None
        if route.alias is None:
            assert route == Route(None, item["name"])
            assert item == next(s for s in synth if s["name"] == item["name"])
    assert names(catalog.tools)[len(backend_routes) :] == names(synth)  # synthetic always shown, last


@PROPERTY
@given(tool_worlds())
def test_inputs_are_not_mutated_and_other_keys_survive_exactly(world: Any) -> None:
    per_backend, synth, modality = world
    before = copy.deepcopy((per_backend, synth))
    catalog = build_tool_catalog(per_backend, synth, modality)
    assert (per_backend, synth) == before
    kept = kept_tools(per_backend, modality)
    for item in catalog.tools:
        route = catalog.routes[item["name"]]
        if route.alias is not None:
            original = kept[(route.alias, route.original)]
            assert without(item, "name") == without(original, "name")
            assert list(item) == list(original)  # key order too, so it serialises identically


@settings(max_examples=100, deadline=None)
@given(tool_worlds(), st.randoms(use_true_random=False))
def test_prompt_catalog_is_unique_order_independent_and_routes_exactly(world: Any, rnd: Any) -> None:
    per_backend, _, _ = world
    catalog = build_prompt_catalog(per_backend)
    shuffled = list(per_backend.items())
    rnd.shuffle(shuffled)
    assert build_prompt_catalog(dict(shuffled)) == catalog
    exposed = names(catalog.prompts)
    assert len(exposed) == len(set(exposed)) and exposed == list(catalog.routes)
    assert sorted((r.alias, r.original) for r in catalog.routes.values()) == sorted(kept_tools(per_backend))


# --- tool examples -----------------------------------------------------------------------------------


def test_unique_tool_names_pass_unchanged_even_when_not_matching_the_name_pattern() -> None:
    catalog = build_tool_catalog({"a": [tool("weird name.v2")], "b": [tool("x" * 100)]})
    assert names(catalog.tools) == ["weird name.v2", "x" * 100]
    assert catalog.route("weird name.v2") == Route("a", "weird name.v2")


def test_every_tool_in_a_collision_is_prefixed_with_its_alias() -> None:
    catalog = build_tool_catalog({"tracker": [tool("search"), tool("echo")], "files": [tool("search")]})
    assert names(catalog.tools) == ["files__search", "tracker__search", "echo"]
    assert catalog.route("files__search") == Route("files", "search")
    assert catalog.route("tracker__search") == Route("tracker", "search")
    assert catalog.route("search") is None


def test_backend_tool_named_like_a_synthetic_tool_is_renamed_and_the_synthetic_keeps_its_name() -> None:
    catalog = build_tool_catalog({"a": [tool("submit_final_answer")]}, synthetic("submit_final_answer"))
    assert names(catalog.tools) == ["a__submit_final_answer", "submit_final_answer"]
    assert catalog.route("submit_final_answer") == Route(None, "submit_final_answer")
    assert catalog.route("a__submit_final_answer") == Route("a", "submit_final_answer")


def test_exposed_order_is_backends_by_alias_then_backend_order_then_synthetic() -> None:
    per_backend = {"zeta": [tool("z2"), tool("z1")], "alpha": [tool("a2"), tool("a1")]}
    catalog = build_tool_catalog(per_backend, synthetic("view_tool_output", "submit_final_answer"))
    assert names(catalog.tools) == ["a2", "a1", "z2", "z1", "view_tool_output", "submit_final_answer"]


def test_duplicate_tool_in_one_backend_keeps_the_first_and_warns() -> None:
    catalog = build_tool_catalog({"a": [tool("echo", description="first"), tool("echo", description="2nd")]})
    assert catalog.tools == (tool("echo", description="first"),)
    assert len(catalog.warnings) == 1
    assert "'a'" in catalog.warnings[0] and "'echo'" in catalog.warnings[0]


def test_tool_without_a_string_name_is_dropped_with_a_warning() -> None:
    catalog = build_tool_catalog({"a": [{"description": "nameless"}, {"name": 3}, tool("ok")]})
    assert names(catalog.tools) == ["ok"]
    assert len(catalog.warnings) == 2


def test_overlong_or_unicode_renamed_name_is_sanitised_truncated_and_hashed() -> None:
    long_name = "ü" + "x" * 127
    catalog = build_tool_catalog({"a": [tool(long_name), tool("do it!")], "b": [tool(long_name), tool("do it!")]})
    exposed = names(catalog.tools)
    assert exposed == [hashed_form("a", long_name), hashed_form("a", "do it!")] + [
        hashed_form("b", long_name),
        hashed_form("b", "do it!"),
    ]
    assert exposed[0] == "a___" + "x" * 51 + "_" + exposed[0][-8:]
    assert all(NAME_PATTERN.match(n) and len(n) <= 64 for n in exposed)


def test_rename_that_would_shadow_a_unique_backend_tool_gets_a_hash_suffix() -> None:
    catalog = build_tool_catalog({"a": [tool("x")], "b": [tool("x")], "c": [tool("a__x")]})
    assert names(catalog.tools) == [hashed_form("a", "x"), "b__x", "a__x"]
    assert catalog.route("a__x") == Route("c", "a__x")
    assert catalog.route(hashed_form("a", "x")) == Route("a", "x")


def test_plain_rename_equal_to_an_earlier_hashed_rename_is_hashed_as_well() -> None:
    forged = hashed_form("a", "x.y").removeprefix("a__")  # "x_y_<hash>": its rename is a's hashed x.y
    per_backend = {"a": [tool("x.y"), tool(forged)], "b": [tool("x.y"), tool(forged)]}
    catalog = build_tool_catalog(per_backend)
    exposed = names(catalog.tools)
    assert exposed[:2] == [hashed_form("a", "x.y"), hashed_form("a", forged)]
    assert len(set(exposed)) == 4
    assert catalog.route(exposed[1]) == Route("a", forged)


def test_tool_use_modality_hides_only_the_tool_named_computer() -> None:
    per_backend = {"a": [tool("computer"), tool("Computer"), tool("computer_2")], "b": [tool("computer")]}
    catalog = build_tool_catalog(per_backend, synthetic("submit_final_answer"), "tool_use")
    assert names(catalog.tools) == ["Computer", "computer_2", "submit_final_answer"]


def test_computer_use_modality_shows_only_computer_tools_and_all_synthetic_tools() -> None:
    per_backend = {"a": [tool("computer"), tool("echo")], "b": [tool("computer")], "c": [tool("echo")]}
    catalog = build_tool_catalog(per_backend, synthetic("submit_final_answer"), "computer_use")
    assert names(catalog.tools) == ["a__computer", "b__computer", "submit_final_answer"]
    unfiltered = build_tool_catalog(per_backend, synthetic("submit_final_answer"))
    assert len(unfiltered.tools) == 5


def test_unknown_modality_and_duplicate_synthetic_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="modality"):
        build_tool_catalog({}, (), "vision")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="synthetic"):
        build_tool_catalog({}, synthetic("x", "x"))


def test_invalid_alias_in_backends_is_rejected() -> None:
    with pytest.raises(ValueError, match="Tracker"):
        build_tool_catalog({"Tracker": [tool("x")]})


def test_catalog_items_are_copies_that_can_be_mutated_safely() -> None:
    original = tool("echo", _meta={"tags": ["x"]})
    catalog = build_tool_catalog({"a": [original]})
    catalog.tools[0]["_meta"]["tags"].append("y")
    assert original == tool("echo", _meta={"tags": ["x"]})
    assert catalog.tools[0] is not original


def test_building_a_hundred_tool_catalog_is_cheap() -> None:
    per_backend = {a: [tool(f"t{i}", description="d" * 200) for i in range(25)] for a in ALIASES[:4]}
    started = time.perf_counter()
    catalog = build_tool_catalog(per_backend, synthetic(*SYNTHETIC_NAMES))
    assert time.perf_counter() - started < 0.5
    assert len(catalog.tools) == 102


# --- prompts -----------------------------------------------------------------------------------------


def test_prompt_collisions_are_prefixed_and_unique_prompts_pass_unchanged() -> None:
    prompt = {"name": "summarise", "arguments": [{"name": "text", "required": True}]}
    catalog = build_prompt_catalog({"b": [prompt, {"name": "submit_final_answer"}], "a": [prompt]})
    assert names(catalog.prompts) == ["a__summarise", "b__summarise", "submit_final_answer"]
    assert catalog.route("b__summarise") == Route("b", "summarise")
    assert without(catalog.prompts[0], "name") == without(prompt, "name")


# --- resources ---------------------------------------------------------------------------------------


def resource(uri: str) -> dict[str, Any]:
    return {"uri": uri, "name": uri.rsplit("/", 1)[-1], "mimeType": "text/plain"}


def template(uri_template: str) -> dict[str, Any]:
    return {"uriTemplate": uri_template, "name": "t"}


def test_resource_uri_in_two_backends_is_prefixed_in_each_and_unique_uris_pass_unchanged() -> None:
    catalog = build_resource_catalog(
        {
            "tracker": [resource("file:///a.txt"), resource("file:///t.txt")],
            "files": [resource("file:///a.txt")],
        }
    )
    assert names(catalog.resources, "uri") == [
        "files+file:///a.txt",
        "tracker+file:///a.txt",
        "file:///t.txt",
    ]
    assert catalog.route_uri("tracker+file:///a.txt") == ("tracker", "file:///a.txt")
    assert catalog.route_uri("file:///t.txt") == ("tracker", "file:///t.txt")
    assert without(catalog.resources[1], "uri") == without(resource("file:///a.txt"), "uri")


def test_fleet_scheme_uris_are_always_prefixed_and_bare_ones_are_never_routed() -> None:
    catalog = build_resource_catalog({"a": [resource("fleet://state")]}, {"a": [template("FLEET://x/{id}")]})
    assert names(catalog.resources, "uri") == ["a+fleet://state"]
    assert names(catalog.templates, "uriTemplate") == ["a+FLEET://x/{id}"]
    assert catalog.route_uri("a+fleet://state") == ("a", "fleet://state")
    assert catalog.route_uri("fleet://state") is None  # the proxy's own scheme, despite a single backend


def test_uris_that_look_prefixed_by_a_known_alias_are_prefixed_again() -> None:
    catalog = build_resource_catalog({"git": [resource("file:///r")], "web": [resource("git+ssh://h/r")]})
    assert names(catalog.resources, "uri") == ["file:///r", "web+git+ssh://h/r"]
    assert catalog.route_uri("web+git+ssh://h/r") == ("web", "git+ssh://h/r")


def test_templates_collide_only_with_templates() -> None:
    catalog = build_resource_catalog(
        {"a": [resource("db://{table}")]},
        {"a": [template("file:///{path}")], "b": [template("file:///{path}"), template("db://{table}")]},
    )
    assert names(catalog.resources, "uri") == ["db://{table}"]
    assert names(catalog.templates, "uriTemplate") == ["a+file:///{path}", "b+file:///{path}", "db://{table}"]


def test_route_uri_strips_the_prefix_of_a_rewritten_template_instance() -> None:
    catalog = build_resource_catalog({}, {"a": [template("file:///{path}")], "b": [template("file:///{path}")]})
    assert catalog.route_uri("b+file:///notes.md") == ("b", "file:///notes.md")
    assert catalog.route_uri("file:///notes.md") is None  # ambiguous without the prefix


def test_route_uri_matches_the_one_backend_whose_template_fits() -> None:
    catalog = build_resource_catalog(
        {"a": [resource("issue://1")]},
        {
            "a": [template("issue://{id}"), template("v1.api://{id}")],
            "b": [template("doc://{+path}"), template("q://x{?q,r}")],
        },
    )
    assert catalog.route_uri("issue://42") == ("a", "issue://42")
    assert catalog.route_uri("issue://42/comments") is None  # {id} does not cross "/"
    assert catalog.route_uri("doc://deep/nested/file") == ("b", "doc://deep/nested/file")
    assert catalog.route_uri("q://x?q=1&r=2") == ("b", "q://x?q=1&r=2")
    assert catalog.route_uri("v1.api://3") == ("a", "v1.api://3")
    assert catalog.route_uri("v1xapi://3") is None  # literal parts are escaped
    assert catalog.route_uri("other://1") is None


def test_route_uri_returns_none_when_several_backends_templates_match() -> None:
    catalog = build_resource_catalog({}, {"a": [template("mem://{key}")], "b": [template("{+any}")]})
    assert catalog.route_uri("mem://k") is None
    assert catalog.route_uri("mem://k/sub") == ("b", "mem://k/sub")


def test_route_uri_falls_back_to_the_only_backend() -> None:
    catalog = build_resource_catalog({"solo": [resource("file:///a")]}, {})
    assert catalog.route_uri("anything://unlisted") == ("solo", "anything://unlisted")
    assert build_resource_catalog({}, {}).route_uri("file:///a") is None


def test_exposed_uri_inverts_routing_for_listed_and_unlisted_uris() -> None:
    catalog = build_resource_catalog(
        {"a": [resource("file:///x")], "b": [resource("file:///x"), resource("file:///y")]},
        {"a": [template("log://{n}")], "b": [template("log://{n}")]},
    )
    assert catalog.exposed_uri("b", "file:///x") == "b+file:///x"
    assert catalog.exposed_uri("b", "file:///y") == "file:///y"
    assert catalog.exposed_uri("a", "log://7") == "a+log://7"


def test_duplicate_resource_uri_in_one_backend_keeps_the_first_and_warns() -> None:
    catalog = build_resource_catalog({"a": [{"uri": "u://1", "name": "one"}, {"uri": "u://1", "name": "two"}]})
    assert catalog.resources == ({"uri": "u://1", "name": "one"},)
    assert len(catalog.warnings) == 1


URI_POOL = ("file:///a.txt", "file:///b", "fleet://x", "Fleet://y", "a+file:///a.txt", "git+ssh://h/r", "")
TEMPLATE_POOL = ("file:///{path}", "db://{t}/{id}", "fleet://t/{x}", "a+file:///{p}", "{+any}", "x://{a}")


@st.composite
def resource_worlds(
    draw: st.DrawFn,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict[str, Any]]]]:
    uris = st.sampled_from(URI_POOL) | st.text(max_size=8)
    aliases = st.sampled_from((*ALIASES, "git"))
    resources = draw(st.dictionaries(aliases, st.lists(uris.map(resource), max_size=5), max_size=4))
    templates = draw(
        st.dictionaries(aliases, st.lists(st.sampled_from(TEMPLATE_POOL).map(template), max_size=3), max_size=3)
    )
    return resources, templates


@PROPERTY
@given(resource_worlds(), st.randoms(use_true_random=False), st.text(max_size=12))
def test_resource_catalog_properties(world: Any, rnd: Any, probe: str) -> None:
    resources, templates = world
    before = copy.deepcopy(world)
    catalog = build_resource_catalog(resources, templates)
    assert (resources, templates) == before
    exposed = names(catalog.resources, "uri")
    assert len(exposed) == len(set(exposed)) and exposed == list(catalog.routes)
    for item in catalog.resources:
        alias, original = catalog.route_uri(item["uri"]) or ("?", "?")
        assert catalog.exposed_uri(alias, original) == item["uri"]
        assert without(item, "uri") == without(next(r for r in resources[alias] if r["uri"] == original), "uri")
    for alias in catalog.aliases:  # any uri a backend names can be relayed and routed back
        assert catalog.route_uri(catalog.exposed_uri(alias, probe)) == (alias, probe)
    shuffled_r, shuffled_t = list(resources.items()), list(templates.items())
    rnd.shuffle(shuffled_r)
    rnd.shuffle(shuffled_t)
    other = build_resource_catalog(dict(shuffled_r), dict(shuffled_t))
    assert (other.resources, other.templates, other.warnings) == (
        catalog.resources,
        catalog.templates,
        catalog.warnings,
    )
    assert list(other.routes.items()) == list(catalog.routes.items())


# --- aliases -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alias", ["a", "tracker", "files-2", "x" * 32, "a--"])
def test_valid_aliases_are_returned_unchanged(alias: str) -> None:
    assert validate_alias(alias) == alias


@pytest.mark.parametrize("alias", ["", "A", "1a", "-a", "a_b", "a.b", "é", "a\n", "x" * 33, "a+b"])
def test_invalid_aliases_raise_a_clear_value_error(alias: str) -> None:
    with pytest.raises(ValueError, match="invalid environment alias"):
        validate_alias(alias)


@pytest.mark.parametrize(
    ("text", "alias"),
    [
        ("Fira_V2.beta", "fira-v2-beta"),
        ("tracker", "tracker"),
        ("  Ünïcode  Ënv!! ", "unicode-env"),
        ("2fa", "env-2fa"),
        ("", "env"),
        ("🚀", "env"),
    ],
)
def test_alias_from_turns_text_into_a_readable_alias(text: str, alias: str) -> None:
    assert alias_from(text) == alias


def test_alias_from_shortens_long_text_with_a_hash_that_keeps_prefixes_apart() -> None:
    one, two = alias_from("Environment " * 5 + "one"), alias_from("Environment " * 5 + "two")
    assert one != two
    assert len(one) <= 32 and one.startswith("environment-environment-")


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_alias_from_always_gives_a_valid_deterministic_alias(text: str) -> None:
    assert validate_alias(alias_from(text)) == alias_from(text)
