// Customer-care chat page: streams replies from /v1/chat/completions (SSE over fetch, no libraries).
"use strict";

const SYSTEM_PROMPT =
  "You are Sam, a friendly customer-care assistant for Northwind Outfitters, an online store for " +
  "outdoor gear. Answer in a few short, polite sentences. Orders ship within 2 business days; " +
  "returns are free within 30 days; support is reachable at help@northwind.example.";

const el = (id) => document.getElementById(id);
const messagesEl = el("messages");
const inputEl = el("input");
const sendEl = el("send");
const stopEl = el("stop");

let history = [];
let modelId = null;
let controller = null;

async function loadModel() {
  try {
    const res = await fetch("/v1/models", { headers: authHeaders() });
    const body = await res.json();
    if (!res.ok) throw new Error(body.error ? body.error.message : res.statusText);
    modelId = body.data[0].id;
    el("model").textContent = modelId;
  } catch (err) {
    el("model").textContent = "model unavailable (" + err.message + ")";
  }
}

function authHeaders() {
  const key = el("api-key").value.trim();
  return key ? { Authorization: "Bearer " + key } : {};
}

function addMessage(role, text) {
  const msg = document.createElement("div");
  msg.className = "msg " + role;
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  msg.appendChild(bubble);
  messagesEl.appendChild(msg);
  messagesEl.scrollTop = messagesEl.scrollHeight;
  return msg;
}

function formatAcceptance(info) {
  if (!info || info.mean_accepted_tokens_per_step == null) return "n/a";
  let text = info.mean_accepted_tokens_per_step.toFixed(2) + " tokens/step";
  if (info.acceptance_rate != null) text += " (" + Math.round(info.acceptance_rate * 100) + "% accepted)";
  return text;
}

function showStats(statsEl, tokens, seconds, info, finished) {
  const rate = seconds > 0 ? (tokens / seconds).toFixed(1) : "…";
  statsEl.textContent =
    tokens + " tokens · " + rate + " tok/s · speculation: " + formatAcceptance(info) + (finished ? "" : " · streaming");
}

// Reads an SSE body and calls onEvent(jsonObject) for each "data:" event until [DONE].
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const msg = addMessage("assistant streaming", "");
  const bubble = msg.querySelector(".bubble");
  const statsEl = document.createElement("div");
  statsEl.className = "stats";
  msg.appendChild(statsEl);
  setBusy(true);

  const start = performance.now();
  let firstTokenAt = null;
  let tokens = 0;
  let info = null;
  let finishReason = null;
  controller = new AbortController();
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      signal: controller.signal,
      body: JSON.stringify({
        model: modelId,
        messages: [{ role: "system", content: SYSTEM_PROMPT }, ...history],
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: Number(el("max-tokens").value) || 200,
        temperature: Number(el("temperature").value),
      }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : response.status + " " + response.statusText);
    }
    await readEvents(response, (chunk) => {
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.specserve) info = chunk.specserve;
      if (chunk.usage) tokens = chunk.usage.completion_tokens;  // exact count, overrides the estimate
      for (const choice of chunk.choices || []) {
        const piece = choice.delta && choice.delta.content;
        if (piece) {
          if (firstTokenAt === null) firstTokenAt = performance.now();
          bubble.textContent += piece;
          tokens += 1;  // one chunk per engine step: a live estimate until usage arrives
        }
        if (choice.finish_reason) finishReason = choice.finish_reason;
      }
      const seconds = (performance.now() - (firstTokenAt ?? start)) / 1000;
      showStats(statsEl, tokens, seconds, info, false);
      messagesEl.scrollTop = messagesEl.scrollHeight;
    });
    const seconds = (performance.now() - (firstTokenAt ?? start)) / 1000;
    showStats(statsEl, tokens, seconds, info, true);
    if (finishReason === "length") statsEl.textContent += " · cut at max tokens";
    history.push({ role: "assistant", content: bubble.textContent });
  } catch (err) {
    if (err.name === "AbortError") {
      statsEl.textContent = "stopped";
      history.push({ role: "assistant", content: bubble.textContent });
    } else {
      msg.classList.add("error");
      bubble.textContent = "Sorry, something went wrong: " + err.message;
      history.pop();  // the question was not answered; let the user ask again
    }
  } finally {
    msg.classList.remove("streaming");
    msg.classList.add("done");
    setBusy(false);
    controller = null;
  }
}

function setBusy(busy) {
  sendEl.disabled = busy;
  inputEl.disabled = busy;
  stopEl.hidden = !busy;
  if (!busy) inputEl.focus();
}

el("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = inputEl.value.trim();
  if (!text || controller) return;
  inputEl.value = "";
  send(text);
});

stopEl.addEventListener("click", () => controller && controller.abort());

el("reset").addEventListener("click", () => {
  if (controller) controller.abort();
  history = [];
  for (const node of [...messagesEl.querySelectorAll(".msg:not(.intro)")]) node.remove();
});

el("api-key").addEventListener("change", loadModel);
loadModel();
inputEl.focus();
