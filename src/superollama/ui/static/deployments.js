// Deployments page: list, create, a deployment's weights as sliders (saved through the admin API's
// split), promote / roll back (confirmed) / pause / resume, live routing and history. The API checks the
// weights; its error is shown as it says it. A stage's canary rollout (the canary against the stable target
// over the same window, every decision the analysis made; start, abort) and its shadow (comparisons; set,
// turn off) show what the API reports, nothing else.
"use strict";
(function () {
  const { api, el, notify, guard, when, replaceRows, keepFocus, readOnly } = window.SO;
  const path = (name) => "/admin/v1/deployments/" + encodeURIComponent(name);
  let versions = [];
  let current = null;  // the client name of the deployment open below

  const targetsText = (targets) => targets.map((t) =>
    (t.role === "shadow" ? `${t.name} (shadow ${t.weight} %)` : `${t.name}=${t.weight}`)).join(", ");
  let others = [];  // the open deployment's targets that are not weighted (its shadow): kept by a save

  const STATES = { running: "running", promoted: "promoted", rolled_back: "rolled back", aborted: "aborted" };
  const pct = (x) => (x === null || x === undefined ? "—" : `${(100 * x).toFixed(2)} %`);
  const ms = (x) => (x === null || x === undefined ? "—" : `${x} ms`);

  function listStatus(d) {
    // The list's rollout column: the running canary, else the shadow target (a target with role shadow).
    const r = d.rollout;
    if (r) return `canary ${r.target} at ${r.weight} % (stable ${r.stable})`;
    const shadow = d.targets.find((t) => t.role === "shadow");
    return shadow ? `shadow ${shadow.name} at ${shadow.weight} %` : "—";
  }

  function statsRow(role, name, m) {
    m = m || {};
    return el("tr", { "data-target": name },
      el("td", {}, role), el("td", {}, name), el("td", {}, m.requests ?? 0), el("td", {}, m.errors ?? 0),
      el("td", { class: "error-rate" }, pct(m.error_rate)), el("td", { class: "p95" }, ms(m.p95_ms)),
      el("td", {}, m.gateways ?? 0));
  }

  function renderRollout(d) {
    const r = d.rollout;
    const body = document.getElementById("rollout-body");
    const form = document.getElementById("rollout-form");
    form.hidden = readOnly || (r && r.state === "running");
    document.getElementById("abort-btn").hidden = readOnly || !r || r.state !== "running";
    if (!r) {
      body.replaceChildren(el("p", { class: "muted" }, "No rollout on this stage yet."));
      return;
    }
    const p = r.policy;
    const metrics = d.metrics || {};
    const decisions = [...r.decisions].reverse().slice(0, 10);
    body.replaceChildren(
      el("p", { class: "rollout", "data-state": r.state },
        el("strong", {}, STATES[r.state] || r.state), ` · ${r.stable} → ${r.target}, canary at ${r.weight} %`,
        r.state === "running" ? ` · next step ${when(r.next_at)}` : ""),
      el("p", { class: "stats" },
        `policy: start ${p.canary} %, +${p.step} % every ${p.every} s, at most ${pct(p.max_error_rate)} errors, p95 ` +
        (p.max_p95 === null ? "not bounded" : p.relative ? `≤ stable +${(100 * p.max_p95).toFixed(0)} %` : `≤ ${(1000 * p.max_p95).toFixed(0)} ms`) +
        `, ${p.min_samples} requests before judging`),
      el("div", { class: "scroll" }, el("table", { id: "canary" },
        el("thead", {}, el("tr", {}, ["Role", "Target", "Requests", "Errors", "Error rate", "p95", "Gateways"].map((h) => el("th", {}, h)))),
        el("tbody", {}, statsRow("canary", r.target, metrics[r.target]), statsRow("stable", r.stable, metrics[r.stable])))),
      el("h4", {}, "Decisions (newest first)"),
      el("div", { class: "scroll" }, el("table", { id: "decisions" },
        el("thead", {}, el("tr", {}, ["At", "Action", "Canary weight", "Reason", "By"].map((h) => el("th", {}, h)))),
        el("tbody", {}, decisions.length ? decisions.map((x) => el("tr", { "data-action-taken": x.action },
          el("td", {}, when(x.at)), el("td", {}, x.action), el("td", {}, `${x.weight} %`), el("td", {}, x.reason), el("td", {}, x.actor)))
          : el("tr", {}, el("td", { colspan: 5 }, "None yet: the analysis judges once enough requests came in."))))));
  }

  function renderShadow(d) {
    const s = d.shadow;
    const on = s && s.shadow;
    const body = document.getElementById("shadow-body");
    document.getElementById("shadow-off-btn").hidden = readOnly || !on;
    document.getElementById("shadow-form").hidden = readOnly;
    if (!s) {
      body.replaceChildren(el("p", { class: "muted" }, "No shadow target: no request is mirrored."));
      return;
    }
    body.replaceChildren(
      el("p", { class: "shadow-state" }, on ? `Mirroring ${on.percent} % of requests to ${on.target} (never answered from)` : "Mirroring is off; the comparisons kept so far:"),
      el("dl", { id: "shadow-stats" },
        el("dt", {}, "Compared"), el("dd", { "data-stat": "samples" }, String(s.samples)),
        el("dt", {}, "Failed on the shadow"), el("dd", { "data-stat": "failed" }, String(s.failed)),
        el("dt", {}, "Dropped (queue full)"), el("dd", {}, String(s.dropped)),
        el("dt", {}, "Exact match"), el("dd", { "data-stat": "exact" }, pct(s.exact_match_rate)),
        el("dt", {}, "Latency, client / shadow"), el("dd", {}, `${ms(s.primary_latency_ms)} / ${ms(s.shadow_latency_ms)}`),
        el("dt", {}, "Answer length, client / shadow"), el("dd", {}, `${s.primary_length ?? "—"} / ${s.shadow_length ?? "—"}`),
        el("dt", {}, "Similarity"), el("dd", {}, s.similarity ?? "—")),
      el("div", { class: "scroll" }, el("table", { id: "shadow-samples" },
        el("thead", {}, el("tr", {}, ["At", "Answered by", "Latency", "Shadow latency", "Exact", "Similarity", "Error"].map((h) => el("th", {}, h)))),
        el("tbody", {}, s.last.length ? s.last.map((x) => el("tr", {},
          el("td", {}, when(x.at)), el("td", {}, x.primary_target), el("td", {}, ms(x.primary_latency_ms)),
          el("td", {}, ms(x.shadow_latency_ms)), el("td", {}, x.exact ? "yes" : "no"), el("td", {}, x.similarity ?? "—"),
          el("td", { class: x.error ? "state-error" : "" }, x.error || "")))
          : el("tr", {}, el("td", { colspan: 7 }, "No comparison yet."))))));
  }

  function targetChoices(select, exclude) {
    const keep = select.value;
    select.replaceChildren(...versions.filter((v) => !exclude.includes(v)).map((v) => el("option", { value: v, selected: v === keep }, v)));
  }

  async function refreshList() {
    const data = await api("GET", "/admin/v1/deployments");
    const tbody = document.querySelector("#deployments tbody");
    keepFocus(tbody, () => replaceRows(tbody, data.deployments.map((d) => el("tr", { "data-name": d.model, class: d.model === current ? "selected" : null },
      el("td", {}, el("strong", {}, d.model)),
      el("td", {}, d.stage),
      el("td", {}, targetsText(d.targets)),
      el("td", {}, d.sticky),
      el("td", { class: d.enabled ? "state-enabled" : "state-disabled" }, d.enabled ? "enabled" : "paused"),
      el("td", { class: "rollout", "data-slot": "rollout-status" }, listStatus(d)),
      el("td", {}, when(d.updated_at)),
      el("td", {}, el("button", { type: "button", "data-action": "open", onclick: guard(() => open(d.model, true)) }, "Open")))),
      "No deployment yet: create one above (a name clients send in \"model\", and its weighted targets)."));
  }

  // -- create -------------------------------------------------------------------------------------
  function targetRow(name, weight) {
    const select = el("select", { name: "target", "aria-label": "Version" },
      versions.map((v) => el("option", { value: v, selected: v === name }, v)));
    const row = el("div", { class: "row target-row" },
      el("label", {}, "Version", select),
      el("label", {}, "Weight", el("input", { name: "weight", type: "number", min: 0, step: 1, value: weight, required: true })),
      el("button", { type: "button", class: "secondary", "aria-label": "Remove this target", onclick: () => row.remove() }, "Remove"));
    return row;
  }

  async function create(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const rows = [...document.querySelectorAll("#create-targets .target-row")];
    const targets = rows.map((r) => ({ name: r.querySelector("select").value, weight: Number(r.querySelector("input").value) }));
    const body = { targets, stage: form.get("stage"), sticky: form.get("sticky") };
    const name = String(form.get("name")).trim();
    const text = document.getElementById("create-text");
    text.textContent = `deploying ${name}: starting the targets' instances…`;
    try {
      const made = await api("PUT", path(name), body);
      text.textContent = `${made.model} is deployed`;
      await refreshList();
      await open(made.model, true);
    } catch (e) { text.textContent = ""; throw e; }
  }

  // -- one deployment -----------------------------------------------------------------------------
  function shareOf(weights, i) {
    const total = weights.reduce((a, w) => a + Math.max(w, 0), 0);
    return total > 0 ? (100 * Math.max(weights[i], 0) / total).toFixed(1) + " %" : "no traffic";
  }

  function sliders(d) {
    const box = document.getElementById("weights");
    const inputs = [];
    const outputs = [];
    const update = () => {
      const weights = inputs.map((i) => Number(i.value));
      outputs.forEach((o, i) => { o.textContent = `${weights[i]} (${shareOf(weights, i)})`; });
    };
    box.replaceChildren(...d.targets.filter((t) => t.role !== "shadow").map((t, i) => {
      const id = `weight-${i}`;
      const input = el("input", { type: "range", id, min: 0, max: Math.max(100, t.weight), step: 1, value: t.weight,
        "data-target": t.name, disabled: readOnly, oninput: update });
      const output = el("output", { for: id, "data-target": t.name });
      inputs.push(input); outputs.push(output);
      return el("div", { class: "slider" }, el("label", { for: id }, t.name), input, output);
    }));
    update();
  }

  async function open(name, focus) {
    const d = await api("GET", path(name));
    current = d.model;
    const detail = document.getElementById("detail");
    detail.hidden = false;
    document.getElementById("detail-name").textContent = d.model;
    document.getElementById("detail-state").textContent =
      `${d.enabled ? "Enabled" : "Paused (clients get 404 for it)"} · stage ${d.stage} · created ${when(d.created_at)} · changed ${when(d.updated_at)}`;
    document.getElementById("detail-sticky").value = d.sticky;
    document.getElementById("detail-sticky").disabled = readOnly;
    sliders(d);
    others = d.targets.filter((t) => t.role === "shadow");
    document.getElementById("promote-to").value = d.stage === "production" ? "" : "production";
    document.getElementById("pause-btn").hidden = !d.enabled;
    document.getElementById("resume-btn").hidden = d.enabled;
    document.getElementById("rollback-btn").disabled = !d.history.length;
    // a target with traffic cannot be the canary or the shadow too (one left at weight 0 can)
    const primaries = d.targets.filter((t) => t.role !== "shadow" && t.weight > 0).map((t) => t.name);
    targetChoices(document.getElementById("rollout-to"), primaries);
    targetChoices(document.getElementById("shadow-to"), primaries);
    renderRollout(d);
    renderShadow(d);
    replaceRows(document.querySelector("#live tbody"), d.live.map((t) => el("tr", { "data-target": t.name },
      el("td", {}, t.name), el("td", {}, String(t.weight)),
      el("td", {}, t.role === "shadow" ? `copies of ${t.weight} %` : t.share + " %"),
      el("td", { class: t.routed ? "state-ready" : "" }, t.role === "shadow" ? "shadow (never answers)" : t.routed ? "yes" : "no"),
      el("td", {}, t.instances.length ? t.instances.map((i) => `${i.node} (${i.in_flight})`).join(", ") : "none ready"))));
    replaceRows(document.querySelector("#history tbody"), d.history.map((h) => el("tr", {},
      el("td", {}, when(h.replaced_at)), el("td", {}, targetsText(h.targets)), el("td", {}, h.sticky))),
      "No earlier target set: nothing to roll back to.");
    await refreshList();
    if (focus) document.getElementById("detail-h").focus();
    return d;
  }

  async function saveWeights(event) {
    event.preventDefault();
    const weighted = [...document.querySelectorAll("#weights input[type=range]")].map((i) => ({ name: i.dataset.target, weight: Number(i.value) }));
    const targets = [...weighted, ...others];  // the split replaces the whole set: the shadow stays
    const sticky = document.getElementById("detail-sticky").value;
    const text = document.getElementById("weights-text");
    text.textContent = "saving: a target that gains traffic gets a ready instance first…";
    try {
      await api("POST", path(current) + "/split", { targets, sticky });
    } finally { text.textContent = ""; }
    notify(`${current}: new weights ${targetsText(weighted)}`);
    await open(current);
  }

  async function promote() {
    const to = document.getElementById("promote-to").value.trim() || "production";
    const d = await api("POST", path(current) + "/promote", { to });
    notify(`${current} promoted to ${d.model}`);
    await open(current);
  }

  async function confirmRollback() {
    const d = await api("GET", path(current));
    const dialog = document.getElementById("confirm-rollback");
    document.getElementById("rollback-name").textContent = d.model;
    document.getElementById("rollback-to").textContent = d.history.length
      ? `From ${targetsText(d.targets)} back to ${targetsText(d.history[0].targets)} (sticky ${d.history[0].sticky}).`
      : "There is no earlier target set.";
    dialog.returnValue = "";
    dialog.addEventListener("close", guard(async () => {
      if (dialog.returnValue !== "rollback") return;
      await api("POST", path(d.model) + "/rollback");
      notify(`${d.model} rolled back to ${targetsText(d.history[0].targets)}`);
      await open(d.model);
    }), { once: true });
    dialog.showModal();
  }

  async function setEnabled(enabled) {
    await api("POST", path(current) + (enabled ? "/resume" : "/pause"));
    notify(`${current} ${enabled ? "resumed" : "paused"}`);
    await open(current);
  }

  async function startRollout(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const body = { to: form.get("to"), canary: Number(form.get("canary")), step: Number(form.get("step")),
      every: form.get("every"), max_error_rate: form.get("max_error_rate"), max_p95_latency: form.get("max_p95_latency") };
    const r = await api("POST", path(current) + "/rollout", body);
    notify(`${current}: rollout to ${r.target} started at ${r.weight} %`);
    await open(current);
  }

  async function abortRollout() {
    const r = await api("POST", path(current) + "/rollout/abort");
    notify(`${current}: rollout to ${r.target} aborted; ${r.stable} takes all traffic`);
    await open(current);
  }

  async function setShadow(event) {
    event.preventDefault();
    const form = new FormData(event.target);
    const to = form.get("to");
    const percent = Number(form.get("percent"));
    await api("PUT", path(current) + "/shadow", { to, percent });
    notify(`${current}: mirroring ${percent} % to ${to}`);
    await open(current);
  }

  async function shadowOff() {
    await api("DELETE", path(current) + "/shadow");
    notify(`${current}: mirroring off`);
    await open(current);
  }

  async function loadVersions() {
    const data = await api("GET", "/admin/v1/models?enabled=true");
    versions = data.models.map((m) => m.name);
    document.getElementById("create-targets").replaceChildren(targetRow(versions[0], 100));
  }

  document.getElementById("create-form").addEventListener("submit", guard(create));
  document.getElementById("add-target").addEventListener("click", () => {
    document.getElementById("create-targets").append(targetRow(versions[1] || versions[0], 0));
  });
  document.getElementById("weights-form").addEventListener("submit", guard(saveWeights));
  document.getElementById("promote-btn").addEventListener("click", guard(promote));
  document.getElementById("rollback-btn").addEventListener("click", guard(confirmRollback));
  document.getElementById("pause-btn").addEventListener("click", guard(() => setEnabled(false)));
  document.getElementById("resume-btn").addEventListener("click", guard(() => setEnabled(true)));
  document.getElementById("rollout-form").addEventListener("submit", guard(startRollout));
  document.getElementById("abort-btn").addEventListener("click", guard(abortRollout));
  document.getElementById("shadow-form").addEventListener("submit", guard(setShadow));
  document.getElementById("shadow-off-btn").addEventListener("click", guard(shadowOff));
  guard(loadVersions)();
  guard(refreshList)();
  setInterval(() => {
    // the open deployment's rollout and shadow move by themselves (the leader's analysis): refresh them too
    const again = current ? api("GET", path(current)).then((d) => { renderRollout(d); renderShadow(d); }) : Promise.resolve();
    Promise.all([refreshList(), again]).catch((e) => notify(e.message, true));
  }, 3000);
})();
