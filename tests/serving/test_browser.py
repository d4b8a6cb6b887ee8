"""End to end in headless Chromium: enter the API key, upload an image, read the result, move the
opacity slider, and save a screenshot that must not be blank.

Uses the system Chromium and chromedriver (Debian packages `chromium`, `chromium-driver`; never
downloaded) through Selenium; skips when either is missing.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from medlens.serving.settings import create_key
from tests.serving._live_server import start_server

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1100",
)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("system chromium / chromedriver not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chrome-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to read CSP violations from the console
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def keyed_server(tiny_run, tmp_path):
    keys = tmp_path / "keys.txt"
    _, key = create_key(keys, "browser")
    server = start_server(tiny_run, tmp_path / "srv", "--api-keys", str(keys))
    yield server, key
    server.stop()


def test_upload_in_the_browser_shows_finding_heatmap_and_recent_list(browser, keyed_server, serving_inputs, tmp_path):
    server, key = keyed_server
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    wait.until(lambda d: "API key" in d.find_element(By.ID, "status").text)  # the page asks for the key

    browser.execute_script("document.getElementById('key-box').open = true")
    field = browser.find_element(By.ID, "api-key")
    field.send_keys(key)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    wait.until(lambda d: "cnn-small" in d.find_element(By.ID, "model").text)

    browser.find_element(By.ID, "file").send_keys(str(serving_inputs["png"]))
    browser.find_element(By.ID, "submit").click()
    wait.until(
        lambda d: (
            d.find_element(By.ID, "status").text in ("done",)
            or "error" in d.find_element(By.ID, "status").get_attribute("class")
        )
    )
    assert browser.find_element(By.ID, "status").text == "done", browser.find_element(By.ID, "status").text
    wait.until(
        lambda d: d.execute_script(
            "const a = document.getElementById('base-image'), b = document.getElementById('heat-layer');"
            "return a.complete && a.naturalWidth > 0 && b.complete && b.naturalWidth > 0"
        )
    )

    pid = browser.find_element(By.TAG_NAME, "body").get_attribute("data-prediction")
    api = httpx.get(f"{server.url}/v1/predictions/{pid}", headers={"X-API-Key": key}, timeout=30).json()
    assert browser.find_element(By.ID, "finding").text == api["finding"]
    assert browser.find_element(By.ID, "probability").text == f"{100 * api['confidence']:.1f} %"
    assert browser.find_element(By.ID, "uncertainty").text.startswith(f"{api['uncertainty']:.3f}")
    refer = browser.find_element(By.ID, "refer")
    assert refer.is_displayed() == api["abstain"]
    if api["abstain"]:
        assert "Refer to a radiologist" in refer.text

    slider = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = 80; arguments[0].dispatchEvent(new Event('input'))", slider)
    assert browser.find_element(By.ID, "heat-layer").value_of_css_property("opacity") == "0.8"
    assert browser.find_element(By.ID, "opacity-value").text == "80%"

    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#recent tbody tr")) >= 1)
    assert api["finding"] in browser.find_element(By.CSS_SELECTOR, "#recent tbody tr").text

    assert not csp_violations(browser)

    shot = tmp_path / "page.png"
    assert browser.save_screenshot(str(shot))
    page = np.asarray(Image.open(shot).convert("RGB")).astype(np.int32)
    colours = len(np.unique(page.reshape(-1, 3) // 8, axis=0))
    assert page.std() > 20 and colours > 50, (page.std(), colours)
    viewer = np.asarray(
        Image.open(io.BytesIO(browser.find_element(By.ID, "stack").screenshot_as_png)).convert("RGB")
    ).astype(np.int32)
    red_minus_blue = np.abs(viewer[..., 0] - viewer[..., 2])
    assert viewer.std() > 10 and red_minus_blue.max() > 60  # the colour heatmap is over the grey image


def csp_violations(driver) -> list[str]:
    """Console messages about Content-Security-Policy refusals (the page must need none)."""
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


def test_api_docs_render_from_local_assets_under_their_csp(browser, tiny_run, tmp_path):
    server = start_server(tiny_run, tmp_path / "srv")
    try:
        browser.get(server.url + "/docs")
        WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
        paths = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")]
        assert "/v1/predictions" in paths
        assert not csp_violations(browser)
        hosts = browser.execute_script("return performance.getEntriesByType('resource').map(r => new URL(r.name).host)")
        assert set(hosts) <= {server.url.split("//")[1]}, hosts
    finally:
        server.stop()


def test_the_page_shows_a_512_dicom_at_its_own_resolution(browser, keyed_server, tmp_path):
    """The page's image and heatmap layer are the source's 512 x 512 pixels (CSS only scales them)."""
    from tests.serving.test_source_geometry import SIDE, dx_with_blob

    server, key = keyed_server
    path = tmp_path / "dx512.dcm"
    dx_with_blob().save_as(path, enforce_file_format=True)
    wait = WebDriverWait(browser, 60)
    browser.get(server.url + "/")
    browser.execute_script("document.getElementById('key-box').open = true")
    field = browser.find_element(By.ID, "api-key")
    field.send_keys(key)
    browser.execute_script("arguments[0].dispatchEvent(new Event('change'))", field)
    wait.until(lambda d: "cnn-small" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(path))
    browser.find_element(By.ID, "submit").click()
    wait.until(
        lambda d: d.execute_script(
            "const a = document.getElementById('base-image'), b = document.getElementById('heat-layer');"
            "return a.complete && a.naturalWidth > 0 && b.complete && b.naturalWidth > 0"
        )
    )
    assert browser.find_element(By.ID, "status").text == "done"
    sizes = browser.execute_script(
        "return ['base-image', 'heat-layer'].map(id => {const e = document.getElementById(id);"
        "return [e.naturalWidth, e.naturalHeight, e.getBoundingClientRect().width]})"
    )
    for natural_width, natural_height, shown_width in sizes:
        assert (natural_width, natural_height) == (SIDE, SIDE) and 0 < shown_width <= SIDE
    # 512 px is 16 times the 32 px the tiny model was trained on: the page says "not assessed" and why
    refer = browser.find_element(By.ID, "refer")
    assert refer.is_displayed() and "Not assessed: this image is not what the model was made for" in refer.text
    reasons = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#scope-reasons li")]
    assert f"image {SIDE} x {SIDE} px; model trained on 32 x 32 px DX (X-ray) images" in reasons
    assert browser.find_element(By.ID, "finding").text.startswith("not assessed")
