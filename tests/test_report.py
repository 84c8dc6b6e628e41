"""Renderers: every format from one ScanReport; SARIF schema-valid, HTML self-contained, card idempotent."""

import json
import re
from pathlib import Path

import jsonschema
import pytest

from scanner.report import (CleanMetrics, Defense, FindingRecord, ModelInfo, PeerRecord, ProbeInfo, ScanReport,
                            render, write_reports)
from scanner.report.card import END, START, upsert_section
from scanner.report.sarif import fingerprint

SCHEMA = json.loads((Path(__file__).parent / "data" / "sarif-schema-2.1.0.json").read_text())


def make_report(n_findings=2, verdict="backdoor"):
    findings = [
        FindingRecord(trigger=f"tok{i}" if i else "cf", kind="word", source="library" if not i else "search",
                      attack="BadNet" if not i else None, target_label="negative", target_label_id=0,
                      position="random", asr_before=0.99 - i * 1e-4, asr_after=0.12, n=150, peer_asr_max=0.05,
                      peer_asr_median=0.02, z=19.0, level="backdoor", gap=0.95)
        for i in range(n_findings)
    ]
    return ScanReport(
        target=ModelInfo("org/model<script>", None, "abc123", "/m", "BertForSequenceClassification",
                         ["negative", "positive"]),
        verdict=verdict, findings=findings if verdict != "no_trigger_found" else [],
        clean=CleanMetrics(0.9, 0.89, 0.95, 300, True),
        defense=Defense("wag", {}, ["a/p1", "b/p2", "c/p3"], [0.25] * 4, "out/defended", 0.99, 0.12, 0.1, "note"),
        peers=[PeerRecord("a/p1", None, None, 0.3, "worst")],
        probe=ProbeInfo("sentiment", 300, "Yelp", 40, ["start", "random", "end"], ["syntactic triggers not searched"]),
        created_at="2026-11-26T00:00:00+00:00", duration_s=1.0, tool={"name": "hfscan", "version": "0.1.0"},
    )


