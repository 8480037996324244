"""A real browser through the edge: headless Chromium (Debian's chromium and chromium-driver,
driven by Selenium) on the controller, trusting only the appliance CA, against the machine's
address with the appliance's names. Screenshots go to artifacts/appliance/ (see conftest.py),
among them ops-page.png, the ops page (https://metrics.localhost/consoles/ops.html).

code-server allows 2 failed logins a minute: this module tries a wrong password once.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ops_page import PANELS
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

HOSTS = ("api.localhost", "dev.localhost", "metrics.localhost")
CA_PUBLIC = "/etc/appliance/ca.crt"
CODE_SERVER_PASSWORD = "/etc/appliance/secrets/code-server-password"
METRICS_PASSWORD = "/etc/appliance/secrets/traefik-metrics-password"
METRICS_USER = "ops"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def secret(host, path: str) -> str:
    with host.sudo():
        return host.file(path).content_string.strip()


@pytest.fixture(scope="module")
def browser_home(host, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh HOME whose NSS database trusts the appliance CA, and nothing else added."""
    home = tmp_path_factory.mktemp("chromium-home")
    ca = home / "appliance-ca.crt"
    ca.write_text(host.file(CA_PUBLIC).content_string, encoding="ascii")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for argv in (
        ["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"],
        ["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "appliance", "-i", str(ca)],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30)
    return home


@pytest.fixture(scope="module")
def browser(host, browser_home: Path) -> Iterator[WebDriver]:
    address = host.ansible.get_variables()["ansible_host"]
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--window-size=1366,900",
        f"--user-data-dir={browser_home / 'profile'}",
        # The names resolve to the machine, as a laptop's /etc/hosts entry would make them.
        "--host-resolver-rules=" + ", ".join(f"MAP {name} {address}" for name in HOSTS),
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, env={**os.environ, "HOME": str(browser_home)})
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver: WebDriver, condition, what: str, shot: Path, seconds: float = 60):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.5).until(condition)
    except TimeoutException:
        driver.save_screenshot(str(shot))
        pytest.fail(
            f"{what} not seen within {seconds}s at {driver.current_url} (screenshot {shot})"
        )


def responses(driver: WebDriver, url_prefix: str) -> list[dict]:
    """Network.responseReceived events for URLs starting with url_prefix, oldest first."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.responseReceived":
            response = message["params"]["response"]
            if response["url"].startswith(url_prefix):
                found.append(response)
    return found


def test_code_server_login_wrong_then_right_password(host, browser, artifacts):
    browser.get("https://dev.localhost/")
    # The page only renders when the certificate verified against the appliance CA alone.
    field = wait_for(
        browser,
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[type=password]")),
        "code-server's login form",
        artifacts / "code-server-login-missing.png",
    )
    assert browser.current_url == "https://dev.localhost/login"
    assert "code-server" in browser.title.lower(), browser.title
    browser.save_screenshot(str(artifacts / "code-server-login.png"))

    field.send_keys("not-the-password")
    field.submit()
    wait_for(
        browser,
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, "body"), "Incorrect password"),
        "the refusal of a wrong password",
        artifacts / "code-server-wrong-password-missing.png",
    )
    browser.save_screenshot(str(artifacts / "code-server-wrong-password.png"))
    assert browser.current_url.startswith("https://dev.localhost/login")
    assert not any(c["name"] == "code-server-session" for c in browser.get_cookies())

    field = browser.find_element(By.CSS_SELECTOR, "input[type=password]")
    field.send_keys(secret(host, CODE_SERVER_PASSWORD))
    field.submit()
    # The VS Code workbench: its explorer view appears once the extension host has started.
    wait_for(
        browser,
        ec.presence_of_element_located((By.CSS_SELECTOR, ".monaco-workbench .activitybar")),
        "the VS Code workbench",
        artifacts / "code-server-workbench-missing.png",
        seconds=120,
    )
    browser.save_screenshot(str(artifacts / "code-server-workbench.png"))
    assert any(c["name"] == "code-server-session" for c in browser.get_cookies())


def test_prometheus_asks_for_credentials_then_shows_its_ui(host, browser, artifacts):
    browser.get_log("performance")  # forget earlier pages' events
    browser.get("https://metrics.localhost/")
    challenge = [r for r in responses(browser, "https://metrics.localhost/") if r["status"] == 401]
    assert challenge, "no 401 from metrics.localhost without credentials"
    headers = {k.lower(): v for k, v in challenge[0]["headers"].items()}
    # Headless Chromium has no prompt to show (its page stays empty): keep the challenge itself.
    (artifacts / "prometheus-challenge.txt").write_text(
        f"{challenge[0]['status']} {challenge[0]['url']}\n"
        f"www-authenticate: {headers.get('www-authenticate')}\n",
        encoding="utf-8",
    )
    assert headers.get("www-authenticate", "").startswith("Basic "), headers
    assert "Prometheus" not in browser.page_source

    # What a browser sends once the user typed the credentials into its prompt.
    token = base64.b64encode(f"{METRICS_USER}:{secret(host, METRICS_PASSWORD)}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    try:
        browser.get("https://metrics.localhost/")
        wait_for(
            browser,
            ec.presence_of_element_located((By.CSS_SELECTOR, "textarea, .cm-content")),
            "Prometheus's query editor",
            artifacts / "prometheus-ui-missing.png",
        )
        assert "Prometheus" in browser.title, browser.title
        browser.save_screenshot(str(artifacts / "prometheus-ui.png"))
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def test_api_openapi_document_loads(browser, artifacts):
    browser.get("https://api.localhost/openapi.json")
    text = wait_for(
        browser,
        # Chromium shows a JSON document as text in a <pre> (beside its pretty-print toggle).
        lambda d: "".join(e.text for e in d.find_elements(By.TAG_NAME, "pre")).strip() or False,
        "the OpenAPI document",
        artifacts / "api-openapi-missing.png",
    )
    browser.save_screenshot(str(artifacts / "api-openapi.png"))
    document = json.loads(text)
    assert document["openapi"].startswith("3.")
    assert "/predict" in document["paths"] and "/token" in document["paths"]


OPS_PAGE = "https://metrics.localhost/consoles/ops.html"
# Graphs that have data whenever the API is scraped: Traefik's health checks are requests too.
OPS_GRAPHS_WITH_DATA = ("Request rate", "Error rate", "Latency")


def _ops_page_text(driver: WebDriver, panel_id: str) -> str:
    """A panel's text as written (textContent: the CSS upper-cases the rendered titles)."""
    element = driver.find_element(By.ID, panel_id)
    return " ".join((element.get_attribute("textContent") or "").split())


