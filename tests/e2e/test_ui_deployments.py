"""The web UI's deployments and nodes pages in a real browser (Debian's chromium through Playwright) against
a real ``superollama serve`` with the real SmolLM2 on llama.cpp (the bundled file and a copy of it, so two
real versions): create a deployment with two targets, move its weights with the sliders (by keyboard) and
see the OpenAI API route by them, an all-zero split refused with the API's own error, promote a stage,
roll back (confirmed), pause and resume; the nodes' bars with this machine's numbers and the instances on
it, stopped from the page. Then every page at phone width, and one page in dark and light.
Screenshots go to test-artifacts/ui/ (not committed).
"""

from __future__ import annotations

import shutil
from collections import Counter
from typing import Any

import httpx
import psutil
import pytest
from tests.e2e.conftest import UiServer, wait_until
from tests.e2e.ui_browser import PAGES, TIMEOUT_MS, row, shot, signed_in

pytestmark = pytest.mark.browser

A, B = "smollm2:135m", "ui-dep-b:1"
TARGET = "X-Superollama-Target"
PHONE = {"width": 390, "height": 844}
POLLING = ("events", "instances", "usage", "deployments")  # pages that never go network-idle
RENDERS = """(selector) => {
    window.renders = 0;
    new MutationObserver(() => { window.renders += 1; })
        .observe(document.querySelector(selector), {childList: true});
}"""  # counts the re-renders of a self-refreshing table
LIGHT, DARK = "rgb(247, 247, 248)", "rgb(21, 23, 27)"  # ui.css's --bg of each scheme


