"""Screenshots of every dashboard page at 1600x1000 with headless Chromium, for docs/.

usage: python scripts/screenshots.py OUT_DIR [--until 2h]

Runs `gpuledger demo` in a temporary folder (in-process transport, any free port), signs in as
the demo's admin, waits until each page has drawn its data, and saves docs-ready PNGs. It is how
the pictures in docs/ were made, so they can be made again after a change to the pages.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

# (file name, page, element that says the data is drawn, element to scroll to or None)
PAGES = [
    ("overview", "/", "overview-cards", None),
    ("tenants", "/tenants", "tenants", None),
    ("chargeback", "/chargeback", "charge-lines", None),
    ("gpus", "/gpus", "gpu-heatmap", None),
    ("gpu-panels", "/gpus", "gpu-power", "gpu-panels"),
    ("idle", "/idle", "idle-now", None),
]


def start_demo(folder: Path, until: str) -> tuple[subprocess.Popen[str], int, str, list[str]]:
    """The demo serving on a free port; its port and the admin password from its stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuledger.cli", "demo", "--until", until, "--port", "0"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stderr is not None
    stream = proc.stderr
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        text = "".join(lines)
        port = re.search(r"dashboard on http://127\.0\.0\.1:(\d+)/", text)
        password = re.search(r"dashboard user admin: password (\S+)", text)
        if port and password:
            return proc, int(port.group(1)), password.group(1), lines
        time.sleep(0.3)
    proc.kill()
    raise SystemExit("the demo did not start:\n" + "".join(lines)[-3000:])


def browser() -> webdriver.Chrome:
    os.environ["SE_OFFLINE"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1600,1000",
        "--hide-scrollbars",
        "--disable-dev-shm-usage",
    ):
        opts.add_argument(arg)
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    driver = webdriver.Chrome(options=opts, service=Service(driver_path))
    # the page itself 1600x1000 (a window size would include the browser's own bars)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1600, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
    )
    return driver


def wait_id(driver: webdriver.Chrome, element_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if driver.find_elements(By.ID, element_id):
            time.sleep(1.0)  # let plotly finish drawing
            return
        time.sleep(0.3)
    raise SystemExit(f"page element #{element_id} did not appear")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--until", default="2h")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc, port, password, _lines = start_demo(Path(tmp), args.until)
        driver = browser()
        try:
            base = f"http://127.0.0.1:{port}"
            driver.get(base + "/login")
            driver.find_element(By.NAME, "username").send_keys("admin")
            driver.find_element(By.NAME, "password").send_keys(password)
            driver.find_element(By.CSS_SELECTOR, "form").submit()
            time.sleep(1.0)
            for name, path, ready, scroll in PAGES:
                driver.get(base + path)
                wait_id(driver, ready)
                if scroll:  # the part of a long page below the first screen
                    driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", scroll)
                    time.sleep(1.0)
                target = args.out / f"dashboard-{name}.png"
                driver.save_screenshot(str(target))
                print(target)
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
