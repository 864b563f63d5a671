"""The inspectors' pages in a real browser: Debian's chromium (``/usr/bin/chromium``, never
``playwright install``) driven by Playwright against a real server (uvicorn) over a store
loaded with the small province and its screening filed as cases.

Set ``FUNDGUARD_SCREENSHOTS=DIR`` to keep screenshots of the queue, a group case, a code
timeline and the print-out in DIR.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api as playwright_api
from scorer_processes import start_scorer
from sqlalchemy import select
from test_cases import read_screening

from serve import cases
from serve.keys import Role, create_key
from serve.loading import load_folder
from serve.store import create_store_engine
from serve.tables import cases as cases_table
from serve.web import accounts, words

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
REGION, OTHER_REGION = "320102", "320205"
PASSWORD = "e2e-稽核-密码"  # noqa: S105 - a test account's


@pytest.fixture(scope="module")
def site(
    province: Path, province_screened: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A server over a store holding the province and its screening's cases; an inspector
    of REGION (wang) and the case ids the scenarios open."""
    folder = tmp_path_factory.mktemp("e2e")
    url = f"sqlite:///{folder / 'store.db'}"
    load_folder(province, url)
    engine = create_store_engine(url)
    try:
        flags, members = read_screening(province_screened)
        with engine.begin() as conn:
            cases.file_screening(conn, flags, members)
        accounts.create_user(
            engine, "wang", PASSWORD, role=Role.INSPECTOR, regions=(REGION,), display_name="王稽核"
        )
        key = create_key(engine, Role.INSPECTOR, (REGION,), "e2e")
        with engine.connect() as conn:
            mine = cases.queue(conn, regions=frozenset({REGION}), limit=1000)
            other = conn.execute(
                select(cases_table.c.case_id).where(cases_table.c.region_code == OTHER_REGION)
            ).scalar()
    finally:
        engine.dispose()
    groups = [c for c in mine if c.entity_type == "group"]
    coded = [c for c in mine if "duplicate_trace_code" in c.patterns]
    institutions = [c for c in mine if c.entity_type == "institution"]
    assert groups
    assert coded
    assert institutions
    assert other
    scorer = start_scorer(url, folder)
    try:
        yield {
            "url": scorer.url,
            "key": key,
            "queue": mine,
            "groups": groups,
            "coded": coded[0],
            "institution": institutions[-1],  # not the queue's top case
            "other": other,
        }
    finally:
        scorer.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, site: dict[str, Any]) -> Iterator[Any]:
    """A signed-in inspector's page (a fresh browser context: its own cookies)."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, locale="zh-CN")
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    tab.goto(f"{site['url']}/ui/cases")
    assert "/ui/login" in tab.url  # not signed in: to the sign-in page
    tab.fill("input[name=username]", "wang")
    tab.fill("input[name=password]", PASSWORD)
    tab.click("form[action='/ui/login'] button[type=submit]")
    tab.wait_for_url("**/ui/cases")
    try:
        yield tab
    finally:
        context.close()


def shoot(tab: Any, name: str) -> None:
    folder = os.environ.get("FUNDGUARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def test_sign_in_and_work_the_queue(page: Any, site: dict[str, Any]) -> None:
    expect = playwright_api.expect
    expect(page.locator("h1")).to_contain_text("案件队列")
    expect(page.locator("header.top")).to_contain_text("王稽核")
    rows = page.locator("tr.case-row")
    expect(rows).to_have_count(25)  # a page of the queue
    top = site["queue"][0]
    expect(rows.first).to_have_attribute("data-case", top.case_id)  # highest expected loss
    shoot(page, "queue")
    page.select_option("select[name=pattern]", "group_admission")  # htmx swaps the table
    expect(rows).to_have_count(len(site["groups"]))
    expect(page).to_have_url(re.compile(r"pattern=group_admission"))  # hx-push-url
    for tag in rows.locator(".tag").all_inner_texts():
        assert tag == words.pattern_name("group_admission")
    page.select_option("select[name=pattern]", "")
    page.fill("input[name=min_amount_at_risk]", "十元")
    page.press("input[name=min_amount_at_risk]", "Enter")
    expect(page.locator("#queue .errors")).to_contain_text("最低涉及金额")
    page.fill("input[name=min_amount_at_risk]", "")
    page.press("input[name=min_amount_at_risk]", "Enter")
    expect(rows.first).to_have_attribute("data-case", top.case_id)
    rows.first.locator("a").click()
    page.wait_for_url(f"**/ui/cases/{top.case_id}")
    expect(page.locator("#case-status")).to_have_text("待处理")
    expect(page.locator(".summary")).to_contain_text("案件概要")


def test_a_group_case_shows_its_network(page: Any, site: dict[str, Any]) -> None:
    expect = playwright_api.expect
    group = site["groups"][0]
    page.goto(f"{site['url']}/ui/cases/{group.case_id}")
    picture = page.locator("#network svg")
    expect(picture).to_have_count(1)
    members = page.locator("#members tbody tr")
    count = members.count()
    assert count >= 2
    text = picture.inner_html()
    for row in members.all():
        masked = row.locator("td").first.inner_text().strip()
        assert "*" in masked  # masked until 显示
        assert masked in text  # each member is a node of the picture, labelled masked
    shoot(page, "group-case")


def test_a_code_timeline_and_the_print_out(page: Any, site: dict[str, Any]) -> None:
    expect = playwright_api.expect
    coded = site["coded"]
    page.goto(f"{site['url']}/ui/cases/{coded.case_id}")
    timeline = page.locator("#timeline")
    expect(timeline).to_contain_text("追溯码流转")
    expect(timeline.locator("li.step").first).to_be_visible()
    shoot(page, "code-timeline")
    page.goto(f"{site['url']}/ui/cases/{coded.case_id}/print")
    expect(page.locator("h1")).to_have_text("医保基金现场检查案卷")
    expect(page.locator(".signatures")).to_contain_text("检查人员签字")
    assert page.locator("button").count() == 0  # nothing to press on paper
    shoot(page, "print")


def test_a_verdict_moves_the_institutions_credit(page: Any, site: dict[str, Any]) -> None:
    expect = playwright_api.expect
    case = site["institution"]
    page.goto(f"{site['url']}/ui/cases/{case.case_id}")
    before = int(page.locator("#credit-score").inner_text())
    page.click("#actions button:has-text('领取')")
    expect(page.locator("#case-status")).to_have_text("核查中")
    page.check("#verdict-form input[value=confirmed]")
    page.fill("#verdict-form textarea[name=note]", "现场核实：进销存不符")
    page.click("#verdict-form button[type=submit]")
    expect(page.locator("#case-status")).to_have_text("已确认违规")
    after = int(page.locator("#credit-score").inner_text())
    assert after < before
    expect(page.locator("#credit-moved")).to_contain_text(case.entity_id)
    expect(page.locator("#events")).to_contain_text("现场核实")


def test_another_regions_case_is_a_404_in_the_page_and_the_api(
    page: Any, site: dict[str, Any]
) -> None:
    expect = playwright_api.expect
    answer = page.goto(f"{site['url']}/ui/cases/{site['other']}")
    assert answer is not None
    assert answer.status == 404
    expect(page.locator("h1")).to_have_text("案件不存在")
    api = httpx.get(
        f"{site['url']}/v1/cases/{site['other']}",
        headers={"Authorization": f"Bearer {site['key']}"},
    )
    assert api.status_code == 404
    mine = httpx.get(
        f"{site['url']}/v1/cases/{site['coded'].case_id}",
        headers={"Authorization": f"Bearer {site['key']}"},
    )
    assert mine.status_code == 200
