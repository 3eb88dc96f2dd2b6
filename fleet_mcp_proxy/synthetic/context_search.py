"""Bounded pattern matching for the context tools' searches.

Python's `re` has no timeout and holds the GIL, so a bad pattern on a long text would stall the whole
proxy, not just one episode (a worker thread does not help). Plain-text search uses str.find, which is
linear, and is unrestricted.
Regex search is bounded instead: patterns that backtrack exponentially (a quantifier or an alternation under
another quantifier) are refused, and matching runs line by line, in overlapping windows of REGEX_WINDOW_CHARS,
within the first REGEX_MAX_CHARS. Windows cap the quadratic cost of `.*x` or `x+y` on one long line (about
2 s at worst, on 500,000 copies of one letter); the price is that in lines longer than a window, a match
longer than REGEX_OVERLAP_CHARS may be cut short. Adjacent overlapping quantifiers such as `\\w*\\w*z` still
cost the cube of the window per window: only a separate process with a timeout would bound every pattern.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

with warnings.catch_warnings():
    # sre_parse is the typed public name of re._parser; it warns on import only.
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_parse

MAX_MATCHES = 10_000
REGEX_MAX_CHARS = 500_000
REGEX_WINDOW_CHARS = 500
REGEX_OVERLAP_CHARS = 100
MATCH_SHOW_CHARS = 200
_REPEATS = frozenset({"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"})


class PatternError(ValueError):
    """A pattern the agent must fix; the message is written for the agent."""


@dataclass(frozen=True)
class Searcher:
    pattern: str
    regex: bool
    compiled: re.Pattern[str]

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
            return (match.span() for match in _regex_matches(self.compiled, text))
        lowered, needle = text.lower(), self.pattern.lower()
        if len(lowered) != len(text) or len(needle) != len(self.pattern):
            # Rare letters (like "İ") lengthen when lowered, which would shift offsets; re keeps them right.
            return (match.span() for match in self.compiled.finditer(text))
        return _find_all(lowered, needle)


def _find_all(text: str, needle: str) -> Iterator[tuple[int, int]]:
    # str.find stays linear for any needle, unlike re with IGNORECASE (O(len(text) * len(needle))).
    pos = text.find(needle)
    while pos >= 0:
        yield pos, pos + len(needle)
        pos = text.find(needle, pos + len(needle))


def compile_pattern(pattern: str, regex: bool) -> Searcher:
    if not regex:
        return Searcher(pattern, regex, re.compile(re.escape(pattern), re.IGNORECASE))
    try:
        compiled = re.compile(pattern, re.IGNORECASE | re.MULTILINE)
    except re.error as exc:
        raise PatternError(
            f"invalid regex {pattern!r}: {exc.msg} at position {exc.pos}. "
            "Fix it, or pass regex=false to search for the text literally."
        ) from None
    if _risky(sre_parse.parse(pattern), under_repeat=False):
        raise PatternError(
            f"regex {pattern!r} nests a quantifier or an alternation inside another quantifier (like (a+)+ or "
            "(a|b)*), which can take exponential time; the proxy refuses such patterns. Use a simpler regex, "
            "or regex=false to search for the text literally."
        )
    return Searcher(pattern, regex, compiled)


def _risky(tree: Any, under_repeat: bool) -> bool:
    for op, av in tree:
        name = str(op)
        if name in _REPEATS:
            _, high, body = av
            if under_repeat and high > 1:
                return True
            if _risky(body, under_repeat or high > 1):
                return True
        elif name == "BRANCH":
            if under_repeat or any(_risky(alt, under_repeat) for alt in av[1]):
                return True
        else:
            parts = av if isinstance(av, tuple) else (av,)
            if any(isinstance(part, sre_parse.SubPattern) and _risky(part, under_repeat) for part in parts):
                return True
    return False


def _regex_matches(compiled: re.Pattern[str], text: str) -> Iterator[re.Match[str]]:
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
            for match in compiled.finditer(text, start, stop):
                if match.start() >= resume:
                    break
                yield match
                resume = max(resume, match.end())
            if stop == line_end:
                break
            start = resume
        pos = line_end + 1


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
