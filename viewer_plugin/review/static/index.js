// radnode review UI: the worklist page.
"use strict";
let vocabulary = null;
function ymd(v) { return v ? v.replaceAll("-", "") : ""; }

async function labelFilter() {
  vocabulary = await findingLabels();
  const select = document.getElementById("f-label");
  for (const label of vocabulary.labels) {
    const o = document.createElement("option");
    o.value = label;
    text(o, label === vocabulary.positive ? "positive (" + label + ")" : label);
    select.appendChild(o);
  }
}

async function load() {
  const q = new URLSearchParams();
  const reviewed = document.getElementById("f-reviewed").value;
  const label = document.getElementById("f-label").value;
  if (reviewed) q.set("reviewed", reviewed);
  if (label) q.set("label", label);
  if (ymd(document.getElementById("f-from").value)) q.set("date_from", ymd(document.getElementById("f-from").value));
  if (ymd(document.getElementById("f-to").value)) q.set("date_to", ymd(document.getElementById("f-to").value));
  q.set("limit", "200");
  const tbody = document.querySelector("#worklist tbody");
  const data = await api("/api/worklist?" + q.toString());
  tbody.replaceChildren();
  for (const item of data.items) {
    const tr = document.createElement("tr");
    const flagged = (item.flagged_by || []).length > 0 || item.label === vocabulary.positive;
    tr.className = "study" + (flagged ? " positive" : "");
    tr.dataset.studyUid = item.study_uid;
    const cells = [
      [fmtScore(item.score), "score"],
      [item.label + (item.model && item.models && item.models.length > 1 ? " (" + item.model + ")" : ""), "label"],
      [item.status, "status"],
      [(item.flagged_by || []).join(", "), "flagged"],
      [item.review ? item.review.decision + " (" + item.review.label + ")" : "unreviewed", "review"],
      [(item.patient_name || "") + " " + (item.patient_id ? "[" + item.patient_id + "]" : ""), "patient"],
      [fmtDate(item.study_date), "date"], [item.study_description, "description"],
      [item.accession_number, "accession"],
    ];
    for (const [value, cls] of cells) {
      const td = document.createElement("td");
      td.className = cls;
      text(td, value);
      tr.appendChild(td);
    }
    const td = document.createElement("td");
    const a = document.createElement("a");
    a.href = "review.html?study=" + encodeURIComponent(item.study_uid);
    a.className = "open";
    text(a, "Open");
    td.appendChild(a);
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
  text(document.getElementById("summary"), data.total + " studies, highest AI score (over all models) first");
  document.body.dataset.loaded = "true";
}

document.getElementById("filters").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
// The dashboard is the admins' (the API answers others 403).
function adminLinks(me) {
  document.getElementById("dashboard-link").hidden = me.auth_enabled && me.role !== "admin";
  return me;
}

signIn().then(adminLinks).then(labelFilter).then(load).catch((e) => { text(document.getElementById("summary"), e.message); });
