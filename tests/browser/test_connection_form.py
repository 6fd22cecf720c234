"""The Cometly connection form in a real browser: Chromium (Playwright) on a real ``airflow api-server``.

A user adds a Cometly connection through the Airflow UI, fills the typed extra fields, saves it, and
presses Test with a good and a bad API key against the simulator. Screenshots of each step land in
``test-output/browser/`` (``COMETLY_TEST_OUTPUT`` moves it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cometly_provider.hooks.connection_fields import EXTRA_FIELDS, UI_FIELD_BEHAVIOUR
from tests.browser.api_server import ApiServer, start_api_server

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("COMETLY_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("COMETLY_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output"))
LABELS = UI_FIELD_BEHAVIOUR["relabeling"]


def _require_browser() -> None:
    missing = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package (bash scripts/bootstrap.sh installs it)")
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).exists()):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    if missing:
        message = "browser test needs " + " and ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs both: never skip there
        pytest.skip(message)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    _require_browser()
    with start_api_server(tmp_path_factory.mktemp("airflow-home")) as server:
        yield server


@pytest.fixture(scope="module")
def page(api_server: ApiServer) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 1900})
            tab.set_default_timeout(20_000)
            yield tab
        finally:
            browser.close()


def _shot(page: Any, name: str, *, full_page: bool = True) -> Path:
    path = OUTPUT / "browser" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path


def _add_connection(page: Any, base_url: str, conn_id: str, *, port: int, api_key: str) -> dict[str, Any]:
    """Fill the Add Connection form as a user would; return what the API stored."""
    page.goto(f"{base_url}/connections")
    page.get_by_role("button", name="Add Connection").click()
    page.get_by_label("Connection ID").fill(conn_id)
    page.locator("text=Select Connection Type").click(force=True)  # a custom select: type to filter
    page.keyboard.type("Comet")
    page.get_by_role("option", name="Cometly", exact=True).click()
    page.get_by_label(LABELS["host"]).fill("http://127.0.0.1")
    page.get_by_label(LABELS["port"]).fill(str(port))
    page.get_by_label(LABELS["password"]).fill(api_key)
    page.get_by_text("Extra Fields", exact=True).click()
    # The UI names each extra's input element_<field name>.
    page.locator('[name="element_timeout"]').fill("20")
    page.locator('[name="element_max_attempts"]').fill("3")
    page.locator('[name="element_timezone"]').fill("America/Los_Angeles")
    _shot(page, f"{conn_id}-1-form")
    with page.expect_response(
        lambda r: r.url.endswith("/api/v2/connections") and r.request.method == "POST"
    ) as r:
        page.get_by_role("button", name="Save").click()
    assert r.value.status == 201, r.value.text()
    stored: dict[str, Any] = r.value.json()
    page.get_by_role("row").filter(has_text=conn_id).wait_for()
    return stored


def _press_test(page: Any, conn_id: str) -> str:
    """Press the row's Test button; return the toast the user reads."""
    row = page.get_by_role("row").filter(has_text=conn_id)
    with page.expect_response(lambda r: r.url.endswith("/api/v2/connections/test")) as response:
        row.get_by_role("button", name="Test Connection").click()
    assert response.value.status == 200, response.value.text()  # no "Bad Request" from the port
    toast = page.get_by_role("status").filter(has_text="Test Connection").last
    toast.wait_for()
    text: str = toast.inner_text()
    page.wait_for_timeout(800)  # the toast slides in: let the screenshot show it whole
    _shot(page, f"{conn_id}-2-tested", full_page=False)
    return text


def test_form_shows_every_setting_saves_them_and_tests_good_and_bad_keys(
    api_server: ApiServer, page: Any
) -> None:
    from cometly_provider.testing import run_simulator

    with run_simulator() as sim:
        stored = _add_connection(page, api_server.base_url, "cometly_ui", port=sim.port, api_key=sim.api_key)

        # Every documented extra is a typed, labelled field with its help text.
        page.get_by_role("row").filter(has_text="cometly_ui").get_by_role("button", name="Edit").click()
        page.get_by_text("Extra Fields", exact=True).click()
        for field in EXTRA_FIELDS:
            assert page.get_by_text(field.label, exact=True).is_visible(), field.name
            assert page.get_by_text(field.description, exact=True).is_visible(), field.name
        _shot(page, "cometly_ui-0-extra-fields")
        page.get_by_role("dialog").get_by_role("button", name="Close").click()

        assert (stored["host"], stored["port"]) == ("http://127.0.0.1", sim.port)
        extra = json.loads(stored["extra"])
        assert (extra["timeout"], extra["max_attempts"], extra["timezone"]) == (20, 3, "America/Los_Angeles")
        assert extra["rate_limiting"] is True  # the toggle starts at the default, on

        good = _press_test(page, "cometly_ui")
        assert "Test Connection Successful" in good
        assert f"Connected to Cometly at http://127.0.0.1:{sim.port}; the API key is valid." in good

        _add_connection(page, api_server.base_url, "cometly_bad_key", port=sim.port, api_key="not-the-key")
        bad = _press_test(page, "cometly_bad_key")
        assert "Test Connection Failed" in bad
        assert "rejected the API key (HTTP 401" in bad
        assert "not-the-key" not in bad

        # The Test calls reached the simulator once each, read-only: nothing was created.
        assert sim.status_counts("export_status") == {404: 1, 401: 1}
        assert sim.exports == {}
