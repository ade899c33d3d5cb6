// Keys page: create (the key is shown once, with a copy button, and dropped from the page after),
// scopes, limits, budgets, expiry; revoke and rotate. Through /admin/v1/keys.
"use strict";
(function () {
  const { api, el, notify, guard, when, replaceRows, readOnly } = window.SO;
  const tbody = document.querySelector("#keys tbody");
  const issued = document.getElementById("issued");
  const issuedKey = document.getElementById("issued-key");

  function showOnce(record) {
    issuedKey.textContent = record.key;
    issued.hidden = false;
    document.getElementById("copy-key").focus();
  }

  function hideKey() {
    issuedKey.textContent = "";
    issued.hidden = true;
  }

  function limits(k) {
    const parts = [];
    if (k.rpm) parts.push(`${k.rpm} req/min`);
    if (k.tpm) parts.push(`${k.tpm} tok/min`);
    for (const [pattern, l] of Object.entries(k.model_limits || {})) parts.push(`${pattern}: ${JSON.stringify(l)}`);
    return parts.join(", ") || "—";
  }

  function actions(k) {
    if (readOnly || k.state === "revoked") return "";
    return [
      el("button", { type: "button", "data-action": "rotate", onclick: guard(async () => {
        if (!window.confirm(`Rotate ${k.name}? Its current key stops working now.`)) return;
        showOnce(await api("POST", `/admin/v1/keys/${k.id}/rotate`)); notify(`rotated ${k.name}`); await load();
      }) }, "Rotate"),
      el("button", { type: "button", class: "danger", "data-action": "revoke", onclick: guard(async () => {
        if (!window.confirm(`Revoke ${k.name} (${k.prefix}…)? It stops working now, for good.`)) return;
        await api("POST", `/admin/v1/keys/${k.id}/revoke`); notify(`revoked ${k.name}`); await load();
      }) }, "Revoke"),
    ];
  }

  async function load() {
    const data = await api("GET", "/admin/v1/keys");
    replaceRows(tbody, data.keys.map((k) => el("tr", { "data-name": k.name, "data-id": k.id },
      el("td", {}, el("strong", {}, k.name)), el("td", {}, el("code", {}, k.prefix + "…")), el("td", {}, k.role),
      el("td", { class: "state-" + k.state }, k.state), el("td", {}, k.models.join(", ") || "all"),
      el("td", {}, limits(k)), el("td", {}, k.budget_usd === null ? "—" : `$${k.budget_usd} / ${k.budget_period}`),
      el("td", {}, when(k.expires_at)), el("td", {}, when(k.last_used_at)), el("td", {}, actions(k)))), "No key yet: the API is open on loopback.");
  }

  async function create(event) {
    event.preventDefault();
    const form = event.target;
    const body = {};
    for (const [name, value] of new FormData(form)) {
      if (value === "") continue;
      if (name === "model_rpm") {
        body.model_limits = {};
        for (const part of value.split(",").map((p) => p.trim()).filter(Boolean)) {
          const cut = part.lastIndexOf("=");
          if (cut <= 0) throw new Error(`per-model limit ${JSON.stringify(part)} is not PATTERN=N`);
          body.model_limits[part.slice(0, cut).trim()] = { rpm: parseInt(part.slice(cut + 1), 10) };
        }
        continue;
      }
      body[name] = ["rpm", "tpm"].includes(name) ? parseInt(value, 10) : name === "budget_usd" ? parseFloat(value) : value;
    }
    const record = await api("POST", "/admin/v1/keys", body);
    form.reset();
    showOnce(record);
    notify(`created ${record.role} key ${record.name}`);
    await load();
  }

  document.getElementById("create-form").addEventListener("submit", guard(create));
  document.getElementById("copy-key").addEventListener("click", guard(async () => {
    await navigator.clipboard.writeText(issuedKey.textContent);
    notify("copied to the clipboard");
  }));
  document.getElementById("hide-key").addEventListener("click", hideKey);
  guard(load)();
})();