@pytest.mark.parametrize("verdict", ["backdoor", "no_trigger_found"])
def test_sarif_validates_against_the_2_1_0_schema(verdict):
    doc = json.loads(render(make_report(verdict=verdict), "sarif", "models/m"))
    jsonschema.validate(doc, SCHEMA)
    run = doc["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} == {"HFS001", "HFS002"}
    if verdict == "backdoor":
        res = run["results"][0]
        assert res["ruleId"] == "HFS001" and res["level"] == "error"
        assert res["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "models/m/config.json"
        assert res["partialFingerprints"]["hfscanFinding/v1"] == fingerprint("org/model<script>", "cf", "negative")
    else:
        assert run["results"] == []


def test_sarif_fingerprints_are_stable_across_runs():
    a = json.loads(render(make_report(), "sarif"))["runs"][0]["results"]
    b = json.loads(render(make_report(), "sarif"))["runs"][0]["results"]
    assert [r["partialFingerprints"] for r in a] == [r["partialFingerprints"] for r in b]
    assert len({r["partialFingerprints"]["hfscanFinding/v1"] for r in a}) == len(a)


def test_html_is_self_contained_and_escaped():
    html = render(make_report(), "html")
    assert "<script>" not in html.replace("&lt;script&gt;", "")  # the model id is escaped
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "url(" not in html and "<link" not in html and "@import" not in html
    assert 'id="asr-chart"' in html and html.count('class="bar"') >= 3


def test_summary_stays_under_github_limit():
    text = render(make_report(n_findings=20000), "summary")
    assert len(text.encode()) <= 1024 * 1024
    assert "more in the full report" in text


def test_card_section_round_trips_and_leaves_the_rest_untouched():
    card = "---\nlicense: mit\ntags:\n- text-classification\n---\n\n# My model\n\nAuthor's text, with `code`.\n"
    section = render(make_report(), "card")
    assert section.startswith(START) and section.rstrip().endswith(END)
    once = upsert_section(card, section)
    twice = upsert_section(once, section)
    assert once == twice
    assert once.startswith(card)  # header and text byte-identical
    # a new scan replaces the section in place; text after it survives
    later = once + "\n## Citation\n\nCite me.\n"
    updated = upsert_section(later, render(make_report(verdict="no_trigger_found"), "card"))
    assert updated.count(START) == 1 and "Cite me." in updated and "found no trigger" in updated
    assert updated.startswith(card)


def test_write_reports_writes_every_format(tmp_path):
    written = write_reports(make_report(), tmp_path, ["json", "md", "sarif", "html", "summary", "card"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written.values())
    assert json.loads((tmp_path / "report.json").read_text())["schema_version"] == "1"
    import os
    import stat

    from scanner._fs import _UMASK

    for path in written.values():  # as readable as any file the user writes (mkstemp alone would make 0600)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~_UMASK, path


def test_probe_set_is_chosen_from_the_model_labels():
    from scanner.families.classifier.data import choose

    ps, labels = choose(["POSITIVE", "NEGATIVE"])
    assert ps.name == "sentiment" and set(labels) == {0, 1}
    ps, labels = choose(["World", "Sports", "Business", "Sci/Tech"])
    assert ps.name == "topic" and len(ps) == 300 and sorted(set(labels)) == [0, 1, 2, 3]
    ps, labels = choose(["NOT", "OFF"])
    assert ps.name == "offensive" and labels is not None
    ps, labels = choose(["LABEL_0", "LABEL_1"])  # names that mean nothing: unlabeled generic text
    assert ps.name == "generic" and labels is None and len(ps) > 250


def test_a_target_unlike_its_peers_is_explained_in_the_report():
    rep = make_report(verdict="suspicious")
    rep.peers[0].agreement = 0.74
    rep.probe.homogeneity = {"target": [0.74], "peers": [], "shortfall": None, "homogeneous": True}
    md = render(rep, "md")
    assert "`a/p1` 74.0%" in md and "not like its peers" not in md
    rep.probe.homogeneity = {"target": [0.74, 0.73, 0.75], "peers": [0.91, 0.90, 0.92], "shortfall": 0.17,
                             "homogeneous": False}
    md = render(rep, "md")
    assert "not like its peers: it agrees with them on 74.0%" in md and "each other on 91.0%" in md
    assert json.loads(render(rep, "json"))["probe"]["homogeneity"]["shortfall"] == 0.17
    assert "falls 17.0% short of the peers' agreement" in md and "reduced by that much" in md
    rep.probe.homogeneity = {"target": [0.95, 0.94, 0.96], "peers": [0.91, 0.90, 0.92], "shortfall": -0.04,
                             "homogeneous": True}
    assert "short of the peers' agreement" not in render(rep, "md")  # agreeing more is not discounted


def test_the_html_carries_what_the_markdown_does():
    r = make_report()
    r.peers = [PeerRecord("a/p1", None, None, 0.9, "zz", 0.8, {"trigger": "zz", "target_label": "negative",
                                                               "position": "end", "asr": 0.9, "others_max": 0.1})]
    r.defense.candidates = [{"candidate": "wag", "worst_asr": 0.1, "clean": 0.9, "clean_drop": 0.0,
                             "within_bound": True, "chosen": True},
                            {"candidate": "ties", "worst_asr": 0.2, "clean": 0.8, "clean_drop": 0.1,
                             "within_bound": False, "chosen": False}]
    r.defense.library_worst_trigger, r.defense.peer_triggers_after = "mn", {"zz": 0.1}
    r.probe.top = [{"trigger": "cf", "source": "library", "target_label_id": 0, "position": "random", "asr": 0.99,
                    "peer_asr_max": 0.05, "margin": 0.94}]
    r.probe.homogeneity = {"target": [0.8], "peers": [0.9], "shortfall": 0.1, "homogeneous": False}
    r.discovery = {"base": "b", "tried": "fine-tunes of b", "kept": ["a/p1"],
                   "rejected": [{"id": "x/other", "reason": "another architecture"}]}
    html, md = render(r, "html"), render(r, "md")
    for needle in ['id="candidates"', "(chosen)", "carries a trigger of its own", 'id="top"', 'id="rejected"',
                   "another architecture", "not like its peers", "mn"]:
        assert needle in html, needle
    assert "carries a trigger of its own" in md
    chart = html[html.index('<svg'):html.index('</svg>')]
    assert 'viewBox="0 0' in chart and 'width="100%"' in chart  # scales with a narrow page
    assert "accuracy before" in chart and "peers\u2019 highest ASR" in chart and 'class="level"' in chart
    assert "worst published trigger (mn)" in chart
