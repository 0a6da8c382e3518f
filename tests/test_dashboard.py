"""The operator dashboard in real headless Chromium (Debian's `chromium` and `chromium-driver`,
driven by Selenium) against a real regcache process caching Debian's docker-registry."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.wait import WebDriverWait
from tooling.images import make_image
from tooling.peers import DockerRegistry, push_layout
from tooling.server import Regcache

from regcache.units import format_size

pytestmark = pytest.mark.peers

TOKEN = "dashboard-admin-token-0123"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
UPSTREAM_NAMES = {"alpha": 120_000, "beta": 300_000}  # name: layer size (beta is the larger)
ACCEPT = {
    "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
    "application/vnd.oci.image.manifest.v1+json"
}
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
T = TypeVar("T")


def pull(url: str, repo: str, tag: str) -> None:
    """A client's pull through regcache: the manifest, then its config and layers, verified."""
    response = requests.get(f"{url}/v2/{repo}/manifests/{tag}", headers=ACCEPT, timeout=30)
    response.raise_for_status()
    manifest = response.json()
    for blob in [manifest["config"], *manifest["layers"]]:
        data = requests.get(f"{url}/v2/{repo}/blobs/{blob['digest']}", timeout=30)
        data.raise_for_status()
        assert f"sha256:{hashlib.sha256(data.content).hexdigest()}" == blob["digest"]


def admin(server: Regcache, path: str) -> Any:
    response = requests.get(
        f"{server.url}/admin/{path}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    )
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regcache]:
    """regcache with both images pulled through it (alpha twice, so the cache has hits)."""
    work = tmp_path_factory.mktemp("dashboard")
    with DockerRegistry(work / "upstream") as upstream:
        for name, size in UPSTREAM_NAMES.items():
            layout = work / "images" / name
            make_image(layout, "1.0.0", layers=2, layer_size=size, flavour="docker")
            push_layout(layout, "1.0.0", upstream.url, f"library/{name}")
        config = work / "regcache.yml"
        config.write_text(json.dumps({
            "admin_token": TOKEN, "quota_bytes": 64 * 1024**2, "min_free_bytes": 1024**2,
            "upstreams": [{"name": "up", "url": upstream.url, "prefix": "docker.io",
                           "mirror": True}],
        }))  # fmt: skip
        with Regcache(work / "regcache", config=config) as server:
            for name in [*UPSTREAM_NAMES, "alpha"]:
                pull(server.url, f"docker.io/library/{name}", "1.0.0")
            yield server


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[webdriver.Chrome]:
    """Debian's headless Chromium with a fresh profile; nothing is downloaded."""
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("needs Debian's chromium and chromium-driver (apt-get install them)")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never fetch a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-proxy-server", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
    ]:  # fmt: skip
        options.add_argument(argument)
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome, condition: Callable[[webdriver.Chrome], T], what: str) -> T:
    """Wait up to 15 s for `condition` to return something true; a stale element retries."""
    try:
        return WebDriverWait(driver, 15, ignored_exceptions=[StaleElementReferenceException]).until(
            condition, what
        )
    except TimeoutException:
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard-failure.png"))
        raise


def by_testid(driver: webdriver.Chrome, name: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f"[data-testid={name}]")


def shown(name: str) -> Callable[[webdriver.Chrome], WebElement | None]:
    """A wait condition: the element with data-testid `name`, once it is displayed."""

    def condition(driver: webdriver.Chrome) -> WebElement | None:
        element = by_testid(driver, name)
        return element if element.is_displayed() else None

    return condition


def rows(driver: webdriver.Chrome) -> dict[tuple[str, str], WebElement]:
    return {
        (row.get_attribute("data-repository") or "", row.get_attribute("data-digest") or ""): row
        for row in driver.find_elements(By.CSS_SELECTOR, "[data-testid=image-row]")
        if row.is_displayed()
    }


