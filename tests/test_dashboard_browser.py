"""The dashboards in a real browser: Debian's headless Chromium driven by its chromedriver (selenium).

Signs in, visits every page, changes a filter, follows the shared link in a fresh session (through
the login page, back to the same view), and downloads a CSV and a PDF report. Screenshots and the
downloads are kept under test-artifacts/<test name>/. The numbers shown are the golden fleet's
(tests/scenario.py): fleet cost USD 22.00, west (H100 only) USD 13.20, vision USD 3.85.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import scenario
from dashboard_client import app_config, serve, write_users
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from dashboards.app import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PASSWORD = "browser-test-password"
WAIT_S = 30


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("browser")
    lake = scenario.built_lake(root)
    users = root / "users.toml"
    write_users(users, PASSWORD, {"root": None, "vis": ["vision"]})
    with serve(create_app(app_config(lake, users, scenario.RULES, scenario.BOOK))) as port:
        yield f"http://127.0.0.1:{port}"


def browser(downloads: Path) -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"  # selenium must never try to fetch a driver or a browser
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1400,1000",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(arg)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def wait_for(what: str, cond: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """Poll `cond` until it returns something truthy (bounded in time)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = cond()
            if v:
                return v
        except WebDriverException as exc:
            last = exc
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} ({last})")


def text_of(d: webdriver.Chrome, cid: str) -> str:
    els = d.find_elements(By.ID, cid)
    return els[0].text if els else ""


def sign_in(d: webdriver.Chrome, user: str) -> None:
    wait_for("login form", lambda: d.find_elements(By.ID, "username"))
    d.find_element(By.ID, "username").send_keys(user)
    d.find_element(By.ID, "password").send_keys(PASSWORD)
    d.find_element(By.ID, "login-submit").click()
    wait_for("signed in", lambda: d.find_elements(By.ID, "whoami"))


def pick(d: webdriver.Chrome, dropdown: str, option: str) -> None:
    """Choose `option` in a dcc.Dropdown (Dash 4: a button that opens a listbox)."""
    d.find_element(By.ID, dropdown).click()
    opt = wait_for(
        f"option {option}",
        lambda: [e for e in d.find_elements(By.XPATH, "//*[@role='option']") if e.text.strip() == option],
    )
    opt[0].click()
    d.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)


