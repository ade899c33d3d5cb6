// Super Ollama web UI: the helpers every page uses. Our own code, no third-party library.
// Every call goes to the admin API (/admin/v1) or the client APIs (/v1, /api) with the session cookie;
// a change carries the page's CSRF token. Text from the API only ever reaches the page as text nodes.
"use strict";
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

  function errorText(status, body) {
    if (body && typeof body === "object") {
      if (body.error && typeof body.error === "object" && body.error.message) return body.error.message;
      if (typeof body.error === "string") return body.error;
    }
    return "HTTP " + status;
  }

  async function request(method, path, body, extra) {
    const headers = Object.assign({ Accept: "application/json" }, (extra && extra.headers) || {});
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (csrf && !SAFE.has(method)) headers["X-CSRF-Token"] = csrf;
    const response = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: extra && extra.signal,
    });
    if (response.status === 401 && csrf) {  // the session ended: sign in again
      window.location.assign("/ui/signin?next=" + encodeURIComponent(window.location.pathname));
    }
    return response;
  }

  async function api(method, path, body) {
    const response = await request(method, path, body);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (e) { data = text; }
    if (!response.ok) throw new Error(errorText(response.status, data));
    return data;
  }

  async function lines(response, onLine) {
    // NDJSON: one JSON object per line, as it arrives.
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, cut).trim();
        buffer = buffer.slice(cut + 1);
        if (line) onLine(line);
      }
    }
    if (buffer.trim()) onLine(buffer.trim());
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function notify(message, isError) {
    const box = document.getElementById("notice");
    if (!box) return;
    box.textContent = message;
    box.className = "notice" + (isError ? " error" : "");
    box.hidden = !message;
  }

  function guard(fn) {
    // Runs an action; its error is shown, never swallowed.
    return async function (...args) {
      try { notify(""); return await fn.apply(this, args); } catch (e) { notify(e.message || String(e), true); }
    };
  }

  function bytes(n) {
    if (n === null || n === undefined) return "—";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function replaceRows(tbody, rows, empty) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: 20 }, empty || "Nothing yet."))]));
  }

  function keepFocus(root, render) {
    // Re-renders part of a page that refreshes itself without taking the keyboard focus away: a button
    // (data-action) in a row (data-id / data-name / data-version) gets the focus back after the render.
    const active = document.activeElement;
    let selector = null;
    if (active && root.contains(active) && active.dataset && active.dataset.action) {
      const row = active.closest("[data-id], [data-name], [data-version]");
      const key = row && ["id", "name", "version"].find((k) => row.dataset[k] !== undefined);
      if (key) {
        const attr = "data-" + key;
        selector = `[${attr}="${CSS.escape(row.dataset[key])}"] [data-action="${CSS.escape(active.dataset.action)}"]`;
      }
    }
    render();
    const again = selector && root.querySelector(selector);
    if (again) again.focus();
  }

  const readOnly = document.body.dataset.role === "viewer";
  window.SO = { api, request, lines, el, notify, guard, bytes, when, replaceRows, keepFocus, readOnly, csrf };
})();
