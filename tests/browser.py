"""A real browser for the report tests: Debian's chromium, driven by Playwright.

:func:`chromium_path` installs the ``chromium`` package with apt-get when it is
missing (as root); nothing downloads a browser build of its own (Playwright is
pointed at the system binary). :func:`open_report` opens a report from disk and
records what a reader would see go wrong: page errors, console errors and every
request that is not to ``file:`` or ``data:``.
"""
from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.apt import apt_install

CHROMIUM = "chromium"


class BrowserUnavailable(RuntimeError):
    """Chromium could not be installed here; the message says why."""


def chromium_path() -> str:
    """The system chromium, installed with apt-get when missing; BrowserUnavailable saying why not."""
    failure = apt_install((CHROMIUM,), present=lambda: shutil.which(CHROMIUM) is not None)
    if failure:
        raise BrowserUnavailable(failure)
    return shutil.which(CHROMIUM)


@dataclass
class PageLog:
    """What went wrong while a page was open."""

    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@contextmanager
def open_report(path: Path, javascript: bool = True, width: int = 1280) -> Iterator[tuple[object, PageLog]]:
    """(page, log) for the report at ``path``, opened from disk in headless chromium; closed on exit."""
    from playwright.sync_api import sync_playwright

    log = PageLog()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            context = browser.new_context(java_script_enabled=javascript, viewport={"width": width, "height": 900})
            page = context.new_page()
            page.on("pageerror", lambda error: log.errors.append(str(error)))
            page.on("console", lambda message: log.console_errors.append(message.text) if message.type == "error" else None)
            page.on("dialog", lambda dialog: (log.dialogs.append(dialog.message), dialog.dismiss()))
            page.on("request", lambda request: None if request.url.startswith(("file:", "data:")) else log.outside_requests.append(request.url))
            page.goto(path.resolve().as_uri(), wait_until="load")
            yield page, log
        finally:
            browser.close()


def broken_images(page) -> list[str]:
    """The page's images that did not decode (their alt text, or the start of their source)."""
    return page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40))")


def in_page_links(page) -> tuple[list[str], list[str]]:
    """The anchors the page's in-page links (``#id``) point to, and those of them that no element has as its id."""
    links = page.evaluate("Array.from(document.querySelectorAll('a[href^=\"#\"]')).map(a => a.getAttribute('href').slice(1))")
    return links, [anchor for anchor in links if not page.evaluate("id => document.getElementById(id) !== null", anchor)]

