"""The HTML report and the bot's dashboard in headless Chromium, at 1280 and 420 px: nothing wider than the
screen (wide tables scroll inside their own box), the verdict visible, screenshots written.

Needs a Chromium (`apt-get install chromium`); without one these tests are skipped and say so.
"""

from __future__ import annotations

import html as html_lib
import re
import shutil
import subprocess
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (apt-get install chromium)")

MEASURE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="f" src="page.html" style="width:{w}px;height:3000px;border:0"></iframe><pre id="out">pending</pre>
<script>document.getElementById("f").onload = function () {{
  var d = this.contentDocument.documentElement;
  document.getElementById("out").textContent = "W=" + d.scrollWidth + ";C=" + d.clientWidth + ";T=" +
      this.contentDocument.body.innerText.replace(/\\s+/g, " ").slice(0, 4000);
}};</script></body></html>"""


def _chromium(*args: str) -> str:
    r = subprocess.run([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                       capture_output=True, text=True, timeout=120)
    return r.stdout


def _measure(folder, html: str, width: int) -> tuple[int, int, str]:
    (folder / "page.html").write_text(html, encoding="utf-8")
    (folder / "measure.html").write_text(MEASURE.format(w=width), encoding="utf-8")
    dom = _chromium("--allow-file-access-from-files", "--virtual-time-budget=3000", "--dump-dom",
                    f"file://{folder / 'measure.html'}")
    m = re.search(r"W=(\d+);C=(\d+);T=([^<]*)", dom)
    assert m, dom[-500:]
    _chromium(f"--window-size={width},1600", f"--screenshot={folder / f'page-{width}.png'}",
              f"file://{folder / 'page.html'}")
    assert (folder / f"page-{width}.png").stat().st_size > 10_000
    return int(m.group(1)), int(m.group(2)), html_lib.unescape(m.group(3))


@pytest.mark.parametrize("width", [1280, 420])
def test_the_html_report_fits_the_screen(tmp_path, width):
    from test_report import make_report

    from scanner.report import render
    from scanner.report.model import PeerRecord

    r = make_report(n_findings=6)
    r.peers = [PeerRecord(f"org/a-rather-long-peer-name-{i}", None, None, 0.05, "worst", 0.9) for i in range(3)]
    r.discovery = {"base": "b", "tried": "fine-tunes of b", "kept": [],
                   "rejected": [{"id": "x/" + "y" * 60, "reason": "another architecture " * 4}]}
    scroll, client, text = _measure(tmp_path, render(r, "html"), width)
    assert scroll <= client, f"{scroll}px of content in a {client}px viewport"
    assert "Backdoor found" in text and "cf" in text


@pytest.mark.parametrize("width", [1280, 420])
def test_the_dashboard_shows_the_recent_job_and_its_verdict(tmp_path, width):
    from scanner.bot.queue import Job
    from scanner.report.render import template

    jobs = [Job(7, "acme/sentiment-pro", "a" * 40, "s", "done", 1, "", "backdoor", "/r/report.html",
                "https://huggingface.co/acme/sentiment-pro/discussions/1", 42.0, time.time(), time.time()),
            Job(6, "acme/<b>odd</b>", "b" * 40, "s", "skipped", 1, "the repo opted out of hfscan")]
    html = template("dashboard.html.j2").render(jobs=jobs, counts={"done": 1, "skipped": 1}, mode="open-pr")
    scroll, client, text = _measure(tmp_path, html, width)
    assert "acme/sentiment-pro" in text and "backdoor" in text and "opted out" in text
    assert "acme/<b>odd</b>" in text  # escaped: shown as text
    assert scroll <= client