def test_sign_in_pages_filters_shared_link_and_downloads(base_url: str, artifacts: Path) -> None:
    downloads = artifacts / "downloads"
    shutil.rmtree(downloads, ignore_errors=True)
    downloads.mkdir()
    d = browser(downloads)
    shots: list[str] = []
    done = False

    def shot(name: str) -> None:
        d.save_screenshot(str(artifacts / f"{len(shots):02d}-{name}.png"))
        shots.append(name)

    try:
        d.get(base_url + "/")
        assert urlsplit(d.current_url).path == "/login"
        shot("login")
        sign_in(d, "root")
        wait_for("fleet cost", lambda: text_of(d, "card-cost") == "USD 22.00")
        assert text_of(d, "card-util").endswith("%") and text_of(d, "card-alloc").endswith("%")
        wait_for("graphs", lambda: len(d.find_elements(By.CSS_SELECTOR, "#graph-cluster .main-svg")) > 0)
        shot("overview")

        d.find_element(By.ID, "nav-tenants").click()
        wait_for("tenants table", lambda: "vision" in text_of(d, "tenants"))
        assert "nlp" in text_of(d, "tenants") and "USD 3.85" in text_of(d, "tenants")
        shot("tenants")
        d.find_element(By.LINK_TEXT, "vision").click()
        wait_for("tenant page", lambda: text_of(d, "tenant-cost") == "USD 3.85")
        assert urlsplit(d.current_url).path == "/tenants/vision"
        assert text_of(d, "tenant-slices") == "2"
        shot("tenant-vision")

        d.find_element(By.ID, "nav-chargeback").click()
        wait_for("conservation", lambda: text_of(d, "chargeback-check").endswith(": ok"))
        assert text_of(d, "chargeback-total") == "Total shown: USD 22.00"
        shot("chargeback")

        d.find_element(By.ID, "nav-gpus").click()
        wait_for("heatmap", lambda: d.find_elements(By.CSS_SELECTOR, "#gpu-heatmap .heatmaplayer"))
        # Click the top-right cell (west/node-b, GPU 1 = B1): drill down to its slices, kept in the URL.
        drag = d.find_element(By.CSS_SELECTOR, "#gpu-heatmap .nsewdrag")
        w, h = drag.size["width"], drag.size["height"]
        ActionChains(d).move_to_element_with_offset(drag, w // 4, -h // 4).click().perform()
        wait_for("drill-down", lambda: text_of(d, "gpu-title").startswith(scenario.B1))
        assert parse_qs(urlsplit(d.current_url).query) == {"gpu": [scenario.B1]}
        assert "vision/infer-1" in text_of(d, "gpu-slices")
        shot("gpus")

        d.find_element(By.ID, "nav-idle").click()  # the nav drops the drill-down from the URL
        wait_for("idle table", lambda: "sweep-0" in text_of(d, "idle-now") or text_of(d, "idle-now"))
        shot("idle")

        # A filter goes into the URL and changes what is shown.
        d.find_element(By.ID, "nav-overview").click()
        wait_for("fleet cost again", lambda: text_of(d, "card-cost") == "USD 22.00")
        pick(d, "f-cluster", "west")
        wait_for("west cost", lambda: text_of(d, "card-cost") == "USD 13.20")
        shared = d.current_url
        assert parse_qs(urlsplit(shared).query) == {"cluster": ["west"]}
        shot("filtered-west")

        # The shared link, in a fresh session: sign-in page, then the same view.
        d.delete_all_cookies()
        d.get(shared)
        assert urlsplit(d.current_url).path == "/login"
        sign_in(d, "root")
        wait_for("same view", lambda: text_of(d, "card-cost") == "USD 13.20")
        assert d.current_url == shared
        assert "west" in d.find_element(By.ID, "f-cluster").text
        shot("shared-link")

        # Downloads from the chargeback page.
        d.find_element(By.ID, "nav-chargeback").click()
        wait_for("download links", lambda: d.find_elements(By.ID, "dl-csv-fleet"))
        d.find_element(By.ID, "dl-csv-fleet").click()
        d.find_element(By.ID, "dl-pdf-fleet").click()
        csv = wait_for("csv file", lambda: [p for p in downloads.glob("*.csv") if p.stat().st_size > 0])
        pdf = wait_for("pdf file", lambda: [p for p in downloads.glob("*.pdf") if p.stat().st_size > 1000])
        assert csv[0].name == "2026-10-fleet-charges.csv"
        rows = csv[0].read_text().splitlines()
        assert rows[0].startswith("billing_period,line_no,line_type,tenant")
        # the west filter applies to the page, not to the fleet report: every line of the month
        assert sum(1 for r in rows[1:] if r.startswith("2026-10,")) == len(rows) - 1 >= 10
        assert pdf[0].name == "2026-10-fleet.pdf" and pdf[0].read_bytes().startswith(b"%PDF")
        shot("downloads")

        # A viewer signs in and sees only its tenant.
        d.delete_all_cookies()
        d.get(base_url + "/tenants")
        sign_in(d, "vis")
        wait_for("viewer tenants", lambda: "vision" in text_of(d, "tenants"))
        assert "nlp" not in d.find_element(By.TAG_NAME, "body").text
        shot("viewer-tenants")
        done = True
    finally:
        if not done:
            d.save_screenshot(str(artifacts / "failure.png"))
        d.quit()
    assert len(shots) == 11
    assert sorted(p.name for p in artifacts.glob("[0-9][0-9]-*.png")) == [
        f"{i:02d}-{n}.png" for i, n in enumerate(shots)
    ]


@pytest.fixture(scope="module")
def demo_like(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, datetime]]:
    """A lake as the demo leaves it: its simulated fleet (one hour of 10 s ticks, ending two hours
    ago) with its tenant rules and price book, rollups built, served with a viewer of one tenant."""
    from collector.fleet import SimulatedFleet
    from gpuledger.demo import _demo_price_book
    from warehouse.accounting import Accounting
    from warehouse.lake import Lake
    from warehouse.pricing import PriceBook

    root = tmp_path_factory.mktemp("demo-browser")
    lake = root / "lake"
    start = (datetime.now(UTC) - timedelta(hours=3)).replace(second=0, microsecond=0)
    fleet = SimulatedFleet(seed=7, start=start, interval_s=10.0)
    scenario.write(Lake(lake), [m for _ in range(360) for m in fleet.next_tick()])
    rules, book = fleet.tenant_rules(), _demo_price_book()
    acct = Accounting(lake, tenant_rules=rules, price_book=PriceBook(book))
    acct.update()
    idle = acct.idle_periods(start=start, end=start + timedelta(hours=2))
    acct.close()
    tenant = sorted(r["tenant"] for r in idle)[0]
    users = root / "users.toml"
    write_users(users, PASSWORD, {"root": None, "one": [tenant]})
    with serve(create_app(app_config(lake, users, rules, book))) as port:
        yield f"http://127.0.0.1:{port}", start + timedelta(seconds=3600)


