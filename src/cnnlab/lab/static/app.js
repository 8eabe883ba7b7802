// cnnlab lab: the page. Plain JavaScript, no library; charts and maps are drawn on <canvas>.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { runs: [], run: null, detail: null, view: "runs", source: null, selected: new Set(),
                pixels: null, inFlight: false, dirty: false, dirtySince: 0, camTimer: 0, runsTimer: 0 };
window.lab = { latencies: [], lastPixels: null, lastPrediction: null, busy: () => state.inFlight || state.dirty };

const COLORS = ["#2b6cb0", "#d9480f", "#2f9e44", "#9c36b5", "#e8590c", "#1098ad", "#c2255c", "#5c940d",
                "#364fc7", "#862e9c"];

// ---------------------------------------------------------------------------------------------------
// Fetching

async function api(path, options) {
  const response = await fetch(path, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function say(text) {
  const el = $("#message");
  el.textContent = text || "";
  el.hidden = !text;
}

const runUrl = (name, rest = "") => `/api/runs/${name.split("/").map(encodeURIComponent).join("/")}${rest}`;

// ---------------------------------------------------------------------------------------------------
// Routing: #runs, #live/NAME, #explore/NAME, #report/NAME

function route() {
  const hash = decodeURIComponent(location.hash.slice(1)) || "runs";
  const slash = hash.indexOf("/");
  const view = slash < 0 ? hash : hash.slice(0, slash);
  const name = slash < 0 ? null : hash.slice(slash + 1);
  return { view: ["runs", "live", "explore", "report"].includes(view) ? view : "runs", name };
}

const VIEW_TITLES = { live: "Live", explore: "Explore", report: "Report" };

async function show() {
  const { view, name } = route();
  if (name && name !== state.run) await chooseRun(name);
  if (!name && view !== "runs" && state.run) { location.replace(`#${view}/${state.run}`); return; }
  state.view = view;
  $("#view-title").textContent = view === "runs" ? "Runs" : `${VIEW_TITLES[view]}: ${state.run || "–"}`;
  for (const v of ["runs", "live", "explore", "report"]) {
    $(`#view-${v}`).hidden = v !== view;
    $(`#nav-${v}`).classList.toggle("active", v === view);
  }
  stopLive();
  if (view === "runs") await showRuns();
  else if (!state.run) say("No run folder found under the lab's root yet: train one with cnnlab train --out ROOT/NAME");
  else if (view === "live") startLive();
  else if (view === "explore") await showExplore();
  else if (view === "report") await showReport();
}

async function chooseRun(name) {
  state.run = name;
  state.detail = null;
  $("#run-select").value = name;
  try {
    state.detail = await api(runUrl(name));
    say("");
  } catch (err) { say(err.message); }
}

async function loadRuns() {
  state.runs = await api("/api/runs");
  const select = $("#run-select");
  select.innerHTML = "";
  for (const r of state.runs) select.add(new Option(r.name, r.name));
  if (!state.run && state.runs.length) {
    const best = state.runs.find((r) => r.status === "training") || state.runs[state.runs.length - 1];
    await chooseRun(best.name);
  }
  if (state.run) select.value = state.run;
}

// ---------------------------------------------------------------------------------------------------
// Runs view

const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));

async function showRuns() {
  await renderRunsTable();
  await showCompare();
}

