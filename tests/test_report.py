"""The leaderboard page, in a real headless browser: it loads without errors or network requests, sorting and
filtering change the rows, its cells link to records copied beside it; and a broken page fails the check."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from peft_bench.cli import main
from peft_bench.report.page import find_chromium


@pytest.fixture(scope="module")
def site(embedded_default_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    assert main(["report", "--out", str(out), "--tracking-uri", embedded_default_runs["uri"]]) == 0
    return out


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    if executable is None:
        pytest.skip(
            "no Chromium (chromium, chromium-browser or google-chrome on PATH, or PEFT_BENCH_CHROMIUM): "
            "the page cannot be tested in a browser here; .ci/run installs Debian's chromium"
        )
    playwright = pytest.importorskip("playwright.sync_api", reason="the Python package playwright drives the browser")
    with playwright.sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


class Page:
    """The page opened from its file, with everything that went wrong while it loaded and ran."""

    def __init__(self, browser, path: Path):
        self.problems: list[str] = []
        self.page = browser.new_page()
        self.page.on(
            "console",
            lambda message: (
                message.type in ("error", "warning") and self.problems.append(f"console {message.type}: {message.text}")
            ),
        )
        self.page.on("pageerror", lambda error: self.problems.append(f"script error: {error}"))
        self.page.on("requestfailed", lambda request: self.problems.append(f"failed request: {request.url}"))
        self.page.on(
            "request",
            lambda request: (
                request.url.startswith("file://") or self.problems.append(f"network request: {request.url}")
            ),
        )
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_load_state("load")

    def visible_rows(self) -> list[list[str]]:
        return self.page.eval_on_selector_all(
            "#leaderboard tbody tr:not([hidden])", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
        )

    def column(self, label: str) -> int:
        headers = self.page.eval_on_selector_all("#leaderboard thead th", "cells => cells.map(c => c.textContent)")
        return headers.index(label)

    def sort_by(self, label: str) -> None:
        self.page.click(f"#leaderboard thead th button:text-is('{label}')")

    def close(self) -> None:
        self.page.close()


@pytest.mark.slow
def test_the_page_loads_clean_and_sorting_and_filtering_change_the_rows(site: Path, browser) -> None:
    page = Page(browser, site / "index.html")
    try:
        rows = page.visible_rows()
        assert len(rows) == 4  # two methods on two datasets
        assert page.page.text_content("#shown") == "4 of 4 cells shown"

        dataset, params = page.column("dataset"), page.column("params (M)")
        page.sort_by("dataset")
        by_dataset = page.visible_rows()
        assert [row[dataset] for row in by_dataset] == sorted(row[dataset] for row in rows)
        assert by_dataset != rows  # the default order is by method
        page.sort_by("params (M)")
        page.sort_by("params (M)")  # the second click: descending
        values = [float(row[params]) for row in page.visible_rows()]
        assert values == sorted(values, reverse=True) and len(set(values)) == 4

        page.page.select_option("select[data-filter=dataset]", "synthetic-motion")
        motion = page.visible_rows()
        assert len(motion) == 2 and {row[dataset] for row in motion} == {"synthetic-motion"}
        page.page.select_option("select[data-filter=group]", "Linear probe")
        assert [row[0] for row in page.visible_rows()] == ["linear_probe"]
        commit = page.page.eval_on_selector("select[data-filter=commits] option:nth-child(2)", "o => o.value")
        page.page.select_option("select[data-filter=commits]", commit)
        assert len(page.visible_rows()) == 1
        page.page.select_option("select[data-filter=dataset]", "")
        page.page.select_option("select[data-filter=group]", "")
        assert len(page.visible_rows()) == 4 and page.page.text_content("#shown") == "4 of 4 cells shown"
        # The Pareto plots are there and drawn.
        sizes = page.page.eval_on_selector_all(".plots img", "images => images.map(i => i.naturalWidth)")
        assert len(sizes) == 4 and all(width > 0 for width in sizes)
        assert page.problems == []
    finally:
        page.close()


@pytest.mark.slow
def test_each_cell_links_to_its_runs_records_copied_beside_the_page(site: Path) -> None:
    page = (site / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'<a href="(records/[^"]+\.json)">s0</a>', page)
    assert len(links) == 4
    for link in links:
        record = json.loads((site / link).read_text())
        assert link.startswith(f"records/{record['run']['name']}-{record['config_digest']}")
    assert "http://" not in page and "https://" not in page  # nothing to fetch from elsewhere
    assert "hardware: cpu" in page and "commits: " in page  # the provenance footer


@pytest.mark.slow
def test_the_page_from_records_has_the_rows_of_the_page_from_mlflow(embedded_default_runs, site, tmp_path) -> None:
    out = tmp_path / "from-records"
    assert main(["report", "--out", str(out), "--records", str(embedded_default_runs["runs"])]) == 0

    def leaderboard(folder: Path) -> str:
        return re.search(r'<table id="leaderboard">.*?</table>', (folder / "index.html").read_text(), re.DOTALL).group(
            0
        )

    assert leaderboard(out) == leaderboard(site)
    assert sorted(p.name for p in (out / "records").iterdir()) == sorted(p.name for p in (site / "records").iterdir())


@pytest.mark.slow
def test_a_broken_page_fails_the_check(site: Path, browser, tmp_path: Path) -> None:
    broken = tmp_path / "index.html"
    for figure in site.glob("pareto_*.svg"):
        (tmp_path / figure.name).write_bytes(figure.read_bytes())
    page_text = (site / "index.html").read_text(encoding="utf-8")
    broken.write_text(page_text.replace('"use strict";', '"use strict"; window.notAFunction();', 1), encoding="utf-8")
    page = Page(browser, broken)
    try:
        assert any("script error" in problem for problem in page.problems)
        rows = page.visible_rows()
        page.sort_by("dataset")
        assert page.visible_rows() == rows  # and the table no longer sorts
    finally:
        page.close()