def _chat(ui: UiServer, model: str, user: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    if user is not None:
        body["user"] = user
    return ui.api("POST", "/v1/chat/completions", json=body)


def _targets(ui: UiServer, name: str) -> dict[str, int]:
    shown = ui.api("GET", f"/admin/v1/deployments/{name}")
    assert shown.status_code == 200, shown.text
    return {t["name"]: t["weight"] for t in shown.json()["targets"]}


def _save(page: Any) -> None:
    """Save the sliders' weights and wait for the page to show the saved set."""
    page.click("#save-weights")
    page.locator("#notice:not(.error)", has_text="new weights").wait_for(timeout=TIMEOUT_MS * 3)


@pytest.fixture(scope="module")
def two_versions(ui_server: UiServer) -> UiServer:
    copied = ui_server.api("POST", "/admin/v1/copy", json={"source": A, "destination": B})
    assert copied.status_code == 201, copied.text
    return ui_server


@pytest.fixture(scope="module")
def a_deployment(ui_server: UiServer) -> str:
    """A deployment made through the API, for the tests that only look at one."""
    made = ui_server.api("PUT", "/admin/v1/deployments/uiview", json={"targets": [f"{A}=100"]})
    assert made.status_code == 200, made.text
    return "uiview"


def test_deployment_weights_route_promote_and_roll_back(browser: object, two_versions: UiServer) -> None:
    ui = two_versions
    with signed_in(browser, ui) as page:
        page.goto("/ui/deployments")
        page.locator(f'#create-targets select option[value="{B}"]').wait_for(state="attached")
        page.fill("#create-form input[name=name]", "uichat")
        page.fill("#create-form input[name=stage]", "staging")
        page.select_option("#create-form select[name=sticky]", "user")
        page.click("#add-target")
        rows = page.locator("#create-targets .target-row")
        rows.nth(0).locator("select").select_option(A)
        rows.nth(0).locator("input[name=weight]").fill("100")
        rows.nth(1).locator("select").select_option(B)
        rows.nth(1).locator("input[name=weight]").fill("0")
        page.click("#create-form button[type=submit]")
        page.locator("#create-text", has_text="uichat@staging is deployed").wait_for(timeout=TIMEOUT_MS * 3)
        page.locator("#detail-name", has_text="uichat@staging").wait_for()
        assert _targets(ui, "uichat@staging") == {A: 100, B: 0}
        assert {_chat(ui, "uichat@staging", f"u{i}").headers[TARGET] for i in range(4)} == {A}

        # the sliders, by keyboard: A to 0 (Home), B to the top (End) → every request goes to B
        slider_a = page.locator(f'#weights input[data-target="{A}"]')
        slider_b = page.locator(f'#weights input[data-target="{B}"]')
        slider_a.focus()
        page.keyboard.press("Home")
        slider_b.focus()
        page.keyboard.press("End")
        assert page.locator(f'#weights output[data-target="{B}"]').inner_text() == "100 (100.0 %)"
        _save(page)
        assert _targets(ui, "uichat@staging") == {A: 0, B: 100}
        assert {_chat(ui, "uichat@staging", f"u{i}").headers[TARGET] for i in range(4)} == {B}

        # half and half, sticky by user: both targets serve, each user always the same one
        slider_a.focus()
        for _ in range(50):
            page.keyboard.press("ArrowRight")
        slider_b.focus()
        for _ in range(50):
            page.keyboard.press("ArrowLeft")
        assert page.locator(f'#weights output[data-target="{A}"]').inner_text() == "50 (50.0 %)"
        _save(page)
        assert _targets(ui, "uichat@staging") == {A: 50, B: 50}
        seen = {f"user-{i}": _chat(ui, "uichat@staging", f"user-{i}").headers[TARGET] for i in range(16)}
        spread = Counter(seen.values())
        assert set(spread) == {A, B}, spread
        again = {u: _chat(ui, "uichat@staging", u).headers[TARGET] for u in list(seen)[:4]}
        assert all(seen[u] == t for u, t in again.items()), (seen, again)
        page.locator(f'#live tbody tr[data-target="{B}"]', has_text="yes").wait_for()
        shot(page, "deployments-weights")

        # all zero: the API refuses it, and the page shows the API's words
        slider_a.focus()
        page.keyboard.press("Home")
        slider_b.focus()
        page.keyboard.press("Home")
        page.click("#save-weights")
        page.locator("#notice.error", has_text="the weights must add up to more than 0").wait_for()
        assert _targets(ui, "uichat@staging") == {A: 50, B: 50}

        # promote the staging stage to production: "uichat" answers with staging's targets
        page.fill("#promote-to", "production")
        page.click("#promote-btn")
        page.locator("#notice", has_text="promoted to uichat").wait_for(timeout=TIMEOUT_MS * 3)
        row(page, "deployments", "uichat").wait_for()
        assert _targets(ui, "uichat") == {A: 50, B: 50}
        assert _chat(ui, "uichat", "someone").status_code == 200

        # roll back staging, confirmed in a dialog that says from what to what
        page.locator("#history tbody tr").nth(1).wait_for()  # two earlier sets: 100/0 and 0/100
        page.click("#rollback-btn")
        dialog = page.locator("#confirm-rollback")
        dialog.wait_for()
        assert f"back to {A}=0, {B}=100" in page.locator("#rollback-to").inner_text()
        shot(page, "deployments-rollback-confirm")
        page.click("#rollback-yes")
        page.locator("#notice", has_text="rolled back").wait_for(timeout=TIMEOUT_MS * 3)
        assert _targets(ui, "uichat@staging") == {A: 0, B: 100}
        assert _chat(ui, "uichat@staging", "x").headers[TARGET] == B

        # pause: clients get 404 for it; resume: served again
        page.click("#pause-btn")
        row(page, "deployments", "uichat@staging").locator("td.state-disabled").wait_for()
        assert _chat(ui, "uichat@staging").status_code == 404
        page.click("#resume-btn")
        row(page, "deployments", "uichat@staging").locator("td.state-enabled").wait_for()
        assert _chat(ui, "uichat@staging").status_code == 200
        assert "No rollout on this stage yet." in page.locator("#rollout-status").inner_text()  # none made up
        shot(page, "deployments")
    events = ui.api("GET", "/admin/v1/events", params={"target": "uichat@staging"}).json()["events"]
    actions = [e["action"] for e in events]
    for action in ("deployment.deploy", "deployment.promote", "deployment.rollback", "deployment.pause"):
        assert action in actions, actions


def test_a_canary_rollout_and_a_shadow_are_run_and_watched_from_the_page(
    browser: object, two_versions: UiServer
) -> None:
    """Start a canary from the page: the canary and the stable target side by side with the live numbers
    the leader judges by, its decisions as they come (a hold: too few canary requests yet), then abort.
    Mirror to the other version: the comparisons appear on the page as clients chat; then stop."""
    ui = two_versions
    made = ui.api("PUT", "/admin/v1/deployments/uicanary", json={"targets": [f"{A}=100"]})
    assert made.status_code == 200, made.text
    with signed_in(browser, ui) as page:
        page.goto("/ui/deployments")
        row(page, "deployments", "uicanary").locator("[data-action=open]").click()
        page.locator("#rollout-form").wait_for()
        page.select_option("#rollout-to", B)
        page.fill("#rollout-form input[name=every]", "1s")
        page.fill("#rollout-form input[name=max_error_rate]", "50%")
        page.click("#rollout-start")
        page.locator("#notice", has_text=f"rollout to {B} started at 10 %").wait_for(timeout=TIMEOUT_MS * 3)
        page.locator('#rollout-body [data-state="running"]').wait_for()
        assert page.locator("#rollout-form").is_hidden() and page.locator("#abort-btn").is_visible()
        assert row(page, "deployments", "uicanary").locator("td.rollout").inner_text() == (
            f"canary {B} at 10 % (stable {A})"
        )
        assert _targets(ui, "uicanary") == {A: 90, B: 10}
        for i in range(12):
            assert _chat(ui, "uicanary", f"c{i}").status_code == 200
        # the page refreshes itself: the stable target's requests arrive, then the analysis holds
        stable = page.locator(f'#canary tbody tr[data-target="{A}"]')
        assert wait_until(lambda: int(stable.locator("td").nth(2).inner_text()) > 0, timeout=60)
        page.locator('#decisions tbody tr[data-action-taken="hold"]', has_text="canary requests <").wait_for()
        page.locator('#decisions tbody tr[data-action-taken="start"]').wait_for()
        shot(page, "deployments-rollout")
        page.click("#abort-btn")
        page.locator("#notice", has_text="aborted").wait_for(timeout=TIMEOUT_MS * 3)
        page.locator('#rollout-body [data-state="aborted"]').wait_for()
        assert _targets(ui, "uicanary").get(B, 0) == 0 and _targets(ui, "uicanary")[A] == 100
        assert page.locator("#rollout-form").is_visible()

        page.select_option("#shadow-to", B)
        page.fill("#shadow-form input[name=percent]", "100")
        page.click("#shadow-set")
        page.locator("#notice", has_text=f"mirroring 100 % to {B}").wait_for(timeout=TIMEOUT_MS * 3)
        for i in range(3):
            assert _chat(ui, "uicanary", f"s{i}").headers[TARGET] == A  # the client never gets the shadow's
        wait_until(
            lambda: int(page.locator('#shadow-stats [data-stat="samples"]').inner_text() or 0) >= 3,
            timeout=60,
        )
        assert page.locator("#shadow-samples tbody tr").count() >= 3
        assert f"Mirroring 100 % of requests to {B}" in page.locator("#shadow-body").inner_text()
        shot(page, "deployments-shadow")
        assert page.locator("#weights input[type=range]").count() == 1  # the shadow has no weight to slide
        _save(page)  # a save of the weights keeps the shadow
        kept = ui.api("GET", "/admin/v1/deployments/uicanary").json()["targets"]
        assert {(t["name"], t["role"], t["weight"]) for t in kept} == {
            (A, "primary", 100),
            (B, "shadow", 100),
        }
        page.click("#shadow-off-btn")
        page.locator("#shadow-body", has_text="Mirroring is off").wait_for()
    summary = ui.api("GET", "/admin/v1/deployments/uicanary/shadow").json()
    assert summary["shadow"] is None and summary["samples"] >= 3
    listed = {d["model"]: d for d in ui.api("GET", "/admin/v1/deployments").json()["deployments"]}
    assert listed["uicanary"]["rollout"] is None  # aborted: no running rollout in the list


def test_nodes_show_bars_and_the_instances_on_them(browser: object, two_versions: UiServer) -> None:
    ui = two_versions
    assert _chat(ui, A).status_code == 200  # a ready instance with an answer behind it (tokens/s)
    with signed_in(browser, ui) as page:
        page.goto("/ui/instances")
        node = page.locator("article.node").first
        ram = node.locator('[data-meter="RAM"] [role=meter]')
        ram.wait_for()
        total = psutil.virtual_memory().total
        used = float(ram.get_attribute("aria-valuenow") or "nan")
        assert 1.0 < used < 100.0, used  # this machine's RAM in use, as a share
        wait_until(lambda: node.locator('[data-meter="CPU"] [role=meter]').get_attribute("aria-valuenow"), 10)
        cpu = node.locator('[data-meter="CPU"]').inner_text()
        assert f"of {psutil.cpu_count()} CPUs" in cpu, cpu
        nodes = ui.api("GET", "/admin/v1/nodes").json()["nodes"]
        local = next(n for n in nodes if n["local"])
        assert local["usage"]["memory_total"] == total
        if shutil.which("nvidia-smi") is None:  # this machine: no NVIDIA driver, so no GPU bars
            assert local["usage"]["gpus"] == []
            node.locator(".gpus-none").wait_for()
        else:
            assert node.locator('[data-meter^="cuda:"]').count() == len(local["usage"]["gpus"]) > 0
        smol = node.locator(f'tbody tr[data-version="{A}"]')
        smol.locator("td.state-ready").wait_for()
        page.wait_for_function(
            "() => { const c = document.querySelector('tr[data-version=\"smollm2:135m\"] td.tps');"
            " return c && parseFloat(c.textContent) > 0; }"
        )
        listed = next(i for i in local["instances"] if i["version"] == A)
        assert listed["memory_bytes"] > 10_000_000 and listed["device"] == "cpu"
        shot(page, "instances-nodes")
        # stop the copy's instance from the page (the deployment test left it running): it goes
        if node.locator(f'tbody tr[data-version="{B}"]').count() == 0:
            assert _chat(ui, B).status_code == 200
        stop = node.locator(f'tbody tr[data-version="{B}"] button[data-action=stop]')
        stop.click()
        node.locator(f'tbody tr[data-version="{B}"]').wait_for(state="detached")
    versions = {i["version"] for i in ui.api("GET", "/admin/v1/instances").json()["instances"]}
    assert B not in versions and A in versions, versions


def test_every_page_at_phone_width_by_keyboard_dark_and_light(
    browser: object, ui_server: UiServer, a_deployment: str
) -> None:
    with signed_in(browser, ui_server, viewport=PHONE) as phone:
        for slug in PAGES:
            phone.goto(f"/ui/{slug}")
            phone.locator("main h1").wait_for()
            if slug not in POLLING:
                phone.wait_for_load_state("networkidle")
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= PHONE["width"], (slug, width)  # nothing wider than the screen but scroll boxes
            assert phone.locator("#notice").is_hidden(), (slug, phone.locator("#notice").inner_text())
            shot(phone, f"{slug}-phone")
        # keyboard: every control that acts is a button or a form field, and focus is drawn
        phone.goto("/ui/deployments")
        phone.locator(f'#deployments tbody tr[data-name="{a_deployment}"]').wait_for()
        assert phone.locator("[onclick], div[role=button], span[role=button], a:not([href])").count() == 0
        phone.keyboard.press("Tab")  # the skip link
        phone.keyboard.press("Enter")
        for _ in range(40):  # tab on until the create form's first field has the focus
            phone.keyboard.press("Tab")
            if phone.evaluate("document.activeElement.name") == "name":
                break
        assert phone.evaluate("document.activeElement.name") == "name"
        outline = phone.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline not in ("none", ""), outline
        # the list refreshes itself every 3 s: a focused button keeps the focus through a refresh
        opener = row(phone, "deployments", a_deployment).locator("button[data-action=open]")
        opener.focus()
        phone.evaluate(RENDERS, "#deployments tbody")
        phone.wait_for_function("() => window.renders > 0", timeout=TIMEOUT_MS)
        focused = "[document.activeElement.dataset.action, document.activeElement.isConnected]"
        assert phone.evaluate(focused) == ["open", True]
    for scheme in ("light", "dark"):  # the deployment open: sliders, buttons, tables in both schemes
        with signed_in(browser, ui_server, color_scheme=scheme) as page:
            page.goto("/ui/deployments")
            row(page, "deployments", a_deployment).locator("button[data-action=open]").click()
            page.locator("#weights input[type=range]").first.wait_for()
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == (LIGHT if scheme == "light" else DARK), background
            shot(page, f"deployments-{scheme}")


def test_a_viewer_sees_deployments_and_nodes_read_only(
    browser: object, ui_server: UiServer, a_deployment: str
) -> None:
    ui = ui_server
    with signed_in(browser, ui, ui.key("viewer", "ui-viewer")) as page:
        page.goto("/ui/deployments")
        row(page, "deployments", a_deployment).locator("button[data-action=open]").click()
        slider = page.locator(f'#weights input[data-target="{A}"]')
        slider.wait_for()
        assert slider.is_disabled()
        assert page.locator("#create-form").is_hidden() and page.locator("#save-weights").is_hidden()
        assert page.locator("#promote-btn").is_hidden() and page.locator("#rollback-btn").is_hidden()
        page.goto("/ui/instances")
        page.locator('article.node [data-meter="RAM"]').wait_for()
        assert page.locator("button[data-action=stop]").count() == 0