async function renderRunsTable() {
  clearTimeout(state.runsTimer);
  await loadRuns();
  if (state.view === "runs") state.runsTimer = setTimeout(() => renderRunsTable().catch((e) => say(e.message)), 5000);
  const body = $("#runs-table tbody");
  body.innerHTML = "";
  let group = null;
  for (const r of state.runs) {
    if (r.group && r.group !== group) {
      const tr = body.insertRow();
      const td = tr.insertCell();
      td.colSpan = 7;
      td.textContent = `sweep ${r.group}`;
      tr.className = "group";
    }
    group = r.group;
    const tr = body.insertRow();
    const tick = document.createElement("input");
    tick.type = "checkbox";
    tick.dataset.run = r.name;
    tick.checked = state.selected.has(r.name);
    tick.addEventListener("change", () => {
      if (tick.checked) state.selected.add(r.name); else state.selected.delete(r.name);
      showCompare();
    });
    tr.insertCell().append(tick);
    const name = tr.insertCell();
    name.textContent = r.group ? r.name.slice(r.group.length + 1) : r.name;
    if (r.group) name.className = "indent";
    tr.insertCell().innerHTML = `<span class="status status-${r.status}">${r.status}</span>`;
    const epochs = tr.insertCell();
    epochs.textContent = r.planned_epochs ? `${r.epochs} / ${r.planned_epochs}` : `${r.epochs}`;
    epochs.className = "num";
    for (const v of [r.best_val_accuracy, r.val_accuracy]) {
      const td = tr.insertCell();
      td.textContent = fmt(v);
      td.className = "num";
    }
    const links = tr.insertCell();
    for (const view of ["live", "explore", "report"]) {
      const a = document.createElement("a");
      a.href = `#${view}/${r.name}`;
      a.textContent = view;
      a.style.marginRight = ".7em";
      links.append(a);
    }
  }
  if (!state.runs.length) say("No run folder under the lab's root yet: train one with cnnlab train --out ROOT/NAME");
}

async function showCompare() {
  const names = [...state.selected].filter((n) => state.runs.some((r) => r.name === n));
  $("#compare").hidden = names.length === 0;
  if (!names.length) return;
  const details = await Promise.all(names.map((n) => api(runUrl(n)).catch(() => null)));
  const series = (key) => details.map((d, i) => d && {
    label: names[i], color: COLORS[i % COLORS.length],
    points: d.history.map((h) => [h.epoch, h[key]]) }).filter(Boolean);
  const [accuracy, loss] = chartPair($("#compare-charts"));
  lineChart(accuracy, series("val_accuracy"), "val_accuracy by epoch");
  lineChart(loss, series("val_loss"), "val_loss by epoch");
  const head = $("#compare-table thead");
  const body = $("#compare-table tbody");
  head.innerHTML = "";
  body.innerHTML = "";
  $("#compare-note").textContent = "";
  if (names.length < 2) { $("#compare-note").textContent = "Tick a second run to see the config keys that differ."; return; }
  try {
    const result = await api(`/api/compare?runs=${names.map(encodeURIComponent).join(",")}`);
    const keys = Object.keys(result.rows[0] || {});
    const tr = head.insertRow();
    for (const k of keys) { const th = document.createElement("th"); th.textContent = k; tr.append(th); }
    for (const row of result.rows) {
      const r = body.insertRow();
      for (const k of keys) {
        const td = r.insertCell();
        const v = row[k];
        td.textContent = typeof v === "number" && !Number.isInteger(v) ? fmt(v) : (v === null ? "–" : String(v));
      }
    }
    $("#compare-note").textContent = result.differing_keys.length
      ? `Config keys that differ: ${result.differing_keys.join(", ")}` : "The configs do not differ.";
  } catch (err) { $("#compare-note").textContent = err.message; }
}

// ---------------------------------------------------------------------------------------------------
// Live view: server-sent events

function stopLive() {
  if (state.source) { state.source.close(); state.source = null; }
}

function startLive() {
  const history = state.detail ? state.detail.history : [];
  drawLiveCurves(history);
  setLiveFacts(state.detail && state.detail.progress, history);
  state.source = new EventSource(runUrl(state.run, "/events"));
  state.source.addEventListener("progress", (e) => setLiveFacts(JSON.parse(e.data), null));
  state.source.addEventListener("history", (e) => {
    const rows = JSON.parse(e.data);
    drawLiveCurves(rows);
    if (rows.length) $("#live-epoch").textContent = Math.max(Number($("#live-epoch").textContent) || 0, rows.length);
  });
}

