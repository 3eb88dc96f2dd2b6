"""Linear-time pattern matching for the context tools' searches.

Patterns come from agents, so they must not be able to stall the proxy: Python's `re` backtracks (one
`\\w*\\w*\\w*z` over a 500-character line took 79 s on the event loop, serving no one else meanwhile). Regex
search therefore runs on RE2 (google-re2), whose time is linear in the text for every pattern it accepts; it
refuses backreferences and lookaround, which need backtracking. Plain-text search uses str.find, also linear.
Regex matching still runs line by line, in overlapping windows of REGEX_WINDOW_CHARS, within the first
REGEX_MAX_CHARS: each match's search is then bounded by a window, not by the line (`a.*b|a` on one long line
of `a` would otherwise rescan the rest of the line once per match). In lines longer than a window, a match
longer than REGEX_OVERLAP_CHARS may be cut short.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import re2

MAX_MATCHES = 10_000
REGEX_MAX_CHARS = 500_000
REGEX_WINDOW_CHARS = 2_000
REGEX_OVERLAP_CHARS = 500
MATCH_SHOW_CHARS = 200
# RE2 keeps a compiled pattern within this much memory; a pattern that needs more is refused.
REGEX_MAX_MEM = 8 << 20


class PatternError(ValueError):
    """A pattern the agent must fix; the message is written for the agent."""


@dataclass(frozen=True)
class Searcher:
    pattern: str
    regex: bool
    compiled: Any  # re2's compiled pattern (regex) or an re.Pattern (plain text); neither is typed alike

    def spans(self, text: str, limit: int = MAX_MATCHES) -> tuple[list[tuple[int, int]], bool]:
        """(start, end) offsets of up to `limit` non-overlapping matches, and whether more were left uncounted."""
        found: list[tuple[int, int]] = []
        for span in self._spans(text):
            if len(found) == limit:
                return found, True
            found.append(span)
        return found, False

    def _spans(self, text: str) -> Iterator[tuple[int, int]]:
        if self.regex:
            return _regex_spans(self.compiled, text)
        lowered, needle = text.lower(), self.pattern.lower()
        if len(lowered) != len(text) or len(needle) != len(self.pattern):
            # Rare letters (like "İ") lengthen when lowered, which would shift offsets; re keeps them right
            # (an escaped literal never backtracks).
            return (match.span() for match in self.compiled.finditer(text))
        return _find_all(lowered, needle)


def _find_all(text: str, needle: str) -> Iterator[tuple[int, int]]:
    # str.find stays linear for any needle, unlike re with IGNORECASE (O(len(text) * len(needle))).
    pos = text.find(needle)
    while pos >= 0:
        yield pos, pos + len(needle)
        pos = text.find(needle, pos + len(needle))


def _options() -> Any:
    options = re2.Options()
    options.case_sensitive = False
    options.max_mem = REGEX_MAX_MEM
    options.log_errors = False  # a refused pattern is the agent's business, not stderr's
    return options


_OPTIONS = _options()


def compile_pattern(pattern: str, regex: bool) -> Searcher:
    if not regex:
        return Searcher(pattern, regex, re.compile(re.escape(pattern), re.IGNORECASE))
    try:
        # (?m): ^ and $ match at line ends, as a line-by-line reader expects.
        compiled = re2.compile("(?m)" + pattern, _OPTIONS)
    except re2.error as exc:
        raise PatternError(_refusal(pattern, exc)) from None
    return Searcher(pattern, regex, compiled)


_UNSUPPORTED = (
    "The proxy runs regexes on RE2, which matches in linear time and so does not support backreferences "
    "(\\1, (?P=name)) or lookaround ((?=...), (?!...), (?<=...), (?<!...))."
)


def _refusal(pattern: str, exc: Exception) -> str:
    raw = exc.args[0] if exc.args else b""
    reason = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    reason = reason.replace("(?m)", "", 1)
    fix = "Fix it, or pass regex=false to search for the text literally."
    if reason.startswith("invalid perl operator: (?=") or reason.startswith("invalid perl operator: (?!"):
        return f"regex {pattern!r} uses lookahead. {_UNSUPPORTED} {fix}"
    if reason.startswith(("invalid perl operator: (?<=", "invalid perl operator: (?<!")):
        return f"regex {pattern!r} uses lookbehind. {_UNSUPPORTED} {fix}"
    if (reason == "invalid perl operator: (?P" and "(?P=" in pattern) or (
        reason.startswith("invalid escape sequence: \\") and reason[-1:].isdigit()
    ):
        return f"regex {pattern!r} uses a backreference. {_UNSUPPORTED} {fix}"
    if reason == "invalid escape sequence: \\Z":
        return f"regex {pattern!r} uses \\Z, which RE2 spells \\z (end of text). {fix}"
    if "pattern too large" in reason:
        return f"regex {pattern!r} is too large to compile within the proxy's memory limit. Use a smaller regex. {fix}"
    return f"invalid regex {pattern!r}: {reason}. {fix}"


def _regex_spans(compiled: Any, text: str) -> Iterator[tuple[int, int]]:
    end_all = min(len(text), REGEX_MAX_CHARS)
    pos = 0
    while pos <= end_all:  # `<=` also visits the empty line after a final newline, so `^$` can match it
        newline = text.find("\n", pos, end_all)
        line_end = end_all if newline < 0 else newline
        start = pos
        while True:
            stop = min(start + REGEX_WINDOW_CHARS, line_end)
            # Matches starting in the overlap are left to the next window, which sees them whole.
            resume = stop + 1 if stop == line_end else stop - REGEX_OVERLAP_CHARS
            for found_start, found_end in _window_spans(compiled, text, start, stop):
                if found_start >= resume:
                    break
                yield found_start, found_end
                resume = max(resume, found_end)
            if stop == line_end:
                break
            start = resume
        pos = line_end + 1


def _window_spans(compiled: Any, text: str, start: int, stop: int) -> Iterator[tuple[int, int]]:
    # RE2 re-encodes the whole string it is given, so it gets the window plus one character of context on each
    # side: enough for ^, $, \b, \A and \z to see what surrounds the window.
    lo, hi = max(0, start - 1), min(len(text), stop + 1)
    for match in compiled.finditer(text[lo:hi], start - lo, stop - lo):
        found_start, found_end = match.span()
        yield lo + found_start, lo + found_end


def regex_coverage_note(text: str, regex: bool) -> str:
    if not regex or len(text) <= REGEX_MAX_CHARS:
        return ""
    return (
        f"\nNote: regex search covers only the first {REGEX_MAX_CHARS:,} of {len(text):,} characters; "
        "use regex=false to search all of it."
    )


def _escaped(text: str) -> str:
    # JSON-style escapes keep newlines and control characters from breaking the one-line listing;
    # backslashreplace spells out lone surrogates, which could not be sent as UTF-8.
    return json.dumps(text, ensure_ascii=False)[1:-1].encode("utf-8", "backslashreplace").decode("utf-8")


def snippet(text: str, start: int, end: int, context_chars: int) -> str:
    """The match between >>> and <<<, with up to context_chars on each side, on one line."""
    shown = _escaped(text[start : min(end, start + MATCH_SHOW_CHARS)])
    if end - start > MATCH_SHOW_CHARS:
        shown += "…"
    before = _escaped(text[max(0, start - context_chars) : start])
    after = _escaped(text[end : end + context_chars])
    lead = "…" if start - context_chars > 0 else ""
    tail = "…" if end + context_chars < len(text) else ""
    return f"{lead}{before}>>>{shown}<<<{after}{tail}"