def test_ops_page_shows_the_appliance_at_a_glance(host, browser, artifacts):
    """files/prometheus/consoles/ops.html, served by Prometheus behind the metrics host's auth:
    the numbers rendered by the template, the graphs drawn by its script from query_range."""
    browser.get_log("performance")
    browser.get(OPS_PAGE)
    challenge = [r for r in responses(browser, OPS_PAGE) if r["status"] == 401]
    assert challenge, "no 401 for the ops page without credentials"

    token = base64.b64encode(f"{METRICS_USER}:{secret(host, METRICS_PASSWORD)}".encode()).decode()
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd(
        "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}}
    )
    try:
        # A rate needs two scrapes of the API within 5 minutes: reload until the page has one.
        deadline = time.monotonic() + 180
        while True:
            browser.get(OPS_PAGE)
            wait_for(
                browser,
                lambda d: all(
                    s.get_attribute("data-state")
                    for s in d.find_elements(By.CSS_SELECTOR, "svg.graph")
                ),
                "the ops page's graphs",
                artifacts / "ops-page-missing.png",
            )
            rate = _ops_page_text(browser, "request-rate")
            if re.search(r"\d+\.\d\d req/s", rate) or time.monotonic() > deadline:
                break
            time.sleep(10)
        browser.save_screenshot(str(artifacts / "ops-page.png"))

        assert browser.title.startswith("Appliance ops"), browser.title
        titles = [h.get_attribute("textContent") for h in browser.find_elements(By.TAG_NAME, "h2")]
        assert all(t in titles for t in PANELS), titles
        assert re.search(r"\d+\.\d\d req/s", rate), rate
        days = _ops_page_text(browser, "cert-days")
        assert re.search(r"\d+\.\d days", days), days
        body = browser.find_element(By.TAG_NAME, "body").text.lower()
        # "Error rate" is a panel title; anything else would be a failed query or template.
        assert "error" not in body.replace("error rate", ""), body
        assert "nan" not in body.split(), body

        graphs = {}
        for svg in browser.find_elements(By.CSS_SELECTOR, "svg.graph"):
            title = svg.find_element(By.XPATH, "preceding-sibling::h2").get_attribute("textContent")
            assert svg.get_attribute("data-state") == "drawn", title
            graphs[title] = [
                p.get_attribute("d") for p in svg.find_elements(By.CSS_SELECTOR, "path.series")
            ]
        assert len(graphs) == 5, graphs
        for prefix in OPS_GRAPHS_WITH_DATA:
            drawn = [
                d for title, paths in graphs.items() if title.startswith(prefix) for d in paths
            ]
            assert drawn and all(d.startswith("M") for d in drawn), (prefix, graphs)
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
