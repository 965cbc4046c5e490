// r1lab web chat (issue 14 item 2). Plain browser JavaScript, no build step.
//
// Talks to the server's OpenAI-compatible POST v1/chat/completions with stream: true and reads the SSE
// stream with fetch + ReadableStream (EventSource cannot POST). Deltas carry the thinking in
// `reasoning_content` (or `reasoning`, vLLM's newer name) first, then the answer in `content`.
// Multi-turn history sends back only the answers: the DeepSeek API (and our server) reject a previous
// turn's reasoning_content with 400.
//
// Rendering: marked (markdown; raw HTML shown as text) -> DOMPurify (sanitise) -> KaTeX for $…$, $$…$$,
// \(…\), \[…\] (the math is cut out before marked so markdown never mangles it, and rendered by KaTeX
// into text nodes after sanitising, so no TeX reaches an attribute) -> highlight.js for code blocks.
"use strict";

(function () {
  const KEY_STORAGE = "r1lab.apiKey";
  const SETTINGS_STORAGE = "r1lab.settings";
  const RENDER_INTERVAL_MS = 80;      // re-render the streaming answer at most this often
  const TIMER_INTERVAL_MS = 100;      // the "Thinking… 1.2 s" clock
  const MATH_MARK = "\u2063";         // invisible separator around math placeholders: never typed by people

  const $ = (id) => document.getElementById(id);
  const el = {
    model: $("model"), newChat: $("new-chat"), settingsToggle: $("settings-toggle"), settings: $("settings"),
    temperature: $("temperature"), maxTokens: $("max-tokens"), budget: $("thinking-budget"),
    effort: $("reasoning-effort"), keyForm: $("key-form"), apiKey: $("api-key"), notice: $("notice"),
    messages: $("messages"), emptyHint: $("empty-hint"), composer: $("composer"), prompt: $("prompt"),
    send: $("send"), stop: $("stop"),
  };

  // ---------------------------------------------------------------- rendering

  if (window.DOMPurify) {
    // Links in model output open in a new tab and never get the opener.
    DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.hasAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
  }
  if (window.hljs) hljs.configure({ ignoreUnescapedHTML: true });
  // Raw HTML in model output is shown as text, not interpreted: R1-style models write tags such as
  // <answer>…</answer> or a stray </think> that a browser would swallow. (DOMPurify still runs after.)
  const escapeHtml = (s) => s.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
                                                           '"': "&quot;", "'": "&#39;" })[c]);
  if (window.marked) marked.use({ gfm: true, breaks: true, renderer: { html: (token) => escapeHtml(token.text) } });

  const FENCE_RE = /^ {0,3}(`{3,}|~{3,})/;
  // Inline code is matched first so math inside it is left alone; `$…$` follows pandoc's rule (no space
  // after the opening or before the closing dollar, no digit right after the closing one) so prices stay
  // text; a backslash-escaped dollar is never a delimiter.
  const INLINE_RE = new RegExp([
    "(`+)[\\s\\S]*?[^`]\\1(?!`)",                         // 1: inline code span
    "(?<!\\\\)\\$\\$([\\s\\S]+?)\\$\\$",                  // 2: $$display$$
    "\\\\\\[([\\s\\S]+?)\\\\\\]",                          // 3: \[display\]
    "\\\\\\(([\\s\\S]+?)\\\\\\)",                          // 4: \(inline\)
    "(?<![\\\\$])\\$(?=[^\\s$])((?:\\\\\\$|[^$\\n])+?)(?<=[^\\s\\\\])\\$(?!\\d)",  // 5: $inline$
  ].join("|"), "g");

  // Cut the math out of markdown source: returns the text with placeholders and the math pieces.
  function extractMath(src) {
    const maths = [];
    const cut = (chunk) => chunk.replace(INLINE_RE, (m, ticks, dd, br, pa, dol) => {
      if (ticks !== undefined) return m;
      const display = dd !== undefined || br !== undefined;
      maths.push({ tex: dd ?? br ?? pa ?? dol, display });
      return MATH_MARK + (maths.length - 1) + MATH_MARK;
    });
    // Fenced code blocks pass through untouched (an unclosed fence, as while streaming, runs to the end).
    const out = [];
    let text = [];
    let fence = null;
    for (const line of src.split("\n")) {
      if (fence === null) {
        const m = FENCE_RE.exec(line);
        if (m) {
          out.push(cut(text.join("\n")));
          text = [];
          fence = { ch: m[1][0], len: m[1].length, lines: [line] };
        } else {
          text.push(line);
        }
      } else {
        fence.lines.push(line);
        const close = new RegExp("^ {0,3}" + (fence.ch === "`" ? "`" : "~") + "{" + fence.len + ",}\\s*$");
        if (close.test(line)) {
          out.push(fence.lines.join("\n"));
          fence = null;
        }
      }
    }
    out.push(fence === null ? cut(text.join("\n")) : fence.lines.join("\n"));
    return { text: out.join("\n"), maths };
  }

  function renderMath(tex, display) {
    const span = document.createElement("span");
    try {
      katex.render(tex, span, { displayMode: display, throwOnError: false, trust: false, strict: "ignore",
                                maxSize: 50, maxExpand: 500 });
    } catch (e) {
      span.className = "math-error";
      span.textContent = display ? "$$" + tex + "$$" : "$" + tex + "$";
    }
    return span;
  }

  // Render markdown + math + code into `target` (its children are replaced).
  function renderMarkdownInto(target, src) {
    const { text, maths } = extractMath(src);
    const html = marked.parse(text, { async: false });
    const clean = DOMPurify.sanitize(html, { USE_PROFILES: { html: true }, FORBID_TAGS: ["style", "form"] });
    const box = document.createElement("div");
    box.innerHTML = clean;
    if (maths.length) {
      const walker = document.createTreeWalker(box, NodeFilter.SHOW_TEXT);
      const hits = [];
      for (let n = walker.nextNode(); n; n = walker.nextNode()) if (n.data.includes(MATH_MARK)) hits.push(n);
      const split = new RegExp(MATH_MARK + "(\\d+)" + MATH_MARK);
      for (const node of hits) {
        if (node.parentElement && node.parentElement.closest("code, pre")) continue;
        const parts = node.data.split(split);   // odd entries are math indices
        const frag = document.createDocumentFragment();
        parts.forEach((part, i) => {
          if (i % 2 === 0) { if (part) frag.appendChild(document.createTextNode(part)); return; }
          const m = maths[Number(part)];
          frag.appendChild(m ? renderMath(m.tex, m.display) : document.createTextNode(""));
        });
        node.replaceWith(frag);
      }
    }
    for (const code of box.querySelectorAll("pre code")) {
      const lang = (/\blanguage-([\w+#.-]+)/.exec(code.className) || [])[1];
      if (!window.hljs) break;
      if (!lang || hljs.getLanguage(lang)) hljs.highlightElement(code);
      else code.classList.add("hljs");
    }
    target.replaceChildren(...box.childNodes);
  }

  function renderMarkdown(src) {
    const box = document.createElement("div");
    renderMarkdownInto(box, src);
    return box.innerHTML;
  }

  // ---------------------------------------------------------------- settings and key

  function loadSettings() {
    let saved = {};
    try { saved = JSON.parse(localStorage.getItem(SETTINGS_STORAGE) || "{}"); } catch (e) { saved = {}; }
    for (const [name, input] of [["temperature", el.temperature], ["max_tokens", el.maxTokens],
                                 ["budget", el.budget], ["effort", el.effort]]) {
      if (typeof saved[name] === "string") input.value = saved[name];
    }
    el.apiKey.value = localStorage.getItem(KEY_STORAGE) || "";
  }

  function saveSettings() {
    localStorage.setItem(SETTINGS_STORAGE, JSON.stringify({
      temperature: el.temperature.value, max_tokens: el.maxTokens.value, budget: el.budget.value,
      effort: el.effort.value, model: el.model.value,
    }));
  }

  function apiKey() { return (localStorage.getItem(KEY_STORAGE) || "").trim(); }

  function headers() {
    const h = { "Content-Type": "application/json", "Accept": "text/event-stream" };
    const key = apiKey();
    if (key) h["Authorization"] = "Bearer " + key;
    return h;
  }

  function showSettings(open) {
    el.settings.hidden = !open;
    el.settingsToggle.setAttribute("aria-expanded", String(open));
  }

  // ---------------------------------------------------------------- notices

  function notify(text, kind) {
    el.notice.replaceChildren();
    const msg = document.createElement("span");
    msg.className = "notice-text";
    msg.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "notice-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    close.addEventListener("click", clearNotice);
    el.notice.append(msg, close);
    el.notice.dataset.kind = kind || "error";
    el.notice.hidden = false;
  }

  function clearNotice() {
    el.notice.hidden = true;
    el.notice.replaceChildren();
    delete el.notice.dataset.kind;
  }

  function keyNeeded() {
    const had = apiKey() !== "";
    notify(had ? "The server rejected the API key (401). Check it under Settings → API key."
               : "This server needs an API key (401). Enter it under Settings → API key, then send again.",
           "auth");
    showSettings(true);
    el.apiKey.focus();
  }

  // A readable sentence for an HTTP error response (body in OpenAI's {"error": {...}} shape when ours).
  async function describeHttpError(resp) {
    let message = "";
    try {
      const body = await resp.json();
      message = (body && body.error && (body.error.message || body.error)) || "";
      if (typeof message !== "string") message = JSON.stringify(message);
    } catch (e) { message = resp.statusText || ""; }
    switch (resp.status) {
      case 401: return null;  // handled by keyNeeded()
      case 429: {
        const after = parseInt(resp.headers.get("Retry-After") || "", 10);
        return Number.isFinite(after) ? `The server is busy (429): retry in ${after} s.`
                                      : "The server is busy (429): retry in a few seconds.";
      }
      case 503: return `The server is unavailable (503: ${message}): it is loading or draining (shutting down) `
                       + "and takes no new requests. Retry in a moment, or on another replica.";
      case 404: return `Not found (404): ${message}`;
      case 400: case 413: case 422: return `Request rejected (${resp.status}): ${message}`;
      default: return `Server error ${resp.status}: ${message}`;
    }
  }

  // ---------------------------------------------------------------- models

  async function loadModels() {
    let resp;
    try {
      resp = await fetch("v1/models", { headers: headers() });
    } catch (e) {
      notify("Server unreachable: could not list models. Is `r1lab serve` still running?", "network");
      return;
    }
    if (resp.status === 401) { keyNeeded(); return; }
    if (!resp.ok) { notify(await describeHttpError(resp)); return; }
    const body = await resp.json();
    const ids = (body.data || []).map((m) => m.id);
    let wanted = el.model.value;
    try { wanted = wanted || JSON.parse(localStorage.getItem(SETTINGS_STORAGE) || "{}").model || ""; } catch (e) {}
    el.model.replaceChildren(...ids.map((id) => new Option(id, id)));
    if (ids.includes(wanted)) el.model.value = wanted;
    el.model.dataset.loaded = "true";
    if (el.notice.dataset.kind === "auth" || el.notice.dataset.kind === "network") clearNotice();
  }

  // ---------------------------------------------------------------- SSE

  // Yields {event, data} for each server-sent event of a fetch body (the WHATWG event-stream format).
  async function* sseEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let data = [];
    let event = "";
    const line = (raw) => {
      const l = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
      if (l === "") {
        const out = data.length ? { event: event || "message", data: data.join("\n") } : null;
        data = []; event = "";
        return out;
      }
      if (l.startsWith(":")) return null;
      const colon = l.indexOf(":");
      const field = colon < 0 ? l : l.slice(0, colon);
      let value = colon < 0 ? "" : l.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") data.push(value);
      else if (field === "event") event = value;
      return null;
    };
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const ev = line(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (ev) yield ev;
        }
      }
      buf += decoder.decode();
      if (buf) { const ev = line(buf); if (ev) yield ev; }
      const last = line("");
      if (last) yield last;
    } finally {
      reader.releaseLock();
    }
  }

  // ---------------------------------------------------------------- conversation

  const state = {
    history: [],          // [{role: "user"|"assistant", content}] — answers only, never reasoning
    busy: false,
    controller: null,
    current: null,        // the assistant turn being streamed
    seq: 0,
    chat: 0,              // bumped by New chat: a turn stopped by it must not land in the new history
  };

  function scrollToEnd(force) {
    const m = el.messages;
    const near = m.scrollHeight - m.scrollTop - m.clientHeight < 80;
    if (force || near) m.scrollTop = m.scrollHeight;
  }

  function addUserMessage(text) {
    el.emptyHint.hidden = true;
    const art = document.createElement("article");
    art.className = "msg user";
    art.setAttribute("aria-label", "Your message");
    const bubble = document.createElement("div");
    bubble.className = "bubble";
    bubble.textContent = text;
    art.appendChild(bubble);
    el.messages.appendChild(art);
    scrollToEnd(true);
  }

  function addAssistantMessage() {
    const n = ++state.seq;
    const art = document.createElement("article");
    art.className = "msg assistant";
    art.dataset.state = "streaming";
    art.setAttribute("aria-label", "Assistant message");
    art.setAttribute("aria-busy", "true");

    const thinking = document.createElement("div");
    thinking.className = "thinking";
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.className = "thinking-toggle";
    toggle.setAttribute("aria-expanded", "true");
    toggle.setAttribute("aria-controls", "thinking-" + n);
    const chev = document.createElement("span");
    chev.className = "chev";
    chev.setAttribute("aria-hidden", "true");
    const label = document.createElement("span");
    label.className = "thinking-label";
    label.textContent = "Thinking…";
    toggle.append(chev, label);
    const body = document.createElement("div");
    body.className = "thinking-body";
    body.id = "thinking-" + n;
    body.setAttribute("role", "region");
    body.setAttribute("aria-label", "Thinking");
    const thinkText = document.createTextNode("");
    body.appendChild(thinkText);
    toggle.addEventListener("click", () => {
      const open = toggle.getAttribute("aria-expanded") !== "true";
      toggle.setAttribute("aria-expanded", String(open));
      body.hidden = !open;
      thinking.classList.toggle("collapsed", !open);
    });
    thinking.append(toggle, body);

    const answer = document.createElement("div");
    answer.className = "answer markdown";
    const meta = document.createElement("div");
    meta.className = "meta";
    art.append(thinking, answer, meta);
    el.messages.appendChild(art);
    scrollToEnd(true);

    return {
      art, thinking, label, body, thinkText, answer, meta,
      reasoning: "", content: "", finish: null, budgetHit: false, usage: null,
      started: performance.now(), thinkEnd: null, lastRender: 0, renderTimer: null, clock: null,
    };
  }

  function thinkingSeconds(turn) {
    const end = turn.thinkEnd ?? performance.now();
    return ((end - turn.started) / 1000).toFixed(1);
  }

  function updateThinkingLabel(turn) {
    if (turn.thinkEnd === null) turn.label.textContent = `Thinking… ${thinkingSeconds(turn)} s`;
    else turn.label.textContent = `Thought for ${thinkingSeconds(turn)} s`
                                  + (turn.budgetHit ? " (budget reached)" : "");
  }

  function endThinking(turn) {
    if (turn.thinkEnd !== null) return;
    turn.thinkEnd = performance.now();
    clearInterval(turn.clock);
    updateThinkingLabel(turn);
  }

  function renderAnswer(turn) {
    clearTimeout(turn.renderTimer);
    turn.renderTimer = null;
    turn.lastRender = performance.now();
    renderMarkdownInto(turn.answer, turn.content);
    scrollToEnd(false);
  }

  function scheduleRender(turn) {
    if (turn.renderTimer !== null) return;
    const wait = Math.max(0, RENDER_INTERVAL_MS - (performance.now() - turn.lastRender));
    turn.renderTimer = setTimeout(() => renderAnswer(turn), wait);
  }

  function onChunk(turn, obj) {
    if (obj.usage) turn.usage = obj.usage;
    for (const choice of obj.choices || []) {
      if ((choice.index || 0) !== 0) continue;
      const d = choice.delta || {};
      const r = d.reasoning_content ?? d.reasoning;   // same text under two names: take one
      if (r) {
        turn.reasoning += r;
        turn.thinkText.appendData(r);
        scrollToEnd(false);
      }
      if (d.content) {
        endThinking(turn);
        turn.content += d.content;
        scheduleRender(turn);
      }
      if (choice.finish_reason) turn.finish = choice.finish_reason;
      if (choice.reasoning_budget_hit) turn.budgetHit = true;
    }
  }

  function finishTurn(turn, outcome, detail) {
    endThinking(turn);
    renderAnswer(turn);
    turn.art.dataset.state = outcome;             // done | stopped | error
    turn.art.removeAttribute("aria-busy");
    if (!turn.reasoning) turn.thinking.hidden = true;
    const notes = [];
    if (outcome === "stopped") notes.push("Stopped.");
    if (outcome === "error") notes.push(detail || "Failed.");
    if (turn.budgetHit) notes.push("Thinking budget reached: the model was told to stop thinking and answer.");
    if (turn.finish === "length") notes.push("Cut at the max tokens limit.");
    if (outcome === "done" && !turn.content) notes.push("No answer after the thinking.");
    if (turn.usage) {
      const u = turn.usage;
      const r = (u.completion_tokens_details || {}).reasoning_tokens;
      const secs = (performance.now() - turn.started) / 1000;
      notes.push(`${u.completion_tokens} tokens` + (r !== undefined ? ` (${r} thinking)` : "")
                 + (secs > 0 ? ` · ${(u.completion_tokens / secs).toFixed(1)} tok/s` : ""));
    }
    for (const text of notes) {
      const span = document.createElement("span");
      span.className = "note" + (text.startsWith("Thinking budget") ? " budget-note" : "")
                       + (outcome === "stopped" && text === "Stopped." ? " stopped-note" : "");
      span.textContent = text;
      turn.meta.appendChild(span);
    }
    updateThinkingLabel(turn);
  }

  function setBusy(busy) {
    state.busy = busy;
    el.send.disabled = busy;
    el.send.hidden = busy;
    el.stop.hidden = !busy;
    document.body.dataset.busy = String(busy);
  }

  function requestBody(messages) {
    const body = { model: el.model.value, messages, stream: true, stream_options: { include_usage: true } };
    const t = parseFloat(el.temperature.value);
    if (Number.isFinite(t)) body.temperature = t;
    const mt = parseInt(el.maxTokens.value, 10);
    if (Number.isFinite(mt) && mt > 0) body.max_tokens = mt;
    const b = el.budget.value.trim();
    if (b !== "" && Number.isFinite(parseInt(b, 10))) body.max_reasoning_tokens = parseInt(b, 10);
    if (el.effort.value) body.reasoning_effort = el.effort.value;
    return body;
  }

  async function send(text) {
    if (state.busy || !text.trim()) return;
    clearNotice();
    saveSettings();
    addUserMessage(text);
    const turn = addAssistantMessage();
    state.current = turn;
    turn.clock = setInterval(() => updateThinkingLabel(turn), TIMER_INTERVAL_MS);
    const messages = [...state.history, { role: "user", content: text }];
    const controller = new AbortController();
    const chat = state.chat;
    state.controller = controller;
    setBusy(true);

    let outcome = "done";
    let detail = "";
    try {
      let resp;
      try {
        resp = await fetch("v1/chat/completions", {
          method: "POST", headers: headers(), body: JSON.stringify(requestBody(messages)),
          signal: controller.signal,
        });
      } catch (e) {
        if (e.name === "AbortError") throw e;
        throw new ChatError("Server unreachable: is `r1lab serve` still running?", "network");
      }
      if (resp.status === 401) { keyNeeded(); throw new ChatError("Needs an API key (401).", "auth", true); }
      if (!resp.ok) throw new ChatError(await describeHttpError(resp), "http");

      let sawDone = false;
      try {
        for await (const ev of sseEvents(resp.body)) {
          if (ev.data === "[DONE]") { sawDone = true; break; }
          let obj;
          try { obj = JSON.parse(ev.data); } catch (e) { continue; }
          if (ev.event === "error" || (obj && obj.error)) {
            const err = obj && obj.error;
            throw new ChatError("The server stopped this answer with an error: "
                                + ((err && (err.message || JSON.stringify(err))) || ev.data), "stream");
          }
          onChunk(turn, obj);
        }
      } catch (e) {
        if (e instanceof ChatError || e.name === "AbortError") throw e;
        throw new ChatError("Connection lost mid-answer: server unreachable.", "network");
      }
      if (!sawDone) throw new ChatError("The stream ended early (no [DONE]): the server may have gone away.",
                                        "network");
    } catch (e) {
      if (e.name === "AbortError" || controller.signal.aborted) {
        outcome = "stopped";
      } else {
        outcome = "error";
        const chatErr = e instanceof ChatError ? e : new ChatError(String(e && e.message || e), "client");
        detail = chatErr.message;
        if (!chatErr.quiet) notify(chatErr.message, chatErr.kind);
      }
    } finally {
      finishTurn(turn, outcome, detail);
      // Only answers go back to the server; a turn without an answer is left out with its question.
      if (turn.content.trim() && outcome !== "error" && chat === state.chat) {
        state.history.push({ role: "user", content: text }, { role: "assistant", content: turn.content });
      }
      state.controller = null;
      state.current = null;
      setBusy(false);
    }
  }

  class ChatError extends Error {
    constructor(message, kind, quiet) { super(message); this.kind = kind; this.quiet = !!quiet; }
  }

  function stop() {
    if (state.controller) state.controller.abort();
  }

  function newChat() {
    stop();
    state.chat += 1;
    state.history = [];
    for (const node of [...el.messages.children]) if (node !== el.emptyHint) node.remove();
    el.emptyHint.hidden = false;
    clearNotice();
    el.prompt.focus();
  }

  // ---------------------------------------------------------------- wiring

  el.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = el.prompt.value;
    if (!text.trim() || state.busy) return;
    el.prompt.value = "";
    send(text);
  });
  el.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.stop.addEventListener("click", stop);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.busy) stop(); });
  el.newChat.addEventListener("click", newChat);
  el.settingsToggle.addEventListener("click", () => showSettings(el.settings.hidden));
  el.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = el.apiKey.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key); else localStorage.removeItem(KEY_STORAGE);
    clearNotice();
    loadModels();
  });
  for (const input of [el.temperature, el.maxTokens, el.budget, el.effort, el.model]) {
    input.addEventListener("change", saveSettings);
  }

  loadSettings();
  setBusy(false);
  loadModels();

  // For tests and the curious: the renderer and the conversation state.
  window.r1chat = { renderMarkdown, renderMarkdownInto, extractMath, send, stop, newChat, state };
})();
