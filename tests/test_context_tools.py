"""Context tools answered by the proxy: truncation, the output store, view/search, history, dispatch (pure)."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_mcp_proxy.synthetic.context import (
    CallLog,
    ContextExtra,
    ContextSettings,
    OutputStore,
    check_context,
    handle,
    read_output_resource,
    search_history,
    search_tool_output,
    tool_definitions,
    truncate_result,
    view_tool_output,
)
from fleet_mcp_proxy.synthetic.context_search import PatternError, compile_pattern

ALL_TOOLS = frozenset({"view_tool_output", "search_tool_output", "search_history", "check_context", "manage_context"})
SETTINGS = ContextSettings()


def text_result(*texts: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": t} for t in texts], "isError": False}


def call(name: str, store: OutputStore, log: CallLog | None = None, s: ContextSettings = SETTINGS, **args: Any) -> Any:
    return handle(name, args, store=store, log=log or CallLog(), settings=s)


def text_of(result: dict[str, Any]) -> str:
    return "\n".join(item["text"] for item in result["content"] if item["type"] == "text")


def read_all(store: OutputStore, output_id: str, page_size: int) -> str:
    pages: list[str] = []
    page = 0
    while True:
        result = view_tool_output(store, ContextSettings(), output_id=output_id, page=page, page_size=page_size)
        if result["isError"]:
            assert "does not exist" in text_of(result)
            return "".join(pages)
        header, body = result["content"]
        pages.append(body["text"])
        page += 1


# -- truncation ----------------------------------------------------------------------------------------


def test_ten_mib_output_is_cut_stored_viewable_and_searchable() -> None:
    big = "".join(f"line {i:07d} " + "x" * 50 + "\n" for i in range(180_000))[: 10 * 1024 * 1024 - 6] + "NEEDLE"
    store = OutputStore()
    cut = truncate_result(text_result(big), "dump", store, SETTINGS)
    text = cut["content"][0]["text"]
    assert text.startswith(big[:16_000])
    notice = text[16_000:]
    assert notice.startswith("\n\n[Output truncated: showing 16,000 of 10,485,760 characters.")
    assert 'view_tool_output(output_id="out-1", page=4)' in notice  # continues right where the cut was
    assert 'search_tool_output(output_id="out-1", pattern="...")' in notice
    assert "fleet://outputs/out-1" in notice
    assert read_all(store, "out-1", 50_000) == big
    found = call("search_tool_output", store, output_id="out-1", pattern="needle")
    assert not found["isError"]
    assert text_of(found).startswith('1 matches for "needle" in out-1 (10,485,760 characters)')
    assert f"offset {len(big) - 6:,} (view page {(len(big) - 6) // 4000})" in text_of(found)
    assert ">>>NEEDLE<<<" in text_of(found)


def test_fitting_result_is_returned_unchanged() -> None:
    result = text_result("a" * 16_000)
    assert truncate_result(result, "t", OutputStore(), SETTINGS) is result


def test_images_and_audio_are_never_cut_or_counted() -> None:
    image = {"type": "image", "data": base64.b64encode(b"\x89PNG" * 262_144).decode(), "mimeType": "image/png"}
    audio = {"type": "audio", "data": "UklGR" * 300_000, "mimeType": "audio/wav"}
    small = {"content": [image, {"type": "text", "text": "caption"}, audio], "isError": False}
    store = OutputStore()
    assert truncate_result(small, "t", store, SETTINGS) is small
    assert store.stats().outputs == 0
    # Long text is cut, but the image stays in place and untouched.
    big = {"content": [{"type": "text", "text": "a" * 10_000}, image, {"type": "text", "text": "b" * 10_000}]}
    cut = truncate_result(big, "t", store, SETTINGS)["content"]
    assert cut[0]["text"] == "a" * 10_000 and cut[1] is image
    assert cut[2]["text"].startswith("b" * 6_000 + "\n\n[Output truncated: showing 16,000 of 20,001 characters.")
    assert store.get("out-1").text == "a" * 10_000 + "\n" + "b" * 10_000  # type: ignore[union-attr]


def test_text_items_after_the_cut_are_dropped_and_other_fields_kept() -> None:
    structured = {"rows": list(range(10))}
    result: dict[str, Any] = {"content": [{"type": "text", "text": "a" * 20_000}, {"type": "text", "text": "tail"}],
                              "structuredContent": structured, "isError": True, "_meta": {"k": 1}}  # fmt: skip
    cut = truncate_result(result, "t", OutputStore(), SETTINGS)
    assert len(cut["content"]) == 1
    assert cut["structuredContent"] is structured and cut["isError"] is True and cut["_meta"] == {"k": 1}
    assert result["content"][0]["text"] == "a" * 20_000  # the input is not modified


def test_notice_names_only_enabled_tools_and_survives_a_full_store() -> None:
    only_history = ContextSettings(tools=frozenset({"search_history"}))
    text = truncate_result(text_result("z" * 20_000), "t", OutputStore(), only_history)["content"][0]["text"]
    assert "view_tool_output" not in text and "search_tool_output" not in text
    assert "stored as out-1. It is also the resource fleet://outputs/out-1.]" in text
    tiny = OutputStore(max_bytes=1_000)
    text = truncate_result(text_result("z" * 20_000), "t", tiny, SETTINGS)["content"][0]["text"]
    assert "the rest is lost" in text and tiny.stats().outputs == 0


# -- store ---------------------------------------------------------------------------------------------


def test_eviction_by_count_is_lru_and_get_refreshes() -> None:
    store = OutputStore(max_outputs=3)
    ids = [store.put("t", str(i)) for i in range(3)]
    assert ids == ["out-1", "out-2", "out-3"]
    assert store.get("out-1") is not None  # out-2 is now the least recently used
    assert store.put("t", "3") == "out-4"
    assert store.get("out-2") is None
    assert store.ids() == ["out-4", "out-3", "out-1"]
    assert store.latest().id == "out-4"  # type: ignore[union-attr]
    assert store.stats().evicted_total == 1


def test_eviction_by_bytes_counts_utf8_size() -> None:
    store = OutputStore(max_bytes=10)
    store.put("t", "ééé")  # 6 bytes
    store.put("t", "ab")
    store.get("out-1")
    store.put("t", "xyz")  # 11 bytes in all: evicts out-2, the least recently used
    assert store.ids() == ["out-3", "out-1"] and store.stats().bytes == 9
    with pytest.raises(ValueError):
        store.put("t", "x" * 11)
    assert store.put("t", "\ud800") == "out-4"  # a lone surrogate (legal in JSON) still has a size


def test_ids_are_never_reused_and_resource_reads_full_text() -> None:
    store = OutputStore(max_outputs=1)
    store.put("t", "first")
    store.put("t", "second")
    assert store.ids() == ["out-2"]
    assert read_output_resource(store, "fleet://outputs/out-2") == {
        "contents": [{"uri": "fleet://outputs/out-2", "mimeType": "text/plain", "text": "second"}]
    }
    assert read_output_resource(store, "fleet://outputs/out-1") is None
    assert read_output_resource(store, "file:///out-2") is None


# -- view ----------------------------------------------------------------------------------------------


def test_view_first_last_and_past_the_end() -> None:
    store = OutputStore()
    for i in range(3):
        store.put("t", str(i))
    store.put("list_files", "0123456789" * 2 + "abc")  # 23 chars: pages of 5 -> 5 pages
    first = call("view_tool_output", store, page_size=5)  # defaults to the latest output
    assert first["content"][1]["text"] == "01234"
    assert first["content"][0]["text"].startswith(
        "out-4 (output of list_files, 23 characters): page 0 of 5 pages (0-4), characters 0-4."
    )
    assert 'More follows: view_tool_output(output_id="out-4", page=1).' in text_of(first)
    last = call("view_tool_output", store, output_id="out-4", page=4, page_size=5)
    assert last["content"][1]["text"] == "abc" and "characters 20-22. This is the last page." in text_of(last)
    past = call("view_tool_output", store, output_id="out-4", page=7, page_size=5)
    assert past["isError"]
    assert text_of(past).startswith("page 7 does not exist: out-4 has 5 pages (0-4)")


@pytest.mark.parametrize("page_size", [0, -1, 50_001])
def test_view_refuses_bad_page_sizes(page_size: int) -> None:
    store = OutputStore()
    store.put("t", "abc")
    result = call("view_tool_output", store, page_size=page_size)
    assert result["isError"] and text_of(result) == f"page_size must be from 1 to 50,000; got {page_size}."
    assert view_tool_output(store, SETTINGS, page_size=page_size)["isError"]  # direct calls too (bug D20)


def test_unknown_evicted_and_foreign_ids_get_the_same_answer() -> None:
    mine, other = OutputStore(max_outputs=2), OutputStore()
    for i in range(3):
        mine.put("t", str(i))
    other_id = other.put("t", "secret")  # "out-1" in another episode; evicted here
    unknown = call("view_tool_output", mine, output_id="out-99")
    foreign = call("view_tool_output", mine, output_id=other_id)
    assert unknown["isError"] and foreign["isError"]
    assert text_of(unknown) == (
        "Output 'out-99' is not available: it is unknown or was evicted to bound memory. "
        "Available, newest first: out-3, out-2."
    )
    assert text_of(foreign) == text_of(unknown).replace("out-99", "out-1")
    empty = call("search_tool_output", OutputStore(), pattern="x")
    assert empty["isError"] and text_of(empty).startswith("No tool output is stored in this episode")


UNUSUAL = (
    "emoji 👩‍👩‍👧‍👦🇫🇷 CJK 漢字かなカナ한국어 combining e\u0301 a\u0308\u0323 Z\u0337\u0321 "
    "NUL\x00 controls \x01\x07\x1b[31m\x7f\x9f BOM \ufeff RTL \u202e lone \ud800 \\u0000 \\x00 \\ud83d %s {0} \r\n"
)


@pytest.mark.parametrize("page_size", [1, 2, 3, 7, 64])
def test_unusual_text_round_trips_exactly(page_size: int) -> None:
    store = OutputStore()
    output_id = store.put("t", UNUSUAL * 5)
    assert read_all(store, output_id, page_size) == UNUSUAL * 5


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=400), page_size=st.integers(min_value=1, max_value=60))
def test_pages_concatenate_to_the_stored_text(text: str, page_size: int) -> None:
    store = OutputStore()
    assert read_all(store, store.put("t", text), page_size) == text


# -- search_tool_output ----------------------------------------------------------------------------------


def test_search_pages_matches_with_offsets_and_snippets() -> None:
    store = OutputStore()
    store.put("t", "".join(f"row {i}: Value\n" for i in range(45)))
    first = text_of(call("search_tool_output", store, pattern="value", context_chars=5))
    assert first.startswith('45 matches for "value" in out-1 (')
    assert "page 0 of 3 pages (0-2), matches 1-20:" in first
    assert "\n1. offset 7 (view page 0): …w 0: >>>Value<<<\\nrow …\n" in first  # newlines shown escaped
    assert "More: search_tool_output(..., page=1)." in first
    last = text_of(call("search_tool_output", store, pattern="value", page=2))
    assert "matches 41-45:" in last and "More:" not in last
    past = call("search_tool_output", store, pattern="value", page=3)
    assert past["isError"] and text_of(past) == "page 3 does not exist: 45 matches make 3 pages (0-2)."
    none = call("search_tool_output", store, pattern="absent")
    assert not none["isError"] and text_of(none).startswith('No matches for "absent" in out-1')


def test_search_regex_and_its_errors() -> None:
    store = OutputStore()
    store.put("t", "id=12\nid=345\nname=x\n")
    found = text_of(call("search_tool_output", store, pattern=r"^id=\d+$", regex=True))
    assert found.startswith('2 matches for "^id=\\\\d+$"') and ">>>id=345<<<" in found
    bad = call("search_tool_output", store, pattern="(unclosed", regex=True)
    assert bad["isError"]
    assert text_of(bad) == (
        "invalid regex '(unclosed': missing ): (unclosed. Fix it, or pass regex=false to search for the text literally."
    )
    literal = call("search_tool_output", store, pattern="(unclosed")  # plain text is never a regex
    assert not literal["isError"]
    backref = call("search_tool_output", store, pattern=r"(id)=\1", regex=True)
    assert backref["isError"] and "uses a backreference" in text_of(backref)
    assert "does not support backreferences" in text_of(backref)


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [
        (r"(a)\1", "a backreference"),
        ("(?P<n>a)(?P=n)", "a backreference"),
        ("a(?=b)", "lookahead"),
        ("a(?!b)", "lookahead"),
        ("(?<=a)b", "lookbehind"),
        ("(?<!a)b", "lookbehind"),
    ],
)
def test_backtracking_only_constructs_are_refused_in_plain_words(pattern: str, construct: str) -> None:
    with pytest.raises(PatternError) as refused:
        compile_pattern(pattern, regex=True)
    assert f"uses {construct}" in str(refused.value)
    assert "RE2" in str(refused.value) and "regex=false" in str(refused.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pattern", ["(a+)+$", "(x|xx)*y", "(?:a*b)*c", "(a{2,})+z", r"\w*\w*\w*z", "a.*b|a"])
def test_backtracking_shapes_run_in_linear_time(pattern: str) -> None:
    # Each of these takes minutes to ages under Python's re on this text; RE2 never backtracks. The timeout is
    # loose (RE2 needs milliseconds): it only tells linear from exponential.
    store = OutputStore()
    store.put("t", "a" * 100_000 + "\n" + "ax" * 50_000)
    result = call("search_tool_output", store, pattern=pattern, regex=True)
    assert not result["isError"], text_of(result)


def test_windowed_regex_finds_what_whole_text_regex_finds() -> None:
    line = "".join(f"k{i}=v{i * 7 % 13};" for i in range(3_000))  # one 30,000-character line
    text = f"{line}\n\n{line}\nEND"
    for pattern in [r"k\d+=v1[0-2]", r"^k0=", r"END$", r"^$", r";k29\d\d="]:
        expected = [m.span() for m in re.finditer(pattern, text, re.IGNORECASE | re.MULTILINE)]
        assert compile_pattern(pattern, regex=True).spans(text, limit=100_000) == (expected, False)


def test_regex_work_is_bounded_on_one_long_line() -> None:
    # Unwindowed, `.*z` on 600,000 copies of one letter is quadratic (hours); windowed it takes about a second.
    store = OutputStore()
    store.put("t", "x" * 600_000)
    result = text_of(call("search_tool_output", store, pattern=".*z", regex=True))
    assert result == (
        'No matches for ".*z" in out-1 (600,000 characters).\n'
        "Note: regex search covers only the first 500,000 of 600,000 characters; use regex=false to search all of it."
    )


def test_match_count_is_capped() -> None:
    spans, capped = compile_pattern("a", regex=False).spans("a" * 20_000)
    assert len(spans) == 10_000 and capped
    store = OutputStore()
    store.put("t", "a" * 20_000)
    assert text_of(call("search_tool_output", store, pattern="a")).startswith(
        "At least 10,000 matches (counting stopped there)"
    )


def test_plain_search_keeps_offsets_for_letters_that_grow_when_lowered() -> None:
    text = "İstanbul and ISTANBUL"  # "İ".lower() is two characters, so this text is searched with re
    assert compile_pattern("istanbul", regex=False).spans(text) == ([(0, 8), (13, 21)], False)


# -- search_history ------------------------------------------------------------------------------------


def test_search_history_newest_first_with_pages() -> None:
    log = CallLog()
    for i in range(25):
        log.record("get_issue", {"id": i}, text_result(f"issue {i}: status open"))
    log.record("delete_issue", {"id": 3}, {"content": [{"type": "text", "text": "forbidden"}], "isError": True})
    first = text_of(search_history(log, pattern="issue"))
    assert first.startswith('26 calls match "issue", newest first; page 0 of 3 pages (0-2). Searched 26 recorded')
    rows = first.splitlines()[1:]
    assert [row.split()[0] for row in rows] == [f"#{n}" for n in range(26, 16, -1)]
    assert rows[0] == '#26 delete_issue (error): delete_>>>issue<<<\\n{\\"id\\": 3}\\nforbidden'
    last = text_of(search_history(log, pattern="issue", page=2)).splitlines()[1:]
    assert [row.split()[0] for row in last] == ["#6", "#5", "#4", "#3", "#2", "#1"]
    assert text_of(search_history(log, pattern='"id": 7}')).startswith("1 calls match")  # arguments are searched
    assert text_of(search_history(log, pattern="Status OPEN", regex=False)).startswith("25 calls match")
    assert search_history(log, pattern="issue", page=3)["isError"]
    assert (
        "not the conversation"
        in next(t for t in tool_definitions(SETTINGS) if t["name"] == "search_history")["description"]
    )


def test_history_is_bounded_and_says_so() -> None:
    log = CallLog(max_entries=3, head_chars=10)
    for i in range(5):
        log.record("t", {"i": i}, text_result("r" * 100))
    assert [entry.seq for entry in log.entries()] == [5, 4, 3]
    assert log.entries()[0].result_text_head == "r" * 10
    assert "(the 2 oldest calls are no longer kept)" in text_of(search_history(log, pattern="t"))


# -- check_context, manage_context, dispatch -----------------------------------------------------------


def test_check_context_reports_proxy_numbers() -> None:
    store, log = OutputStore(), CallLog()
    log.record("a", None, text_result("hello"))
    log.record("b", {"x": 1}, {"content": [{"type": "text", "text": "bad"}], "isError": True})
    truncate_result(text_result("x" * 20_000), "c", store, SETTINGS)
    body = check_context(store, log, "submitted", 12.5)["structuredContent"]
    assert body["tool_calls"] == 2 and body["tool_errors"] == 1 and body["characters_returned"] == 8
    assert body["outputs_stored"] == 1 and body["outputs_stored_bytes"] == 20_000
    assert body["submission"] == "submitted" and body["instance_time_left_s"] == 12.5
    on = ContextSettings(tools=ALL_TOOLS)
    via = handle("check_context", None, store=store, log=log, settings=on, extra=ContextExtra("not submitted", None))
    assert json.loads(text_of(via))["submission"] == "not submitted"


def test_check_and_manage_context_are_off_by_default() -> None:
    assert [t["name"] for t in tool_definitions(SETTINGS)] == [
        "view_tool_output", "search_tool_output", "search_history"
    ]  # fmt: skip
    assert call("manage_context", OutputStore())["isError"]
    assert text_of(call("check_context", OutputStore())) == "Unknown tool 'check_context'."


def test_manage_context_explains_and_accepts_any_arguments() -> None:
    on = ContextSettings(tools=ALL_TOOLS)
    result = call("manage_context", OutputStore(), s=on, keep_recent_turns=3)
    assert not result["isError"]
    assert text_of(result) == (
        "Nothing was changed: your client manages the context window, and fleet-mcp-proxy cannot drop "
        "conversation turns."
    )


def test_dispatcher_validates_arguments() -> None:
    store = OutputStore()
    store.put("t", "abcdef")
    unknown = call("view_tool_output", store, pages=2, foo=1)
    assert text_of(unknown) == (
        "Invalid arguments for view_tool_output: unknown argument(s) 'pages', 'foo' "
        "(accepted: output_id, page, page_size)."
    )
    wrong = call("search_tool_output", store, pattern=3, regex="yes", page=True)
    assert text_of(wrong) == (
        "Invalid arguments for search_tool_output: pattern must be string, not integer; "
        "regex must be boolean, not string; page must be integer, not boolean."
    )
    assert text_of(call("search_history", store)) == "Invalid arguments for search_history: pattern is required."
    assert text_of(call("search_tool_output", store, pattern="")) == "pattern must not be empty."
    not_object = handle("view_tool_output", [1], store=store, log=CallLog(), settings=SETTINGS)  # type: ignore[arg-type]
    assert text_of(not_object) == "view_tool_output takes a JSON object of arguments, not array."
    # null means "use the default"; 2.0 is accepted as 2.
    ok = call("view_tool_output", store, output_id=None, page=1.0, page_size=3)
    assert not ok["isError"] and ok["content"][1]["text"] == "def"
    assert text_of(call("nope", store)) == "Unknown tool 'nope'."


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        ContextSettings(page_size=0)
    with pytest.raises(ValueError):
        ContextSettings(page_size=10, max_page_size=5)
    with pytest.raises(ValueError):
        ContextSettings(tools=frozenset({"bogus"}))


def test_tool_schemas_are_closed_objects_with_settings_limits() -> None:
    defs = {t["name"]: t for t in tool_definitions(ContextSettings(tools=ALL_TOOLS, page_size=100, max_page_size=900))}
    view = defs["view_tool_output"]["inputSchema"]
    assert view["additionalProperties"] is False and "required" not in view
    assert view["properties"]["page_size"] | {"description": ""} == {
        "type": "integer", "minimum": 1, "maximum": 900, "default": 100, "description": ""
    }  # fmt: skip
    assert defs["search_tool_output"]["inputSchema"]["required"] == ["pattern"]
    assert defs["manage_context"]["inputSchema"]["additionalProperties"] is True
    assert search_tool_output(OutputStore(), SETTINGS, pattern="x", context_chars=-1)["isError"]
