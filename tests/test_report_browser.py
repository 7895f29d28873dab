"""The report in a real browser (Debian's chromium, driven by Playwright), the way a reader uses it."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.report.text import shorten_id
from tests.browser import broken_images, in_page_links, open_report
from tests.workflow import ROOT

SCREENSHOTS = ROOT / "reports" / "screenshots"
SECTIONS = ("summary", "dataset", "anomalies", "strategies", "pairs", "quality", "provenance")
DEMO_REPORTS_REQUIRED = os.environ.get("AUDIT_DEMO_REPORTS") == "required"
"""Set by `.ci/run`, which runs `make audit` before `make test`: there a missing demo report fails its test."""

pytestmark = pytest.mark.browser


def _gallery_tiles(results: Path, image_ids: list[str]) -> int:
    """How many anomaly maps of ``image_ids`` the audit's saliency stores hold: the tiles their gallery must show."""
    from audit.storage import open_zarr

    tiles = 0
    for store in (results / "saliency").glob("*.zarr"):
        maps = open_zarr(store)
        tiles += int((np.isin(maps["image_id"].values, image_ids) & (maps["purpose"].values == "anomaly")).sum())
    return tiles


def _pair_maps(results: Path) -> dict[tuple[int, int], int]:
    """Per pair direction (a, b) that the audit's saliency stores hold maps of: how many pair maps they hold."""
    from audit.storage import open_zarr

    counts: dict[tuple[int, int], int] = {}
    for store in (results / "saliency").glob("*.zarr"):
        maps = open_zarr(store)
        pair = maps["purpose"].values == "pair"
        for a, b in zip(maps["target"].values[pair], maps["compare"].values[pair]):
            counts[int(a), int(b)] = counts.get((int(a), int(b)), 0) + 1
    return counts