function setLiveFacts(p, history) {
  if (!p) {
    $("#live-status").textContent = state.detail ? state.detail.status : "–";
    $("#live-epoch").textContent = history ? history.length : 0;
    $("#live-epochs").textContent = state.detail && state.detail.planned_epochs || "–";
    return;
  }
  $("#live-status").textContent = p.state || p.status;
  $("#live-epoch").textContent = p.epoch;
  $("#live-epochs").textContent = p.epochs;
  $("#live-batch").textContent = p.batches ? `${p.batch} / ${p.batches}` : "–";
  $("#live-loss").textContent = fmt(p.loss);
  $("#live-acc").textContent = fmt(p.accuracy);
  $("#live-bar").style.width = p.batches ? `${(100 * p.batch) / p.batches}%` : "0";
}

function drawLiveCurves(history) {
  const pick = (key) => history.map((h) => [h.epoch, h[key]]);
  const [accuracy, loss] = chartPair($("#live-charts"));
  lineChart(accuracy, [{ label: "accuracy", color: COLORS[0], points: pick("accuracy") },
    { label: "val_accuracy", color: COLORS[1], points: pick("val_accuracy") }], "accuracy by epoch");
  lineChart(loss, [{ label: "loss", color: COLORS[0], points: pick("loss") },
    { label: "val_loss", color: COLORS[1], points: pick("val_loss") }], "loss by epoch");
}

// ---------------------------------------------------------------------------------------------------
// Charts

// A view's accuracy and loss charts, side by side: two canvases made in ``box`` on first use.
function chartPair(box) {
  while (box.children.length < 2) box.append(Object.assign(document.createElement("canvas"), { width: 560, height: 300 }));
  return [...box.children];
}

function lineChart(canvas, series, title) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, L = 56, R = 12, T = 26, B = 30;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "12px system-ui, sans-serif";
  ctx.fillStyle = "#1d2330";
  ctx.fillText(title, L, 16);
  const pts = series.flatMap((s) => s.points.filter((p) => p[1] !== null && Number.isFinite(p[1])));
  if (!pts.length) { ctx.fillStyle = "#667"; ctx.fillText("no epochs yet", L, T + 20); return; }
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.01; y1 += 0.01; }
  const pad = (y1 - y0) * 0.05;
  y0 -= pad; y1 += pad;
  const sx = (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  ctx.strokeStyle = "#d8dce3";
  ctx.fillStyle = "#667";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + ((y1 - y0) * i) / 4;
    ctx.beginPath(); ctx.moveTo(L, sy(y)); ctx.lineTo(W - R, sy(y)); ctx.stroke();
    ctx.fillText(y.toPrecision(3), 4, sy(y) + 4);
  }
  const step = Math.max(1, Math.ceil((x1 - x0) / 8));
  for (let x = Math.ceil(x0); x <= x1; x += step) ctx.fillText(String(x), sx(x) - 3, H - B + 16);
  series.forEach((s, i) => {
    const good = s.points.filter((p) => p[1] !== null && Number.isFinite(p[1]));
    ctx.strokeStyle = s.color;
    ctx.fillStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    good.forEach((p, j) => (j ? ctx.lineTo(sx(p[0]), sy(p[1])) : ctx.moveTo(sx(p[0]), sy(p[1]))));
    ctx.stroke();
    for (const p of good) { ctx.beginPath(); ctx.arc(sx(p[0]), sy(p[1]), 2.5, 0, 7); ctx.fill(); }
    const x = L + ctx.measureText(title).width + 24 + series.slice(0, i).reduce((a, t) => a + ctx.measureText(t.label).width + 30, 0);
    ctx.fillRect(x, 9, 14, 3);
    ctx.fillText(s.label, x + 18, 16);
  });
}

function barChart(canvas, values, highlight, title) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, T = 18, B = 18;
  ctx.clearRect(0, 0, W, H);
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#1d2330";
  if (title) ctx.fillText(title, 4, 12);
  const top = Math.max(...values, 1e-9);
  const w = W / values.length;
  values.forEach((v, i) => {
    const h = Math.max(0, (v / top) * (H - T - B));
    ctx.fillStyle = i === highlight ? "#d9480f" : "#2b6cb0";
    ctx.fillRect(i * w + 3, H - B - h, w - 6, h);
    ctx.fillStyle = "#1d2330";
    ctx.fillText(String(i), i * w + w / 2 - 3, H - 4);
  });
}

