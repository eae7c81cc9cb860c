// BiasCare reading-room viewer (app/VIEWER_API.md is the contract with the server).
// The Gradio HTML component renders <div class="bc-slot" data-nonce data-w data-h data-ow data-oh data-ai data-slices
// data-slice data-object-labels data-objects>; this script (injected through the page head) builds the viewer inside
// it and talks to the lean routes.
//
// Objects: an answer holds labelled objects, each its own mask (app/VIEWER_API.md). The object list beside the image
// shows them (colour, label, select, reset, delete); "New object" with a label makes the next click or box start a
// fresh mask for it. The selected ("active") object's layer is the one the tools act on (state.layer, state.layers);
// the others' layers of the slice shown are drawn beneath it, each in its own colour.
//
// Coordinate frames
//   display grid  continuous pixel coordinates of the image the server sends (x right, y down, 0..w / 0..h); every
//                 coordinate sent to or received from the server is in this frame (a 2000² CXR: 1024² grid).
//   stage         CSS pixels from the top-left corner of #bc-stage (the black viewport):
//                 stage = (tx, ty) + zoom × display, i.e. zoom = screen px per display-grid px.
//   client        CSS pixels of the browser window (pointer events): client = stage + stage's bounding-rect origin.
// Pixels
//   /pixels samples (int16/uint16/uint8) → modality value v = sample × slope + intercept (CT: HU) → window
//   (center c, width w, modality units) → gray = clamp(round((v − (c − w/2)) / w × 255), 0, 255), inverted:
//   255 − gray. The LUT is built per window over the slice's sample range and written into #bc-base (w × h canvas).
(function () {
  "use strict";
  if (window.__bcViewerInstalled) return;
  window.__bcViewerInstalled = true;
  const stats = (window.__bcStats = window.__bcStats || []);
  let V = null; // the current viewer state

  const CT_PRESETS = [
    {name: "lung", c: -600, w: 1500}, {name: "mediastinum", c: 50, w: 350}, {name: "abdomen", c: 40, w: 400},
    {name: "bone", c: 400, w: 1800}, {name: "brain", c: 40, w: 80}];
  const MASK_RGB = [0, 216, 255];      // the mask: outline and fill colour (cyan, visible on any gray)
  const OUTLINE = "rgb(0, 216, 255)";
  const POS_COLOR = "#22c55e", NEG_COLOR = "#ef4444", LAST_RING = "#ffffff", BOX_COLOR = "#fbbf24";
  const MEASURE_COLOR = "#facc15";
  const MARKER_R = 8;                  // screen px: markers keep their size at any zoom
  const AHEAD = 6, BEHIND = 2;         // neighbouring slices' pixels fetched ahead (scrolling direction) / behind
  const CACHE_SLICES = 40;             // decoded slices kept (LRU)
  const LAYER_SETTLE_MS = 60;          // a slice shown this long gets its mask requested (scrolling drops the rest)
  const CLEANUP = {min_island_px: 64, fill_holes: true};
  const MAX_STROKE_POINTS = 2000;
  const TOOL_NAMES = {point: "click", box: "box", brush: "brush", eraser: "eraser", measure: "measure", pan: "pan"};

  // mask layers come as row runs (app/VIEWER_API.md): fill and outline in time proportional to the runs
  const RUNS_TYPE = "application/vnd.biascare.mask-runs";
  const ACCEPT = `${RUNS_TYPE}, application/json;q=0.9, */*;q=0.5`;

  function post(path, body, signal) {
    return fetch(path, {method: "POST", credentials: "same-origin",
                        headers: {"Content-Type": "application/json", "Accept": ACCEPT},
                        body: JSON.stringify(body), signal});
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    return node;
  }

  const clamp = (v, lo, hi) => Math.max(lo, Math.min(hi, v));
  const fmt = (v) => (Math.abs(v) >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1));

  // ------------------------------------------------------------------ building the viewer in its slot
  function button(id, label, title) {
    return el("button", {type: "button", id, title, text: label});
  }

  function range(id, min, max, value, step) {
    return el("input", {type: "range", id, min, max, value, step});
  }

  function labelled(label, input, title) {
    return el("label", {class: "bc-range", title: title || label}, [label, input]);
  }

  function buildToolbar(state) {
    const b = state.buttons = {
      pos: button("bc-pos", "+ Positive", "positive click (P; T toggles; right-click: the other polarity)"),
      neg: button("bc-neg", "− Negative", "negative click (N; T toggles)"),
      box: button("bc-box", "Box", "box prompt: drag a rectangle (B)"),
      brush: button("bc-brush", "Brush", "paint into the mask (D; [ and ] change the radius)"),
      eraser: button("bc-eraser", "Eraser", "erase from the mask (E; [ and ] change the radius)"),
      measure: button("bc-measure", "Measure", "distance: drag a line (M; Delete removes the last)"),
      pan: button("bc-pan", "Pan", "drag to pan (H; or hold Space, or drag with the middle button)"),
      undo: button("bc-undo", "Undo", "undo the last action on this slice (U or Ctrl+Z)"),
      reset: button("bc-reset", "Reset", "back to the AI mask of this slice (R)"),
      accept: button("bc-accept", "Accept as is", "accept the current mask (A)"),
      cleanup: button("bc-cleanup", "Clean-up", "drop islands < 64 px and fill holes in the shown mask (C)"),
      carry: button("bc-carry", "Carry", "carry the previous slice's prompts to this slice (K)"),
      fit: button("bc-zoom-fit", "Fit", "fit the image to the viewport (0)"),
      one: button("bc-zoom-1", "1:1", "one image pixel per screen pixel (Z)"),
      zout: button("bc-zoom-out", "−", "zoom out (−; Ctrl+wheel)"),
      zin: button("bc-zoom-in", "+", "zoom in (+; Ctrl+wheel)"),
      invert: button("bc-invert", "Invert", "invert the gray scale (I)"),
      viewReset: button("bc-view-reset", "Reset view", "window, zoom and pan back to the start (Esc)"),
      overlay: button("bc-overlay", "Overlay", "show/hide the mask (O)"),
      fill: button("bc-fill", "Outline", "mask as outline or fill (F)"),
      help: button("bc-help-btn", "?", "keyboard shortcuts (?)"),
    };
    state.preset = el("select", {id: "bc-preset", title: "window presets (keys 1–9)"});
    state.win = range("bc-window", 1, 512, 256, "any");
    state.lvl = range("bc-level", 0, 255, 128, "any");
    state.opa = range("bc-opacity", 0, 100, 40, 1);
    state.sliceInput = range("bc-slice", 0, Math.max(0, state.slices - 1), state.slice, 1);
    state.sliceLabel = el("span", {class: "bc-slice-label", id: "bc-slice-label"});
    state.ticks = el("canvas", {class: "bc-slice-ticks", id: "bc-slice-ticks", width: 160, height: 4});
    state.status = el("span", {class: "bc-status", id: "bc-status", text: state.ai ? "" : "AI tools off in this arm"});
    const group = (nodes) => el("span", {class: "bc-group"}, nodes.filter(Boolean));
    const ai = state.ai, volume = state.slices > 1;
    const row1 = el("div", {class: "bc-toolbar", id: "bc-toolbar"}, [
      ai && group([b.pos, b.neg, b.box, b.brush, b.eraser]), group([b.measure, b.pan]),
      ai && group([b.undo, b.reset, b.accept, b.cleanup, volume && b.carry]),
      group([b.fit, b.one, b.zout, b.zin]), group([b.invert, state.preset, b.viewReset]),
      ai && group([b.overlay, b.fill, labelled("Opacity", state.opa, "fill opacity")]), b.help,
    ].filter(Boolean));
    const row2 = el("div", {class: "bc-toolbar bc-toolbar2"}, [
      labelled("Window", state.win, "window width (right-drag horizontally)"),
      labelled("Level", state.lvl, "window level (right-drag vertically)"),
      volume && el("label", {class: "bc-range bc-slice-range", title: "slice (wheel, ↑/↓, PageUp/PageDown)"},
                   ["Slice", el("span", {class: "bc-slice-track"}, [state.sliceInput, state.ticks]),
                    state.sliceLabel]),
      state.status,
    ].filter(Boolean));
    return [row1, row2];
  }

  // ------------------------------------------------------------------ the answer's objects (list beside the image)
  function parseJson(text, fallback) {
    try { return text ? JSON.parse(text) : fallback; } catch (err) { return fallback; }
  }

  function initObjects(state, d) {
    state.objectLabels = parseJson(d.objectLabels, []);
    state.objects = new Map();
    for (const o of parseJson(d.objects, [{id: 0, label: null, colour: MASK_RGB, slices: []}])) {
      state.objects.set(o.id, {id: o.id, label: o.label, colour: o.colour || MASK_RGB, layer: null, server: true});
    }
    if (!state.objects.size) addObject(state, 0, null, MASK_RGB, false);
    state.active = state.objects.has(0) ? 0 : Math.min(...state.objects.keys());
  }

  function addObject(state, id, label, colour, server) {
    const o = {id, label, colour: colour || MASK_RGB, layer: null, server};
    state.objects.set(id, o);
    return o;
  }

  function activeObject(state) {
    return state.objects.get(state.active) || {id: 0, label: null, colour: MASK_RGB};
  }

  function objectRef(state) {
    // the "object" field of a mask action: none for the default object (its events are as before objects)
    const o = activeObject(state);
    return o.id === 0 ? {} : {object: {id: o.id, label: o.label}};
  }

  function rgb(colour) {
    return `rgb(${colour[0]}, ${colour[1]}, ${colour[2]})`;
  }

  function buildObjectPanel(state) {
    state.labelSelect = el("select", {id: "bc-object-label", title: "label of the next new object"},
                           state.objectLabels.map((l) => el("option", {value: l.label, text: l.label})));
    const create = button("bc-new-object", "New object",
                          "the next click or box starts a fresh mask with this label (L)");
    create.onclick = () => newObject(state);
    state.objectList = el("ul", {class: "bc-object-list", id: "bc-object-list"});
    state.objectPanel = el("div", {class: "bc-objects", id: "bc-objects"},
                           [el("div", {class: "bc-objects-head", text: "Objects"}), state.labelSelect, create,
                            state.objectList]);
    renderObjects(state);
    return state.objectPanel;
  }

  function renderObjects(state) {
    if (!state.objectList) return;
    state.objectList.innerHTML = "";
    for (const o of [...state.objects.values()].sort((a, b) => a.id - b.id)) {
      const name = o.label === null ? "annotation (AI)" : o.label;
      const reset = el("button", {class: "bc-object-reset", title: "reset this object on this slice", text: "Reset"});
      const remove = el("button", {class: "bc-object-delete", title: "delete this object", text: "Delete"});
      const row = el("li", {class: "bc-object" + (o.id === state.active ? " bc-active" : ""), "data-object": o.id,
                            "data-label": o.label === null ? "" : o.label, "data-area": o.id === state.active
                              ? String(state.layer ? state.layer.area : 0) : String(o.layer ? o.layer.area : 0)},
                     [el("span", {class: "bc-swatch", style: `background: ${rgb(o.colour)}`}),
                      el("span", {class: "bc-object-name", text: name}), reset, remove]);
      row.onclick = () => selectObject(state, o.id);
      reset.onclick = (e) => { e.stopPropagation(); selectObject(state, o.id); act(state, "reset"); };
      remove.onclick = (e) => { e.stopPropagation(); removeObject(state, o.id); };
      state.objectList.appendChild(row);
    }
    state.objectPanel.dataset.active = String(state.active);
    state.objectPanel.dataset.count = String(state.objects.size);
  }

  function newObject(state) {
    if (!state.ai || !state.labelSelect) return;
    const label = state.labelSelect.value, spec = state.objectLabels.find((l) => l.label === label);
    if (!spec) return;
    const id = Math.max(0, ...state.objects.keys()) + 1;
    addObject(state, id, label, spec.colour, false);
    selectObject(state, id);
    state.status.textContent = `new object: ${label} — click or drag a box to start its mask`;
  }

  function selectObject(state, id) {
    if (!state.objects.has(id) || id === state.active) { renderObjects(state); return; }
    const before = activeObject(state);
    before.layer = state.layer;  // kept as one of the others, drawn beneath in its colour
    state.active = id;
    state.version++;  // a layer still on its way belongs to the object it was asked for
    state.layers = new Map();
    state.localClicks = new Map();
    const now = activeObject(state);
    const here = now.layer && (state.slices < 2 || now.layer.slice === state.slice) ? now.layer : null;
    now.layer = null;
    if (here) applyLayer(state, here); else clearLayer(state);
    if (!here && now.server) fetchLayer(state, state.slice, performance.now());
    renderObjects(state);
    updateStatus(state);
  }

  function removeObject(state, id) {
    touch();
    enqueue(state, async () => {
      const r = await post("/api/v1/remove_object", {nonce: state.nonce, object: {id}});
      if (!r.ok && state.objects.get(id) && state.objects.get(id).server) { await failed(state, r); return; }
      state.objects.delete(id);
      if (!state.objects.size) addObject(state, 0, null, MASK_RGB, true);
      if (state.active === id) {
        state.active = null;
        state.layer = null;
        selectObject(state, state.objects.has(0) ? 0 : Math.min(...state.objects.keys()));
      }
      redrawOverlay(state);
      drawMarks(state);
      renderObjects(state);
    });
  }

  function fetchOtherLayers(state, k) {
    // the layers of the slice shown for every object but the active one (drawn beneath it)
    for (const o of state.objects.values()) {
      if (o.id === state.active) continue;
      if (o.layer && (state.slices < 2 || o.layer.slice === k)) continue;
      o.layer = null;
      if (!o.server) continue;
      fetch(`/api/v1/view/${state.nonce}/layer.png${layerQuery(k, o.id)}`,
            {credentials: "same-origin", headers: {"Accept": ACCEPT}})
        .then((r) => (r.ok ? decodeLayer(state, r, k, o.colour) : null))
        .then((layer) => {
          if (!layer || state !== V || o.id === state.active) return;
          if (state.slices > 1 && layer.slice !== state.slice) return;
          o.layer = layer;
          redrawOverlay(state);
          drawMarks(state);
        }).catch(() => {});
    }
  }

  function buildStage(state) {
    state.base = el("canvas", {id: "bc-base", width: state.w, height: state.h});
    state.overlay = el("canvas", {id: "bc-overlay-canvas", width: state.w, height: state.h});
    state.inner = el("div", {class: "bc-inner"}, [state.base, state.overlay]);
    state.marks = el("canvas", {id: "bc-marks", class: "bc-marks"});
    state.corners = {};
    const corners = ["tl", "tr", "bl", "br"].map((c) => (state.corners[c] = el("div", {class: `bc-corner bc-${c}`,
                                                                                        id: `bc-corner-${c}`})));
    state.help = el("div", {class: "bc-help bc-hidden", id: "bc-help"});
    state.help.innerHTML = helpHtml(state);
    state.stage = el("div", {class: "bc-stage", id: "bc-stage", tabindex: "0"},
                     [state.inner, state.marks, ...corners, state.help]);
    return state.stage;
  }

  function helpHtml(state) {
    const keys = [
      ["P / N / T", "positive / negative click, toggle (right-click: the other polarity)"],
      ["B", "box prompt (drag)"], ["D / E", "brush / eraser (drag); [ and ] radius"],
      ["M", "measure a distance (drag); Delete removes the last"], ["H, Space+drag, middle drag", "pan"],
      ["U, Ctrl+Z", "undo"], ["R", "reset to the AI mask"], ["A", "accept as is"],
      ["C", "clean-up of the shown mask (islands < 64 px dropped, holes filled)"],
      ["K", "carry the previous slice's prompts to this slice"],
      ["L", "new object with the label chosen beside the image (its own mask; click a row to select an object)"],
      ["O / F", "overlay on/off, outline/fill"], ["right-drag", "window (horizontal) / level (vertical)"],
      ["1–9", presetList(state)], ["I", "invert"], ["Esc", "reset window, zoom and pan"],
      ["wheel", state.slices > 1 ? "slices (Ctrl+wheel: zoom at the cursor)" : "zoom at the cursor"],
      ["+ / − / 0 / Z", "zoom in / out / fit / 1:1"],
      ["↑ ↓ / PageUp PageDown", "slice ±1 / ±10 (hold to scroll)"], ["Ctrl+Enter", "submit & next"],
      ["J", "skip (outside studies)"], ["?", "this help"]];
    const aiOnly = ["P / N / T", "B", "D / E", "U, Ctrl+Z", "R", "A", "C", "K", "L", "O / F"];  // mask tools
    const shown = keys.filter(([k]) => state.ai || !aiOnly.includes(k))
      .filter(([k]) => state.slices > 1 || !["K", "↑ ↓ / PageUp PageDown"].includes(k));
    const rows = shown.map(([k, v]) => `<tr><td><kbd>${k}</kbd></td><td>${v}</td></tr>`).join("");
    return `<div class="bc-help-box"><b>Keyboard and mouse</b><table>${rows}</table>` +
           `<div class="bc-note">Esc or ? closes this.</div></div>`;
  }

  function build(slot) {
    const d = slot.dataset;
    const w = parseInt(d.w, 10), h = parseInt(d.h, 10);
    const slices = parseInt(d.slices || "0", 10);
    const state = V = {
      nonce: d.nonce, w, h, ow: parseInt(d.ow || d.w, 10), oh: parseInt(d.oh || d.h, 10), ai: d.ai === "1",
      idleMs: 1000 * parseFloat(d.idle || "60"), idle: false, last: performance.now(), slices,
      slice: slices > 1 ? parseInt(d.slice || "0", 10) : null, prevSlice: null, lastActed: null, dir: 1,
      zoom: 1, tx: 0, ty: 0, fitted: true, tool: d.ai === "1" ? "point" : "pan", positive: true, radius: 8,
      overlayOn: true, fill: false, pixels: null, wc: null, ww: null, invert: false, userWindow: false,
      userInvert: false, presetName: "", pix: new Map(), layers: new Map(), layer: null, localClicks: new Map(),
      measures: new Map(), drag: null, cursor: null, spaceHeld: false, version: 0, queue: Promise.resolve(),
      slicePending: null, sliceBusy: false, sliceSync: Promise.resolve(), serverSlice: null, noPixels: false,
      drawnMarkers: [], wheelAcc: 0, layerCtrl: null, layerTimer: 0, cleanupLocal: false, marked: new Set(), accepted: new Set(),
    };
    state.serverSlice = state.slice;
    initObjects(state, d);
    slot.innerHTML = "";
    for (const row of buildToolbar(state)) slot.appendChild(row);
    const stage = buildStage(state);
    slot.appendChild(state.ai ? el("div", {class: "bc-main"}, [stage, buildObjectPanel(state)]) : stage);
    wire(state);
    updatePresets(state);
    setTool(state, state.tool);
    showSliceLabel(state);
    for (const k of (d.marked || "").split(",").filter(Boolean)) noteSliceMask(state, parseInt(k, 10), true);
    applyOverlayStyle(state);
    sizeStage(state);
    fit(state);
    firstPixels(state);
    if (state.ai) { fetchLayer(state, state.slice, performance.now()); fetchOtherLayers(state, state.slice); }
  }

  function wire(state) {
    const b = state.buttons, s = state.stage;
    b.pos.onclick = () => setMode(true);
    b.neg.onclick = () => setMode(false);
    for (const t of ["box", "brush", "eraser", "measure", "pan"]) b[t].onclick = () => setTool(state, t);
    b.undo.onclick = () => act(state, "undo");
    b.reset.onclick = () => act(state, "reset");
    b.accept.onclick = () => doAccept(state);
    b.cleanup.onclick = () => toggleCleanup(state);
    b.carry.onclick = () => carry(state);
    b.fit.onclick = () => fit(state);
    b.one.onclick = () => oneToOne(state);
    b.zin.onclick = () => zoomCentre(state, 1.25);
    b.zout.onclick = () => zoomCentre(state, 1 / 1.25);
    b.invert.onclick = () => toggleInvert(state);
    b.viewReset.onclick = () => resetView(state);
    b.overlay.onclick = () => { state.overlayOn = !state.overlayOn; applyOverlayStyle(state); };
    b.fill.onclick = () => { state.fill = !state.fill; applyOverlayStyle(state); };
    b.help.onclick = () => toggleHelp(state);
    state.win.oninput = () => setWindow(state, state.wc, +state.win.value, "");
    state.lvl.oninput = () => setWindow(state, +state.lvl.value, state.ww, "");
    state.opa.oninput = () => applyOverlayStyle(state);
    state.preset.onchange = () => applyPreset(state, +state.preset.value);
    state.sliceInput.oninput = () => showSlice(state, +state.sliceInput.value);
    state.sliceInput.onchange = () => showSlice(state, +state.sliceInput.value);
    s.addEventListener("pointerdown", (e) => onPointerDown(state, e));
    s.addEventListener("pointermove", (e) => onPointerMove(state, e));
    s.addEventListener("pointerup", (e) => onPointerUp(state, e));
    s.addEventListener("pointercancel", () => { state.drag = null; drawMarks(state); });
    s.addEventListener("pointerleave", () => { state.cursor = null; showCursorValue(state); drawMarks(state); });
    s.addEventListener("contextmenu", (e) => e.preventDefault());
    s.addEventListener("wheel", (e) => onWheel(state, e), {passive: false});
    state.help.addEventListener("pointerdown", (e) => { e.stopPropagation(); toggleHelp(state, false); });
    new ResizeObserver(() => onResize(state)).observe(s);
  }

  // ------------------------------------------------------------------ layout and the view transform
  function sizeStage(state) {
    // the stage reaches down to the bottom of the window: the whole image in view at fit, nothing cut off
    const top = state.stage.getBoundingClientRect().top + window.scrollY;
    const height = Math.max(320, Math.floor(window.innerHeight - top - 12));
    if (state.stage.style.height !== height + "px") state.stage.style.height = height + "px";
  }

  function onResize(state) {
    if (state !== V) return;
    sizeStage(state);
    const dpr = window.devicePixelRatio || 1;
    const cw = Math.round(state.stage.clientWidth * dpr), ch = Math.round(state.stage.clientHeight * dpr);
    if (state.marks.width !== cw || state.marks.height !== ch) { state.marks.width = cw; state.marks.height = ch; }
    if (state.fitted) fit(state); else applyView(state);
  }

  function fitScale(state) {
    const W = state.stage.clientWidth || 800, H = state.stage.clientHeight || 600;
    return Math.max(1e-3, Math.min(W / state.w, H / state.h));
  }

  function fit(state) {
    state = state || V;
    if (!state) return;
    const W = state.stage.clientWidth || 800, H = state.stage.clientHeight || 600;
    state.zoom = fitScale(state);
    state.tx = (W - state.w * state.zoom) / 2;
    state.ty = (H - state.h * state.zoom) / 2;
    state.fitted = true;
    applyView(state);
  }

  function zoomAround(state, zoom, sx, sy) {
    // (sx, sy) in stage px stays over the same display-grid point
    const f = fitScale(state);
    zoom = clamp(zoom, f * 0.2, Math.max(f * 40, 32));
    const px = (sx - state.tx) / state.zoom, py = (sy - state.ty) / state.zoom;
    state.zoom = zoom;
    state.tx = sx - px * zoom;
    state.ty = sy - py * zoom;
    state.fitted = false;
    applyView(state);
  }

  function zoomCentre(state, factor) {
    zoomAround(state, state.zoom * factor, state.stage.clientWidth / 2, state.stage.clientHeight / 2);
  }

  function oneToOne(state) {
    zoomAround(state, state.ow / state.w, state.stage.clientWidth / 2, state.stage.clientHeight / 2);
  }

  function setZoom(z) {  // legacy: z relative to fit, about the stage's centre
    if (V) zoomAround(V, fitScale(V) * z, V.stage.clientWidth / 2, V.stage.clientHeight / 2);
  }

  function applyView(state) {
    state.inner.style.width = state.w + "px";
    state.inner.style.height = state.h + "px";
    state.inner.style.transform = `translate(${state.tx}px, ${state.ty}px) scale(${state.zoom})`;
    const ds = state.stage.dataset;
    ds.zoom = state.zoom.toFixed(5);
    ds.tx = state.tx.toFixed(2);
    ds.ty = state.ty.toFixed(2);
    state.overlay.style.imageRendering = state.zoom > 1.5 ? "pixelated" : "auto";
    showCorners(state);
    drawMarks(state);
  }

  function stagePoint(state, e) {
    const rect = state.stage.getBoundingClientRect();
    return {sx: e.clientX - rect.left, sy: e.clientY - rect.top};
  }

  function toImage(state, sx, sy) {
    return {x: (sx - state.tx) / state.zoom, y: (sy - state.ty) / state.zoom};
  }

  function inside(state, p) {
    return p.x >= 0 && p.y >= 0 && p.x < state.w && p.y < state.h;
  }

  function clampPoint(state, p) {
    return {x: clamp(p.x, 0, state.w), y: clamp(p.y, 0, state.h)};
  }

  // ------------------------------------------------------------------ pixels: fetch, decode, cache
  function sliceQuery(k) {
    return k === null || k === undefined ? "" : `?slice=${k}`;
  }

  function pair(text) {
    const p = (text || "").split(",").map((s) => parseFloat(s));
    return p.length === 2 && p.every(Number.isFinite) ? p : null;
  }

  function sampleRange(samples) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < samples.length; i++) { const s = samples[i]; if (s < lo) lo = s; if (s > hi) hi = s; }
    return [lo === Infinity ? 0 : lo, hi === -Infinity ? 0 : hi];
  }

  function pixelRecord(state, k, samples, head) {
    const [smin, smax] = sampleRange(samples);
    const slope = head.slope, intercept = head.intercept;
    const a = smin * slope + intercept, b = smax * slope + intercept;
    return {slice: k, samples, smin, smax, slope, intercept, vmin: Math.min(a, b), vmax: Math.max(a, b),
            units: head.units, window: head.window, invert: head.invert, spacing: head.spacing,
            modality: head.modality, full: head.full};
  }

  async function fetchPixels(state, k, signal) {
    const resp = await fetch(`/api/v1/view/${state.nonce}/pixels${sliceQuery(k)}`,
                             {credentials: "same-origin", signal});
    if (resp.status === 404 || resp.status === 405) { state.noPixels = true; return basePixels(state, k, signal); }
    if (!resp.ok) throw new Error(await errorText(resp));
    const H = (n) => resp.headers.get(n) || "";
    const width = parseInt(H("X-Width"), 10), height = parseInt(H("X-Height"), 10);
    const buf = await resp.arrayBuffer();
    const Type = {int16: Int16Array, uint16: Uint16Array, uint8: Uint8Array}[H("X-Dtype")];
    if (!Type) throw new Error(`unknown pixel type ${H("X-Dtype")}`);
    if (width !== state.w || height !== state.h || buf.byteLength !== width * height * Type.BYTES_PER_ELEMENT)
      throw new Error(`the pixels (${width}×${height}) do not match the display grid (${state.w}×${state.h})`);
    return pixelRecord(state, k, new Type(buf), {
      slope: parseFloat(H("X-Slope")) || 1, intercept: parseFloat(H("X-Intercept")) || 0, units: H("X-Units"),
      window: pair(H("X-Window")), invert: H("X-Invert") === "1", spacing: pair(H("X-Spacing")),
      modality: H("X-Modality"), full: true});
  }

  async function basePixels(state, k, signal) {
    // old servers: the 8-bit windowed base.png of the slice the server shows (so wait until it shows ours)
    if (k !== null) {
      await postSlice(state, k);
      if (state.serverSlice !== k) return null;
    }
    const resp = await fetch(`/api/v1/view/${state.nonce}/base.png${sliceQuery(k)}`,
                             {credentials: "same-origin", signal});
    if (!resp.ok) throw new Error(await errorText(resp));
    const bmp = await createImageBitmap(await resp.blob());
    const scratch = scratchContext(state);
    scratch.clearRect(0, 0, state.w, state.h);
    scratch.drawImage(bmp, 0, 0);
    const d = scratch.getImageData(0, 0, state.w, state.h).data, gray = new Uint8Array(state.w * state.h);
    for (let i = 0, j = 0; j < gray.length; i += 4, j++) gray[j] = d[i];
    return pixelRecord(state, k, gray, {slope: 1, intercept: 0, units: "", window: [127.5, 255], invert: false,
                                        spacing: null, modality: "", full: false});
  }

  function scratchContext(state) {
    if (!state.scratch) {
      const c = el("canvas", {width: state.w, height: state.h});
      state.scratch = c.getContext("2d", {willReadFrequently: true});
    }
    return state.scratch;
  }

  function getPixels(state, k) {
    const key = k === null ? -1 : k;
    let entry = state.pix.get(key);
    if (entry) { state.pix.delete(key); state.pix.set(key, entry); return entry.promise; }
    const ctrl = new AbortController();
    entry = {ctrl, done: false, slice: k};
    entry.promise = (state.noPixels ? basePixels(state, k, ctrl.signal) : fetchPixels(state, k, ctrl.signal)).then(
      (rec) => { entry.done = true; if (!rec) state.pix.delete(key); return rec; },
      (err) => { state.pix.delete(key); if (err.name === "AbortError") return null; throw err; });
    state.pix.set(key, entry);
    while (state.pix.size > CACHE_SLICES) state.pix.delete(state.pix.keys().next().value);
    return entry.promise;
  }

  function dropStale(state, k) {
    // requests for slices the reader has scrolled away from are cancelled (the newest request wins)
    for (const [key, entry] of state.pix) {
      const ahead = (key - k) * state.dir;
      if (!entry.done && (ahead > AHEAD + 1 || ahead < -(BEHIND + 1))) { entry.ctrl.abort(); state.pix.delete(key); }
    }
  }

  function prefetch(state, k) {
    // the next AHEAD slices in the scrolling direction, BEHIND the other way
    if (state.noPixels || state.slices < 2) return;
    const order = [];
    for (let d = 1; d <= AHEAD; d++) order.push(k + d * state.dir);
    for (let d = 1; d <= BEHIND; d++) order.push(k - d * state.dir);
    for (const j of order) if (j >= 0 && j < state.slices) getPixels(state, j).catch(() => {});
  }

  async function firstPixels(state) {
    try {
      const rec = await getPixels(state, state.slice);
      if (state !== V || !rec) return;
      showPixels(state, rec);
      prefetch(state, state.slice);
    } catch (err) {
      state.status.textContent = "could not load the image: " + err.message;
    }
  }

  // ------------------------------------------------------------------ window/level → the base canvas
  function presetsOf(state) {
    const p = state.pixels, list = [];
    if (p && p.units === "HU") list.push(...CT_PRESETS);
    if (p && p.window) list.push({name: "default", c: p.window[0], w: p.window[1]});
    if (p) list.push({name: "full range", c: (p.vmin + p.vmax) / 2, w: Math.max(1, p.vmax - p.vmin)});
    return list;
  }

  function presetList(state) {
    return state.pixels && state.pixels.units === "HU"
      ? "window presets: 1 lung, 2 mediastinum, 3 abdomen, 4 bone, 5 brain, 6 default, 7 full range"
      : "window presets: 1 default (header), 2 full range";
  }

  function updatePresets(state) {
    const list = presetsOf(state);
    state.presetItems = list;
    const html = ['<option value="-1">W/L preset…</option>'].concat(
      list.map((p, i) => `<option value="${i}">${i + 1} ${p.name} (${fmt(p.c)}/${fmt(p.w)})</option>`));
    state.preset.innerHTML = html.join("");
    state.help.innerHTML = helpHtml(state);
  }

  function applyPreset(state, i) {
    const p = (state.presetItems || [])[i];
    if (!p) return;
    state.userWindow = true;
    setWindow(state, p.c, p.w, p.name);
    state.preset.value = "-1";
  }

  function showPixels(state, rec) {
    const first = !state.pixels;
    const unitsChanged = !state.pixels || state.pixels.units !== rec.units || state.pixels.full !== rec.full;
    state.pixels = rec;
    if (!state.userWindow || state.wc === null) {
      const def = rec.window || [(rec.vmin + rec.vmax) / 2, Math.max(1, rec.vmax - rec.vmin)];
      state.wc = def[0];
      state.ww = def[1];
      state.presetName = "default";
    }
    if (!state.userInvert) state.invert = rec.invert;
    widenSliders(state, rec);
    if (first || unitsChanged) updatePresets(state);
    renderBase(state);
    state.base.dataset.loaded = "1";
    if (rec.slice !== null) state.base.dataset.slice = String(rec.slice);
  }

  function widenSliders(state, rec) {
    // the sliders span every value seen so far (modality units); width up to twice the value range
    const span = Math.max(1, rec.vmax - rec.vmin), seen = state.slidersSet;
    state.lvl.min = String(Math.min(seen ? +state.lvl.min : Infinity, rec.vmin, state.wc));
    state.lvl.max = String(Math.max(seen ? +state.lvl.max : -Infinity, rec.vmax, state.wc));
    state.win.max = String(Math.max(seen ? +state.win.max : 0, 2 * span, state.ww));
    state.slidersSet = true;
  }

  function setWindow(state, c, w, name, later) {
    // later: drawn on the next animation frame (a drag), else at once (keys, presets, sliders)
    if (!state.pixels || !Number.isFinite(c) || !Number.isFinite(w)) return;
    state.wc = c;
    state.ww = Math.max(1e-6, w);
    state.presetName = name || "";
    state.userWindow = true;
    if (later) scheduleRender(state); else renderBase(state);
  }

  function toggleInvert(state) {
    state.invert = !state.invert;
    state.userInvert = true;
    renderBase(state);
  }

  function resetView(state) {
    state.userWindow = false;
    state.userInvert = false;
    if (state.pixels) {
      const rec = state.pixels, def = rec.window || [(rec.vmin + rec.vmax) / 2, Math.max(1, rec.vmax - rec.vmin)];
      state.wc = def[0]; state.ww = def[1]; state.presetName = "default"; state.invert = rec.invert;
      renderBase(state);
    }
    fit(state);
  }

  function scheduleRender(state) {
    if (state.renderQueued) return;
    state.renderQueued = true;
    requestAnimationFrame(() => { state.renderQueued = false; renderBase(state); });
  }

  function buildLut(rec, c, w, invert) {
    // one packed RGBA word per sample value smin..smax (little-endian: 0xAABBGGRR)
    const n = rec.smax - rec.smin + 1, lut = new Uint32Array(n), lo = c - w / 2;
    for (let i = 0; i < n; i++) {
      const v = (rec.smin + i) * rec.slope + rec.intercept;
      let g = Math.round((v - lo) / w * 255);
      g = g < 0 ? 0 : g > 255 ? 255 : g;
      if (invert) g = 255 - g;
      lut[i] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    return lut;
  }

  function renderBase(state) {
    const rec = state.pixels;
    if (!rec) return;
    const ctx = state.base.getContext("2d", {willReadFrequently: true});
    if (!state.baseImage) state.baseImage = ctx.createImageData(state.w, state.h);
    const out = new Uint32Array(state.baseImage.data.buffer), s = rec.samples, smin = rec.smin;
    const lut = buildLut(rec, state.wc, state.ww, state.invert);
    for (let i = 0; i < s.length; i++) out[i] = lut[s[i] - smin];
    ctx.putImageData(state.baseImage, 0, 0);
    const ds = state.base.dataset;
    ds.window = `${+state.wc.toFixed(3)},${+state.ww.toFixed(3)}`;
    ds.invert = state.invert ? "1" : "0";
    state.win.value = String(state.ww);
    state.lvl.value = String(state.wc);
    state.buttons.invert.classList.toggle("bc-active", state.invert);
    showCorners(state);
  }

  function valueAt(state, p) {
    const rec = state.pixels;
    if (!rec || !inside(state, p)) return null;
    const i = Math.floor(p.y) * state.w + Math.floor(p.x);
    return rec.samples[i] * rec.slope + rec.intercept;
  }

  // ------------------------------------------------------------------ corner text (DICOM-viewer style)
  function showCorners(state) {
    const c = state.corners, rec = state.pixels;
    if (!c) return;
    const slice = state.slices > 1 ? `slice ${state.slice + 1} / ${state.slices}` : "";
    c.tl.textContent = [rec && rec.modality, slice].filter(Boolean).join(" · ");
    c.tr.textContent = `zoom ${Math.round(state.zoom * 100 * state.w / state.ow)} %`;
    if (rec && state.wc !== null) {
      const u = rec.units ? ` ${rec.units}` : "";
      c.bl.textContent = `W ${fmt(state.ww)} L ${fmt(state.wc)}${u}` + (state.presetName ? ` · ${state.presetName}` : "")
        + (state.invert ? " · inverted" : "") + (rec.full ? "" : " · 8-bit");
    }
  }

  function showCursorValue(state) {
    const c = state.corners, p = state.cursor;
    if (!c) return;
    const v = p ? valueAt(state, p) : null;
    if (v === null) { c.br.textContent = ""; return; }
    const units = state.pixels.units;
    c.br.textContent = `${units ? units : "value"} ${fmt(v)}  (x ${Math.floor(p.x)}, y ${Math.floor(p.y)})`;
  }

  // ------------------------------------------------------------------ volumes: one axial slice at a time
  function showSliceLabel(state) {
    if (state.slices > 1) state.sliceLabel.textContent = `${state.slice + 1} / ${state.slices}`;
  }

  function showSlice(state, index, t0) {
    if (!state || state.slices < 2) return;
    index = clamp(Math.round(index), 0, state.slices - 1);
    if (index === state.slice) return;
    t0 = t0 === undefined ? performance.now() : t0;
    state.dir = index > state.slice ? 1 : -1;
    state.prevSlice = state.slice;
    state.slice = index;
    state.sliceInput.value = String(index);
    showSliceLabel(state);
    showCorners(state);
    touch();
    postSlice(state, index);
    drawSlice(state, index, t0);
  }

  async function drawSlice(state, k, t0) {
    dropStale(state, k);
    showLayerFor(state, k);
    const known = state.pix.get(k), cached = !!(known && known.done);  // prefetched and decoded already
    let rec;
    try {
      rec = await getPixels(state, k);
    } catch (err) {
      if (state.slice === k) state.status.textContent = "could not load the slice: " + err.message;
      return;
    }
    if (state !== V || state.slice !== k || !rec) return;
    showPixels(state, rec);
    requestAnimationFrame(() => {
      stats.push({kind: "slice", slice: k, t0, painted_ms: performance.now() - t0, cached});
    });
    prefetch(state, k);
  }

  function postSlice(state, k) {
    // records slice_shown: at most one request in flight, the newest wanted slice sent next (others dropped)
    state.slicePending = k;
    if (!state.sliceBusy) state.sliceSync = runSliceSync(state);
    return state.sliceSync;
  }

  async function runSliceSync(state) {
    state.sliceBusy = true;
    try {
      while (state.slicePending !== null) {
        const k = state.slicePending;
        state.slicePending = null;
        if (k === state.serverSlice && state.sliceSent) continue;
        const r = await post("/api/v1/slice", {nonce: state.nonce, index: k});
        if (!r.ok) { await failed(state, r); continue; }
        state.serverSlice = (await r.json()).slice;
        state.sliceSent = true;
      }
    } catch (err) {
      state.status.textContent = "could not record the slice: " + err.message;
    } finally {
      state.sliceBusy = false;
    }
  }

  // ------------------------------------------------------------------ mask layers: decode once, outline once
  function outlineFromRuns(runs, n, w, h) {
    // the mask's boundary along pixel edges (display grid) from its row runs (y, x0, x1 triples, rows ascending):
    // between rows y-1 and y the horizontal edges are where exactly one of them is covered, i.e. between the
    // consecutive edge positions left after those the two rows share cancel; a shared position continues a
    // vertical edge, one of the upper row only ends it, one of the lower row only starts it
    const path = new Path2D(), open = new Int32Array(w + 1).fill(-1);
    let prev = [], i = 0;
    for (let y = 0; y <= h; y++) {
      const cur = [];
      while (i < n && runs[3 * i] === y) { cur.push(runs[3 * i + 1], runs[3 * i + 2]); i++; }
      const odd = [];
      let a = 0, b = 0;
      while (a < prev.length || b < cur.length) {
        if (b >= cur.length || (a < prev.length && prev[a] < cur[b])) {
          const x = prev[a++];
          path.moveTo(x, open[x]); path.lineTo(x, y); open[x] = -1;
          odd.push(x);
        } else if (a >= prev.length || cur[b] < prev[a]) {
          const x = cur[b++];
          open[x] = y;
          odd.push(x);
        } else { a++; b++; }
      }
      for (let k = 0; k + 1 < odd.length; k += 2) { path.moveTo(odd[k], y); path.lineTo(odd[k + 1], y); }
      prev = cur;
    }
    return path;
  }

  function parsePrompts(text) {
    if (!text) return null;
    try {
      const p = JSON.parse(text);
      return {clicks: Array.isArray(p.clicks) ? p.clicks : [], box: Array.isArray(p.box) ? p.box : null,
              edits: +p.edits || 0, cleanup: p.cleanup || null, source: p.source || ""};
    } catch (err) {
      return null;
    }
  }

  function layerQuery(k, objectId) {
    const q = new URLSearchParams();
    if (k !== null && k !== undefined) q.set("slice", String(k));
    if (objectId) q.set("object", String(objectId));
    const text = q.toString();
    return text ? "?" + text : "";
  }

  async function decodeLayer(state, resp, slice, rgbColour) {
    // the runs, area and outline now; the fill canvas only when first drawn (layerCanvas)
    const runs = new Uint16Array(await resp.arrayBuffer());
    const w = runs[0], h = runs[1], n = (runs.length - 2) / 3, triples = runs.subarray(2);
    const objectId = parseInt(resp.headers.get("X-Object") || "0", 10) || 0;
    const c = rgbColour || (state.objects.get(objectId) || {colour: MASK_RGB}).colour;
    let area = 0;
    for (let i = 0; i < n; i++) area += triples[3 * i + 2] - triples[3 * i + 1];
    const H = (n) => resp.headers.get(n);
    const headerSlice = H("X-Slice");
    const clicks = parseInt(H("X-Clicks") || "0", 10) || 0;
    return {runs: triples, w, h, canvas: null, area, path: outlineFromRuns(triples, n, w, h), clicks,
            object: objectId, colour: c,
            slice: headerSlice !== null && headerSlice !== "" ? parseInt(headerSlice, 10) : slice,
            prompts: parsePrompts(H("X-Prompts")), server: parseFloat(H("X-Server-Ms") || "0"),
            model: parseFloat(H("X-Model-Ms") || "0"), cpu: parseFloat(H("X-Server-Cpu-Ms") || "0")};
  }

  function layerCanvas(layer) {
    // the mask's fill in its colour, built once from the runs
    if (layer.canvas) return layer.canvas;
    const {w, h, runs} = layer, n = runs.length / 3, c = layer.colour;
    const image = new ImageData(w, h), px = new Uint32Array(image.data.buffer);
    const colour = (255 << 24 | c[2] << 16 | c[1] << 8 | c[0]) >>> 0;  // RGBA bytes, little-endian
    for (let i = 0; i < n; i++) {
      const row = runs[3 * i] * w;
      px.fill(colour, row + runs[3 * i + 1], row + runs[3 * i + 2]);
    }
    layer.canvas = document.createElement("canvas");
    layer.canvas.width = w;
    layer.canvas.height = h;
    layer.canvas.getContext("2d").putImageData(image, 0, 0);
    return layer.canvas;
  }

  function promptsOf(state, layer) {
    // the server's prompts (X-Prompts); older servers: the clicks this page sent, cut to X-Clicks
    if (layer.prompts) return layer.prompts;
    const local = state.localClicks.get(layer.slice === null ? -1 : layer.slice) || [];
    local.length = Math.min(local.length, layer.clicks);
    return {clicks: local.slice(), box: null, edits: 0, cleanup: state.cleanupLocal ? CLEANUP : null, source: ""};
  }

  function noteSliceMask(state, slice, kept) {
    // the slices whose mask the answer keeps (reader's prompt, edits or accept): ticks under the slice slider
    if (slice === null || state.slices < 2) return;
    if (kept) state.marked.add(slice); else state.marked.delete(slice);
    const ctx = state.ticks.getContext("2d"), W = state.ticks.width;
    ctx.clearRect(0, 0, W, state.ticks.height);
    ctx.fillStyle = OUTLINE;
    for (const k of state.marked) ctx.fillRect(Math.round(k / Math.max(1, state.slices - 1) * (W - 2)), 0, 2, 4);
    state.ticks.dataset.slices = [...state.marked].sort((a, b) => a - b).join(",");
  }

  function readerKept(prompts) {
    return !!(prompts && (prompts.clicks.length || prompts.box || prompts.edits || prompts.cleanup ||
                          prompts.source === "reader" || prompts.source === "carried"));
  }

  function applyLayer(state, layer) {
    state.layer = layer;
    state.prompts = promptsOf(state, layer);
    redrawOverlay(state);
    state.overlay.dataset.clicks = String(layer.clicks);
    drawMarks(state);
    updateStatus(state);
    renderObjects(state);
  }

  function otherLayers(state) {
    // the layers of the slice shown of every object but the active one
    return [...state.objects.values()].filter((o) => o.id !== state.active && o.layer &&
                                                     (state.slices < 2 || o.layer.slice === state.slice))
      .map((o) => o.layer);
  }

  function redrawOverlay(state) {
    // the fill of every object's mask, the active one's on top. In outline mode the fill is not seen (opacity 0):
    // a fill not built yet is drawn after the frame that paints the outline, off the click's critical path
    const layers = [...otherLayers(state), state.layer].filter(Boolean);
    if (state.fill || layers.every((layer) => layer.canvas)) { drawFills(state, layers); return; }
    if (state.fillPending) return;
    state.fillPending = true;
    requestAnimationFrame(() => setTimeout(() => flushFill(state), 0));
  }

  function flushFill(state) {
    if (!state.fillPending) return;
    state.fillPending = false;
    drawFills(state, [...otherLayers(state), state.layer].filter(Boolean));
  }

  function drawFills(state, layers) {
    state.fillPending = false;
    const ctx = state.overlay.getContext("2d");
    ctx.clearRect(0, 0, state.w, state.h);
    for (const layer of layers) ctx.drawImage(layerCanvas(layer), 0, 0);
  }

  function clearLayer(state) {
    state.layer = null;
    state.prompts = null;
    redrawOverlay(state);
    drawMarks(state);
  }

  function rememberLayer(state, layer) {
    if (layer.slice === null) return;
    state.layers.delete(layer.slice);
    state.layers.set(layer.slice, layer);
    while (state.layers.size > 24) state.layers.delete(state.layers.keys().next().value);
  }

  function showLayerFor(state, k) {
    if (!state.ai) return;
    clearTimeout(state.layerTimer);
    if (state.layerCtrl) { state.layerCtrl.abort(); state.layerCtrl = null; }
    fetchOtherLayers(state, k);
    const cached = state.layers.get(k);
    if (cached) { applyLayer(state, cached); return; }
    clearLayer(state);
    state.status.textContent = "AI mask of this slice: computing…";
    state.layerTimer = setTimeout(() => { if (state.slice === k) fetchLayer(state, k, performance.now()); },
                                  LAYER_SETTLE_MS);
  }

  async function fetchLayer(state, k, t0) {
    const ctrl = new AbortController(), version = state.version;
    if (k !== null) state.layerCtrl = ctrl;
    try {
      if (k !== null) {
        await state.sliceSync;  // older servers answer the slice they show
        if (state.serverSlice !== k && state.noPixels) return;
      }
      const r = await fetch(`/api/v1/view/${state.nonce}/layer.png${layerQuery(k, state.active)}`,
                            {credentials: "same-origin", signal: ctrl.signal, headers: {"Accept": ACCEPT}});
      await paint(state, r, t0, "layer", {slice: k, version});
    } catch (err) {
      if (err.name !== "AbortError") state.status.textContent = "could not load the mask: " + err.message;
    }
  }

  async function paint(state, resp, t0, kind, opts) {
    const tResp = performance.now();
    if (!resp.ok) { await failed(state, resp); return false; }
    const layer = await decodeLayer(state, resp, opts.slice === undefined ? state.slice : opts.slice);
    if (state !== V) return false; // the case changed meanwhile
    const owner = state.objects.get(layer.object);
    if (owner) owner.server = true;  // the server knows the object now (its first action was recorded)
    if (layer.object !== state.active) {  // the reader picked another object meanwhile: it is one of the others now
      if (owner && (state.slices < 2 || layer.slice === state.slice)) { owner.layer = layer; redrawOverlay(state); }
      drawMarks(state);
      renderObjects(state);
      return true;
    }
    const outdated = opts.version !== undefined && opts.version !== state.version; // an action came after it
    if (!outdated) rememberLayer(state, layer);
    const current = !outdated && (state.slices < 2 || layer.slice === state.slice);
    if (current) applyLayer(state, layer);
    if (kind !== "layer") { state.lastActed = layer.slice; state.pendingStroke = null; }
    if (!outdated && (kind !== "layer" || state.marked.has(layer.slice) || readerKept(layer.prompts)))
      noteSliceMask(state, layer.slice, readerKept(promptsOf(state, layer)) || state.accepted.has(layer.slice));
    const tDrawn = performance.now();
    requestAnimationFrame(() => {
      const tPaint = performance.now();
      stats.push({kind, t0, slice: layer.slice, response_ms: tResp - t0, drawn_ms: tDrawn - t0,
                  painted_ms: tPaint - t0, server_ms: layer.server, model_ms: layer.model, server_cpu_ms: layer.cpu,
                  clicks: layer.clicks, markers: current ? state.drawnMarkers.length : null, shown: current});
      if (current) updateStatus(state, Math.round(tPaint - t0));
      setTimeout(() => {  // after this frame: the (unseen) fill too, then the mark that all of it is drawn
        flushFill(state);
        state.overlay.dataset.painted = String(stats.length);
      }, 0);
    });
    return true;
  }

  async function errorText(resp) {
    let msg = `${resp.status}`;
    try { const j = await resp.json(); msg = j.error || j.detail || msg; } catch (e) { /* not JSON */ }
    return typeof msg === "string" ? msg : JSON.stringify(msg);
  }

  async function failed(state, resp) {
    const msg = await errorText(resp);
    state.status.textContent = resp.status === 404 ? `not available on this server (${msg})` : msg;
    if (resp.status === 409 && state === V) stale(msg);
  }

  function updateStatus(state, ms) {
    if (!state.ai) return;
    const tool = state.tool === "point" ? (state.positive ? "positive" : "negative") + " mode"
      : `${TOOL_NAMES[state.tool]} tool` + (state.tool === "brush" || state.tool === "eraser" ? ` r=${state.radius}` : "");
    const parts = [tool];
    const o = activeObject(state);
    if (state.objects.size > 1 || o.id !== 0) parts.push(`object: ${o.label === null ? "annotation" : o.label}`);
    if (state.layer) parts.push(`${state.layer.clicks} click(s)`);
    if (ms !== undefined) parts.push(`${ms} ms`);
    const p = state.prompts;
    if (p && p.cleanup) parts.push(`clean-up on (islands < ${p.cleanup.min_island_px} px, holes filled)`);
    if (p && p.source === "carried") parts.push("carried prompts");
    state.status.textContent = parts.join(" · ");
    state.buttons.cleanup.classList.toggle("bc-active", !!(p && p.cleanup));
  }

  function applyOverlayStyle(state) {
    const b = state.buttons;
    if (state.fill) flushFill(state);
    state.overlay.style.opacity = state.overlayOn && state.fill ? String(state.opa.value / 100) : "0";
    b.fill.textContent = state.fill ? "Fill" : "Outline";
    b.fill.classList.toggle("bc-active", state.fill);
    b.overlay.classList.toggle("bc-active", state.overlayOn);
    drawMarks(state);
  }

  // ------------------------------------------------------------------ the marks canvas (screen resolution)
  function drawMarks(state) {
    if (!state.marks) return;
    const ctx = state.marks.getContext("2d"), dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, state.marks.width, state.marks.height);
    if (state.overlayOn && !state.fill) {
      ctx.setTransform(dpr * state.zoom, 0, 0, dpr * state.zoom, dpr * state.tx, dpr * state.ty);
      for (const layer of [...otherLayers(state), state.layer].filter(Boolean)) {
        ctx.strokeStyle = layer === state.layer ? rgb(activeObject(state).colour) : rgb(layer.colour || MASK_RGB);
        ctx.lineWidth = (layer === state.layer ? 1.5 : 1.2) / state.zoom;
        ctx.stroke(layer.path);
      }
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    drawPrompts(state, ctx);
    drawMeasures(state, ctx);
    drawGesture(state, ctx);
  }

  function screenOf(state, x, y) {
    return [state.tx + x * state.zoom, state.ty + y * state.zoom];
  }

  function drawPrompts(state, ctx) {
    const p = state.prompts, drawn = [];
    if (p && p.box && state.overlayOn) {
      const [x0, y0] = screenOf(state, p.box[0], p.box[1]), [x1, y1] = screenOf(state, p.box[2], p.box[3]);
      ctx.setLineDash([6, 4]);
      ctx.strokeStyle = BOX_COLOR;
      ctx.lineWidth = 1.5;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
      ctx.setLineDash([]);
    }
    const clicks = p ? p.clicks : [];
    ctx.font = "bold 10px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    clicks.forEach((c, i) => {
      const [sx, sy] = screenOf(state, c[0], c[1]), last = i === clicks.length - 1, positive = !!c[2];
      if (last) { ctx.beginPath(); ctx.arc(sx, sy, MARKER_R + 3, 0, 2 * Math.PI); ctx.strokeStyle = LAST_RING;
                  ctx.lineWidth = 2.5; ctx.stroke(); }
      ctx.beginPath();
      ctx.arc(sx, sy, MARKER_R, 0, 2 * Math.PI);
      ctx.fillStyle = positive ? POS_COLOR : NEG_COLOR;
      ctx.fill();
      ctx.lineWidth = 1;
      ctx.strokeStyle = "#000";
      ctx.stroke();
      ctx.fillStyle = "#fff";
      ctx.fillText(String(i + 1), sx, sy + 0.5);
      drawn.push({n: i + 1, x: c[0], y: c[1], positive, last, sx, sy});
    });
    state.drawnMarkers = drawn;
    state.overlay.dataset.markers = String(drawn.length);
    state.overlay.dataset.lastMarker = drawn.length ? String(drawn.length) : "";
  }

  function measureLabel(state, m) {
    return m.mm !== null && m.mm !== undefined ? `${m.mm.toFixed(1)} mm` : `${m.px.toFixed(1)} px`;
  }

  function drawLine(state, ctx, m, color) {
    const [x0, y0] = screenOf(state, m.x0, m.y0), [x1, y1] = screenOf(state, m.x1, m.y1);
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
    for (const [x, y] of [[x0, y0], [x1, y1]]) { ctx.beginPath(); ctx.arc(x, y, 3, 0, 2 * Math.PI); ctx.stroke(); }
    ctx.font = "12px system-ui, sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "bottom";
    ctx.fillStyle = color;
    ctx.fillText(measureLabel(state, m), x1 + 6, y1 - 4);
  }

  function drawMeasures(state, ctx) {
    for (const m of state.measures.get(sliceKey(state)) || []) drawLine(state, ctx, m, MEASURE_COLOR);
  }

  function drawGesture(state, ctx) {
    const g = state.drag;
    if (g && g.kind === "box" && g.p1) {
      const [x0, y0] = screenOf(state, g.p0.x, g.p0.y), [x1, y1] = screenOf(state, g.p1.x, g.p1.y);
      ctx.setLineDash([6, 4]); ctx.strokeStyle = BOX_COLOR; ctx.lineWidth = 1.5;
      ctx.strokeRect(x0, y0, x1 - x0, y1 - y0); ctx.setLineDash([]);
    }
    if (g && g.kind === "measure" && g.p1) drawLine(state, ctx, measureOf(state, g.p0, g.p1), MEASURE_COLOR);
    const stroke = g && g.kind === "stroke" ? g : state.pendingStroke;
    if (stroke) drawStroke(state, ctx, stroke);
    if ((state.tool === "brush" || state.tool === "eraser") && state.cursor) {
      const [sx, sy] = screenOf(state, state.cursor.x, state.cursor.y);
      ctx.beginPath(); ctx.arc(sx, sy, state.radius * state.zoom, 0, 2 * Math.PI);
      ctx.strokeStyle = state.tool === "eraser" ? NEG_COLOR : "#fff"; ctx.lineWidth = 1; ctx.stroke();
    }
  }

  function drawStroke(state, ctx, g) {
    ctx.save();
    ctx.globalAlpha = 0.45;
    ctx.strokeStyle = g.erase ? NEG_COLOR : OUTLINE;
    ctx.lineCap = ctx.lineJoin = "round";
    ctx.lineWidth = 2 * g.radius * state.zoom;
    ctx.beginPath();
    g.points.forEach((p, i) => { const [x, y] = screenOf(state, p.x, p.y); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
    if (g.points.length === 1) { const [x, y] = screenOf(state, g.points[0].x, g.points[0].y); ctx.lineTo(x + 0.01, y); }
    ctx.stroke();
    ctx.restore();
  }

  function scheduleMarks(state) {
    if (state.marksQueued) return;
    state.marksQueued = true;
    requestAnimationFrame(() => { state.marksQueued = false; drawMarks(state); showCursorValue(state); });
  }

  // ------------------------------------------------------------------ tools and pointer gestures
  function setTool(state, tool) {
    if (!state) return;
    if (!state.ai && !["measure", "pan"].includes(tool)) tool = "pan";
    state.tool = tool;
    const b = state.buttons;
    b.pos.classList.toggle("bc-active", tool === "point" && state.positive);
    b.neg.classList.toggle("bc-active", tool === "point" && !state.positive);
    for (const t of ["box", "brush", "eraser", "measure", "pan"]) b[t].classList.toggle("bc-active", tool === t);
    state.stage.dataset.tool = tool;
    state.stage.style.cursor = {point: state.positive ? "crosshair" : "cell", pan: "grab", brush: "none",
                                eraser: "none"}[tool] || "crosshair";
    updateStatus(state);
    drawMarks(state);
  }

  function setMode(positive) {
    if (!V) return;
    V.positive = positive;
    setTool(V, "point");
  }

  function sliceKey(state) {
    return state.slice === null ? -1 : state.slice;
  }

  function onPointerDown(state, e) {
    state.stage.focus({preventScroll: true});
    const {sx, sy} = stagePoint(state, e), p = toImage(state, sx, sy);
    if (e.button === 1 || (e.button === 0 && (state.spaceHeld || state.tool === "pan"))) {
      startDrag(state, e, "pan", p);
    } else if (e.button === 2) {
      startDrag(state, e, "right", p);
    } else if (e.button === 0 && state.tool === "point") {
      if (state.ai && inside(state, p)) sendClick(state, p, state.positive, performance.now());
    } else if (e.button === 0 && state.ai && ["box", "brush", "eraser"].includes(state.tool) && inside(state, p)) {
      startDrag(state, e, state.tool === "box" ? "box" : "stroke", p);
    } else if (e.button === 0 && state.tool === "measure" && inside(state, p)) {
      startDrag(state, e, "measure", p);
    }
    e.preventDefault();
  }

  function startDrag(state, e, kind, p) {
    state.drag = {kind, id: e.pointerId, cx: e.clientX, cy: e.clientY, p0: p, p1: null, moved: false,
                  tx: state.tx, ty: state.ty, wc: state.wc, ww: state.ww, points: [p], radius: state.radius,
                  erase: state.tool === "eraser"};
    try { state.stage.setPointerCapture(e.pointerId); } catch (err) { /* synthetic pointer */ }
    if (kind === "pan") state.stage.style.cursor = "grabbing";
    drawMarks(state);
  }

  function onPointerMove(state, e) {
    const {sx, sy} = stagePoint(state, e), p = toImage(state, sx, sy), g = state.drag;
    state.cursor = p;
    if (g) {
      const dx = e.clientX - g.cx, dy = e.clientY - g.cy;
      if (!g.moved && Math.hypot(dx, dy) > 3) g.moved = true;
      if (g.kind === "pan") { state.tx = g.tx + dx; state.ty = g.ty + dy; state.fitted = false; applyView(state); }
      else if (g.kind === "right" && g.moved) dragWindow(state, g, dx, dy);
      else if (g.kind === "box" || g.kind === "measure") g.p1 = clampPoint(state, p);
      else if (g.kind === "stroke") addStrokePoint(state, g, clampPoint(state, p));
    }
    scheduleMarks(state);
  }

  function dragWindow(state, g, dx, dy) {
    // like OHIF: horizontal = window width, vertical = level (down: higher level, darker image)
    const rec = state.pixels;
    if (!rec || g.wc === null) return;
    const perPx = Math.max(rec.vmax - rec.vmin, 1) / 500;
    setWindow(state, g.wc + dy * perPx, Math.max(perPx, g.ww + dx * perPx), "", true);
  }

  function addStrokePoint(state, g, p) {
    const last = g.points[g.points.length - 1];
    if (Math.hypot(p.x - last.x, p.y - last.y) >= Math.max(0.5, g.radius / 4)) g.points.push(p);
  }

  function onPointerUp(state, e) {
    const g = state.drag;
    if (!g) return;
    state.drag = null;
    const {sx, sy} = stagePoint(state, e), p = clampPoint(state, toImage(state, sx, sy));
    if (g.kind === "pan") setTool(state, state.tool);
    else if (g.kind === "right" && !g.moved && state.ai && ["point", "box"].includes(state.tool) && inside(state, g.p0))
      sendClick(state, g.p0, !state.positive, performance.now());  // right-click: the other polarity
    else if (g.kind === "box") finishBox(state, g.p0, p);
    else if (g.kind === "measure") finishMeasure(state, g.p0, p);
    else if (g.kind === "stroke") { addStrokePoint(state, g, p); sendStroke(state, g); }
    drawMarks(state);
  }

  function onWheel(state, e) {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 33 : e.deltaMode === 2 ? 300 : 1, dy = e.deltaY * unit;
    if (state.slices > 1 && !e.ctrlKey && !e.metaKey) {  // PACS: the wheel scrolls slices, Ctrl+wheel zooms
      state.wheelAcc += dy;
      if (Math.abs(state.wheelAcc) < 25) return;
      const steps = Math.sign(state.wheelAcc) * Math.max(1, Math.round(Math.abs(state.wheelAcc) / 100));
      state.wheelAcc = 0;
      showSlice(state, state.slice + steps, performance.now());
      return;
    }
    const {sx, sy} = stagePoint(state, e);
    zoomAround(state, state.zoom * Math.exp(-dy * 0.0015), sx, sy);
  }

  // ------------------------------------------------------------------ server actions (one queue per view)
  function bodyFor(state, extra) {
    return Object.assign({nonce: state.nonce}, state.slices > 1 ? {slice: state.slice} : {}, objectRef(state),
                         extra || {});
  }

  function enqueue(state, fn) {
    state.queue = state.queue.then(() => state.sliceSync).then(fn).catch((err) => {
      state.status.textContent = "request failed: " + err.message;
    });
    return state.queue;
  }

  function layerAction(state, route, extra, kind, t0, before) {
    // a mask-changing request: answered by the slice's layer (painted unless the slice changed meanwhile)
    if (!state.ai) return;
    t0 = t0 === undefined ? performance.now() : t0;
    const body = bodyFor(state, extra), slice = state.slice;
    state.version++;
    touch();
    return enqueue(state, async () => {
      const r = await post(`/api/v1/${route}`, body);
      if (r.ok && before) before(r);
      await paint(state, r, t0, kind, {slice});
    });
  }

  function sendClick(state, p, positive, t0) {
    const key = sliceKey(state);
    layerAction(state, "click", {x: p.x, y: p.y, positive}, "click", t0, (r) => {
      if (r.headers.get("X-Prompts")) return;
      const list = state.localClicks.get(key) || [];
      list.push([p.x, p.y, positive ? 1 : 0]);
      state.localClicks.set(key, list);
    });
  }

  function act(state, what) {
    layerAction(state, what, {}, what);
  }

  function finishBox(state, a, b) {
    const x0 = Math.min(a.x, b.x), x1 = Math.max(a.x, b.x), y0 = Math.min(a.y, b.y), y1 = Math.max(a.y, b.y);
    if (x1 - x0 < 2 || y1 - y0 < 2) { state.status.textContent = "drag a larger box"; return; }
    layerAction(state, "box", {x0, y0, x1, y1}, "box", performance.now(), (r) => {
      if (!r.headers.get("X-Prompts")) state.localClicks.set(sliceKey(state), []);
    });
  }

  function sendStroke(state, g) {
    const every = Math.ceil(g.points.length / MAX_STROKE_POINTS);  // the server takes at most 2000 points
    const kept = g.points.filter((p, i) => i % every === 0 || i === g.points.length - 1);
    const points = kept.map((p) => [+p.x.toFixed(2), +p.y.toFixed(2)]);
    state.pendingStroke = {points: g.points, radius: g.radius, erase: g.erase};
    layerAction(state, "stroke", {points, radius: g.radius, erase: g.erase}, "stroke", performance.now());
    state.queue.then(() => { state.pendingStroke = null; drawMarks(state); });
  }

  function toggleCleanup(state) {
    const on = !(state.prompts && state.prompts.cleanup);
    state.cleanupLocal = on;
    layerAction(state, "cleanup", on ? CLEANUP : {min_island_px: 0, fill_holes: false}, "cleanup");
  }

  function hasPrompt(state, k) {
    const layer = state.layers.get(k), p = layer && promptsOf(state, layer);
    return !!(p && (p.box || p.clicks.length));
  }

  function carrySource(state) {
    // the slice just left or last acted on, if it holds a prompt; else the nearest slice seen with one
    const here = state.slice;
    for (const k of [state.prevSlice, state.lastActed]) if (k !== null && k !== here && hasPrompt(state, k)) return k;
    let best = null;
    for (const k of state.layers.keys()) {
      if (k !== here && hasPrompt(state, k) && (best === null || Math.abs(k - here) < Math.abs(best - here))) best = k;
    }
    return best !== null ? best : state.prevSlice;
  }

  function carry(state) {
    if (state.slices < 2) return;
    const from = carrySource(state);
    if (from === null || from === state.slice) { state.status.textContent = "no previous slice to carry from"; return; }
    layerAction(state, "carry", {from, to: state.slice}, "carry");
  }

  function doAccept(state) {
    if (!state.ai) return;
    touch();
    const body = bodyFor(state);
    enqueue(state, async () => {
      const r = await post("/api/v1/accept", body);
      state.status.textContent = r.ok ? "mask accepted" + (body.slice !== undefined ? ` (slice ${body.slice + 1})` : "")
        : "accept failed: " + await errorText(r);
      if (r.ok) state.lastActed = body.slice === undefined ? null : body.slice;
      if (r.ok && body.slice !== undefined) { state.accepted.add(body.slice); noteSliceMask(state, body.slice, true); }
    });
  }

  function measureOf(state, a, b) {
    // px: the length on the original grid (what the server logs); mm from the display pixel's spacing
    const px = Math.hypot((b.x - a.x) * state.ow / state.w, (b.y - a.y) * state.oh / state.h);
    const sp = state.pixels && state.pixels.spacing;
    const mm = sp ? Math.hypot((b.x - a.x) * sp[1], (b.y - a.y) * sp[0]) : null;
    return {x0: a.x, y0: a.y, x1: b.x, y1: b.y, px, mm};
  }

  function finishMeasure(state, a, b) {
    const m = measureOf(state, a, b);
    if (Math.hypot(m.x1 - m.x0, m.y1 - m.y0) < 2) return;
    const key = sliceKey(state), list = state.measures.get(key) || [];
    list.push(m);
    state.measures.set(key, list);
    drawMarks(state);
    post("/api/v1/measure", bodyFor(state, {x0: m.x0, y0: m.y0, x1: m.x1, y1: m.y1})).then(async (r) => {
      if (!r.ok) return;
      const j = await r.json();
      if (typeof j.mm === "number") m.mm = j.mm;
      if (typeof j.px === "number") m.px = j.px;  // original-grid pixels
      state.overlay.dataset.measured = String((+state.overlay.dataset.measured || 0) + 1);
      drawMarks(state);
    }).catch(() => {});
  }

  function removeMeasure(state) {
    const list = state.measures.get(sliceKey(state));
    if (list && list.length) { list.pop(); drawMarks(state); }
  }

  function toggleHelp(state, show) {
    const hidden = state.help.classList.contains("bc-hidden");
    state.help.classList.toggle("bc-hidden", show === undefined ? !hidden : !show);
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

  // ------------------------------------------------------------------ keyboard shortcuts (listed in the help overlay)
  function viewerKeys(state) {
    const slices = state.slices > 1;
    return {
      p: () => setMode(true), n: () => setMode(false), t: () => setMode(!state.positive),
      b: () => setTool(state, "box"), d: () => setTool(state, "brush"), e: () => setTool(state, "eraser"),
      m: () => setTool(state, "measure"), h: () => setTool(state, "pan"),
      u: () => act(state, "undo"), r: () => act(state, "reset"), a: () => doAccept(state),
      c: () => toggleCleanup(state), k: () => carry(state), l: () => newObject(state),
      o: () => { state.overlayOn = !state.overlayOn; applyOverlayStyle(state); },
      f: () => { state.fill = !state.fill; applyOverlayStyle(state); },
      i: () => toggleInvert(state), escape: () => (state.help.classList.contains("bc-hidden") ? resetView(state)
                                                                                               : toggleHelp(state, false)),
      "?": () => toggleHelp(state), "+": () => zoomCentre(state, 1.25), "=": () => zoomCentre(state, 1.25),
      "-": () => zoomCentre(state, 1 / 1.25), "0": () => fit(state), z: () => oneToOne(state),
      "[": () => setRadius(state, state.radius / 1.25), "]": () => setRadius(state, state.radius * 1.25),
      delete: () => removeMeasure(state), backspace: () => removeMeasure(state),
      j: () => { if (A && !A.study) answerAction(A, "skip"); },
      ...(slices ? {arrowup: () => showSlice(state, state.slice + 1), arrowdown: () => showSlice(state, state.slice - 1),
                    pageup: () => showSlice(state, state.slice + 10), pagedown: () => showSlice(state, state.slice - 10)}
               : {}),
    };
  }

  function setRadius(state, r) {
    state.radius = clamp(Math.round(r * 10) / 10, 1, 200);
    updateStatus(state);
    drawMarks(state);
  }

  function inViewer(target) {
    return !target || target === document.body || (target.closest && target.closest(".bc-slot"));
  }

  document.addEventListener("keydown", (e) => {
    const tag = (e.target && e.target.tagName) || "";
    if (["INPUT", "TEXTAREA", "SELECT"].includes(tag) && e.target.type !== "range" && e.target.type !== "checkbox") return;
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") { if (A) answerAction(A, "submit"); e.preventDefault(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) { if ((e.ctrlKey || e.metaKey) && e.key === "z" && V) { act(V, "undo"); e.preventDefault(); } return; }
    if (!V) return;
    if (e.key === " " && inViewer(e.target)) { V.spaceHeld = true; V.stage.style.cursor = "grab"; e.preventDefault(); return; }
    const k = e.key.toLowerCase();
    if (tag === "INPUT" && k.startsWith("arrow")) return;  // a focused slider keeps its own arrow keys
    const digit = /^[1-9]$/.test(k) ? +k - 1 : -1;
    const handled = digit >= 0 ? () => applyPreset(V, digit) : viewerKeys(V)[k];
    if (handled) { handled(); e.preventDefault(); }
  });
  document.addEventListener("keyup", (e) => {
    if (e.key === " " && V) { V.spaceHeld = false; setTool(V, V.tool); }
  });

  // ------------------------------------------------------------------ reading-room theme: Gradio kept in dark mode
  function keepDark() {
    if (document.body && !document.body.classList.contains("dark")) document.body.classList.add("dark");
  }

  // ------------------------------------------------------------------ (re)build when Gradio renders a new case
  function scan() {
    keepDark();
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
  document.addEventListener("DOMContentLoaded", () => {
    scan();
    new MutationObserver(keepDark).observe(document.body, {attributes: true, attributeFilter: ["class"]});
  });
  window.addEventListener("resize", () => { if (V) onResize(V); });

  function clientToImage(cx, cy) {
    if (!V) return null;
    const rect = V.stage.getBoundingClientRect();
    return toImage(V, cx - rect.left, cy - rect.top);
  }

  function imageToClient(x, y) {
    if (!V) return null;
    const rect = V.stage.getBoundingClientRect(), [sx, sy] = screenOf(V, x, y);
    return {x: rect.left + sx, y: rect.top + sy};
  }

  function viewState() {
    if (!V) return null;
    return {zoom: V.zoom, tx: V.tx, ty: V.ty, w: V.w, h: V.h, slice: V.slice, slices: V.slices, window: [V.wc, V.ww],
            invert: V.invert, tool: V.tool, positive: V.positive, fill: V.fill, overlay: V.overlayOn,
            radius: V.radius, units: V.pixels ? V.pixels.units : null, full: V.pixels ? V.pixels.full : null,
            presets: (V.presetItems || []).map((p) => ({name: p.name, c: p.c, w: p.w})),
            prompts: V.prompts, area: V.layer ? V.layer.area : null, layerSlice: V.layer ? V.layer.slice : null,
            object: V.active, objects: [...V.objects.values()].map((o) => ({id: o.id, label: o.label,
              colour: o.colour, active: o.id === V.active, server: o.server})),
            measures: (V.measures.get(sliceKey(V)) || []).map((m) => ({...m}))};
  }

  window.__bcViewer = {
    get: () => V, answer: () => A, setMode, setZoom, fit: () => fit(V), setTool: (t) => setTool(V, t),
    setWindow: (c, w) => V && setWindow(V, c, w, ""), showSlice: (k) => showSlice(V, k), clientToImage,
    imageToClient, view: viewState, markers: () => (V ? V.drawnMarkers.map((m) => ({...m})) : []),
    value: (x, y) => (V ? valueAt(V, {x, y}) : null),
  };
})();
