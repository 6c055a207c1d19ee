"""``fcvit explore``: the page built by the command, opened and driven in headless Chromium.

The browser part needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when
missing); without them it is skipped with the reason, and the page's data checks still run.
"""
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from real_photos import sample_photos

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def _photo(folder: Path, name: str) -> str:
    from PIL import Image

    path = folder / f"{name}.png"
    if not path.exists():
        Image.fromarray(sample_photos()[name]).save(path)
    return str(path)


def _build(tmp_path: Path, *extra: str) -> Path:
    page = tmp_path / "page.html"
    cmd = [sys.executable, "-m", "fcvit", "explore", _photo(tmp_path, "chelsea"), _photo(tmp_path, "astronaut"),
           "--vit", "deit_tiny_patch16_224", "--fcvit", "fcvit_tiny", "-o", str(page), *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return page


def _data(page: Path) -> dict:
    text = page.read_text(encoding="utf-8")
    match = re.search(r"const DATA = (\{.*?\});\n", text, re.S)
    assert match, "the page embeds its data"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    return _build(tmp_path_factory.mktemp("explore"))


def test_page_is_self_contained_and_holds_every_query(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["'](https?:)?//""", text), "no external scripts, styles or fonts"
    data = _data(page)
    assert [im["name"] for im in data["images"]] == ["chelsea.png", "astronaut.png"]
    assert data["vit"]["blocks"] == list(range(12)) and data["vit"]["grid"] == [14, 14]
    entry = data["images"][0]["vit"]["11"]
    maps = np.frombuffer(base64.b64decode(entry["maps"]), dtype=np.uint8)
    assert maps.size == (3 + 1) * 196 * 196  # three heads and their mean, every patch query
    assert "random" in data["vit"]["weights"] and "random" in data["fcvit"]["weights"]
    fc = data["images"][0]["fcvit"][str(data["fcvit"]["blocks"][-1])]
    assert np.frombuffer(base64.b64decode(fc["maps"]), dtype=np.uint8).size == 2 * 8 * fc["grid"][0] * fc["grid"][1]


def test_output_rules(tmp_path, page):
    result = subprocess.run([sys.executable, "-m", "fcvit", "explore", _photo(tmp_path, "chelsea"), "-o",
                             str(tmp_path / "page.png")], capture_output=True, text=True)
    assert result.returncode == 2 and "must end in .html" in result.stderr
    existing = tmp_path / "page.html"
    existing.write_text("mine")
    result = subprocess.run([sys.executable, "-m", "fcvit", "explore", _photo(tmp_path, "chelsea"), "-o", str(existing)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and existing.read_text() == "mine"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,1100"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _canvas(driver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').toDataURL();")


def _marker(driver) -> tuple:
    return driver.execute_script("const m = document.getElementById('marker'); return [m.style.left, m.style.top];")


def _click(driver, element, fx: float, fy: float) -> None:
    from selenium.webdriver import ActionChains

    w, h = element.size["width"], element.size["height"]
    ActionChains(driver).move_to_element_with_offset(element, int((fx - 0.5) * w), int((fy - 0.5) * h)).click().perform()


def test_page_in_chromium(browser, page, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    driver = browser
    driver.get(page.resolve().as_uri())
    driver.find_element(By.ID, "hover").click()  # queries by click only, so the pointer's path does not move them
    photo = driver.find_element(By.ID, "photo")
    _click(driver, photo, 0.2, 0.2)
    first, first_marker = _canvas(driver, "attention"), _marker(driver)
    driver.save_screenshot(str(tmp_path / "query_1.png"))
    _click(driver, photo, 0.8, 0.7)
    second, second_marker = _canvas(driver, "attention"), _marker(driver)
    driver.save_screenshot(str(tmp_path / "query_2.png"))
    assert first != second, "another query draws another attention map"
    assert first_marker != second_marker, "the marker follows the query"

    Select(driver.find_element(By.ID, "head")).select_by_value("0")
    head0 = _canvas(driver, "attention")
    assert head0 != second, "another head draws another map"
    Select(driver.find_element(By.ID, "scale")).select_by_value("minmax")
    assert _canvas(driver, "attention") != head0, "another scale draws the map anew"
    driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
    assert _marker(driver) != second_marker, "the arrow keys move the query"

    assert len(driver.find_elements(By.CSS_SELECTOR, "#fcvit-maps canvas.group-map")) == 2 * 8  # gc1, gc2 x 8 groups
    Select(driver.find_element(By.ID, "image")).select_by_value("1")
    driver.save_screenshot(str(tmp_path / "second_image.png"))
    assert "random" in driver.find_element(By.ID, "weights").text

    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    requests = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requests.append(message["params"]["request"]["url"])
    assert requests and all(url.startswith(("file:", "data:", "blob:")) for url in requests), requests
    shots = os.environ.get("FCVIT_EXPLORE_SCREENSHOT")
    if shots:
        driver.save_screenshot(shots)
    assert (tmp_path / "query_1.png").stat().st_size > 10_000


def test_deit_base_page_fits_its_budget(tmp_path):
    """All 12 blocks of DeiT-Base at 224 (14 x 14 patches, 12 heads), random weights, one photo: under 25 MB."""
    from PIL import Image

    from fcvit.analysis.explore import explore_page
    import timm
    import fcvit  # noqa: F401

    torch.manual_seed(0)
    vit = timm.create_model("deit_base_patch16_224").eval()
    fc = timm.create_model("fcvit_tiny").eval()
    html = explore_page([("chelsea", Image.fromarray(sample_photos()["chelsea"]))], vit, "deit_base_patch16_224",
                        "random, untrained weights", fc, "fcvit_tiny", "random, untrained weights")
    size = len(html.encode())
    assert size < 25 * 2 ** 20, f"{size / 2 ** 20:.1f} MB"


def test_distillation_token_is_left_out():
    """DeiT-distilled has a class and a distillation token: maps are over the 196 patches, their share reported."""
    from PIL import Image

    from fcvit.analysis.explore import explore_page
    import timm
    import fcvit  # noqa: F401

    vit = timm.create_model("deit_tiny_distilled_patch16_224").eval()
    fc = timm.create_model("fcvit_tiny").eval()
    html = explore_page([("coffee", Image.fromarray(sample_photos()["coffee"]))], vit, "deit", "random", fc, "fcvit",
                        "random", vit_blocks=[-1], fcvit_blocks=[0])
    data = json.loads(re.search(r"const DATA = (\{.*?\});\n", html, re.S).group(1))
    assert data["vit"]["prefix_tokens"] == 2 and data["vit"]["blocks"] == [11] and data["fcvit"]["blocks"] == [0]
    entry = data["images"][0]["vit"]["11"]
    assert np.frombuffer(base64.b64decode(entry["maps"]), dtype=np.uint8).size == 4 * 196 * 196
    assert 0.0 <= entry["average"]["prefix_mass"] <= 1.0