// ---------------------------------------------------------------------------------------------------
// Maps: bytes 0..255 per value, drawn with the viridis colour map

const VIRIDIS = (() => {
  const stops = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142], [31, 158, 137],
                 [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (stops.length - 1), k = Math.min(Math.floor(t), stops.length - 2), f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = stops[k][c] + f * (stops[k + 1][c] - stops[k][c]);
  }
  return lut;
})();

function bytesOf(b64) {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function drawGray(canvas, bytes) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(28, 28);
  for (let i = 0; i < 784; i++) {
    img.data[i * 4] = img.data[i * 4 + 1] = img.data[i * 4 + 2] = bytes[i];
    img.data[i * 4 + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

function drawLayer(canvas, layer) {
  const [C, Hh, Ww] = layer.shape;
  const cols = Math.min(C, Math.max(8, Math.floor(900 / ((Ww + 2) * Math.max(1, Math.floor(60 / Ww)))))),
    rows = Math.ceil(C / cols);
  const cw = cols * (Ww + 1) - 1, ch = rows * (Hh + 1) - 1;
  if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
  const scale = Math.max(1, Math.floor(Math.min(900 / cw, 60 / Hh)));
  canvas.style.width = `${cw * scale}px`;
  canvas.dataset.cols = cols;
  const data = bytesOf(layer.data);
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(cw, ch);
  img.data.fill(255);
  for (let m = 0; m < C; m++) {
    const ox = (m % cols) * (Ww + 1), oy = Math.floor(m / cols) * (Hh + 1);
    for (let y = 0; y < Hh; y++) for (let x = 0; x < Ww; x++) {
      const v = data[m * Hh * Ww + y * Ww + x], o = ((oy + y) * cw + ox + x) * 4;
      img.data[o] = VIRIDIS[v * 3]; img.data[o + 1] = VIRIDIS[v * 3 + 1]; img.data[o + 2] = VIRIDIS[v * 3 + 2];
    }
  }
  ctx.putImageData(img, 0, 0);
}

// ---------------------------------------------------------------------------------------------------
// Drawing: a 280 x 280 canvas; its ink is scaled into 20 x 20 and centred by its centre of mass in 28 x 28

const draw = { ctx: null, down: false, last: null };

function setupDrawing() {
  const canvas = $("#draw");
  draw.ctx = canvas.getContext("2d", { willReadFrequently: true });
  clearDrawing();
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) * canvas.width) / r.width, ((e.clientY - r.top) * canvas.height) / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => {
    draw.down = true;
    draw.last = at(e);
    canvas.setPointerCapture(e.pointerId);
    stroke(draw.last, draw.last);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!draw.down) return;
    const p = at(e);
    stroke(draw.last, p);
    draw.last = p;
  });
  const up = () => { draw.down = false; };
  canvas.addEventListener("pointerup", up);
  canvas.addEventListener("pointercancel", up);
  $("#clear").addEventListener("click", () => {
    clearDrawing();
    $("#prediction").textContent = "–";
    state.pixels = null;
  });
}

function clearDrawing() {
  draw.ctx.fillStyle = "#000";
  draw.ctx.fillRect(0, 0, 280, 280);
}

function stroke(a, b) {
  const ctx = draw.ctx;
  ctx.strokeStyle = "#fff";
  ctx.lineWidth = Number($("#stroke").value);
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  ctx.shadowColor = "#fff";
  ctx.shadowBlur = ctx.lineWidth / 3; // soft edges, as MNIST's anti-aliased strokes
  ctx.beginPath();
  ctx.moveTo(a[0], a[1]);
  ctx.lineTo(b[0], b[1]);
  ctx.stroke();
  ctx.shadowBlur = 0;
  requestPredict();
}

