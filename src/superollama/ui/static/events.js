// Events page: the event log live, from /admin/v1/events/stream (Server-Sent Events through the
// browser's EventSource, which sends the session cookie and resumes with Last-Event-ID), filtered here.
"use strict";
(function () {
  const { el, when } = window.SO;
  const tbody = document.querySelector("#events tbody");
  const form = document.getElementById("filter");
  const live = document.getElementById("live");
  const KEEP = 500;

  function visible(row) {
    const q = new FormData(form);
    const has = (value, wanted) => !wanted || String(value).toLowerCase().includes(String(wanted).toLowerCase());
    return has(row.dataset.action, q.get("action")) && has(row.dataset.target, q.get("target")) && (!q.get("result") || row.dataset.result === q.get("result"));
  }

  function add(e) {
    const row = el("tr", { "data-action": e.action, "data-target": e.target, "data-result": e.result, "data-id": e.id },
      el("td", {}, when(e.created_at)), el("td", {}, el("strong", {}, e.action)), el("td", {}, e.target),
      el("td", { class: "state-" + e.result }, e.result), el("td", {}, e.actor),
      el("td", {}, el("code", {}, JSON.stringify(e.detail))));
    row.hidden = !visible(row);
    tbody.prepend(row);
    while (tbody.rows.length > KEEP) tbody.deleteRow(-1);
  }

  const source = new EventSource("/admin/v1/events/stream?backlog=50", { withCredentials: true });
  source.addEventListener("open", () => { live.textContent = "live"; });
  source.addEventListener("error", () => { live.textContent = "reconnecting…"; });
  source.addEventListener("event", (m) => add(JSON.parse(m.data)));
  form.addEventListener("input", () => { for (const row of tbody.rows) row.hidden = !visible(row); });
  form.addEventListener("submit", (e) => e.preventDefault());
})();
