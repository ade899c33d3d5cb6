// Models page: versions (filter, search, details), pull with live progress, copy, rename, move,
// enable/disable, unload, delete with confirmation — all through /admin/v1.
"use strict";
(function () {
  const { api, request, lines, el, notify, guard, bytes, when, replaceRows, readOnly } = window.SO;
  const tbody = document.querySelector("#versions tbody");
  const filter = document.getElementById("filter");
  let versions = [];
  let selected = null;
  let instances = [];

  function matches(v, q) {
    if (!q) return true;
    const hay = [v.name, v.architecture, v.quantization, v.format, v.parameter_size, v.runtime].join(" ").toLowerCase();
    return q.toLowerCase().split(/\s+/).every((w) => hay.includes(w));
  }

  function actions(v) {
    if (readOnly) return [el("button", { type: "button", onclick: () => show(v.name) }, "Details")];
    return [
      el("button", { type: "button", onclick: () => show(v.name) }, "Details"),
      el("button", { type: "button", "data-action": v.enabled ? "disable" : "enable",
        onclick: guard(async () => { await api("POST", `/admin/v1/models/${encodeURIComponent(v.name)}/${v.enabled ? "disable" : "enable"}`); notify(`${v.name} ${v.enabled ? "disabled" : "enabled"}`); await load(); }) },
        v.enabled ? "Disable" : "Enable"),
      el("button", { type: "button", onclick: guard(async () => { const r = await api("POST", `/admin/v1/models/${encodeURIComponent(v.name)}/unload`); notify(`${v.name}: ${r.unloaded} instance(s) stopped`); }) }, "Unload"),
      el("button", { type: "button", class: "danger", "data-action": "delete", onclick: () => confirmDelete(v.name) }, "Delete"),
    ];
  }

  function render() {
    const q = new FormData(filter);
    const rows = versions
      .filter((v) => matches(v, q.get("q")))
      .map((v) => el("tr", { "data-name": v.name, class: selected === v.name ? "selected" : "" },
        el("td", {}, el("strong", {}, v.name)),
        el("td", {}, v.format || "—"),
        el("td", {}, v.quantization || "—"),
        el("td", {}, v.parameter_size || (v.parameters ? String(v.parameters) : "—")),
        el("td", {}, bytes(v.size)),
        el("td", { class: v.enabled ? "state-enabled" : "state-disabled" }, v.enabled ? "enabled" : "disabled"),
        el("td", {}, actions(v))));
    replaceRows(tbody, rows, "No version matches.");
  }

  async function load() {
    const q = new FormData(filter);
    const params = new URLSearchParams();
    if (q.get("format")) params.set("format", q.get("format"));
    if (q.get("enabled")) params.set("enabled", q.get("enabled"));
    const data = await api("GET", "/admin/v1/models?" + params);
    versions = data.models;
    render();
  }

  async function show(name) {
    const d = await api("GET", `/admin/v1/models/${encodeURIComponent(name)}`);
    selected = name;
    instances = d.instances;
    const meta = d.metadata || {};
    const fields = [
      ["Name", d.name], ["Format", d.format], ["Quantisation", d.quantization], ["Architecture", d.architecture],
      ["Parameters", d.parameter_size || d.parameters], ["Context length", d.context_length], ["Size", bytes(d.size)],
      ["Digest", d.digest], ["Source", d.source], ["Runtime", d.runtime || "default"], ["Storage root", d.storage_root],
      ["Files", (d.layers || []).map((l) => `${l.filename || l.mediaType} ${l.digest || ""} ${bytes(l.size)}`).join("\n") || "—"],
      ["Template", meta.chat_template || meta.template || "—"],
      ["Parameters (defaults)", meta.parameters ? JSON.stringify(meta.parameters) : "—"],
      ["Loaded", d.instances.length ? d.instances.map((i) => `${i.id} (${i.state}, ${i.device})`).join(", ") : "no"],
      ["Created", when(d.created_at)],
    ];
    document.getElementById("details-list").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "—" : String(v))]));
    document.getElementById("details").hidden = false;
    document.getElementById("details-h").textContent = "Details: " + name;
    render();
    if (!readOnly) await loadRoots(d.storage_root);
    document.getElementById("details").scrollIntoView({ block: "nearest" });
  }

  async function loadRoots(current) {
    const data = await api("GET", "/admin/v1/storage");
    const select = document.getElementById("root-select");
    select.replaceChildren(...data.roots.map((r) => el("option", { value: r.name, disabled: !r.usable, selected: r.name === current },
      `${r.name} (${r.path})${r.usable ? "" : " — " + r.problem}${r.free_bytes !== null ? ", " + bytes(r.free_bytes) + " free" : ""}`)));
  }

  function confirmDelete(name) {
    const dialog = document.getElementById("confirm-delete");
    document.getElementById("confirm-name").textContent = name;
    const loaded = selected === name ? instances : [];
    api("GET", `/admin/v1/models/${encodeURIComponent(name)}`).then((d) => {
      document.getElementById("confirm-loaded").textContent = d.instances.length
        ? `Loaded now: ${d.instances.map((i) => `${i.id} (${i.state}, ${i.in_flight} in flight)`).join(", ")}. Deleting stops them.`
        : "Not loaded. Its files are removed unless another version shares them.";
    }).catch(() => {});
    document.getElementById("confirm-loaded").textContent = loaded.length ? "Loaded." : "Checking what is loaded…";
    dialog.returnValue = "";
    dialog.showModal();
    dialog.addEventListener("close", guard(async () => {
      if (dialog.returnValue !== "delete") return;
      const r = await api("DELETE", `/admin/v1/models/${encodeURIComponent(name)}?force=true`);
      notify(`deleted ${r.deleted}`);
      if (selected === name) { selected = null; document.getElementById("details").hidden = true; }
      await load();
    }), { once: true });
  }

  async function pair(path, verb) {
    const destination = document.getElementById("target-name").value.trim();
    if (!selected || !destination) throw new Error("choose a version and type the new name");
    const r = await api("POST", path, { source: selected, destination });
    notify(`${verb} ${selected} → ${r.name}`);
    await load();
    await show(r.name);
  }

  async function jobStream(path, body, progress, text, onJob) {
    const response = await request("POST", path, body);
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error((data.error && (data.error.message || data.error)) || "HTTP " + response.status);
    }
    onJob(response.headers.get("X-Job-Id"));
    let last = null;
    await lines(response, (line) => {
      const p = JSON.parse(line);
      last = p;
      if (p.total) { progress.max = p.total; progress.value = p.completed || 0; }
      const pct = p.total ? ` ${Math.floor((100 * (p.completed || 0)) / p.total)}%` : "";
      const error = p.error && typeof p.error === "object" ? p.error.message : p.error;
      text.textContent = (p.status || "") + pct + (error ? " — " + error : "");
    });
    if (!last) throw new Error("the job ended without a word");
    if (last.error) throw new Error(typeof last.error === "object" ? last.error.message : last.error);
    return last;
  }

  async function pull(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const status = document.getElementById("pull-status");
    const progress = document.getElementById("pull-progress");
    const text = document.getElementById("pull-text");
    const cancel = document.getElementById("pull-cancel");
    status.hidden = false;
    progress.removeAttribute("value");
    text.textContent = "starting…";
    const body = { source: form.get("source") };
    if (form.get("name")) body.name = form.get("name");
    let job = null;
    cancel.disabled = false;
    cancel.onclick = guard(async () => { if (job) { await api("POST", `/admin/v1/jobs/${job}/cancel`); text.textContent = "cancelling…"; } });
    try {
      const last = await jobStream("/admin/v1/pull", body, progress, text, (id) => { job = id; });
      progress.max = 1; progress.value = 1;
      notify(`pulled ${last.model ? last.model.name : body.source}`);
      await load();
    } finally { cancel.disabled = true; }
  }

  async function move() {
    if (!selected) throw new Error("choose a version first");
    const to = document.getElementById("root-select").value;
    const text = document.getElementById("move-text");
    const progress = el("progress", {});
    text.replaceChildren(progress, el("span", {}));
    await jobStream("/admin/v1/move", { name: selected, to }, progress, text.lastChild, () => {});
    notify(`moved ${selected} to ${to}`);
    await show(selected);
  }

  filter.addEventListener("input", render);
  filter.addEventListener("change", guard(load));
  filter.addEventListener("submit", (e) => e.preventDefault());
  document.getElementById("pull-form").addEventListener("submit", guard(pull));
  document.getElementById("copy-btn").addEventListener("click", guard(() => pair("/admin/v1/copy", "copied")));
  document.getElementById("rename-btn").addEventListener("click", guard(() => pair("/admin/v1/rename", "renamed")));
  document.getElementById("move-btn").addEventListener("click", guard(move));
  guard(load)();
})();
