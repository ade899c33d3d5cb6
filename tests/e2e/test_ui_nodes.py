"""The Instances page's node actions in a real browser (Debian's chromium through Playwright) against a real
``superollama serve`` with the real SmolLM2: each node's state as a badge; cordon and uncordon; load a
version and see its instance; drain (confirmed in a dialog that names the instances it stops, and that the
page's 2 s refresh leaves open) — the instance goes, and the next chat is answered by a new one; remove a
node another agent registered, and the API's refusal to remove a node that runs an instance, shown as the
API words it; a viewer sees the states and no button. Each step is checked against the admin API too.
Screenshots go to test-artifacts/ui/ (not committed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.e2e.conftest import UiServer, wait_until
from tests.e2e.ui_browser import TIMEOUT_MS, shot, signed_in

from superollama.core import NodeRecord
from superollama.registry import open_registry
from superollama.settings import Settings

pytestmark = pytest.mark.browser

SMOL = "smollm2:135m"
FAR = "ui-far-node"
RENDERS = """(selector) => {
    window.renders = 0;
    new MutationObserver(() => { window.renders += 1; })
        .observe(document.querySelector(selector), {childList: true});
}"""  # counts the re-renders of the self-refreshing node list
FOCUSED = "() => document.activeElement && document.activeElement.dataset.action"


def _nodes(ui: UiServer) -> dict[str, dict[str, Any]]:
    listed = ui.api("GET", "/admin/v1/nodes")
    assert listed.status_code == 200, listed.text
    return {n["name"]: n for n in listed.json()["nodes"]}


def _local(ui: UiServer) -> str:
    return next(name for name, n in _nodes(ui).items() if n["local"])


def _chat(ui: UiServer, model: str = SMOL) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    return ui.api("POST", "/v1/chat/completions", json=body)


def _instances(ui: UiServer) -> list[dict[str, Any]]:
    return list(ui.api("GET", "/admin/v1/instances").json()["instances"])


def _register(ui: UiServer, record: NodeRecord) -> None:
    """Write a node into the server's registry, as another machine's agent does when it registers."""
    url = Settings.from_env(home=ui.server.home).registry_url  # the server's: same home, same environment

    async def upsert() -> None:
        registry = await open_registry(url)
        try:
            await registry.nodes.upsert(record)
        finally:
            await registry.close()

    # Playwright's sync API holds this thread's event loop: the registry runs in a thread of its own
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, upsert()).result()


@pytest.fixture
def node_ready(ui_server: UiServer) -> Iterator[str]:
    """This server's node, ready before and after the test (the server is shared by the UI tests)."""
    name = _local(ui_server)
    assert ui_server.api("POST", f"/admin/v1/nodes/{name}/uncordon").status_code == 200
    try:
        yield name
    finally:
        ui_server.api("POST", f"/admin/v1/nodes/{name}/uncordon")


def test_cordon_uncordon_load_and_drain_a_node(browser: object, ui_server: UiServer, node_ready: str) -> None:
    ui, name = ui_server, node_ready
    with signed_in(browser, ui) as page:
        page.goto("/ui/instances")
        card = page.locator(f'article.node[data-node="{name}"]')
        badge = card.locator(".node-state")
        badge.wait_for()
        assert badge.inner_text() == "ready"

        # cordon: the badge says it, the API says it, and the focus moves to the button that undoes it
        card.locator("button[data-action=cordon]").click()
        card.locator(".node-state.state-cordoned", has_text="cordoned").wait_for()
        assert _nodes(ui)[name]["state"] == "cordoned"
        page.wait_for_function(f"{FOCUSED} === 'uncordon'")
        shot(page, "instances-node-cordoned")
        page.keyboard.press("Enter")  # uncordon, by keyboard
        card.locator(".node-state.state-ready", has_text="ready").wait_for()
        assert _nodes(ui)[name]["state"] == "ready"
        page.wait_for_function(f"{FOCUSED} === 'cordon'")

        # load SmolLM2 from the page's form: its instance row appears on this node
        page.select_option("#load-model", SMOL)
        page.click("#load-form button[type=submit]")
        smol = card.locator(f'tbody tr[data-version="{SMOL}"]')
        smol.locator("td.state-ready").wait_for(timeout=TIMEOUT_MS * 3)
        drained = smol.get_attribute("data-id")
        on_node = {i["id"]: i["version"] for i in _nodes(ui)[name]["instances"]}  # earlier tests' too
        assert drained and on_node.get(drained) == SMOL, on_node
        assert card.locator("button[data-action=remove]").count() == 0  # the API refuses while they run

        # drain: a dialog names what it stops, and stays open through the page's refreshes
        card.locator("button[data-action=drain]").click()
        dialog = page.locator("#confirm-node")
        dialog.wait_for()
        assert page.locator("#node-confirm-h").inner_text() == f"Drain node {name}?"
        for inst, version in on_node.items():
            assert inst in page.locator(f'#node-confirm-list li[data-version="{version}"]').inner_text()
        assert page.evaluate("document.activeElement.id") == "node-confirm-no"  # the safe choice first
        page.evaluate(RENDERS, "#instances")
        page.wait_for_function("() => window.renders > 1", timeout=TIMEOUT_MS)
        assert page.evaluate("document.getElementById('confirm-node').open")
        assert _nodes(ui)[name]["state"] == "ready"  # nothing happened yet
        shot(page, "instances-node-drain-confirm")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "node-confirm-yes"
        page.keyboard.press("Enter")
        stopped = len(on_node)
        said = page.locator("#notice:not(.error)", has_text=f"drained {name}: stopped {stopped} instance")
        said.wait_for(timeout=TIMEOUT_MS * 3)
        assert all(version in said.inner_text() for version in on_node.values()), said.inner_text()
        assert dialog.is_hidden()
        for inst in on_node:
            card.locator(f'tbody tr[data-id="{inst}"]').wait_for(state="detached")
        card.locator(".node-state.state-draining", has_text="draining").wait_for()
        assert card.locator("button[data-action=uncordon]").count() == 1
        shot(page, "instances-node-drained")
        after = _nodes(ui)[name]
        assert after["state"] == "draining" and not set(on_node) & {i["id"] for i in after["instances"]}, (
            after
        )
        assert not set(on_node) & {i["id"] for i in _instances(ui)}
        stops = ui.api("GET", "/admin/v1/events", params={"target": SMOL, "action": "instance.stop"})
        reasons = {e["detail"].get("instance"): e["detail"].get("reason") for e in stops.json()["events"]}
        assert reasons.get(drained) == f"node {name} drained", reasons

        # what a drain promises: nothing new starts on the node (this server's only one) until it is
        # uncordoned; then the next request for the version is answered, by a new instance
        refused = _chat(ui)
        assert refused.status_code == 503, refused.text
        assert f"superollama nodes uncordon {name}" in refused.json()["error"]["message"]
        assert not [i for i in _instances(ui) if i["version"] == SMOL]

        card.locator("button[data-action=uncordon]").click()
        card.locator(".node-state.state-ready").wait_for()
        assert _nodes(ui)[name]["state"] == "ready"
        answered = _chat(ui)
        assert answered.status_code == 200, answered.text
        assert answered.json()["choices"][0]["message"]["content"] is not None
        now = [i for i in _instances(ui) if i["version"] == SMOL]
        assert now and all(i["id"] != drained for i in now), now


