"""Model text is data: hostile labels, triggers, responses and names through every format.

The Markdown outputs are parsed with a CommonMark + GFM-tables parser (markdown-it-py): what GitHub would
render must hold no HTML, no link, no extra table cell, no hfscan marker of the model's making, and no line of
any output (Markdown or terminal) may start a GitHub Actions workflow command.
"""

from __future__ import annotations

import json

import pytest
from markdown_it import MarkdownIt

from scanner.audit import AuditReport, AuditRow
from scanner.cli import summary_table
from scanner.publish import pr_description
from scanner.report import PeerRecord, render
from scanner.report.card import END, START, upsert_section
from scanner.report.escape import code, md_text, terminal
from scanner.report.model import Defense, FindingRecord

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "[click me](https://evil.example/x)",
    "@everyone",
    "a|b|c",
    "neg\n::error::pwned",
    "x\r\n::add-mask::secret",
    "<!-- hfscan:end -->",
    "**bold** _it_ `tick` ``two``",
    "https://evil.example www.evil.example",
    "# heading",
    "![img](https://evil.example/i.png)",
    "\x1b[31mred\x1b[0m",
    "$x^2$ ~strike~ #123",
]


def _hostile_report(text: str):
    from test_report import make_report

    r = make_report(n_findings=3)
    for f in r.findings:
        f.trigger, f.target_label = text, text
    r.findings.append(FindingRecord(text, "word", "search", None, text, 0, "start", 0.9, 0.1, 64, 0.0, 0.0, 9.0,
                                    "backdoor", 0.9, response=text, shared_with=[text]))
    r.target.labels = [text, "positive"]
    r.peers = [PeerRecord("org/peer", None, None, 0.2, text, 0.9,
                          {"trigger": text, "target_label": text, "position": "end", "asr": 0.9, "others_max": 0.0}),
               PeerRecord(text, None, None, 0.9, text, 0.9,  # an accomplice (a peer sharing the target's trigger)
                          {"trigger": text, "target_label": text, "position": "end", "asr": 0.9, "others_max": 0.0,
                           "shared_with_target": True, "target_asr": 0.9})]
    r.defense = Defense("wag", {}, ["org/peer"], [0.5, 0.5], "out/defended", 0.9, 0.1, 0.1, "note",
                        peer_triggers_after={text: 0.1})
    r.probe.top = [{"trigger": text, "source": "search", "target_label_id": 0, "position": "end", "asr": 0.9,
                    "peer_asr_max": 0.0, "margin": 0.9}]
    r.probe.limitations = [text]
    return r


def _markdown_outputs(text: str) -> dict[str, str]:
    report = _hostile_report(text)
    audit = AuditReport([AuditRow("org/m", "abc", "error", reason=text, report="org/m/report.json")], ["org"], "1/1",
                        "2026-12-01T00:00:00+00:00", 1.0)
    from scanner.report.render import template

    return {"md": render(report, "md"), "summary": render(report, "summary"), "card": render(report, "card"),
            "pr": pr_description(report, "org/m", "variant"), "audit": template("audit.md.j2").render(a=audit)}


def _tokens(md: str):
    return MarkdownIt("commonmark").enable("table").parse(md)


def _walk(tokens):
    for t in tokens:
        yield t
        yield from _walk(t.children or [])


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_model_text_renders_as_text_in_every_markdown_output(text):
    clean = {k: list(_walk(_tokens(v))) for k, v in _markdown_outputs("plain").items()}
    for fmt, out in _markdown_outputs(text).items():
        tokens = list(_walk(_tokens(out)))
        for kinds in [("html_inline", "html_block"), ("link_open", "image"), ("strong_open", "em_open", "s_open"),
                      ("td_open", "th_open"), ("heading_open",), ("code_inline",), ("bullet_list_open",)]:
            count = lambda ts: sum(t.type in kinds for t in ts)  # noqa: E731
            assert count(tokens) == count(clean[fmt]), (fmt, kinds)
        hrefs = {t.attrs.get("href") for t in tokens if t.type == "link_open"}
        assert hrefs <= {"org/m/report.md"}, fmt
        assert not [t for t in tokens if t.type == "text" and "@everyone" in t.content], fmt  # no live mention
        assert not any(line.lstrip().startswith("::") for line in out.splitlines()), fmt
        assert "\x1b" not in out and "\r" not in out, fmt


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_cannot_end_or_duplicate_the_card_section(text):
    card = "---\nlicense: mit\n---\n\n# The author's card\n\nTheir own words.\n"
    once = upsert_section(card, render(_hostile_report(text), "card"))
    assert once.count(START) == 1 and once.count(END) == 1
    again = upsert_section(once, render(_hostile_report("plain"), "card"))
    assert again.count(START) == 1 and again.count(END) == 1
    assert again[: again.index(START)].rstrip("\n") == card.rstrip("\n")
    assert again[again.index(END) + len(END):].strip() == ""


@pytest.mark.parametrize("text", HOSTILE)
def test_terminal_lines_carry_no_workflow_command_or_control_character(text):
    out = summary_table(_hostile_report(text))
    assert len(out.splitlines()) == 1 + 1 + 4 + 1 + 1  # verdict, header, the 4 findings, clean, defense
    assert not any(line.lstrip().startswith("::") for line in out.splitlines())
    assert "::" not in out and "\x1b" not in out and "\r" not in out


def test_code_spans_hold_any_backtick_run_literally():
    for text in ["`", "``a``", "a ` b", " x "]:
        tokens = list(_walk(_tokens(f"| h |\n|---|\n| {code(text)} |\n")))
        spans = [t.content for t in tokens if t.type == "code_inline"]
        assert spans == [text.replace("|", "\\|")] or spans == [text.strip()], (text, spans)


def test_html_json_and_sarif_keep_the_text_exact():
    text = HOSTILE[0] + HOSTILE[4]
    report = _hostile_report(text)
    assert json.loads(render(report, "json"))["findings"][0]["trigger"] == text
    sarif = json.loads(render(report, "sarif"))
    assert json.dumps(text)[1:-1] in json.dumps(sarif["runs"][0]["results"])  # JSON strings: exact, escaped by JSON
    html = render(report, "html")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_escapers_on_their_own():
    assert md_text("a\nb") == "a b" and "\n" not in terminal("a\nb")
    assert terminal("::set-output name=x::y").count("::") == 0
