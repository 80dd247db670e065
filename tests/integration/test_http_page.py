"""The live page at `/`, loaded in a real headless Chromium against a running mesh: the numbers
render, and they change when the mesh does (the page refreshes itself every 2 s).

The browser comes from Debian's packages (scripts/install_test_tools.sh, which CI runs); without
it this test skips and says why."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.integration.http_procs import start_gateway, write_tokens
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

#: extra flags for every Helper and gateway (empty: the default CURVE links)
HELPER_FLAGS: tuple[str, ...] = ()
GATEWAY_FLAGS: tuple[str, ...] = ()


@pytest.fixture
def browser():  # noqa: ANN201
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(pip install -e '.[test]')")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no headless browser on this machine: run scripts/install_test_tools.sh "
                    "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    session = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(executable_path=driver))
    try:
        yield session
    finally:
        session.quit()


def _text(browser, element_id: str) -> str:  # noqa: ANN001
    return browser.find_element("id", element_id).text


def test_live_page_renders_the_mesh_figures_and_refreshes_them(cluster, tmp_path,  # noqa: ANN001
                                                               browser) -> None:  # noqa: ANN001
    tokens = write_tokens(tmp_path)
    cluster.start_helper(*HELPER_FLAGS)
    cluster.start_ai()
    # with discovery named, the gateway follows the alert lane (the recent alerts)
    url = start_gateway(cluster, [cluster.intake], "--discovery", cluster.discovery,
                        *GATEWAY_FLAGS, tokens_file=tokens["file"]).ready["url"]
    client = {"Authorization": f"Bearer {tokens['client']}"}

    browser.get(f"{url}/#token={tokens['operator']}")
    wait_until(lambda: _text(browser, "fig-nodes") == "1", 30, interval_s=0.1,
               what="the page showing 1 AI node")
    assert _text(browser, "fig-succeeded") == "0"
    assert "#token" not in browser.current_url, "the token leaves the address bar"
    assert "1/1 Helpers answering" in _text(browser, "health")
    rows = browser.find_elements("css selector", "#helpers tbody tr")
    assert len(rows) == 1 and cluster.intake in rows[0].text and "up" in rows[0].text
    assert not browser.find_elements("css selector", "#missing li"), "nothing missing"
    assert not browser.find_element("id", "missing-section").is_displayed()
    node_rows = browser.find_elements("css selector", "#nodes tbody tr")
    assert len(node_rows) == 1 and "ai-1" in node_rows[0].text and "alive" in node_rows[0].text
    assert "s ago" in node_rows[0].text and "127.0.0.1" in node_rows[0].text
    refreshes = int(_text(browser, "refreshes"))

    with httpx.Client(base_url=url, timeout=30, headers=client) as http:
        ids = [http.post("/v1/tasks/echo", content=b"x").json()["id"] for _ in range(5)]
        dead = http.post("/v1/tasks/simulate", json={"fatal": True}).json()["id"]
        for task_id in [*ids, dead]:
            assert http.get(f"/v1/tasks/{task_id}", params={"wait": 30}).status_code == 200

    wait_until(lambda: _text(browser, "fig-succeeded") == "5", 15, interval_s=0.1,
               what="the page refreshing to 5 succeeded")
    wait_until(lambda: _text(browser, "fig-dead_letters") == "1", 15, interval_s=0.1,
               what="the page showing the dead letter")
    dead_rows = browser.find_elements("css selector", "#dead tbody tr")
    assert len(dead_rows) == 1 and dead in dead_rows[0].text and "FATAL_ERROR" in \
        dead_rows[0].text
    assert int(_text(browser, "refreshes")) > refreshes

    # the dead task's alert (mesh.task.dead, from the Helper's alert publisher) on the page
    def dead_alert_row() -> str | None:
        rows = browser.find_elements("css selector", "#alerts tbody tr")
        return next((r.text for r in rows if "mesh.task.dead" in r.text), None)
    wait_until(lambda: dead_alert_row() is not None, 20, interval_s=0.1,
               what="the page showing the mesh.task.dead alert")
    alert_text = dead_alert_row()
    assert "warning" in alert_text and dead in alert_text and "helper-1" in alert_text

    # the queue by kind: a task of a kind no node serves waits (within the unroutable grace)
    with httpx.Client(base_url=url, timeout=30, headers=client) as http:
        http.post("/v1/tasks/nobody-serves-this", content=b"x")
    wait_until(lambda: any("nobody-serves-this" in r.text for r in browser.find_elements(
        "css selector", "#queues tbody tr")), 15, interval_s=0.1,
        what="the page showing the queue by kind")
    assert browser.find_element("id", "error").get_attribute("hidden") is not None


def test_live_page_asks_for_a_token_when_it_has_none(cluster, tmp_path, browser) -> None:  # noqa: ANN001
    tokens = write_tokens(tmp_path)
    cluster.start_helper(*HELPER_FLAGS)
    url = start_gateway(cluster, [cluster.intake], *GATEWAY_FLAGS,
                        tokens_file=tokens["file"]).ready["url"]
    browser.get(f"{url}/")
    wait_until(lambda: browser.find_element("id", "token-form").is_displayed(), 15,
               interval_s=0.1, what="the token form")
    assert "cannot load the overview" in _text(browser, "error")
    browser.find_element("id", "token").send_keys(tokens["operator"])
    browser.find_element("css selector", "#token-form button").click()
    wait_until(lambda: _text(browser, "fig-queued") == "0", 15, interval_s=0.1,
               what="the figures once the token is given")
