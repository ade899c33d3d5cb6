// Connections page: backends we do not run. Add (the API key goes up once and is never shown again:
// the API reports only "stored" or "env"), test (a health check and model discovery now), enable/disable,
// remove.
"use strict";
(function () {
  const { api, el, notify, guard, replaceRows, readOnly } = window.SO;
  const tbody = document.querySelector("#connections tbody");
  const path = (name, tail) => `/admin/v1/connections/${encodeURIComponent(name)}${tail || ""}`;

  function actions(c) {
    if (readOnly) return "";
    return [
      el("button", { type: "button", "data-action": "test", onclick: guard(async () => { const r = await api("POST", path(c.name, "/refresh")); notify(`${c.name}: ${r.healthy ? "healthy" : "unhealthy: " + (r.error || "")}, ${r.models.length} model(s)`, !r.healthy); await load(); }) }, "Test"),
      el("button", { type: "button", onclick: guard(async () => { await api("POST", path(c.name, c.enabled ? "/disable" : "/enable")); await load(); }) }, c.enabled ? "Disable" : "Enable"),
      el("button", { type: "button", class: "danger", "data-action": "remove", onclick: guard(async () => { if (!window.confirm(`Remove the connection ${c.name}? Its models stop being routable.`)) return; await api("DELETE", path(c.name)); notify(`removed ${c.name}`); await load(); }) }, "Remove"),
    ];
  }

  async function load() {
    const data = await api("GET", "/admin/v1/connections");
    replaceRows(tbody, data.connections.map((c) => el("tr", { "data-name": c.name },
      el("td", {}, el("strong", {}, c.name), c.enabled ? "" : " (disabled)"),
      el("td", {}, c.kind), el("td", {}, c.url),
      el("td", {}, c.api_key ? (c.api_key === "env" ? "from the environment" : "stored (hidden)") : "none"),
      el("td", { class: c.healthy ? "state-ok" : "state-error" }, c.healthy ? "healthy" : "unhealthy" + (c.error ? ": " + c.error : "")),
      el("td", {}, c.models.join(", ") || "—"),
      el("td", {}, actions(c)))), "No connection yet.");
  }

  async function add(event) {
    event.preventDefault();
    const form = event.target;
    const data = Object.fromEntries([...new FormData(form)].filter(([, v]) => v !== ""));
    const r = await api("POST", "/admin/v1/connections", data);
    form.reset();  // the key leaves the page as soon as the server has it
    notify(`added ${r.name}: ${r.healthy ? "healthy" : "unhealthy"}, ${r.models.length} model(s)`, !r.healthy);
    await load();
  }

  document.getElementById("add-form").addEventListener("submit", guard(add));
  guard(load)();
})();
