"""report.html in a real headless browser (Debian's chromium through chromedriver): it renders without console
errors, it is not blank, and every figure it shows is the report.json value its data-key names."""

import copy
import io
import itertools
import json
import re
import shutil
from html.parser import HTMLParser

import pytest
from PIL import Image
from selenium import webdriver

from squeezer.core.artifacts.report_html import pointer, render_report_html
from squeezer.core.config import AccuracyTarget, AutoConfig, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.samples import ensure_sample_model

# auto with every stage, none of them trained: the page gets trials, candidates (int8 included) and layers in seconds.
QUICK_AUTO = CompressConfig(
    method="auto",
    device="cpu",
    target=AccuracyTarget(max_drop=1.0),
    filter=FilterConfig(levels=[0.2], init=["l1"], importance_epochs=0, epochs_per_step=0, refinements=0),
    lwct=LwctConfig(sparsity=0.5, prune_epochs=0, epochs_per_step=0),
    auto=AutoConfig(compare_lwct_alone=False),
)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    report = compress_files(ModelSource(ensure_sample_model("digits")[0]), "sample:digits", out, QUICK_AUTO)
    return out, report


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    yield driver
    driver.quit()


def _resolve(document, key: str):
    value = document
    for part in key.split("/")[1:]:
        value = value[part.replace("~1", "/").replace("~0", "~")]
    return value


def test_pointer_escapes_keys_holding_slashes():
    assert pointer("artifacts", "model/", "bytes") == "/artifacts/model~1/bytes"
    assert _resolve({"artifacts": {"model/": {"bytes": 3}}}, "/artifacts/model~1/bytes") == 3


@pytest.mark.slow
def test_compress_writes_report_html_beside_report_json(results):
    out, report = results
    assert (out / "report.html").read_text(encoding="utf-8") == render_report_html(report)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


HOSTILE_NAMES = ["</title><script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{ 7 * 7 }}{% raw %}"]


class _PageText(HTMLParser):
    """The page's text and its element names, as a browser's parser sees them."""

    def __init__(self):
        super().__init__()
        self.text: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, data):
        self.text.append(data)


@pytest.mark.slow
def test_uploaded_names_reach_the_page_as_text(results):
    """Names from an uploaded model, dataset or option are shown as written and never become markup or template
    code (the template is rendered with autoescape on)."""
    _, report = results
    hostile = copy.deepcopy(report)
    for layer, name in zip(hostile["layers"], itertools.cycle(HOSTILE_NAMES)):
        layer["name"] = layer["reason"] = name
    hostile["dataset"]["name"] = HOSTILE_NAMES[0]
    hostile["settings"] = {name: name for name in HOSTILE_NAMES}
    page = _PageText()
    page.feed(render_report_html(hostile))
    text = "".join(page.text)
    assert not page.tags & {"script", "img"}
    assert all(name in text for name in HOSTILE_NAMES)  # "{{ 7 * 7 }}" as written, not 49
    assert f"Squeezer report: auto on {HOSTILE_NAMES[0]}" in text  # the <title>, closed only by the page's own tag


@pytest.mark.slow
def test_report_html_renders_in_chromium_and_shows_report_json_numbers(results, browser):
    out, report = results
    browser.get((out / "report.html").as_uri())
    severe = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert severe == []
    assert browser.title.startswith("Squeezer report: auto")
    pixels = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L")
    inked = sum(count for value, count in enumerate(pixels.histogram()) if value < 200)
    assert inked > 0.02 * pixels.width * pixels.height  # text, tables and charts, not a blank page
    assert len(browser.find_elements("css selector", "svg.chart")) == 2
    figures = browser.find_elements("css selector", "[data-key]")
    keys = {element.get_attribute("data-key") for element in figures}
    assert {
        "/compressed/accuracy",
        "/baseline/accuracy",
        "/artifacts/model.onnx/bytes",
        "/artifacts/model~1/bytes",
        "/baseline_onnx/latency_ms_batch32",
        "/compression_ratio",
    } <= keys
    for element in figures:
        shown = element.text
        number = re.match(r"-?[\d,]+(\.\d+)?", shown)
        assert number, shown
        decimals = len(number.group(1) or ".") - 1
        expected = _resolve(report, element.get_attribute("data-key"))
        assert float(number.group(0).replace(",", "")) == pytest.approx(expected, abs=0.5 * 10**-decimals + 1e-9), (
            element.get_attribute("data-key"),
            shown,
            expected,
        )
    rows = browser.find_elements("css selector", "table.layers tbody tr")
    assert [row.find_element("css selector", "th").text.split("\n")[0] for row in rows] == [
        layer["name"] for layer in report["layers"]
    ]
    assert json.loads((out / "report.json").read_text()) == report
