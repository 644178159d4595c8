// radnode monitoring dashboard: charts (SVG drawn by the server) and drift alerts from
// GET /api/monitoring, for admins.
"use strict";

function pct(v) { return (v === null || v === undefined) ? "-" : Math.round(v * 100) + " %"; }

function driftLine(d) {
  if (!d) return "";
  const parts = [d.studies + " studies in the window of " + d.window];
  parts.push("positive rate " + pct(d.positive_rate) + (d.band ? " (expected " + pct(d.band[0]) + "-" + pct(d.band[1]) + ")" : ""));
  parts.push("agreement " + pct(d.agreement) + " of " + d.judgements + " judgements");
  for (const [k, v] of Object.entries(d.psi || {})) parts.push("PSI " + k + " " + v.toFixed(2));
  return parts.join("; ");
}

async function show(period) {
  const status = document.getElementById("status");
  for (const b of document.querySelectorAll("#periods button")) {
    b.classList.toggle("active", b.dataset.period === period);
  }
  text(status, "Loading ...");
  let data;
  try {
    data = await api("/api/monitoring?period=" + encodeURIComponent(period));
  } catch (e) {
    text(status, e.status === 403 ? "Not allowed: the dashboard is for admins." : "Error: " + e.message);
    status.className = "error";
    document.getElementById("models").replaceChildren();
    return;
  }
  status.className = "";
  text(status, "From " + data.start.slice(0, 16).replace("T", " ") + " to " + data.end.slice(0, 16).replace("T", " ") + " UTC");
  const alerts = document.getElementById("alerts");
  const list = document.getElementById("alert-list");
  list.replaceChildren();
  for (const a of data.alerts) {
    const li = document.createElement("li");
    li.className = "alert";
    li.dataset.model = a.model;
    li.dataset.check = a.check;
    text(li, a.model + ": " + a.message);
    list.appendChild(li);
  }
  alerts.hidden = data.alerts.length === 0;
  const models = document.getElementById("models");
  models.replaceChildren();
  for (const m of data.models) {
    const box = document.createElement("section");
    box.className = "model";
    box.dataset.model = m.model;
    const h = document.createElement("h2");
    text(h, m.model + (m.version ? " " + m.version : "") + ": " + m.totals.done + " done, " + m.totals.failed + " failed, " + m.totals.out_of_scope + " out of scope");
    const p = document.createElement("p");
    p.className = "drift";
    text(p, driftLine(m.drift));
    const charts = document.createElement("div");
    charts.className = "charts";
    for (const svg of m.charts) {
      const c = document.createElement("div");
      c.className = "chart-box";
      // server-drawn SVG: every text in it is escaped by the server
      c.innerHTML = svg;
      charts.appendChild(c);
    }
    box.append(h, p, charts);
    models.appendChild(box);
  }
  showStorage(data.storage);
}

function showStorage(st) {
  const box = document.getElementById("storage");
  if (!st) { box.hidden = true; return; }
  const gib = (b) => (b / 1073741824).toFixed(1) + " GiB";
  const kept = Object.entries(st.studies_kept).map(([k, v]) => v + " " + k.replace(/_/g, " ")).join(", ");
  text(document.getElementById("storage-summary"),
    (st.enabled ? "Retention on" : "Retention off") + ": " + gib(st.reclaimed_bytes) + " reclaimed, " +
    st.studies_deleted + " studies deleted in the period; kept: " + (kept || "none") +
    "; disk " + gib(st.disk.used_bytes) + " of " + gib(st.disk.total_bytes) + " in use");
  const charts = document.getElementById("storage-charts");
  charts.replaceChildren();
  for (const svg of st.charts) {
    const c = document.createElement("div");
    c.className = "chart-box";
    c.innerHTML = svg;  // server-drawn SVG, its text escaped by the server
    charts.appendChild(c);
  }
  box.hidden = false;
}

window.addEventListener("DOMContentLoaded", async () => {
  for (const b of document.querySelectorAll("#periods button")) {
    b.onclick = () => show(b.dataset.period);
  }
  try { await signIn(); } catch (e) { return; }
  show("24h");
});
