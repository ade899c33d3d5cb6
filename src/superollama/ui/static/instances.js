// Instances page: each node's CPU, RAM and per-GPU memory as bars, with the instances on it (state,
// device, memory, requests in flight, tokens/s of the latest answer), from GET /admin/v1/nodes every 2 s;
// load a version (the Ollama API's empty generate, as `ollama run` does) and stop an instance.
"use strict";
(function () {
  const { api, el, notify, guard, bytes, when, replaceRows, keepFocus, readOnly } = window.SO;
  const box = document.getElementById("instances");

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

  async function refresh() {
    const data = await api("GET", "/admin/v1/nodes");
    keepFocus(box, () => box.replaceChildren(...data.nodes.map((n) => el("article", { class: "node", "data-node": n.name },
      el("h3", {}, n.name, " ", el("small", { class: "state-" + (n.state === "ready" ? "ready" : "failed") }, n.state),
        " ", el("small", {}, `${n.instances.length} instance${n.instances.length === 1 ? "" : "s"}`)),
      el("div", { class: "meters" }, bars(n)),
      instanceRows(n)))));
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
  guard(models)();
  guard(refresh)();
  setInterval(() => { refresh().catch((e) => notify(e.message, true)); }, 2000);
})();
