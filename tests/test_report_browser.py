"""The report in a real browser (Debian's chromium, driven by Playwright), the way a reader uses it."""
from __future__ import annotations

import dataclasses
import pandas as pd
import pytest

from tests.browser import broken_images, check_report, in_page_links, open_report
from tests.workflow import ROOT

SCREENSHOTS = ROOT / "reports" / "screenshots"

pytestmark = pytest.mark.browser


def test_the_tiny_report_opens_cleanly_and_every_part_works(tiny_audit):
    """No page or console error, no request outside the file, every image decodes, every link's anchor exists,
    sorting reorders a table, filtering hides rows, a figure enlarges on click; readable with JavaScript off."""
    from audit.storage import open_zarr

    report = tiny_audit / "reports" / "tiny.html"
    with open_report(report) as (page, log):
        assert page.evaluate("document.images.length") > 5 and not broken_images(page)
        links, missing = in_page_links(page)
        assert links and not missing, missing
        for section in ("summary", "dataset", "anomalies", "pairs", "quality", "provenance"):
            assert page.locator(f"#{section}").count() == 1, section
        assert page.locator("nav.toc a").count() >= 6

        table = page.locator("table.sortable", has=page.locator("th", has_text="mean distance")).first
        distances = lambda: [float(t) for t in table.locator("tr td:nth-child(8)").all_inner_texts()]  # noqa: E731
        before = distances()
        table.locator("th", has_text="mean distance").click()
        ascending = distances()
        table.locator("th", has_text="mean distance").click()
        assert ascending == sorted(before) and distances() == sorted(before, reverse=True) and before != ascending

        box = page.locator("input.filter").first
        rows = box.locator("xpath=following-sibling::table[1]//tr[td]")
        total = rows.count()
        box.fill("no row has this text")
        assert total > 0 and sum(row.is_visible() for row in rows.all()) == 0
        box.fill("")
        assert sum(row.is_visible() for row in rows.all()) == total

        gallery = page.locator("details.gallery").first  # every method's maps of the first class's top image
        subject = gallery.locator("h4").first.text_content()
        expected = 0
        for store in (tiny_audit / "results" / "tiny" / "saliency").glob("*.zarr"):
            maps = open_zarr(store)
            expected += int(((maps["image_id"].values == subject) & (maps["purpose"].values == "anomaly")).sum())
        assert not gallery.locator("figure.tile").first.is_visible()  # collapsed until opened
        gallery.locator("summary").click()
        assert gallery.locator("figure.tile").count() == expected > 5 and gallery.locator("figure.tile").first.is_visible()
        assert "deletion AUC" in gallery.locator("figcaption").first.inner_text()

        figure = page.locator("img.figure").nth(1)
        figure.click()
        assert "zoomed" in figure.get_attribute("class")
        figure.click()

        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "report-top.png"))
        page.locator("details", has=page.locator("h3[id^='class-']")).first.screenshot(path=str(SCREENSHOTS / "report-gallery.png"))
    assert not log.errors and not log.console_errors and not log.outside_requests and not log.dialogs, log

    with open_report(report, javascript=False) as (page, log):
        assert not broken_images(page) and page.locator("input.filter").count() == 0  # no dead controls without the script
        assert page.locator("table.sortable tr").count() > 10 and page.locator("#quality").is_visible()
    assert not log.errors and not log.outside_requests


SECTIONS = {"summary", "dataset", "anomalies", "strategies", "pairs", "quality", "provenance"}


def _assert_opens_cleanly(report) -> None:
    check = check_report(report)
    assert check.images > 5 and not check.broken_images and not check.dangling_links, check
    assert SECTIONS <= set(check.headings), check.headings
    assert not check.log.errors and not check.log.console_errors and not check.log.outside_requests and not check.log.dialogs, check.log


def test_the_vit_report_opens_cleanly(tiny_vit_audit):
    """The tiny ViT audit's report (CDAM's signed maps, attention): every image decodes, every anchor exists, nothing errs."""
    _assert_opens_cleanly(tiny_vit_audit / "reports" / "tiny_vit.html")


@pytest.mark.parametrize("audit", ["digits", "digits_vit"])
def test_the_demo_reports_open_cleanly(audit):
    """The demo's reports as `make audit` left them in this checkout (it takes 13-19 minutes on 2 cores, too long for every
    test run: a fresh clone has none, and the test says so)."""
    report = ROOT / "reports" / f"{audit}.html"
    if not report.exists():
        pytest.skip(f"{report.relative_to(ROOT)} is not there: run `make audit` first")
    _assert_opens_cleanly(report)


HOSTILE = ['<script>window.__pwned = 1</script>', '"><img src=x onerror="window.__pwned = 2">']


def test_hostile_names_show_as_text_and_run_nothing(tiny_audit, tmp_path):
    """Class names and image ids that are markup: shown as the text they are; no script runs, no request leaves the page."""
    from audit.report.render import render_report
    from tests.workflow import report_inputs

    results = tiny_audit / "results" / "tiny"
    inputs = report_inputs(results)
    names = [HOSTILE[0], HOSTILE[1]] + [str(c) for c in inputs.features["class"].values[2:]]
    rename = {"0": HOSTILE[0], "1": HOSTILE[1]}
    html = render_report(
        dataclasses.replace(
            inputs,
            audit=HOSTILE[1],
            features=inputs.features.assign_coords({"class": names}),
            anomalies=inputs.anomalies.assign(class_name=inputs.anomalies["class_name"].replace(rename)),
            pairs=inputs.pairs.replace({"name_a": rename, "name_b": rename}),
            similar=inputs.similar.replace({"name": rename, "similar_name": rename}),
            metrics_summary=inputs.metrics_summary.replace({"variant": {"gradcam": HOSTILE[0]}}),
            anomaly_quality=inputs.anomaly_quality.replace({"scope": rename}),
            rejects=pd.DataFrame({"image_id": HOSTILE, "path": ["p", "q"], "label": HOSTILE, "reason": ["unknown label"] * 2}),
        )
    )
    path = tmp_path / "hostile.html"
    path.write_text(html, encoding="utf-8")
    with open_report(path) as (page, log):
        text = page.inner_text("body")
        assert all(name in text for name in HOSTILE) and HOSTILE[1] in page.title()
        assert page.evaluate("window.__pwned === undefined")
        assert page.locator("script").count() == 1  # the report's own script, nothing injected
    assert not log.errors and not log.outside_requests and not log.dialogs, log

