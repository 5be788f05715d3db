"""The master's dashboard: /api/status over HTTP, and the page in a real headless Chromium."""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request

import psutil
import pytest
from conftest import ROOT, wait_for, wait_workers

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# As root, in a closed network: without these Chromium stalls or refuses to start.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1100,900"]


def master_with_dashboard(procs, cw_home):
    _, port = procs.master("--http-port", "0")
    info = json.loads((cw_home / "default" / "master.json").read_text())
    assert info["http"].startswith("http://127.0.0.1:")
    return port, info["http"]


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        return json.loads(resp.read())


def test_api_status_is_the_json_of_cw_status(procs, cw_home):
    port, url = master_with_dashboard(procs, cw_home)
    procs.worker(port)
    wait_workers(port, 1)
    api = wait_for(lambda: (lambda s: s if s["totals"]["workers"] == 1 else None)(
        get_json(url + "api/status")),
                   what="the worker in /api/status")
    out = subprocess.run([sys.executable, "-m", "cw.cli", "status", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=30)
    cli = json.loads(out.stdout)
    assert api.keys() == cli.keys() and api["totals"].keys() == cli["totals"].keys()
    assert api["workers"][0].keys() == cli["workers"][0].keys()
    assert (api["session"], api["workers"][0]["pid"]) == (cli["session"], cli["workers"][0]["pid"])
    assert api["http"] == url


def _browser_missing():
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.path.exists(path):
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser(tmp_path):
    reason = _browser_missing()
    if reason:
        pytest.skip(f"no headless browser: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    driver = webdriver.Chrome(service=service, options=options)
    tree = psutil.Process(service.process.pid)
    started = [tree, *tree.children(recursive=True)]
    try:
        yield driver
        started += [p for p in _children(started) if p not in started]  # renderers started since
    finally:
        driver.quit()
        started += [p for p in _children(started) if p not in started]
        _, alive = psutil.wait_procs(started, timeout=10)
        for proc in alive:  # Chromium never outlives the test, even when it is slow to quit
            proc.kill()
        _, alive = psutil.wait_procs(alive, timeout=10)
        assert not alive, f"browser processes left behind: {[p.pid for p in alive]}"


def _children(procs):
    found = []
    for proc in procs:
        try:
            found += proc.children(recursive=True)
        except psutil.Error:
            pass
    return found


def text_of(driver, element_id):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def test_dashboard_shows_live_worker_count_in_a_browser(procs, cw_home, browser):
    port, url = master_with_dashboard(procs, cw_home)
    procs.worker(port)
    wait_workers(port, 1)
    browser.get(url)
    wait_for(lambda: text_of(browser, "workers") == "1", timeout=30, what="the page showing 1 worker")
    assert text_of(browser, "live") == "● live"
    procs.worker(port)  # a second worker: the page follows without a reload
    wait_for(lambda: text_of(browser, "workers") == "2", timeout=30, what="the page showing 2 workers")

    from selenium.common.exceptions import StaleElementReferenceException

    def rows():
        try:
            return [r.text for r in browser.find_elements("css selector", "#worker-rows tr")]
        except StaleElementReferenceException:  # the table was redrawn meanwhile: look again
            return []

    # A new worker shows as "starting" until its executor registers.
    wait_for(lambda: len(rows()) == 2 and all(" idle " in r for r in rows()), timeout=30,
             what="both workers idle in the table")
    shot = os.environ.get("CW_DASHBOARD_SCREENSHOT")
    if shot:  # README's picture: CW_DASHBOARD_SCREENSHOT=docs/dashboard.png
        browser.save_screenshot(shot)
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors


def test_the_dashboard_fits_a_480_px_window_names_clients_and_labels_its_chart(procs, cw_home, browser):
    from cw.client import ClusterExecutor
    from cw.client.link import _program

    port, url = master_with_dashboard(procs, cw_home)
    procs.worker(port)
    wait_workers(port, 1)
    with ClusterExecutor("127.0.0.1", port, connect_timeout=10) as ex:
        assert ex.submit(abs, -3).result(30) == 3
        browser.set_window_size(480, 900)
        browser.get(url)
        wait_for(lambda: text_of(browser, "workers") == "1", timeout=30, what="the page showing 1 worker")
        wait_for(lambda: text_of(browser, "client-rows").startswith(_program()), timeout=30,
                 what="the client named by its program")
        width = browser.execute_script("return document.documentElement.clientWidth")
        scrolls = browser.execute_script("return document.documentElement.scrollWidth")
        assert scrolls <= width, f"the page scrolls sideways: {scrolls} px of content in {width} px"
        assert text_of(browser, "x-axis").split() == ["60", "s", "ago", "30", "s", "ago", "now"]
        assert text_of(browser, "y-top").endswith("/s")
    errors = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert errors == [], errors
