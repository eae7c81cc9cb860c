// BiasCare case viewer: base image once per case, mask layer per click, composited on two stacked canvases.
// The Gradio HTML component renders <div class="bc-slot" data-nonce=... data-w=... data-h=... data-ai=0|1>;
// this script (injected through the page head) builds the viewer inside it and talks to the lean /api/v1 routes.
(function () {
  "use strict";
  if (window.__bcViewerInstalled) return;
  window.__bcViewerInstalled = true;
  const stats = (window.__bcStats = window.__bcStats || []);
  let V = null; // the current viewer state

  function post(path, body) {
    return fetch(path, {method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
                        body: JSON.stringify(body)});
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(c);
    return node;
  }

  function build(slot) {
    const nonce = slot.dataset.nonce;
    const w = parseInt(slot.dataset.w, 10), h = parseInt(slot.dataset.h, 10);
    const ai = slot.dataset.ai === "1";
    const idleMs = 1000 * parseFloat(slot.dataset.idle || "60");
    slot.innerHTML = "";
    const toolbar = el("div", {class: "bc-toolbar"});
    const btn = (id, label, title) => el("button", {type: "button", id: id, title: title, text: label});
    const pos = btn("bc-pos", "+ Positive", "positive click mode (P; T toggles)");
    const neg = btn("bc-neg", "− Negative", "negative click mode (N; T toggles)");
    const undo = btn("bc-undo", "Undo", "undo the last click (U or Ctrl+Z)");
    const reset = btn("bc-reset", "Reset", "back to the AI mask (R)");
    const accept = btn("bc-accept", "Accept as is", "accept the current mask (A)");
    const zin = btn("bc-zoom-in", "Zoom +", "zoom in (+)"), zout = btn("bc-zoom-out", "Zoom −", "zoom out (−)");
    const zfit = btn("bc-zoom-fit", "Fit", "fit (0)");
    const toggle = btn("bc-overlay", "Overlay", "show/hide the mask (O)");
    const mk = (id, min, max, value, step) => el("input", {type: "range", id: id, min: min, max: max, value: value,
                                                             step: step});
    const win = mk("bc-window", 1, 255, 255, 1), lvl = mk("bc-level", 0, 255, 128, 1);
    const opa = mk("bc-opacity", 0, 100, 60, 1);
    const status = el("span", {class: "bc-status", id: "bc-status", text: ai ? "positive mode" : "AI tools off in this arm"});
    const group = (label, input) => el("label", {class: "bc-range"}, [document.createTextNode(label), input]);
    if (ai) for (const b of [pos, neg, undo, reset, accept]) toolbar.appendChild(b);
    for (const b of [zout, zin, zfit]) toolbar.appendChild(b);
    if (ai) toolbar.appendChild(toggle);
    toolbar.appendChild(group("Window", win));
    toolbar.appendChild(group("Level", lvl));
    if (ai) toolbar.appendChild(group("Opacity", opa));
    const slices = parseInt(slot.dataset.slices || "0", 10);
    const sliceInput = mk("bc-slice", 0, Math.max(0, slices - 1), parseInt(slot.dataset.slice || "0", 10), 1);
    const sliceLabel = el("span", {class: "bc-slice-label", id: "bc-slice-label"});
    if (slices > 1) toolbar.appendChild(el("label", {class: "bc-range", title: "slice (↑/↓ or PageUp/PageDown)"},
                                           [document.createTextNode("Slice"), sliceInput, sliceLabel]));
    toolbar.appendChild(status);
    const base = el("canvas", {id: "bc-base", width: w, height: h});
    const overlay = el("canvas", {id: "bc-overlay-canvas", width: w, height: h});
    const inner = el("div", {class: "bc-inner"}, [base, overlay]);
    const stage = el("div", {class: "bc-stage", id: "bc-stage", tabindex: "0"}, [inner]);
    slot.appendChild(toolbar);
    slot.appendChild(stage);

    const state = V = {nonce, w, h, ai, base, overlay, inner, stage, status, zoom: 1, positive: true, busy: 0,
                       gray: null, baseData: null, overlayOn: true, idle: false, last: performance.now(), idleMs,
                       pos, neg, win, lvl, opa, queue: Promise.resolve(), slices, sliceInput, sliceLabel,
                       slice: +sliceInput.value};
    setMode(true);
    fit();
    loadBase(state);
    if (ai) loadLayer(state, `/api/v1/view/${nonce}/layer.png`);
    overlay.addEventListener("pointerdown", (e) => onClick(state, e));
    overlay.addEventListener("contextmenu", (e) => e.preventDefault());
    pos.onclick = () => setMode(true);
    neg.onclick = () => setMode(false);
    undo.onclick = () => act(state, "undo");
    reset.onclick = () => act(state, "reset");
    accept.onclick = () => doAccept(state);
    zin.onclick = () => setZoom(state.zoom * 1.25);
    zout.onclick = () => setZoom(state.zoom / 1.25);
    zfit.onclick = () => fit();
    toggle.onclick = () => { state.overlayOn = !state.overlayOn; applyOpacity(); };
    win.oninput = lvl.oninput = () => applyWindow(state);
    opa.oninput = applyOpacity;
    sliceInput.oninput = () => showSliceLabel(state, +sliceInput.value);
    sliceInput.onchange = () => showSlice(state, +sliceInput.value);
    showSliceLabel(state, state.slice);
    applyOpacity();
  }

  // ------------------------------------------------------------------ volumes: one axial slice at a time
  function showSliceLabel(state, index) {
    state.sliceLabel.textContent = `${index + 1} / ${state.slices}`;
  }

  function showSlice(state, index) {
    if (state.slices < 2) return;
    index = Math.max(0, Math.min(state.slices - 1, index));
    state.sliceInput.value = String(index);
    showSliceLabel(state, index);
    touch();
    state.queue = state.queue.then(async () => {
      const r = await post("/api/v1/slice", {nonce: state.nonce, index});
      if (!r.ok) { state.status.textContent = "could not show that slice"; return; }
      state.slice = (await r.json()).slice;
      state.base.dataset.loaded = "0";
      await loadBase(state, `?slice=${state.slice}`);
      if (state.ai) await fetch(`/api/v1/view/${state.nonce}/layer.png`, {credentials: "same-origin"})
        .then((layer) => paint(state, layer, performance.now(), "slice"));
      state.base.dataset.slice = String(state.slice);
    });
  }

  function setMode(positive) {
    if (!V) return;
    V.positive = positive;
    V.pos.classList.toggle("bc-active", positive);
    V.neg.classList.toggle("bc-active", !positive);
    if (V.ai) V.status.textContent = positive ? "positive mode" : "negative mode";
    V.overlay.style.cursor = positive ? "crosshair" : "cell";
  }

  function fit() {
    if (!V) return;
    const avail = Math.max(200, (V.stage.clientWidth || 800) - 4);
    const tall = Math.max(200, window.innerHeight * 0.82 - 4);  // the stage's max-height: the whole image in view
    V.fitScale = Math.min(avail / V.w, tall / V.h);  // small images (a 512² CT slice) are enlarged to fit too
    setZoom(1);
  }

  function setZoom(z) {
    if (!V) return;
    V.zoom = Math.max(0.25, Math.min(8, z));
    const px = Math.round(V.w * V.fitScale * V.zoom);
    V.inner.style.width = px + "px";
    V.inner.style.height = Math.round(px * V.h / V.w) + "px";
  }

  function applyOpacity() {
    if (!V) return;
    V.overlay.style.opacity = V.overlayOn ? String(V.opa.value / 100) : "0";
  }

  async function loadBase(state, query) {
    // a volume's slices share the nonce: the query names the slice, so the browser cache keeps them apart
    const resp = await fetch(`/api/v1/view/${state.nonce}/base.png${query || ""}`, {credentials: "same-origin"});
    if (!resp.ok) { state.status.textContent = "could not load the image"; return; }
    const bmp = await createImageBitmap(await resp.blob());
    const ctx = state.base.getContext("2d", {willReadFrequently: true});
    ctx.drawImage(bmp, 0, 0);
    state.baseData = ctx.getImageData(0, 0, state.w, state.h);
    state.gray = new Uint8Array(state.w * state.h);
    const d = state.baseData.data;
    for (let i = 0, j = 0; j < state.gray.length; i += 4, j++) state.gray[j] = d[i];
    state.base.dataset.loaded = "1";
    applyWindow(state);
  }

  function applyWindow(state) {
    if (!state.gray) return;
    const width = Math.max(1, +state.win.value), level = +state.lvl.value;
    const lo = level - width / 2, lut = new Uint8ClampedArray(256);
    for (let v = 0; v < 256; v++) lut[v] = Math.round((v - lo) / width * 255);
    const out = state.baseData.data, g = state.gray;
    for (let i = 0, j = 0; j < g.length; i += 4, j++) { const v = lut[g[j]]; out[i] = out[i + 1] = out[i + 2] = v; out[i + 3] = 255; }
    state.base.getContext("2d").putImageData(state.baseData, 0, 0);
  }

  async function paint(state, resp, t0, kind) {
    const tResp = performance.now();
    if (!resp.ok) {
      let msg = resp.status + "";
      try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
      state.status.textContent = msg;
      if (resp.status === 409 && state === V) stale(msg);
      return;
    }
    const bmp = await createImageBitmap(await resp.blob());
    if (state !== V) return; // the case changed meanwhile
    const ctx = state.overlay.getContext("2d");
    ctx.clearRect(0, 0, state.w, state.h);
    ctx.drawImage(bmp, 0, 0);
    const tDrawn = performance.now();
    const server = parseFloat(resp.headers.get("X-Server-Ms") || "0");
    const model = parseFloat(resp.headers.get("X-Model-Ms") || "0");
    const cpu = parseFloat(resp.headers.get("X-Server-Cpu-Ms") || "0");
    const clicks = resp.headers.get("X-Clicks");
    state.overlay.dataset.clicks = clicks;
    requestAnimationFrame(() => {
      const tPaint = performance.now();
      stats.push({kind, t0, response_ms: tResp - t0, drawn_ms: tDrawn - t0, painted_ms: tPaint - t0,
                  server_ms: server, model_ms: model, server_cpu_ms: cpu, clicks: +clicks});
      state.overlay.dataset.painted = String(stats.length);
      if (state.ai) state.status.textContent =
        `${state.positive ? "positive" : "negative"} mode · ${clicks} click(s) · ${Math.round(tPaint - t0)} ms`;
    });
  }

  function loadLayer(state, url) {
    const t0 = performance.now();
    state.queue = state.queue.then(() => fetch(url, {credentials: "same-origin"}).then((r) => paint(state, r, t0, "layer")));
  }

  function onClick(state, e) {
    if (!state.ai || e.button > 2) return;
    e.preventDefault();
    const rect = state.overlay.getBoundingClientRect();
    const x = (e.clientX - rect.left) * state.w / rect.width;
    const y = (e.clientY - rect.top) * state.h / rect.height;
    const positive = e.button === 2 ? !state.positive : state.positive; // right button: the other mode
    const t0 = performance.now();
    touch();
    state.queue = state.queue.then(() => post("/api/v1/click", {nonce: state.nonce, x, y, positive})
      .then((r) => paint(state, r, t0, "click")));
  }

  function act(state, what) {
    if (!state.ai) return;
    const t0 = performance.now();
    touch();
    state.queue = state.queue.then(() => post(`/api/v1/${what}`, {nonce: state.nonce}).then((r) => paint(state, r, t0, what)));
  }

  function doAccept(state) {
    if (!state.ai) return;
    touch();
    state.queue = state.queue.then(() => post("/api/v1/accept", {nonce: state.nonce}).then(async (r) => {
      state.status.textContent = r.ok ? "mask accepted" : "accept failed";
    }));
  }

  // ------------------------------------------------------------------ idle detection (tab hidden or no input)
  function sendEvent(kind) {
    if (!V) return;
    post("/api/v1/event", {nonce: V.nonce, kind: kind, payload: {}}).catch(() => {});
  }
  function touch() {
    if (!V) return;
    V.last = performance.now();
    if (V.idle && !document.hidden) { V.idle = false; sendEvent("idle_end"); }
  }
  setInterval(() => {  // the reading clock's evidence that the case is on screen and the reader present
    if (V && !V.idle && !document.hidden) sendEvent("heartbeat");
  }, 5000);
  setInterval(() => {
    if (!V || V.idle) return;
    if (document.hidden || performance.now() - V.last > V.idleMs) { V.idle = true; sendEvent("idle_start"); }
  }, 1000);
  document.addEventListener("visibilitychange", () => {
    if (!V) return;
    if (document.hidden && !V.idle) { V.idle = true; sendEvent("idle_start"); }
    else if (!document.hidden) touch();
  });
  for (const kind of ["pointermove", "pointerdown", "keydown", "wheel"]) document.addEventListener(kind, touch, {passive: true});

  // ------------------------------------------------------------------ the answer panel (findings, ratings, submit)
  // Server-rendered by app/panels.py; every change is posted with the view's nonce and counts once acknowledged
  // (the server commits its events first). Submit / Skip / Pause wait for the pending answer posts, then ask Gradio
  // to render what the session has open now (the hidden #bc-sync button).
  let A = null;
  let notice = "";

  function stale(msg) {
    const banner = document.querySelector("#bc-stale") || document.body.appendChild(el("div", {id: "bc-stale"}));
    banner.textContent = "This page no longer shows the open case (" + msg + "). Reload the page to continue.";
    banner.classList.add("bc-stale-on");
    if (A) A.panel.classList.add("bc-answer-stale");
  }

  function buildAnswer(panel) {
    // Gradio may patch the panel's DOM in place for the next case: the state is keyed by the panel's nonce and the
    // listeners below are installed once, on the document, so no handler of an earlier case survives on the node.
    A = {panel, nonce: panel.dataset.nonce, ratingMax: parseInt(panel.dataset.ratingMax || "0", 10),
         study: panel.dataset.study === "1", queue: Promise.resolve(), statusEl: panel.querySelector("#bc-answer-status"),
         positives: new Set(JSON.parse(panel.dataset.positives || "[]")), ratings: JSON.parse(panel.dataset.ratings || "{}")};
    panel.classList.remove("bc-answer-stale");
    A.acks = 0;
    reapply(A, panel);
    if (notice) { A.statusEl.textContent = notice; notice = ""; }
  }

  function reapply(state, panel) {
    // the page's answer is the truth between two server renders: a re-render of the same case gets it back
    state.panel = panel;
    state.statusEl = panel.querySelector("#bc-answer-status");
    for (const row of panel.querySelectorAll(".bc-finding")) {
      const on = state.positives.has(row.dataset.class), r = row.querySelector(".bc-rating");
      row.querySelector(".bc-label").checked = on;
      if (r) {
        r.disabled = !on;
        if (on && state.ratings[row.dataset.class] !== undefined) { r.value = state.ratings[row.dataset.class]; r.dataset.rated = "1"; }
        else delete r.dataset.rated;
      }
      showRating(row);
    }
    panel.dataset.acknowledged = String(state.acks || 0);
  }

  function currentAnswer(target) {
    const panel = target && target.closest && target.closest(".bc-answer[data-nonce]");
    return panel && A && A.panel === panel && A.nonce === panel.dataset.nonce ? A : null;
  }

  document.addEventListener("change", (e) => {
    const state = currentAnswer(e.target), row = e.target.closest && e.target.closest(".bc-finding");
    if (!state || !row) return;
    if (e.target.classList.contains("bc-label")) onTick(state, row, e.target.checked);
    if (e.target.classList.contains("bc-rating")) { e.target.dataset.rated = "1"; showRating(row); }
    touch();
    postAnswer(state);
  });
  document.addEventListener("input", (e) => {
    if (currentAnswer(e.target) && e.target.classList.contains("bc-rating")) showRating(e.target.closest(".bc-finding"));
  });
  document.addEventListener("click", (e) => {
    const state = currentAnswer(e.target), button = e.target.closest && e.target.closest("button");
    const what = button && {"bc-submit": "submit", "bc-skip": "skip", "bc-pause": "pause"}[button.id];
    if (state && what) answerAction(state, what);
  });

  function onTick(state, row, checked) {
    const exclusive = "Normal";
    const rows = state.panel.querySelectorAll(".bc-finding");
    if (checked) for (const other of rows) {
      const isNormal = other.dataset.class === exclusive, mine = row.dataset.class === exclusive;
      if (other !== row && (isNormal || mine)) { other.querySelector(".bc-label").checked = false; enableRating(other, false); }
    }
    enableRating(row, checked);
  }

  function enableRating(row, on) {
    const r = row.querySelector(".bc-rating");
    if (!r) return;
    r.disabled = !on;
    if (!on) delete r.dataset.rated;
    showRating(row);
  }

  function showRating(row) {
    const r = row.querySelector(".bc-rating"), out = row.querySelector(".bc-rating-value");
    if (r && out) out.textContent = r.disabled || !r.dataset.rated ? "–" : r.value;
  }

  function answerBody(state) {
    const positives = [], ratings = {};
    for (const row of state.panel.querySelectorAll(".bc-finding")) {
      if (!row.querySelector(".bc-label").checked) continue;
      positives.push(row.dataset.class);
      const r = row.querySelector(".bc-rating");
      if (r && r.dataset.rated) ratings[row.dataset.class] = parseInt(r.value, 10);
    }
    state.positives = new Set(positives);
    state.ratings = ratings;
    return {nonce: state.nonce, positives, ratings};
  }

  function postAnswer(state) {
    const body = answerBody(state);
    state.queue = state.queue.then(async () => {
      const r = await post("/api/v1/answer", body);
      const reply = await r.json().catch(() => ({}));
      if (r.status === 409 && state === A) stale(reply.error || "409");
      state.statusEl.textContent = r.ok ? "saved" : (reply.error || "not saved");
      if (r.ok) state.acks = (state.acks || 0) + 1;
      state.panel.dataset.acknowledged = String(state.acks || 0);
    });
    return state.queue;
  }

  function answerAction(state, what) {
    touch();
    state.queue = state.queue.then(async () => {
      state.statusEl.textContent = what === "submit" ? "submitting…" : "…";
      const r = await post(`/api/v1/${what}`, {nonce: state.nonce});
      const reply = await r.json().catch(() => ({}));
      if (!r.ok) {
        if (r.status === 409 && state === A) stale(reply.error || "409");
        state.statusEl.textContent = reply.error || `${what} failed (${r.status})`;
        return;
      }
      notice = reply.message || "";
      const sync = document.querySelector("#bc-sync");
      if (sync) (sync.querySelector("button") || sync).click();
    });
  }

  // ------------------------------------------------------------------ keyboard shortcuts
  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (["INPUT", "TEXTAREA", "SELECT"].includes(tag) && e.target.type !== "range" && e.target.type !== "checkbox") return;
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { if (A) answerAction(A, "submit"); e.preventDefault(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) { if ((e.ctrlKey || e.metaKey) && e.key === "z" && V) { act(V, "undo"); e.preventDefault(); } return; }
    if (!V) return;
    const k = e.key.toLowerCase();
    const handled = {
      p: () => setMode(true), n: () => setMode(false), t: () => setMode(!V.positive), u: () => act(V, "undo"),
      r: () => act(V, "reset"), a: () => doAccept(V), o: () => { V.overlayOn = !V.overlayOn; applyOpacity(); },
      "+": () => setZoom(V.zoom * 1.25), "=": () => setZoom(V.zoom * 1.25), "-": () => setZoom(V.zoom / 1.25),
      "0": () => fit(), j: () => { if (A && !A.study) answerAction(A, "skip"); },
    }[k] || (V.slices > 1 && tag !== "INPUT" && {  // a focused slider keeps its own arrow keys
      arrowup: () => showSlice(V, V.slice + 1), arrowdown: () => showSlice(V, V.slice - 1),
      pageup: () => showSlice(V, V.slice + 10), pagedown: () => showSlice(V, V.slice - 10),
    }[k]);
    if (handled) { handled(); e.preventDefault(); }
  });

  // ------------------------------------------------------------------ (re)build when Gradio renders a new case
  function scan() {
    const panel = document.querySelector(".bc-answer[data-nonce]");
    if (panel && (!A || A.nonce !== panel.dataset.nonce)) buildAnswer(panel);
    else if (panel && (A.panel !== panel || panel.dataset.applied !== "1")) reapply(A, panel);
    if (panel) panel.dataset.applied = "1";
    if (!panel && A && !document.body.contains(A.panel)) A = null;
    const slot = document.querySelector(".bc-slot[data-nonce]");
    if (!slot) { if (V && !document.body.contains(V.base)) V = null; return; }
    if (slot.dataset.built === slot.dataset.nonce) return;
    slot.dataset.built = slot.dataset.nonce;
    build(slot);
  }
  new MutationObserver(scan).observe(document.documentElement, {childList: true, subtree: true});
  document.addEventListener("DOMContentLoaded", scan);
  window.__bcViewer = {get: () => V, answer: () => A, setMode, setZoom, fit};
})();
