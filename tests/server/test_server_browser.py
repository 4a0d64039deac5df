"""The chat page in headless Chromium (Selenium): type a question, watch the answer stream in.

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and the
`selenium` package; skipped with that reason when they are missing. Selenium is pointed at the
system driver, so it never downloads one.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from server_harness import MODEL_NAME, RunningServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver; pip install selenium"


def _missing() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "the selenium package"
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    return " and ".join(missing) or None


MISSING = _missing()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(MISSING is not None, reason=f"needs {MISSING} (install: {INSTALL})")]

# Counts text changes of assistant bubbles: more than one means the reply arrived in pieces.
COUNT_UPDATES_JS = """
window.__updates = 0;
new MutationObserver(() => { window.__updates += 1; })
  .observe(document.getElementById('messages'), {subtree: true, characterData: true, childList: true});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_chat_page_streams_an_answer(server: RunningServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60, poll_frequency=0.1)
    wait.until(lambda d: d.find_element(By.ID, "model").text == MODEL_NAME)
    browser.find_element(By.CSS_SELECTOR, "#settings summary").click()  # opens the settings panel
    for field, value in (("max-tokens", "12"), ("temperature", "0")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.execute_script(COUNT_UPDATES_JS)

    browser.find_element(By.ID, "input").send_keys("Where is my order?")
    browser.find_element(By.ID, "send").click()

    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant.done"))
    reply = browser.find_element(By.CSS_SELECTOR, ".msg.assistant.done")
    assert "error" not in reply.get_attribute("class")
    assert reply.find_element(By.CSS_SELECTOR, ".bubble").text.strip()
    stats = reply.find_element(By.CSS_SELECTOR, ".stats").text
    assert "tok/s" in stats and "speculation: n/a" in stats, stats
    assert int(stats.split(" tokens")[0]) > 0
    assert browser.execute_script("return window.__updates") > 3  # user bubble, reply, then token by token
    questions = browser.find_elements(By.CSS_SELECTOR, ".msg.user .bubble")
    assert [m.text for m in questions] == ["Where is my order?"]
    assert not server.wait_idle()["kv_blocks_in_use"]