// The MNIST recipe: the ink's bounding box scaled (area average) so its longer side is 20 pixels, then placed in
// 28 x 28 so that its centre of mass sits at the centre.
function mnistPixels() {
  const src = draw.ctx.getImageData(0, 0, 280, 280).data;
  let x0 = 280, y0 = 280, x1 = -1, y1 = -1;
  for (let y = 0; y < 280; y++) for (let x = 0; x < 280; x++) {
    if (src[(y * 280 + x) * 4] > 10) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
  }
  const out = Array.from({ length: 28 }, () => new Array(28).fill(0));
  if (x1 < 0) return out;
  const w = x1 - x0 + 1, h = y1 - y0 + 1, f = 20 / Math.max(w, h);
  const tw = Math.max(1, Math.round(w * f)), th = Math.max(1, Math.round(h * f));
  const sum = new Float64Array(tw * th), count = new Float64Array(tw * th);
  for (let y = 0; y < h; y++) {
    const ty = Math.min(th - 1, Math.floor(y * f));
    for (let x = 0; x < w; x++) {
      const tx = Math.min(tw - 1, Math.floor(x * f)), k = ty * tw + tx;
      sum[k] += src[((y + y0) * 280 + x + x0) * 4];
      count[k] += 1;
    }
  }
  let mass = 0, mx = 0, my = 0;
  const small = new Float64Array(tw * th);
  for (let k = 0; k < tw * th; k++) {
    small[k] = count[k] ? sum[k] / count[k] : 0;
    mass += small[k]; mx += small[k] * (k % tw); my += small[k] * Math.floor(k / tw);
  }
  const dx = Math.round(13.5 - mx / mass), dy = Math.round(13.5 - my / mass);
  for (let k = 0; k < tw * th; k++) {
    const x = (k % tw) + dx, y = Math.floor(k / tw) + dy;
    if (x >= 0 && x < 28 && y >= 0 && y < 28) out[y][x] = Math.min(255, Math.round(small[k]));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Explore: predict while drawing, one request in flight; the newest drawing goes next

function requestPredict() {
  if (!state.dirty) state.dirtySince = performance.now();
  state.dirty = true;
  if (!state.inFlight) sendPredict();
}

async function sendPredict(pixels) {
  const started = state.dirtySince || performance.now();
  state.dirty = false;
  state.inFlight = true;
  state.pixels = pixels || mnistPixels();
  window.lab.lastPixels = state.pixels;
  try {
    const t0 = performance.now();
    const result = await api(runUrl(state.run, "/predict"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ pixels: state.pixels }) });
    const roundTrip = performance.now() - t0;
    showPrediction(result, state.pixels);
    await new Promise((resolve) => requestAnimationFrame(() => resolve()));
    const total = performance.now() - started;
    window.lab.latencies.push(total);
    window.lab.lastPrediction = result.predicted;
    $("#latency").textContent = `draw to screen ${total.toFixed(0)} ms (request ${roundTrip.toFixed(0)} ms)`;
    scheduleCam();
  } catch (err) { say(err.message); }
  state.inFlight = false;
  if (state.dirty) sendPredict();
}

function showPrediction(result, pixels) {
  $("#prediction").textContent = String(result.predicted);
  barChart($("#probs"), result.probabilities, result.predicted, "class probabilities");
  drawGray($("#sent"), Uint8Array.from(pixels.flat()));
  const box = $("#layers");
  for (const [name, layer] of Object.entries(result.layers)) {
    let canvas = box.querySelector(`canvas[data-layer="${name}"]`);
    if (!canvas) {
      const div = document.createElement("div");
      div.className = "layer";
      div.innerHTML = `<h4>${name} <span class="hint">${layer.shape.join(" x ")} · click a map</span></h4>`;
      canvas = document.createElement("canvas");
      canvas.dataset.layer = name;
      canvas.addEventListener("click", (e) => clickMap(canvas, e));
      div.append(canvas);
      box.append(div);
    }
    canvas.dataset.shape = layer.shape.join(",");
    drawLayer(canvas, layer);
  }
}