def test_remove_a_node_and_a_refusal_in_the_apis_words(
    browser: object, ui_server: UiServer, node_ready: str
) -> None:
    ui, name = ui_server, node_ready
    seen = datetime.now(UTC) - timedelta(hours=1)
    inventory = {"cpus": 8, "memory_bytes": 16_000_000_000}
    _register(ui, NodeRecord(FAR, "10.0.0.9:7000", state="down", inventory=inventory, last_seen=seen))
    for inst in _instances(ui):  # this node with no instance: the page offers Remove there too
        assert ui.api("POST", f"/admin/v1/models/{inst['version']}/unload").status_code == 200
    assert wait_until(lambda: not _nodes(ui)[name]["instances"], timeout=60)
    with signed_in(browser, ui) as page:
        page.goto("/ui/instances")
        far = page.locator(f'article.node[data-node="{FAR}"]')
        far.locator(".node-state.state-down", has_text="down").wait_for()
        assert "Run by another process: 8 CPUs" in far.inner_text()
        far.locator("button[data-action=remove]").click()
        assert page.locator("#node-confirm-h").inner_text() == f"Remove node {FAR}?"
        page.click("#node-confirm-yes")
        page.locator("#notice:not(.error)", has_text=f"removed node {FAR}").wait_for()
        far.wait_for(state="detached")
        assert ui.api("GET", f"/admin/v1/nodes/{FAR}").status_code == 404
        assert FAR not in _nodes(ui)

        # this node: Remove is offered (no instance), then an instance starts while the dialog is open;
        # the dialog says so as the page refreshes, and the API's refusal reaches the page in its words
        card = page.locator(f'article.node[data-node="{name}"]')
        card.locator("button[data-action=remove]").click()
        page.locator("#node-confirm-what", has_text="The registry forgets it").wait_for()
        assert _chat(ui).status_code == 200
        page.locator(f'#node-confirm-list li[data-version="{SMOL}"]').wait_for()
        assert "the API refuses to remove it" in page.locator("#node-confirm-what").inner_text()
        page.click("#node-confirm-yes")
        refused = page.locator("#notice.error", has_text=f"node '{name}' runs instances")
        refused.wait_for()
        assert "drain it first" in refused.inner_text()
        shot(page, "instances-node-remove-refused")
        card.locator(f'tbody tr[data-version="{SMOL}"]').wait_for()
        assert card.locator("button[data-action=remove]").count() == 0
        page.set_viewport_size({"width": 390, "height": 844})  # a phone: the buttons wrap, nothing overflows
        card.locator("button[data-action=drain]").scroll_into_view_if_needed()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        shot(page, "instances-node-phone")
    assert name in _nodes(ui)


def test_a_viewer_sees_node_states_and_no_button(
    browser: object, ui_server: UiServer, node_ready: str
) -> None:
    ui, name = ui_server, node_ready
    assert ui.api("POST", f"/admin/v1/nodes/{name}/cordon").status_code == 200
    with signed_in(browser, ui, ui.key("viewer", "ui-node-viewer")) as page:
        page.goto("/ui/instances")
        card = page.locator(f'article.node[data-node="{name}"]')
        card.locator(".node-state.state-cordoned", has_text="cordoned").wait_for()
        card.locator('[data-meter="RAM"]').wait_for()
        assert page.locator("#instances button").count() == 0
        assert page.locator("#load-form").is_hidden()
        shot(page, "instances-viewer")