def idle_rows(d: webdriver.Chrome) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in d.find_elements(By.CSS_SELECTOR, "#idle-now tbody tr")
    ]


def test_demo_idle_page_lists_idle_allocations_and_gpu_panels_draw(
    demo_like: tuple[str, datetime], artifacts: Path
) -> None:
    url, last_tick = demo_like
    d = browser(artifacts)
    done = False
    try:
        d.get(url + "/idle")
        sign_in(d, "root")
        rows = wait_for("idle rows", lambda: idle_rows(d))
        header = d.find_element(By.CSS_SELECTOR, "#idle-table h3").text
        # the header's time is the fleet's last tick, not the end of its hour
        assert f"data up to {last_tick:%Y-%m-%d %H:%M} UTC" in header
        assert all(len(r) == 10 and r[9].startswith("USD ") for r in rows)
        minutes = [int(r[7].replace(",", "")) for r in rows]
        assert minutes == sorted(minutes, reverse=True) and minutes[-1] >= 30  # idle_min_minutes
        tenants = {r[0] for r in rows}
        d.save_screenshot(str(artifacts / "idle-admin.png"))

        d.find_element(By.ID, "nav-gpus").click()
        for panel in ("gpu-timeline", "gpu-memory", "gpu-power", "gpu-temp"):
            wait_for(panel, lambda p=panel: d.find_elements(By.CSS_SELECTOR, f"#{p} .main-svg"))
        # the demo's fleet has more than 40 GPUs: every panel is a node x time heatmap
        for panel in ("gpu-timeline", "gpu-memory", "gpu-power", "gpu-temp"):
            assert d.find_elements(By.CSS_SELECTOR, f"#{panel} .heatmaplayer"), panel
        d.save_screenshot(str(artifacts / "gpus-admin.png"))

        d.delete_all_cookies()
        d.get(url + "/idle")
        sign_in(d, "one")
        mine = wait_for("viewer idle rows", lambda: idle_rows(d))
        who = d.find_element(By.ID, "whoami").text
        own = who.split(": ", 1)[1].rstrip(")")
        assert {r[0] for r in mine} == {own} and own in tenants
        assert len(mine) == sum(1 for r in rows if r[0] == own)
        done = True
    finally:
        if not done:
            d.save_screenshot(str(artifacts / "failure.png"))
        d.quit()
