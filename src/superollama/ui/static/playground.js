// Playground: a streamed chat through the client API (/v1/chat/completions, as any OpenAI SDK calls it),
// with temperature, max tokens and a system prompt; shows time to first token and tokens per second;
// with "Compare", the same conversation goes to two models side by side.
"use strict";
(function () {
  const { api, request, lines, el, notify, guard } = window.SO;
  const form = document.getElementById("chat-form");
  const compare = document.getElementById("compare");
  const modelB = document.getElementById("model-b");
  const panes = { a: document.getElementById("pane-a"), b: document.getElementById("pane-b") };
  const history = { a: [], b: [] };
  let controller = null;

  async function models() {
    const data = await api("GET", "/v1/models");
    const options = () => data.data.map((m) => el("option", { value: m.id }, m.id));
    document.getElementById("model-a").replaceChildren(...options());
    modelB.replaceChildren(...options());
    if (data.data.length > 1) modelB.selectedIndex = 1;
  }

  async function chat(side, model, params, prompt, signal) {
    const pane = panes[side];
    pane.querySelector("h2").textContent = model;
    const transcript = pane.querySelector(".transcript");
    const stats = pane.querySelector(".stats");
    transcript.append(el("p", { class: "user" }, "you: " + prompt));
    const answer = el("p", { class: "assistant", "data-model": model });
    transcript.append(answer);
    history[side].push({ role: "user", content: prompt });
    const messages = (params.system ? [{ role: "system", content: params.system }] : []).concat(history[side]);
    const body = { model, messages, stream: true, stream_options: { include_usage: true },
      temperature: params.temperature, max_tokens: params.max_tokens };
    const started = performance.now();
    let first = null, chunks = 0, usage = null;
    stats.textContent = "waiting for the first token…";
    const response = await request("POST", "/v1/chat/completions", body, { signal });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(`${model}: ` + ((data.error && data.error.message) || "HTTP " + response.status));
    }
    await lines(response, (line) => {
      if (!line.startsWith("data:")) return;
      const payload = line.slice(5).trim();
      if (payload === "[DONE]") return;
      const chunk = JSON.parse(payload);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
      if (delta && delta.content) {
        if (first === null) first = performance.now();
        chunks += 1;
        answer.append(document.createTextNode(delta.content));
      }
    });
    const done = performance.now();
    history[side].push({ role: "assistant", content: answer.textContent });
    const tokens = usage && usage.completion_tokens ? usage.completion_tokens : chunks;
    const ttft = first === null ? null : first - started;
    const rate = first !== null && done > first ? tokens / ((done - first) / 1000) : null;
    stats.textContent = `TTFT ${ttft === null ? "—" : Math.round(ttft) + " ms"} · ${tokens} tokens · ` +
      `${rate === null ? "—" : rate.toFixed(1) + " tokens/s"} · ${Math.round(done - started)} ms in all`;
    stats.dataset.ttftMs = ttft === null ? "" : String(Math.round(ttft));
  }

  async function send(event) {
    event.preventDefault();
    const q = new FormData(form);
    const prompt = String(q.get("prompt") || "").trim();
    if (!prompt) return;
    const params = { system: String(q.get("system") || "").trim(), temperature: parseFloat(q.get("temperature")),
      max_tokens: parseInt(q.get("max_tokens"), 10) };
    controller = new AbortController();
    document.getElementById("send").disabled = true;
    document.getElementById("stop").disabled = false;
    const runs = [chat("a", q.get("model"), params, prompt, controller.signal)];
    if (compare.checked) runs.push(chat("b", modelB.value, params, prompt, controller.signal));
    try {
      const results = await Promise.allSettled(runs);
      const failed = results.filter((r) => r.status === "rejected" && r.reason.name !== "AbortError");
      if (failed.length) notify(failed.map((r) => r.reason.message).join("; "), true);
      form.prompt.value = "";
    } finally {
      document.getElementById("send").disabled = false;
      document.getElementById("stop").disabled = true;
    }
  }

  compare.addEventListener("change", () => { modelB.disabled = !compare.checked; panes.b.hidden = !compare.checked; });
  document.getElementById("stop").addEventListener("click", () => controller && controller.abort());
  document.getElementById("clear").addEventListener("click", () => {
    for (const side of ["a", "b"]) { history[side] = []; panes[side].querySelector(".transcript").replaceChildren(); panes[side].querySelector(".stats").textContent = ""; }
  });
  form.addEventListener("submit", guard(send));
  guard(models)();
})();