function scheduleCam() {
  clearTimeout(state.camTimer);
  if (!$("#cam-on").checked || !state.pixels) return;
  state.camTimer = setTimeout(showCam, 150);
}

async function showCam() {
  if (state.inFlight || !state.pixels) return;
  const chosen = $("#cam-class").value;
  try {
    const result = await api(runUrl(state.run, "/gradcam"), { method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ pixels: state.pixels, class: chosen === "" ? null : Number(chosen) }) });
    const cam = bytesOf(result.grad_cam.data), flat = state.pixels.flat();
    const ctx = $("#cam").getContext("2d");
    const img = ctx.createImageData(28, 28);
    for (let i = 0; i < 784; i++) {
      const a = cam[i] / 255, g = flat[i] * 0.5;
      img.data[i * 4] = g * (1 - a) + 255 * a;
      img.data[i * 4 + 1] = g * (1 - a) + 120 * a;
      img.data[i * 4 + 2] = g * (1 - a);
      img.data[i * 4 + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    $("#cam-note").textContent = `Grad-CAM on ${result.layer} for class ${result.target} (p = ${result.probability.toFixed(3)})`;
  } catch (err) { $("#cam-note").textContent = err.message; }
}

async function clickMap(canvas, e) {
  const [C, Hh, Ww] = canvas.dataset.shape.split(",").map(Number);
  const cols = Number(canvas.dataset.cols);
  const r = canvas.getBoundingClientRect();
  const x = Math.floor(((e.clientX - r.left) * canvas.width) / r.width / (Ww + 1));
  const y = Math.floor(((e.clientY - r.top) * canvas.height) / r.height / (Hh + 1));
  const index = y * cols + x;
  if (index < 0 || index >= C || x >= cols) return;
  await showMapStory(canvas.dataset.layer, index);
}

async function showMapStory(layer, index) {
  $("#map-story").hidden = false;
  $("#story-title").textContent = `${layer}, map ${index}: computing its filter pattern (once per run; cached)…`;
  try {
    const s = await api(runUrl(state.run, `/maps/${encodeURIComponent(layer)}/${index}`));
    $("#story-title").textContent = `${layer}, map ${index}`;
    drawGray($("#story-pattern"), bytesOf(s.pattern.pixels));
    $("#story-pattern-note").textContent = `filter pattern (${s.pattern.steps} steps of gradient ascent): ` +
      `mean activation ${s.pattern.activation.toPrecision(3)}, ${s.pattern.ratio.toPrecision(3)} x the average test image's`;
    barChart($("#story-classes"), s.class_means, s.class_means.indexOf(Math.max(...s.class_means)), "");
    const top = $("#story-top");
    top.innerHTML = "";
    for (const t of s.top) top.append(thumb(bytesOf(t.pixels), `#${t.index} (${t.label}): ${t.activation.toPrecision(3)}`,
      () => pickImage({ index: t.index })));
  } catch (err) { $("#story-title").textContent = `${layer}, map ${index}: ${err.message}`; }
}

function thumb(bytes, caption, onclick) {
  const fig = document.createElement("figure");
  const c = document.createElement("canvas");
  c.width = c.height = 28;
  drawGray(c, bytes);
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(c, cap);
  fig.addEventListener("click", onclick);
  return fig;
}

async function pickImage(query) {
  const params = new URLSearchParams(query);
  try {
    const r = await api(runUrl(state.run, `/images?${params}`));
    $("#picked").textContent = `test image ${r.index}: label ${r.label}, the model says ${r.predicted} ` +
      `(p = ${r.probability.toFixed(3)})`;
    $("#pick-index").value = r.index;
    paintPixels(r.pixels);
    await sendPredict(r.pixels);
  } catch (err) { say(err.message); }
}