def bytes_of(text: str) -> float:
    """`1.2 MiB` as the page shows it, in bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?) (B|KiB|MiB|GiB|TiB)", text)
    assert match, f"not a size: {text!r}"
    return float(match[1]) * UNITS[match[2]]


def sign_in(driver: webdriver.Chrome, token: str) -> None:
    wait(driver, shown("token-input"), "the token prompt").send_keys(token)
    by_testid(driver, "login-button").click()


def screenshot(driver: webdriver.Chrome, name: str, width: int, height: int, mobile: bool) -> None:
    """A viewport of `width` by `height` CSS pixels, and the whole page at that width, saved
    into test-artifacts/ as `name`.png and `name`-full.png."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile,
    })  # fmt: skip
    wait(driver, lambda d: d.execute_script("return innerWidth") == width, f"a {width} px viewport")
    ARTIFACTS.mkdir(exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))
    full = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True})
    (ARTIFACTS / f"{name}-full.png").write_bytes(base64.b64decode(full["data"]))
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_dashboard_shows_the_cache_and_deletes_an_image(
    cache: Regcache, browser: webdriver.Chrome
) -> None:
    driver = browser
    page = requests.get(f"{cache.url}/dashboard/", timeout=10)
    assert page.status_code == 200, "regcache does not serve /dashboard/ (dashboard.add_routes)"
    driver.get(f"{cache.url}/dashboard")
    assert driver.current_url == f"{cache.url}/dashboard/"

    # A wrong token is refused in words, and the prompt comes back.
    sign_in(driver, "not-the-token")
    error = wait(driver, shown("error"), "the refusal")
    assert "a valid admin token is required" in error.text
    assert driver.execute_script("return sessionStorage.length") == 0

    sign_in(driver, TOKEN)
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-loaded"),
         "the first update")  # fmt: skip
    assert driver.execute_script("return sessionStorage.getItem('regcache-admin-token')") == TOKEN

    images = admin(cache, "images")["images"]
    expected = {(i["repository"], i["digest"]) for i in images}
    assert {repo for repo, _ in expected} == {f"docker.io/library/{n}" for n in UPSTREAM_NAMES}
    assert set(wait(driver, lambda d: len(rows(d)) == len(expected) and rows(d), "image rows")) == (
        expected
    )

    storage = admin(cache, "storage")
    used = by_testid(driver, "storage-used")
    assert storage["used"] > 0
    assert used.get_attribute("data-value") == str(storage["used"])
    assert abs(bytes_of(used.text) - storage["used"]) <= 0.05 * UNITS[used.text.split()[1]]
    assert used.text.split()[1] == format_size(storage["used"]).split()[1]
    assert by_testid(driver, "storage-quota").text == "64.0 MiB"
    assert bytes_of(by_testid(driver, "free-disk").text) > 0

    overview = admin(cache, "overview")
    assert overview["traffic"]["bytes_from_cache"] > 0  # alpha was pulled twice
    saved = by_testid(driver, "bytes-saved")
    assert int(saved.get_attribute("data-value") or 0) > 0 and bytes_of(saved.text) > 0
    ratio = by_testid(driver, "hit-ratio").text
    assert re.fullmatch(r"\d+\.\d %", ratio) and float(ratio.split()[0]) > 0
    upstream = driver.find_element(By.CSS_SELECTOR, "[data-testid=upstream-row][data-name=up]")
    assert "docker.io" in upstream.text and "no limit reported" in upstream.text
    top_size = driver.find_elements(By.CSS_SELECTOR, "[data-testid=top-size-row]")
    by_size = [r.get_attribute("data-repository") for r in top_size]
    assert by_size == ["docker.io/library/beta", "docker.io/library/alpha"]
    top_pulls = driver.find_elements(By.CSS_SELECTOR, "[data-testid=top-pulls-row]")
    assert top_pulls[0].get_attribute("data-repository") == "docker.io/library/alpha"
    assert "No upstream errors" in by_testid(driver, "recent-errors").text
    assert "None" in by_testid(driver, "downloads").text

    # The filter narrows the table to one repository.
    by_testid(driver, "image-filter").send_keys("beta")
    wait(driver, lambda d: [r for r, _ in rows(d)] == ["docker.io/library/beta"], "filtered rows")
    clear = "arguments[0].value = ''; arguments[0].dispatchEvent(new Event('input'))"
    driver.execute_script(clear, by_testid(driver, "image-filter"))
    wait(driver, lambda d: len(rows(d)) == len(expected), "every row again")

    screenshot(driver, "dashboard-desktop", 1280, 900, mobile=False)
    screenshot(driver, "dashboard-phone", 390, 844, mobile=True)

    # Pin beta; a dry-run prune of everything then leaves it out and names only alpha.
    beta = next((repo, digest) for repo, digest in expected if repo.endswith("/beta"))
    pin = "[data-testid=pin-button]"
    wait(driver, lambda d: rows(d)[beta].find_element(By.CSS_SELECTOR, pin).click() or True,
         "the Pin click")  # fmt: skip
    wait(driver, lambda d: rows(d)[beta].get_attribute("data-pinned") == "true", "beta pinned")
    assert next(i for i in admin(cache, "images")["images"] if i["digest"] == beta[1])["pinned"]
    Select(by_testid(driver, "prune-kind")).select_by_value("pattern")
    by_testid(driver, "prune-value").send_keys("docker.io/*")
    by_testid(driver, "prune-dry-run").click()
    by_testid(driver, "prune-button").click()
    notice = wait(driver, shown("notice"), "the prune result").text
    assert notice.startswith("Would prune 1 image(s)") and "alpha" in notice
    assert "beta" not in notice

    # Delete alpha: confirm, then the row goes and the API no longer lists it.
    alpha = next((repo, digest) for repo, digest in expected if repo.endswith("/alpha"))
    delete = "[data-testid=delete-button]"
    wait(driver, lambda d: rows(d)[alpha].find_element(By.CSS_SELECTOR, delete).click() or True,
         "the Delete click")  # fmt: skip
    dialog = wait(driver, expected_conditions.alert_is_present(), "the confirm() dialog")
    assert "docker.io/library/alpha" in dialog.text
    dialog.accept()
    wait(driver, lambda d: alpha not in rows(d), "the deleted row to go")
    assert "Deleted docker.io/library/alpha" in by_testid(driver, "notice").text
    left = {(i["repository"], i["digest"]) for i in admin(cache, "images")["images"]}
    assert alpha not in left and left == expected - {alpha}
