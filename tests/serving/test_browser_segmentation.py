"""A 3D segmentation in headless Chromium: the mask in the segment's colour over the image, the legend,
the measurements table and the slice scroller (the app served in-process with the threshold segmenter)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from medlens.serving.app import create_app
from medlens.serving.overlay import SEGMENT_COLOURS
from medlens.serving.settings import ServeSettings
from tests.serving._live_server import free_port
from tests.serving.test_serve_segmentation import SLICES, FakeSegmenter, ct_series, segment

webdriver = pytest.importorskip("selenium.webdriver")
uvicorn = pytest.importorskip("uvicorn")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from tests.serving.test_browser import browser, csp_violations  # noqa: E402, F401 - the fixture


@pytest.fixture
def segmentation_server(tmp_path):
    series = ct_series(seed=3)
    settings = ServeSettings(run_dir=tmp_path, audit_url=str(tmp_path / "audit.sqlite"), store_dir=tmp_path / "store")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, predictor=FakeSegmenter(series)), port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", segment(series).mask
    server.should_exit = True
    thread.join(timeout=10)


def viewer_pixels(driver) -> np.ndarray:
    shot = driver.find_element(By.ID, "stack").screenshot_as_png
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)


def mask_coloured(pixels: np.ndarray) -> int:
    """Pixels of the viewer in the first segment's colour (the mask at full opacity)."""
    return int((np.abs(pixels - np.array(SEGMENT_COLOURS[0])).max(axis=2) <= 12).sum())


def test_a_volume_segmentation_shows_its_mask_slice_by_slice(browser, segmentation_server, tmp_path):  # noqa: F811
    url, mask = segmentation_server
    upload = tmp_path / "ct.dcm"
    upload.write_bytes(b"the fake segmenter answers for its own series")
    wait = WebDriverWait(browser, 60)
    browser.get(url + "/")
    wait.until(lambda d: "threshold-unet" in d.find_element(By.ID, "model").text)
    browser.find_element(By.ID, "file").send_keys(str(upload))
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "done")

    shown = int(np.argmax(mask.reshape(SLICES, -1).sum(axis=1)))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-slice") == str(shown)
    assert browser.find_element(By.ID, "slice-value").text == f"{shown + 1} / {SLICES}"
    assert browser.find_element(By.ID, "legend").text == "lesion"
    assert not browser.find_element(By.ID, "probabilities").is_displayed()
    rows = browser.find_elements(By.CSS_SELECTOR, "#measurements tbody tr")
    assert len(rows) == 1 and rows[0].text.startswith("lesion volume") and rows[0].text.endswith("mm3")
    assert "Mask opacity" in browser.find_element(By.ID, "opacity-box").text

    opacity = browser.find_element(By.ID, "opacity")
    browser.execute_script("arguments[0].value = 100; arguments[0].dispatchEvent(new Event('input'))", opacity)
    wait.until(
        lambda d: d.execute_script(
            "return ['base-image', 'heat-layer'].every(id => document.getElementById(id).complete)"
        )
    )
    assert mask_coloured(viewer_pixels(browser)) > 100  # the blob, scaled up from 32 px, in the segment's colour

    empty = next(k for k in range(SLICES) if not mask[k].any())
    slider = browser.find_element(By.ID, "slice")
    browser.execute_script(f"arguments[0].value = {empty}; arguments[0].dispatchEvent(new Event('input'))", slider)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-slice") == str(empty))
    wait.until(
        lambda d: d.execute_script(
            "return ['base-image', 'heat-layer'].every(id => document.getElementById(id).complete)"
        )
    )
    assert browser.find_element(By.ID, "slice-value").text == f"{empty + 1} / {SLICES}"
    assert mask_coloured(viewer_pixels(browser)) == 0  # no mask on this slice
    assert not csp_violations(browser)
