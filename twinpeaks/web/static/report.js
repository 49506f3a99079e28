/* twinpeaks: draws a report payload (see twinpeaks/web/payload.py) with Plotly.
 *
 * Used by the self-contained report and by the live dashboard. Everything from
 * the payload goes into the page as text (textContent), never as HTML. No
 * network: Plotly is on the page already.
 */
(function () {
  "use strict";

  const PHASE_COLORS = { train: "#1f77b4", valid: "#ff7f0e", test: "#2ca02c" };
  const EXTRA_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["select2d", "lasso2d"] };
  const FONT = { family: "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", size: 12 };

  /* Names from the run (layer, class, phase) as Plotly shows them: Plotly renders a subset of HTML
     tags in trace names, titles and hover text, and fills %{...} in hover templates: escape both. */
  function ptext(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/%/g, "&#37;");
  }

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k === "class") e.className = v;
      else if (k === "dataset") Object.assign(e.dataset, v);
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const c of kids.flat()) {
      if (c !== null && c !== undefined && c !== false) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function phaseColor(p, i) { return PHASE_COLORS[p] || EXTRA_COLORS[i % EXTRA_COLORS.length]; }
  function shape(s) { return s ? s.join("×") : "never called"; }
  function bytes(n) { return n === null || n === undefined ? "" : n > 1048576 ? (n / 1048576).toFixed(1) + " MB" : (n / 1024).toFixed(1) + " KB"; }
  function centers(edges) { const c = []; for (let i = 0; i + 1 < edges.length; i++) c.push((edges[i] + edges[i + 1]) / 2); return c; }

  function decodeLevels(b64) {
    const bin = atob(b64);
    const out = new Uint16Array(bin.length >> 1);
    for (let i = 0; i < out.length; i++) out[i] = bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8);
    return out;
  }

  /* ---------------------------------------------------------------- colorful dimension */
  function heatmapFigure(run, layer, phase, m) {
    const levels = decodeLevels(m.levels);
    const z = [], counts = [];
    const k = m.scale / 65535;
    for (let r = 0; r < m.rows; r++) {
      const zr = new Array(m.cols), cr = new Array(m.cols);
      for (let c = 0; c < m.cols; c++) {
        const v = levels[r * m.cols + c] * k;
        zr[c] = v;
        cr[c] = Math.expm1(v);
      }
      z.push(zr);
      counts.push(cr);
    }
    const x = m.starts.map((s, i) => (s + m.ends[i] - 1) / 2);
    const y = centers(m.edges);
    const ticks = [0], text = ["0"];
    const steps = m.scale < Math.log1p(100) ? [1, 2, 5] : [1];  // 1, 2, 5, 10, 20, ... for small counts
    for (let t = 1; Math.log1p(t) <= m.scale + 1e-9; t *= 10) {
      for (const k of steps) if (Math.log1p(t * k) <= m.scale + 1e-9) { ticks.push(Math.log1p(t * k)); text.push(String(t * k)); }
    }
    if (ticks[ticks.length - 1] < 0.85 * m.scale) { ticks.push(m.scale); text.push(Number(Math.expm1(m.scale).toPrecision(2)).toString()); }
    const data = [
      {
        type: "heatmap", x, y, z, customdata: counts, zmin: 0, zmax: Math.max(m.scale, 1e-9),
        colorscale: "Viridis", xaxis: "x", yaxis: "y",
        colorbar: { title: { text: "count/step", side: "right" }, tickvals: ticks, ticktext: text, len: 0.62, y: 1, yanchor: "top", thickness: 12 },
        hovertemplate: "step %{x:.0f}<br>value %{y:.4g}<br>count/step %{customdata:.4g}<extra></extra>",
      },
      { type: "scatter", mode: "lines", name: "mean", x, y: m.mean, xaxis: "x", yaxis: "y2", line: { color: "#d62728", width: 1.5 },
        hovertemplate: "step %{x:.0f}<br>mean %{y:.4g}<extra></extra>" },
      { type: "scatter", mode: "lines", name: "std", x, y: m.std, xaxis: "x", yaxis: "y2", line: { color: "#1f77b4", width: 1.5 },
        hovertemplate: "step %{x:.0f}<br>std %{y:.4g}<extra></extra>" },
      { type: "scatter", mode: "lines", name: "zeros", x, y: m.zeros, xaxis: "x", yaxis: "y3", line: { color: "#7f7f7f", width: 1, dash: "dot" },
        hovertemplate: "step %{x:.0f}<br>exact zeros %{y:.2%}<extra></extra>" },
      { type: "scatter", mode: "lines", name: "out of range", x, y: m.outside, xaxis: "x", yaxis: "y3", line: { color: "#ff7f0e", width: 1, dash: "dot" },
        hovertemplate: "step %{x:.0f}<br>out of range or non-finite %{y:.2%}<extra></extra>" },
    ];
    const shapes = [];
    const lo = m.edges[0], hi = m.edges[m.edges.length - 1];
    if (lo < 0 && hi > 0) shapes.push({ type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: 0, y1: 0, line: { color: "#e41a1c", width: 1 } });
    for (const es of run.epoch_steps.slice(1)) {
      if (es[phase]) shapes.push({ type: "line", xref: "x", x0: es[phase][0] - 0.5, x1: es[phase][0] - 0.5, yref: "paper", y0: 0, y1: 1, line: { color: "#4fa3ff", width: 1 } });
    }
    const layout = {
      font: FONT, height: 330, margin: { l: 60, r: 20, t: 8, b: 34 }, showlegend: true,
      legend: { orientation: "h", y: -0.12, x: 0, font: { size: 11 } },
      xaxis: { anchor: "y2", title: { text: ptext(phase) + " step", standoff: 2 } },
      yaxis: { domain: [0.38, 1], title: { text: "activation" } },
      yaxis2: { domain: [0, 0.3], title: { text: "mean/std" } },
      yaxis3: { overlaying: "y2", side: "right", range: [0, 1], tickvals: [0, 0.5, 1], tickformat: ".0%", showgrid: false, title: { text: "zeros, out of range", font: { size: 10 } } },
      shapes,
    };
    return { data, layout };
  }

  /* ---------------------------------------------------------------- twin peaks */
  function histTrace(h, x, label, color, extra) {
    const y = h.counts.map((c) => (h.total ? c / h.total : 0));
    const name = ptext(label);
    return Object.assign({
      type: "scatter", mode: "lines", name, x, y, customdata: h.counts, line: { color, width: 2, shape: "hvh" },
      hovertemplate: name + "<br>value %{x:.4g}<br>fraction %{y:.3%}<br>count %{customdata}<extra></extra>",
    }, extra || {});
  }

  function peaksLayout(title, xlabel) {
    return {
      font: FONT, height: 360, margin: { l: 60, r: 16, t: 62, b: 40 }, title: { text: title, font: { size: 13 }, y: 0.985, yanchor: "top" },
      xaxis: { title: { text: xlabel, standoff: 4 } }, yaxis: { title: { text: "fraction of values" }, tickformat: ".1%", rangemode: "tozero" },
      legend: { orientation: "h", yanchor: "bottom", y: 1.0, x: 0, font: { size: 11 } },
    };
  }

  function peaksFigure(run, e) {
    const tp = run.twinpeaks;
    const x = centers(tp.edges);
    const ep = tp.epochs[e];
    const data = [];
    Object.entries(ep.phases).forEach(([p, h], i) => {
      const name = p === "train" ? "train (last quarter)" : p;
      data.push(histTrace(h, x, name, phaseColor(p, i), { fill: "tozeroy", opacity: 0.85 }));
    });
    const out = Object.entries(ep.phases).map(([p, h]) => ptext(p) + " " + (h.total ? (100 * (h.under + h.over + h.nonfinite) / h.total).toFixed(1) : "0") + "%");
    const layout = peaksLayout("Twin peaks · layer " + ptext(tp.name) + " · epoch " + e, "activation (out of range: " + out.join(", ") + ")");
    return { data, layout };
  }

  function classesFigure(run, e, phase) {
    const tp = run.twinpeaks;
    const x = centers(tp.edges);
    const names = run.meta.classes || [];
    const data = [];
    tp.epochs[e].classes.forEach((byPhase, k) => {
      const h = byPhase[phase];
      if (h) data.push(histTrace(h, x, "class " + (names[k] !== undefined ? names[k] : k), PALETTE[k % PALETTE.length]));
    });
    return { data, layout: peaksLayout("Per class (output column) · " + ptext(phase) + (phase === "train" ? " last quarter" : "") + " · epoch " + e, "activation") };
  }

  function truthFigure(run, e) {
    const tp = run.twinpeaks;
    const x = centers(tp.edges);
    const data = [];
    const truth = tp.epochs[e].truth;
    run.phases.forEach((p, i) => {
      for (const t of ["yes", "no"]) {
        const h = truth[t][p];
        if (h) data.push(histTrace(h, x, p + " " + (t === "yes" ? "YES (true class)" : "NO (other classes)"), phaseColor(p, i), { line: { color: phaseColor(p, i), width: 2, shape: "hvh", dash: t === "yes" ? "solid" : "dot" } }));
      }
    });
    return { data, layout: peaksLayout("By truth: YES and NO peaks · epoch " + e, "activation") };
  }

  /* ---------------------------------------------------------------- page */
  function plot(div, fig) {
    if (!window.Plotly) throw new Error("Plotly is not loaded");
    return window.Plotly.react(div, fig.data, fig.layout, CONFIG);
  }

  function findingsList(run) {
    const box = el("div", { class: "tp-findings", id: run.id + "-diagnosis" });
    box.append(el("h3", { text: run.name }));
    if (run.findings === null || run.findings === undefined) {
      box.append(el("p", { class: "tp-note", text: run.diagnosis_note || "Diagnosis unavailable." }));
      return box;
    }
    if (!run.findings.length) {
      box.append(el("p", { class: "tp-ok", text: "No findings: nothing looked wrong." }));
      return box;
    }
    const ul = el("ul", { class: "tp-finding-list" });
    const byName = Object.create(null);
    run.layers.forEach((l) => { byName[l.name] = l.index; });  // byName has no prototype: any name is a plain key
    for (const f of run.findings) {
      const links = [];
      if (f.layer !== null && byName[f.layer] !== undefined) {
        links.push(el("a", { href: "#" + run.id + "-layer-" + byName[f.layer], class: "tp-link", dataset: { run: run.id, layer: byName[f.layer] }, text: "layer " + f.layer }));
      }
      if (f.epoch !== null && run.twinpeaks && f.epoch < run.twinpeaks.epochs.length) {
        links.push(el("a", { href: "#" + run.id + "-twinpeaks", class: "tp-link", dataset: { epoch: f.epoch }, text: "epoch " + f.epoch }));
      }
      const li = el("li", { class: "tp-finding tp-sev-" + f.severity, dataset: { kind: f.kind } },
        el("span", { class: "tp-badge", text: f.severity }), " ",
        el("span", { class: "tp-msg", text: f.message }), " ", links);
      if (f.evidence !== null && f.evidence !== undefined) {
        li.append(el("details", {}, el("summary", { text: "evidence" }), el("pre", { text: JSON.stringify(f.evidence, null, 1).slice(0, 2000) })));
      }
      ul.append(li);
    }
    box.append(ul);
    return box;
  }

  function metaTable(run, payload) {
    const m = run.meta;
    const rows = [
      ["file", (run.path || run.name) + (run.size ? " (" + bytes(run.size) + ")" : "")],
      ["model", m.model], ["created", m.created], ["last epoch closed", m.updated],
      ["epochs", run.epochs], ["steps", run.phases.map((p) => p + " " + run.n_steps[p]).join(", ") || "none"],
      ["classes", m.classes ? m.classes.join(", ") : "–"],
      ["options", Object.entries(m.options || {}).map(([k, v]) => k + "=" + JSON.stringify(v)).join("  ")],
      ["recorded with", "twinpeaks " + m.twinpeaks_version + ", torch " + m.torch_version],
      ["report", "twinpeaks " + payload.twinpeaks_version + ", generated " + payload.generated],
    ];
    const t = el("table", { class: "tp-meta" });
    for (const [k, v] of rows) t.append(el("tr", {}, el("th", { text: k }), el("td", { text: v === null || v === undefined ? "–" : String(v) })));
    const lt = el("table", { class: "tp-layers" }, el("tr", {}, ["#", "layer", "type", "output shape", "bins", "per-class columns"].map((h) => el("th", { text: h }))));
    for (const l of run.layers) {
      lt.append(el("tr", { class: l.called ? "" : "tp-dim" }, el("td", { text: l.index }),
        el("td", {}, l.called ? el("a", { href: "#" + run.id + "-layer-" + l.index, class: "tp-link", dataset: { run: run.id, layer: l.index }, text: l.name }) : l.name),
        el("td", { text: l.type }), el("td", { text: shape(l.shape) }), el("td", { text: l.bins }), el("td", { text: l.columns || "" })));
    }
    return el("section", { class: "tp-section", id: run.id + "-meta" }, el("h2", { text: "Run: " + run.name }), t,
      el("details", { open: run.layers.length <= 12 ? "" : null }, el("summary", { text: run.layers.length + " layers" }), lt));
  }

  function render(root, payload, state) {
    state = state || {};
    state.phase = state.phase || {};
    state.layer = state.layer || {};
    state.classPhase = state.classPhase || {};
    const scrollY = window.scrollY;
    if (state.observer) state.observer.disconnect();
    root.replaceChildren();
    const runs = payload.runs;
    const maxEpochs = Math.max(0, ...runs.map((r) => (r.twinpeaks ? r.twinpeaks.epochs.length : 0)));
    if (state.epoch === undefined || state.epoch === null || state.followLast || state.epoch >= maxEpochs) {
      state.epoch = Math.max(0, maxEpochs - 1);
      state.followLast = true;
    }

    // header and navigation
    root.append(el("header", { class: "tp-header" },
      el("h1", { text: payload.title || "twinpeaks report" }),
      el("div", { class: "tp-runs" }, runs.map((r) => el("span", { class: "tp-run-chip" },
        el("b", { text: r.name }), " · ", el("span", { id: r.id + "-epochs", class: "tp-epochs", text: r.epochs + (r.epochs === 1 ? " epoch" : " epochs") }),
        " · " + r.layers.length + " layers · " + r.phases.map((p) => p + " " + r.n_steps[p]).join(", ") + " steps"))),
      el("nav", {}, el("a", { href: "#tp-diagnosis", text: "Diagnosis" }), el("a", { href: "#tp-twinpeaks", text: "Twin peaks" }),
        runs.map((r) => el("a", { href: "#" + r.id + "-layers", text: "Layers" + (runs.length > 1 ? " (" + r.name + ")" : "") })),
        runs.map((r) => el("a", { href: "#" + r.id + "-meta", text: "Run info" + (runs.length > 1 ? " (" + r.name + ")" : "") })))));

    // diagnosis, side by side
    root.append(el("section", { class: "tp-section", id: "tp-diagnosis" }, el("h2", { text: "Diagnosis" }),
      el("div", { class: "tp-grid" }, runs.map(findingsList))));

    // twin peaks with the epoch slider, side by side
    const peaks = el("section", { class: "tp-section", id: "tp-twinpeaks" }, el("h2", { text: "Twin peaks" }));
    const label = el("output", { id: "tp-epoch-label" });
    const slider = el("input", { type: "range", id: "tp-epoch", min: 0, max: Math.max(0, maxEpochs - 1), step: 1, value: state.epoch, disabled: maxEpochs < 2 ? "" : null });
    peaks.append(el("div", { class: "tp-slider" }, el("label", { for: "tp-epoch", text: "Epoch " }), slider, " ", label));
    const grid = el("div", { class: "tp-grid" });
    peaks.append(grid);
    const epochPlots = [];
    for (const run of runs) {
      const cell = el("div", { class: "tp-cell", id: run.id + "-twinpeaks" }, runs.length > 1 ? el("h3", { text: run.name }) : null);
      grid.append(cell);
      const tp = run.twinpeaks;
      if (!tp || !tp.epochs.length) {
        cell.append(el("p", { class: "tp-note", text: "No closed epoch yet: twin peaks appear after hist.end_epoch()." }));
        continue;
      }
      const pdiv = el("div", { class: "tp-plot tp-peaks", id: run.id + "-peaks" });
      cell.append(pdiv);
      epochPlots.push((e) => plot(pdiv, peaksFigure(run, Math.min(e, tp.epochs.length - 1))));
      const last = tp.epochs[tp.epochs.length - 1];
      if (last.classes) {
        const phases = run.phases.filter((p) => last.classes.some((c) => c[p]));
        if (!state.classPhase[run.id] || !phases.includes(state.classPhase[run.id])) state.classPhase[run.id] = phases.includes("valid") ? "valid" : phases[0];
        const cdiv = el("div", { class: "tp-plot tp-classes", id: run.id + "-classes" });
        const sel = el("select", { class: "tp-class-phase", "aria-label": "phase of the per-class view" }, phases.map((p) => el("option", { value: p, text: p, selected: p === state.classPhase[run.id] ? "" : null })));
        sel.addEventListener("change", () => { state.classPhase[run.id] = sel.value; plot(cdiv, classesFigure(run, Math.min(state.epoch, tp.epochs.length - 1), sel.value)); });
        cell.append(el("div", { class: "tp-controls" }, el("label", { text: "Per-class view of " }), sel), cdiv);
        epochPlots.push((e) => plot(cdiv, classesFigure(run, Math.min(e, tp.epochs.length - 1), state.classPhase[run.id])));
      }
      if (last.truth) {
        const tdiv = el("div", { class: "tp-plot tp-truth", id: run.id + "-truth" });
        cell.append(tdiv);
        epochPlots.push((e) => plot(tdiv, truthFigure(run, Math.min(e, tp.epochs.length - 1))));
      }
    }
    root.append(peaks);
    const setEpoch = (e) => {
      state.epoch = e;
      state.followLast = e >= maxEpochs - 1;
      slider.value = e;
      label.textContent = "epoch " + e + " of 0–" + Math.max(0, maxEpochs - 1);
      epochPlots.forEach((f) => f(e));
    };
    slider.addEventListener("input", () => setEpoch(Number(slider.value)));

    // every layer's colorful dimension, drawn when scrolled into view
    const pending = new Map();
    const observer = new IntersectionObserver((entries) => {
      for (const en of entries) if (en.isIntersecting && pending.has(en.target)) { pending.get(en.target)(); pending.delete(en.target); observer.unobserve(en.target); }
    }, { rootMargin: "400px" });
    state.observer = observer;
    for (const run of runs) root.append(layersSection(run, state, pending, observer));
    for (const run of runs) root.append(metaTable(run, payload));

    // finding links: set the epoch, show the layer
    root.onclick = (ev) => {
      const a = ev.target.closest && ev.target.closest("a.tp-link");
      if (!a) return;
      if (a.dataset.epoch !== undefined) setEpoch(Number(a.dataset.epoch));
      if (a.dataset.layer !== undefined) {
        const sel = document.getElementById(a.dataset.run + "-layer-picker");
        if (sel && sel.value !== "all" && sel.value !== a.dataset.layer) { sel.value = "all"; sel.dispatchEvent(new Event("change")); }
      }
    };
    setEpoch(state.epoch);
    window.scrollTo(0, scrollY);
    state.renderAll = () => { for (const [div, f] of pending) { f(); observer.unobserve(div); } pending.clear(); };
    return state;
  }

  function layersSection(run, state, pending, observer) {
    const sec = el("section", { class: "tp-section", id: run.id + "-layers" }, el("h2", { text: "Colorful dimension: every layer" + " · " + run.name }));
    const withData = run.layers.filter((l) => run.heatmaps[String(l.index)] && Object.keys(run.heatmaps[String(l.index)]).length);
    const phases = run.phases.filter((p) => withData.some((l) => run.heatmaps[String(l.index)][p]));
    if (!withData.length) { sec.append(el("p", { class: "tp-note", text: "No steps recorded yet." })); return sec; }
    if (!state.phase[run.id] || !phases.includes(state.phase[run.id])) state.phase[run.id] = phases[0];
    const phaseSel = el("select", { id: run.id + "-phase", "aria-label": "phase" }, phases.map((p) => el("option", { value: p, text: p, selected: p === state.phase[run.id] ? "" : null })));
    const picker = el("select", { id: run.id + "-layer-picker", class: "tp-layer-picker", "aria-label": "layer" },
      el("option", { value: "all", text: "all layers (" + withData.length + ")" }),
      withData.map((l) => el("option", { value: String(l.index), text: l.index + ": " + l.name + " (" + l.type + ", " + shape(l.shape) + ")" })));
    if (state.layer[run.id] !== undefined) picker.value = state.layer[run.id];
    sec.append(el("div", { class: "tp-controls" }, el("label", { text: "Layer " }), picker, el("label", { text: " Phase " }), phaseSel,
      el("span", { class: "tp-hint", text: " Colour: log count per step. Drag to zoom, double-click to reset. Blue lines: epoch starts; red: zero." })));
    const panels = [];
    for (const l of withData) {
      const div = el("div", { class: "tp-plot tp-heatmap", id: run.id + "-heatmap-" + l.index });
      const head = el("h3", {}, el("span", { class: "tp-layer-index", text: l.index }), " " + l.name + " ",
        el("span", { class: "tp-dim", text: l.type + " · " + shape(l.shape) }));
      const panel = el("div", { class: "tp-layer", id: run.id + "-layer-" + l.index, dataset: { layer: l.index } }, head, div);
      const draw = () => {
        const m = run.heatmaps[String(l.index)][state.phase[run.id]];
        if (!m) { window.Plotly && window.Plotly.purge(div); div.replaceChildren(el("p", { class: "tp-note", text: "no " + state.phase[run.id] + " steps for this layer" })); return; }
        if (div.querySelector(".tp-note")) div.replaceChildren();
        plot(div, heatmapFigure(run, l, state.phase[run.id], m));
        div.dataset.rendered = state.phase[run.id];
      };
      panels.push({ l, panel, div, draw });
      pending.set(div, draw);
      observer.observe(div);
      sec.append(panel);
    }
    const applyPicker = () => {
      state.layer[run.id] = picker.value;
      for (const p of panels) {
        const show = picker.value === "all" || picker.value === String(p.l.index);
        p.panel.hidden = !show;
        if (show && picker.value !== "all" && pending.has(p.div)) { pending.get(p.div)(); pending.delete(p.div); observer.unobserve(p.div); }
      }
    };
    picker.addEventListener("change", () => {
      applyPicker();
      if (picker.value !== "all") document.getElementById(run.id + "-layer-" + picker.value).scrollIntoView();
    });
    phaseSel.addEventListener("change", () => {
      state.phase[run.id] = phaseSel.value;
      for (const p of panels) if (p.div.dataset.rendered) p.draw();
    });
    applyPicker();
    return sec;
  }

  /* ---------------------------------------------------------------- loading the report */
  async function gunzip(id) {
    const b64 = document.getElementById(id).textContent.trim();
    const res = await fetch("data:application/octet-stream;base64," + b64);
    return await new Response(res.body.pipeThrough(new DecompressionStream("gzip"))).text();
  }

  async function boot() {
    const app = document.getElementById("tp-app");
    try {
      if (typeof DecompressionStream === "undefined") {
        throw new Error("this browser cannot unpack the report (it needs DecompressionStream: Chrome 80+, Firefox 113+, Safari 16.4+)");
      }
      const [js, json] = await Promise.all([gunzip("tp-plotly"), gunzip("tp-payload")]);
      const s = document.createElement("script");
      s.textContent = js;
      document.head.appendChild(s);
      const state = render(app, JSON.parse(json));
      window.twinpeaks.state = state;
      document.body.dataset.ready = "1";
    } catch (err) {
      app.replaceChildren(el("p", { class: "tp-error", text: "This twinpeaks report could not be shown: " + err.message }));
      throw err;
    }
  }

  window.twinpeaks = { render, boot, el, ptext, figures: { heatmapFigure, peaksFigure, classesFigure, truthFigure } };
})();
