/* twinpeaks serve: the run list, and the selected run drawn by report.js, kept up to date by polling. */
(function () {
  "use strict";
  const el = window.twinpeaks.el;
  const POLL_MS = 1500;
  const app = document.getElementById("tp-app");
  const list = document.getElementById("tp-runlist");
  const statusLine = document.getElementById("tp-status");
  let current = null;   // path of the run shown
  let shownStamp = null;
  let state = {};
  let busy = false;
  let listedAt = 0;
  let listedPath = null;
  const LIST_MS = 5000;

  async function getJSON(url) {
    const res = await fetch(url, { cache: "no-store" });
    let body = null;
    try { body = await res.json(); } catch (e) { body = { error: "bad answer from the server (" + res.status + ")" }; }
    if (!res.ok) throw new Error(body && body.error ? body.error : "HTTP " + res.status);
    return body;
  }

  function selected() { return decodeURIComponent((location.hash.match(/^#run=(.*)$/) || [])[1] || ""); }

  async function refreshList() {
    const data = await getJSON("/api/runs");
    list.replaceChildren(...data.runs.map((r) => el("li", {},
      el("a", { href: "#run=" + encodeURIComponent(r.path), class: r.path === current ? "tp-active" : "", dataset: { path: r.path } },
        r.path,
        el("span", { class: "tp-run-info" + (r.error ? " tp-run-error" : ""), text: r.error ? "error: " + r.error : r.epochs + " epochs · " + Object.entries(r.steps).map(([p, n]) => p + " " + n).join(", ") })))));
    if (!data.runs.length) list.replaceChildren(el("li", { class: "tp-note", text: "No .tp run files here yet." }));
    if (!selected() && data.runs.length && !current) location.hash = "#run=" + encodeURIComponent(data.newest || data.runs[0].path);
  }

  function showError(path, msg) {
    app.replaceChildren(el("h1", { text: path }), el("p", { class: "tp-error", id: "tp-run-error", text: "This run cannot be shown: " + msg }));
    shownStamp = null;
  }

  async function poll() {
    if (busy || (document.hidden && shownStamp !== null)) return;  // a hidden tab stops polling
    busy = true;
    try {
      const path = selected();
      if (path !== current) { current = path; shownStamp = null; state = {}; }
      if (path !== listedPath || Date.now() - listedAt > LIST_MS) {
        await refreshList();
        listedAt = Date.now();
        listedPath = path;
      }
      if (current) {
        let st = null;
        try { st = await getJSON("/api/status?path=" + encodeURIComponent(current)); } catch (e) { showError(current, e.message); }
        if (st && st.stamp !== shownStamp) {
          let payload = null;
          try { payload = await getJSON("/api/run?path=" + encodeURIComponent(current)); } catch (e) { showError(current, e.message); }
          if (payload && current === path && payload.stamp !== shownStamp) {
            state = window.twinpeaks.render(app, payload, state);
            shownStamp = payload.stamp;
            window.twinpeaks.state = state;
          }
        }
      }
      statusLine.textContent = "updated " + new Date().toLocaleTimeString() + " · live";
      document.body.dataset.ready = "1";
    } catch (e) {
      statusLine.textContent = "server unreachable: " + e.message;
    } finally {
      busy = false;
    }
  }

  window.addEventListener("hashchange", poll);
  document.addEventListener("visibilitychange", poll);
  poll();
  setInterval(poll, POLL_MS);
})();