def _assert_the_workbench_works(report: Path, results: Path, screenshot_prefix: str) -> None:
    """Open ``report`` as a reader does and use every part: no page or console error, no request outside the file,
    every image decodes, every section and every link's anchor exists, sorting reorders a table both ways, filtering
    hides rows, a gallery holds every method's maps of its image, every pair direction with maps has its section, grid
    and every map in its gallery, a figure enlarges on click; then, with JavaScript
    off, it is still readable. Saves screenshots of the top and of a class's gallery as ``<prefix>-top.png`` and
    ``<prefix>-gallery.png`` under reports/screenshots/."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with open_report(report) as (page, log):
        page.screenshot(path=str(SCREENSHOTS / f"{screenshot_prefix}-top.png"))
        assert page.evaluate("document.images.length") > 5 and not broken_images(page)
        links, missing = in_page_links(page)
        assert links and not missing, missing
        for section in SECTIONS:
            assert page.locator(f"#{section}").count() == 1, section
        assert page.locator("nav.toc a").count() >= len(SECTIONS)

        table = page.locator("table.sortable", has=page.locator("th", has_text="mean distance")).first
        column = table.locator("th").all_inner_texts().index("mean distance") + 1
        distances = lambda: [float(t) for t in table.locator(f"tr td:nth-child({column})").all_inner_texts()]  # noqa: E731
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

        gallery = page.locator("details.gallery").first  # every method's maps of the first class's top images
        expected = _gallery_tiles(results, [h.get_attribute("data-image-id") for h in gallery.locator("h4").all()])
        assert not gallery.locator("figure.tile").first.is_visible()  # collapsed until opened
        gallery.locator("summary").click()
        assert gallery.locator("figure.tile").count() == expected > 5 and gallery.locator("figure.tile").first.is_visible()
        assert "deletion AUC" in gallery.locator("figcaption").first.inner_text()

        directions = _pair_maps(results)  # every direction of every pair with maps: its section, grid and full gallery
        assert directions and page.locator("h3[id^='pair-']").count() == len(directions)
        for (a, b), count in directions.items():
            section = page.locator(f"h3#pair-{a}-{b}").locator("xpath=ancestor::details[1]")
            assert section.count() == 1, (a, b)
            assert section.locator("xpath=./img[contains(@class, 'figure')]").count() == 1, (a, b)  # the grid
            assert section.locator("figure.tile").count() == count, (a, b)  # every map in the gallery

        overall = page.locator("#ranking-quality")  # known anomalies: how well each ranking finds them, the whole audit
        if overall.count():
            assert overall.is_visible() and set(overall.locator("tr td:nth-child(2)").all_inner_texts()) == {"all"}
            per_class = page.locator("#ranking-quality-per-class")  # per class: folded until opened
            assert not per_class.is_visible()
            page.locator("details.per-class-quality > summary").click()
            assert per_class.is_visible() and per_class.locator("tr td").count() > 0

        figure = page.locator("img.figure").nth(1)
        figure.click()
        assert "zoomed" in figure.get_attribute("class")
        figure.click()

        first_class = page.locator("details", has=page.locator("h3[id^='class-']")).first
        first_class.screenshot(path=str(SCREENSHOTS / f"{screenshot_prefix}-gallery.png"))
    assert not log.errors and not log.console_errors and not log.outside_requests and not log.dialogs, log

    with open_report(report, javascript=False) as (page, log):
        assert not broken_images(page) and page.locator("input.filter").count() == 0  # no dead controls without the script
        assert page.locator("table.sortable tr").count() > 10 and page.locator("#quality").is_visible()
    assert not log.errors and not log.outside_requests


def test_the_tiny_report_opens_cleanly_and_every_part_works(tiny_audit):
    _assert_the_workbench_works(tiny_audit / "reports" / "tiny.html", tiny_audit / "results" / "tiny", "tiny")


def test_the_vit_report_opens_cleanly_and_every_part_works(tiny_vit_audit):
    """The tiny ViT audit's report: CDAM's signed maps and attention among the methods."""
    _assert_the_workbench_works(tiny_vit_audit / "reports" / "tiny_vit.html", tiny_vit_audit / "results" / "tiny_vit", "tiny_vit")


@pytest.mark.parametrize("audit", ["digits", "digits_vit"])
def test_the_demo_reports_open_cleanly_and_every_part_works(audit):
    """The demo's reports as `make audit` wrote them in this checkout. CI (`.ci/run`) runs the demo before the suite;
    elsewhere the demo (about 18 minutes on 2 cores) may not have run, and then the test says so and skips."""
    report = ROOT / "reports" / f"{audit}.html"
    if not report.exists():
        message = f"{report.relative_to(ROOT)} is not there: run `make audit` first"
        if DEMO_REPORTS_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    _assert_the_workbench_works(report, ROOT / "results" / audit, audit)


LONG_ID = "/data/hospital-a/scanner-7/2024/03/patient-00412/slide-0007/tile-x0512-y1024.png"
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
            rejects=pd.DataFrame({"image_id": HOSTILE + [LONG_ID], "path": ["p", "q", "r"], "label": HOSTILE + ["x"], "reason": ["unknown label"] * 3}),
        )
    )
    path = tmp_path / "hostile.html"
    path.write_text(html, encoding="utf-8")
    with open_report(path) as (page, log):
        text = page.inner_text("body")
        assert all(name in text for name in HOSTILE) and HOSTILE[1] in page.title()
        assert page.evaluate("window.__pwned === undefined")
        assert page.locator("script").count() == 1  # the report's own script, nothing injected
        long_id = page.locator("span.image-id", has_text=shorten_id(LONG_ID))  # a path: its end shown, all of it on hover
        assert long_id.count() == 1 and long_id.get_attribute("title") == LONG_ID and LONG_ID not in text
        table = long_id.locator("xpath=ancestor::table[1]")
        table.locator("xpath=preceding-sibling::input[1]").fill("scanner-7/2024")  # a part of the id that is not shown
        shown = [row for row in table.locator("tr:has(td)").all() if row.is_visible()]
        assert len(shown) == 1 and shown[0].locator("span.image-id").count() == 1  # the filter still finds its row
    assert not log.errors and not log.outside_requests and not log.dialogs, log

