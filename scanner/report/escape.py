"""Escaping of model-supplied text (labels, triggers, generated answers, repo and peer names) for every
Markdown-like output and the terminal. Text that comes from a model is data: it must render as the characters it
is, never as markup, a mention, a table cell boundary, a card-section marker or a GitHub Actions workflow command.

The Markdown templates are rendered with `md_finalize` as jinja2's ``finalize``, so every ``{{ value }}`` is
escaped unless a filter below already made it safe (`Safe`); `code` puts a value in a code span instead.

Examples:
    >>> md_text("<img src=x onerror=alert(1)> @everyone [x](http://e)")
    '&lt;img src=x onerror=alert(1)&gt; @\\u200beveryone \\\\[x\\\\](http:\\u200b//e)'
    >>> md_text("a|b\\n::error::pwned")
    'a\\\\|b :\\u200b:error:\\u200b:pwned'
    >>> str(code("cf"))
    '`cf`'
    >>> str(code("a`b|c"))
    '``a`b\\\\|c``'
    >>> terminal("ok\\n::error::x\\x1b[31m")
    'ok\\\\n:\\u200b:error:\\u200b:x\\\\x1b[31m'
"""

from __future__ import annotations

import re

from markupsafe import Markup

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]")
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]#!|~$])")
_AUTOLINK = re.compile(r"(?i)(://|www\.)")
_MENTION = re.compile(r"([@#])(?=\w)")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


class Safe(Markup):
    """A string already escaped for Markdown (kept as is by `md_finalize`)."""


def _one_line(text: str) -> str:
    return _CONTROL.sub(" ", text)


def md_text(value: object) -> str:
    """Inline Markdown text that renders literally, also inside a table cell: no HTML, links, emphasis, headings,
    mentions (``@user``, ``#123``), autolinks, cell breaks, line breaks or workflow commands."""
    text = _one_line(str(value))
    text = "".join(_HTML.get(ch, ch) for ch in _MD_SPECIAL.sub(r"\\\1", text))
    text = _AUTOLINK.sub(lambda m: m.group(1)[0] + "\u200b" + m.group(1)[1:], text)
    return _MENTION.sub(lambda m: m.group(1) + "\u200b", text).replace("::", ":\u200b:")


def code(value: object) -> Safe:
    """A Markdown code span holding ``value`` literally (one line; ``|`` escaped as GFM tables require, which
    GitHub also honours inside code spans)."""
    text = _one_line(str(value)).replace("|", "\\|")
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return Safe(f"{fence}{pad}{text}{pad}{fence}")


def link(text: object, url: str) -> Safe:
    """A Markdown link to a URL or relative path hfscan built (the text escaped, the target percent-encoded)."""
    from urllib.parse import quote

    return Safe(f"[{md_text(text)}]({quote(str(url), safe='/:#?=&%@.-_~')})")


def md_finalize(value: object) -> object:
    """jinja2 ``finalize`` for Markdown templates: every string not already `Safe` goes through `md_text`."""
    if value is None or isinstance(value, (Markup, int, float)):
        return value
    return md_text(value)


def terminal(value: object) -> str:
    """Model text for a terminal or CI log line: control characters shown escaped (no newlines, no ANSI
    sequences), and ``::`` broken so that no GitHub Actions workflow command can form."""
    text = _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], str(value))
    return text.replace("::", ":\u200b:")