function paintPixels(pixels) {
  const tmp = document.createElement("canvas");
  tmp.width = tmp.height = 28;
  drawGray(tmp, Uint8Array.from(pixels.flat()));
  clearDrawing();
  draw.ctx.imageSmoothingEnabled = false;
  draw.ctx.drawImage(tmp, 0, 0, 280, 280);
}

async function showMistakes() {
  const box = $("#mistakes");
  box.innerHTML = "computing…";
  try {
    const r = await api(runUrl(state.run, "/mistakes?count=12"));
    box.innerHTML = "";
    const images = await Promise.all(r.mistakes.map((m) => api(runUrl(state.run, `/images?index=${m.index}`))));
    r.mistakes.forEach((m, i) => box.append(thumb(Uint8Array.from(images[i].pixels.flat()),
      `#${m.index}: ${m.label}→${m.predicted}`, () => pickImage({ index: m.index }))));
    $("#picked").textContent = `${r.wrong} of ${r.images} test images are wrong; the most confident mistakes:`;
  } catch (err) { box.textContent = err.message; }
}

async function showExplore() {
  const classes = (state.detail && state.detail.classes) || 10;
  for (const sel of ["#cam-class", "#pick-class"]) {
    const el = $(sel);
    const keep = sel === "#cam-class" ? 1 : 0;
    while (el.options.length > keep) el.remove(keep);
    for (let c = 0; c < classes; c++) el.add(new Option(String(c), String(c)));
  }
  $("#layers").innerHTML = "";
  $("#map-story").hidden = true;
  if (state.pixels) await sendPredict(state.pixels);
}

// ---------------------------------------------------------------------------------------------------
// Report view: the run's pictures, its report page and its history

async function showReport() {
  const files = await api(runUrl(state.run, "/files")).catch((err) => { say(err.message); return []; });
  const links = $("#report-links");
  links.innerHTML = "";
  const report = files.find((f) => f.path === "report.html");
  if (report) {
    const a = document.createElement("a");
    a.href = runUrl(state.run, "/files/report.html");
    a.target = "_blank";
    a.textContent = "open report.html (every picture on one page)";
    links.append(a);
  } else links.textContent = `No report.html yet: write it with  cnnlab report ROOT/${state.run}`;
  const gallery = $("#gallery");
  gallery.innerHTML = "";
  for (const f of files.filter((f) => f.path.endsWith(".png"))) {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = runUrl(state.run, `/files/${f.path}`);
    img.alt = f.path;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    cap.textContent = f.path;
    fig.append(img, cap);
    gallery.append(fig);
  }
  const history = state.detail ? state.detail.history : [];
  const head = $("#history-table thead"), body = $("#history-table tbody");
  head.innerHTML = ""; body.innerHTML = "";
  if (!history.length) return;
  const keys = Object.keys(history[0]);
  const tr = head.insertRow();
  for (const k of keys) { const th = document.createElement("th"); th.textContent = k; tr.append(th); }
  for (const row of history) {
    const r = body.insertRow();
    for (const k of keys) {
      const td = r.insertCell();
      td.className = "num";
      td.textContent = Number.isInteger(row[k]) ? row[k] : fmt(row[k], k === "lr" ? 6 : 4);
    }
  }
}

// ---------------------------------------------------------------------------------------------------

function setup() {
  setupDrawing();
  $("#run-select").addEventListener("change", (e) => {
    location.hash = `#${state.view === "runs" ? "explore" : state.view}/${e.target.value}`;
  });
  $("#pick-load").addEventListener("click", () => pickImage({ index: $("#pick-index").value }));
  let nth = 0;
  $("#pick-next").addEventListener("click", () => pickImage({ label: $("#pick-class").value, nth: nth++ }));
  $("#pick-mistakes").addEventListener("click", showMistakes);
  $("#cam-on").addEventListener("change", scheduleCam);
  $("#cam-class").addEventListener("change", scheduleCam);
  window.addEventListener("hashchange", () => show().catch((err) => say(err.message)));
  window.addEventListener("pagehide", stopLive);
  loadRuns().then(show).catch((err) => say(err.message));
}

setup();
