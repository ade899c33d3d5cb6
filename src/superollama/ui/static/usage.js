// Usage page: requests, tokens, cost and latency by model, key or day over a time range, drawn as our
// own SVG bar chart; the table and the CSV export are /admin/v1/usage's own numbers.
"use strict";
(function () {
  const { api, el, guard, replaceRows } = window.SO;
  const form = document.getElementById("range");
  const SVG = "http://www.w3.org/2000/svg";
  const COLUMNS = [["group", "Group"], ["requests", "Requests"], ["errors", "Errors"], ["prompt_tokens", "Prompt tokens"],
    ["completion_tokens", "Completion tokens"], ["search_units", "Search units"], ["cost", "Cost (USD)"], ["latency_p50_ms", "Latency p50 ms"],
    ["latency_p95_ms", "Latency p95 ms"], ["ttft_p50_ms", "TTFT p50 ms"]];
  const measureOf = (r, measure) => measure === "tokens" ? (r.prompt_tokens || 0) + (r.completion_tokens || 0) : Number(r[measure]) || 0;

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chart(rows, measure) {
    const box = document.getElementById("chart");
    if (!rows.length) { box.replaceChildren(el("p", {}, "No request in this range.")); return; }
    const barH = 26, labelW = 220, width = 760, pad = 6;
    const max = Math.max(...rows.map((r) => measureOf(r, measure)), 1);
    const root = svg("svg", { viewBox: `0 0 ${width} ${rows.length * (barH + pad) + pad}`, "data-measure": measure });
    rows.forEach((r, i) => {
      const value = measureOf(r, measure);
      const y = pad + i * (barH + pad);
      const w = Math.max(2, ((width - labelW - 90) * value) / max);
      root.append(svg("text", { x: 0, y: y + barH * 0.7 }, String(r.group).slice(0, 30)));
      const bar = svg("rect", { x: labelW, y, width: w, height: barH, class: "bar", "data-group": r.group, "data-value": value });
      bar.append(svg("title", {}, `${r.group}: ${value}`));
      root.append(bar);
      root.append(svg("text", { x: labelW + w + 6, y: y + barH * 0.7 }, measure === "cost" ? value.toFixed(4) : String(Math.round(value * 100) / 100)));
    });
    box.replaceChildren(root);
    box.setAttribute("aria-label", `${measure} by ${form.by.value}`);
  }

  async function load() {
    const q = new FormData(form);
    const params = new URLSearchParams({ by: q.get("by"), since: q.get("since") });
    document.getElementById("csv").href = "/admin/v1/usage?" + params + "&format=csv";
    const data = await api("GET", "/admin/v1/usage?" + params);
    const rows = data.rows;
    chart(rows, q.get("measure"));
    const table = document.getElementById("usage");
    const cols = COLUMNS;
    table.tHead.replaceChildren(el("tr", {}, cols.map(([, label]) => el("th", {}, label))));
    replaceRows(table.tBodies[0], rows.map((r) => el("tr", {}, cols.map(([k]) => el("td", {}, r[k] === null || r[k] === undefined ? "—" : String(r[k]))))), "No request in this range.");
  }

  form.addEventListener("change", guard(load));
  form.addEventListener("submit", (e) => e.preventDefault());
  guard(load)();
  setInterval(() => { load().catch(() => {}); }, 10000);
})();
