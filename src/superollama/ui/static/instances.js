// Instances page: each node's CPU, RAM and per-GPU memory as bars, with the instances on it (state,
// device, memory, requests in flight, tokens/s of the latest answer), from GET /admin/v1/nodes every 2 s;
// load a version (the Ollama API's empty generate, as `ollama run` does) and stop an instance.
// Each node shows its state (ready, cordoned, draining…) and, for an admin, cordon / uncordon, drain and
// remove through /admin/v1/nodes. Drain and remove are confirmed in a dialog that names what they stop
// (kept up to date while it is open: the refresh never closes it); the API's refusal is shown as it says it.
"use strict";
(function () {
  const { api, el, notify, guard, bytes, when, replaceRows, keepFocus, readOnly } = window.SO;
  const box = document.getElementById("instances");
  const dialog = document.getElementById("confirm-node");
  const nodePath = (name) => "/admin/v1/nodes/" + encodeURIComponent(name);
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const HINTS = {
    ready: "",
    cordoned: "takes nothing new; its instances keep serving",
    draining: "drained: takes nothing new",
    down: "its agent stopped reporting",
    unknown: "no agent registered it",
  };
  let nodes = [];          // the nodes as last shown
  const busy = new Set();  // nodes with an action on its way to the API
  let pending = null;      // the confirmation open in the dialog: {node, action}
  let asked = 0;           // refreshes asked for, and the latest one shown (an older answer never wins)
  let shown = 0;

  function bar(label, used, total, text) {
    // A bar for a share of something: role=meter, so a screen reader says its value too.
    const known = typeof used === "number" && typeof total === "number" && total > 0;
    const pct = known ? Math.min(100, Math.max(0, 100 * used / total)) : 0;
    const level = pct >= 90 ? " high" : pct >= 70 ? " mid" : "";
    const fill = el("div", { class: "meter-fill" });
    fill.style.width = pct.toFixed(1) + "%";  // through the CSSOM: the CSP forbids style attributes
    return el("div", { class: "meter-row", "data-meter": label },
      el("span", { class: "meter-label" }, label),
      el("div", { class: "meter" + level, role: "meter", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100,
        "aria-valuenow": known ? pct.toFixed(1) : null, "aria-valuetext": text },
        fill),
      el("span", { class: "meter-text" }, text));
  }

  function bars(node) {
    const u = node.usage;
    if (!u) {
      const inv = node.inventory || {};
      return [el("p", { class: "muted" }, `Run by another process: ${inv.cpus || "?"} CPUs, ${bytes(inv.memory_bytes)} RAM registered; last seen ${when(node.last_seen)}.`)];
    }
    const out = [
      bar("CPU", u.cpu_percent, 100, u.cpu_percent === null ? `${u.cpus} CPUs, measuring…` :
        `${u.cpu_percent}% of ${u.cpus} CPUs · load ${u.load_average.join(" ")}`),
      bar("RAM", u.memory_used, u.memory_total, `${bytes(u.memory_used)} of ${bytes(u.memory_total)}`),
    ];
    for (const g of u.gpus) {
      const util = g.utilization_percent === null ? "" : ` · ${g.utilization_percent}% busy`;
      out.push(bar(`${g.device} ${g.name}`, g.memory_used, g.memory_total, `${bytes(g.memory_used)} of ${bytes(g.memory_total)}${util}`));
    }
    if (!u.gpus.length) out.push(el("p", { class: "muted gpus-none" }, "No GPU on this node (nvidia-smi lists none)."));
    return out;
  }

  function instanceRows(node) {
    const tbody = el("tbody");
    replaceRows(tbody, node.instances.map((i) => el("tr", { "data-version": i.version, "data-id": i.id },
      el("td", {}, el("strong", {}, i.version)),
      el("td", { class: "state-" + i.state }, i.state),
      el("td", {}, i.device), el("td", {}, i.runtime),
      el("td", {}, bytes(i.memory_bytes)),
      el("td", {}, String(i.in_flight)),
      el("td", { class: "tps" }, i.tokens_per_second === null ? "—" : i.tokens_per_second.toFixed(1)),
      el("td", {}, i.load_seconds + " s"),
      el("td", {}, readOnly ? "" : el("button", { type: "button", class: "danger", "data-action": "stop",
        onclick: guard(async () => { await api("POST", `/admin/v1/models/${encodeURIComponent(i.version)}/unload`); notify(`stopped ${i.version}`); await refresh(); }) }, "Stop")))),
      "No instance is running: a request to a version, or Load, starts one.");
    return el("div", { class: "scroll" }, el("table", { class: "instances" },
      el("thead", {}, el("tr", {}, ["Version", "State", "Device", "Runtime", "Memory (RSS)", "In flight", "Tokens/s", "Loaded in", "Actions"].map((h) => el("th", {}, h)))),
      tbody));
  }

  function nodeActions(n) {
    // An admin's buttons for one node (a viewer gets none): the API's own rules decide what is offered.
    if (readOnly) return null;
    const held = n.state === "cordoned" || n.state === "draining";
    const waiting = busy.has(n.name);
    const button = (action, text, label, cls, run) => el("button", {
      type: "button", class: cls, "data-action": action, "aria-label": `${label} node ${n.name}`,
      "aria-disabled": waiting ? "true" : null,
      onclick: guard(async () => { if (!busy.has(n.name)) await run(); }) }, text);
    return el("div", { class: "row node-actions admin-only", "data-name": n.name },
      held
        ? button("uncordon", "Uncordon", "Uncordon", "secondary", () => setState(n.name, "uncordon"))
        : button("cordon", "Cordon", "Cordon", "secondary", () => setState(n.name, "cordon")),
      button("drain", "Drain…", "Drain", "danger", () => ask(n.name, "drain")),
      // DELETE is refused (409) while instances run there: offered only where none does
      n.instances.length ? null : button("remove", "Remove…", "Remove", "danger", () => ask(n.name, "remove")),
      waiting ? el("span", { class: "muted", role: "status" }, "working…") : null);
  }

  function nodeCard(n) {
    const hint = HINTS[n.state] === undefined ? "" : HINTS[n.state];
    return el("article", { class: "node", "data-node": n.name, "data-state": n.state },
      el("h3", {}, n.name, n.local ? el("small", { class: "muted" }, " (this server)") : null, " ",
        el("span", { class: "badge node-state state-" + n.state }, n.state),
        hint ? el("small", { class: "muted" }, " " + hint) : null,
        " ", el("small", {}, plural(n.instances.length, "instance"))),
      nodeActions(n),
      el("div", { class: "meters" }, bars(n)),
      instanceRows(n));
  }

  async function refresh() {
    const mine = ++asked;
    const data = await api("GET", "/admin/v1/nodes");
    if (mine < shown) return;  // a later answer is already on the page
    shown = mine;
    nodes = data.nodes;
    keepFocus(box, () => box.replaceChildren(...nodes.map(nodeCard)));
    if (pending) fill();  // the open confirmation says what it would stop now
  }

  function focusAction(name, ...actions) {
    // After an action the node's buttons are new ones: the focus goes to the first of these that exists
    // (the node's heading of the list when the node is gone).
    const card = box.querySelector(`[data-node="${CSS.escape(name)}"]`);
    const target = card && actions.map((a) => card.querySelector(`[data-action="${CSS.escape(a)}"]`)).find(Boolean);
    (target || document.getElementById("nodes-h")).focus();
  }

  async function setState(name, action) {
    busy.add(name);
    try {
      const node = await api("POST", `${nodePath(name)}/${action}`);
      notify(`${node.name} is ${node.state}` + (node.state === "cordoned" ? ": placement puts nothing new there" : ""));
    } finally { busy.delete(name); }
    await refresh();
    focusAction(name, action === "cordon" ? "uncordon" : "cordon", action);
  }

  // -- drain and remove, confirmed ----------------------------------------------------------------
  function fill() {
    const { node: name, action } = pending;
    const n = nodes.find((x) => x.name === name);
    const running = n ? n.instances : [];
    const list = document.getElementById("node-confirm-list");
    const what = document.getElementById("node-confirm-what");
    const after = document.getElementById("node-confirm-after");
    list.replaceChildren(...running.map((i) => el("li", { "data-version": i.version },
      el("strong", {}, i.version), ` (${i.id}, ${i.state}, ${plural(i.in_flight, "request")} in flight)`)));
    if (action === "drain") {
      document.getElementById("node-confirm-h").textContent = `Drain node ${name}?`;
      document.getElementById("node-confirm-yes").textContent = "Drain";
      what.textContent = !n ? `Node ${name} is no longer listed.`
        : running.length ? `It is cordoned, then ${running.length === 1 ? "this instance is" : `these ${running.length} instances are`} drained (their requests in flight finish, up to the drain bound) and stopped:`
          : "No instance runs there now: draining only cordons it.";
      after.textContent = "Nothing new starts there until it is uncordoned: the next request for a stopped version starts a new instance on another node, or gets a 503 where there is none.";
    } else {
      document.getElementById("node-confirm-h").textContent = `Remove node ${name}?`;
      document.getElementById("node-confirm-yes").textContent = "Remove";
      what.textContent = !n ? `Node ${name} is no longer listed.`
        : running.length ? `It runs ${plural(running.length, "instance")} now: the API refuses to remove it until it is drained.`
          : "The registry forgets it" + (n.local ? " (it is the node this server runs on: it is registered again when the server starts)." : "; an agent that reports from it registers it again.");
      after.textContent = "";
    }
  }

  function ask(name, action) {
    pending = { node: name, action };
    fill();
    dialog.returnValue = "";
    dialog.showModal();
  }

  async function confirmed() {
    const done = pending;
    pending = null;
    if (!done) return;
    const { node: name, action } = done;
    if (dialog.returnValue !== "yes") { focusAction(name, action); return; }
    busy.add(name);
    await refresh().catch(() => {});  // shows "working…" on the node while the API answers
    try {
      if (action === "drain") {
        const was = new Map(((nodes.find((x) => x.name === name) || {}).instances || []).map((i) => [i.id, i.version]));
        const r = await api("POST", `${nodePath(name)}/drain`);
        const which = r.stopped.map((id) => was.get(id) || id).join(", ");
        notify(`drained ${name}: stopped ${plural(r.stopped.length, "instance")}${which ? " (" + which + ")" : ""}` +
          (r.cut ? `; ${plural(r.cut, "request")} cut short at the drain bound` : ""));
      } else {
        const r = await api("DELETE", nodePath(name));
        notify(`removed node ${r.deleted}`);
      }
    } finally {
      busy.delete(name);
      await refresh().catch(() => {});  // the next tick says it, if the API is gone
      focusAction(name, action, "drain");
    }
  }

  async function models() {
    const data = await api("GET", "/admin/v1/models?enabled=true");
    document.getElementById("load-model").replaceChildren(...data.models.map((m) => el("option", { value: m.name }, m.name)));
  }

  async function loadVersion(event) {
    event.preventDefault();
    const model = new FormData(event.target).get("model");
    const text = document.getElementById("load-text");
    text.textContent = `loading ${model}…`;
    await api("POST", "/api/generate", { model, stream: false });
    text.textContent = `${model} is loaded`;
    await refresh();
  }

  document.getElementById("load-form").addEventListener("submit", guard(loadVersion));
  dialog.addEventListener("close", guard(confirmed));
  guard(models)();
  guard(refresh)();
  setInterval(() => { refresh().catch((e) => notify(e.message, true)); }, 2000);
})();
