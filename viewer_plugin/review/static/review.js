// radnode review UI: the review page of one study.
"use strict";
const studyUid = new URLSearchParams(location.search).get("study") || "";
let result = null;   // the model result shown and judged
let study = null;    // GET /api/studies/{uid}/result: the lead result and every model's
let me = null;

function show(msg, isError) {
  const el = document.getElementById("message");
  el.className = "message" + (isError ? " error" : "");
  text(el, msg);
}

// The finding's mark (details.location: image pixel coordinates, the top left corner of
// the top left pixel at 0,0) over the thumbnail of the image it is on: an SVG whose
// viewBox is the image's matrix, stretched over the rendered image.
function drawMark(location) {
  const mark = document.getElementById("ai-mark");
  mark.hidden = true;
  if (!location) return;
  const w = location.columns, h = location.rows, x = location.column, y = location.row;
  const r = Math.max(w, h) / 24;
  mark.setAttribute("viewBox", "0 0 " + w + " " + h);
  const circle = mark.querySelector("circle");
  circle.setAttribute("cx", x); circle.setAttribute("cy", y); circle.setAttribute("r", r);
  const [across, down] = mark.querySelectorAll("line");
  for (const [el, x1, y1, x2, y2] of [[across, x - 2 * r, y, x - r, y], [down, x, y - 2 * r, x, y - r]]) {
    el.setAttribute("x1", x1); el.setAttribute("y1", y1); el.setAttribute("x2", x2); el.setAttribute("y2", y2);
  }
  mark.dataset.column = x;
  mark.dataset.row = y;
  mark.hidden = false;
}

async function thumbnail(series, instance, location) {
  const frame = location && location.frame_number ? "/frames/" + location.frame_number : "";
  const url = "/dicom-web/studies/" + studyUid + "/series/" + series + "/instances/" + instance + frame + "/rendered";
  const r = await fetch(url, { headers: authHeaders({ Accept: "image/png" }) });
  if (!r.ok) return;
  const img = document.getElementById("ai-slice");
  img.src = URL.createObjectURL(await r.blob());
  img.dataset.sopInstanceUid = instance;
  drawMark(location && location.sop_instance_uid === instance ? location : null);
}

function showReview(items) {
  const model = result && result.model;
  const mine = items.filter((f) => !model || !f.model_name || f.model_name === model);
  if (!mine.length) { text(document.getElementById("ai-review"), "unreviewed"); return; }
  const f = mine[0];
  text(document.getElementById("ai-review"),
    f.decision + ": " + f.label + " by " + f.observer_name + " at " + f.created_at);
}

async function send(body) {
  body.sr_sop_instance_uid = result.sr_sop_instance_uid;
  if (result.model) body.model = result.model;
  try {
    const rec = await api("/api/studies/" + encodeURIComponent(studyUid) + "/feedback", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    showReview([rec]);
    const msg = document.getElementById("message");
    show((rec.created ? "Recorded" : "Already recorded") + ": " + rec.decision + " (" + rec.label + "), SR " + rec.sr_sop_instance_uid);
    msg.dataset.srUid = rec.sr_sop_instance_uid;
    msg.dataset.done = "true";
  } catch (e) {
    show(e.message, true);
  }
}

// One model's result in the panel: its score, label, driving image, review and labels.
async function showResult(r) {
  result = r;
  text(document.getElementById("ai-status"), result.status);
  text(document.getElementById("ai-score"), fmtScore(result.score));
  text(document.getElementById("ai-label"), result.label);
  text(document.getElementById("ai-model"), result.model_version);
  const d = result.details || {};
  drawMark(null);
  if (d.series_uid && d.location) thumbnail(d.series_uid, d.location.sop_instance_uid, d.location);
  else if (d.series_uid && d.driving_sop_instance_uid) thumbnail(d.series_uid, d.driving_sop_instance_uid);
  else if (d.series_uid && d.evidence_sop_instance_uids && d.evidence_sop_instance_uids.length)
    thumbnail(d.series_uid, d.evidence_sop_instance_uids[0]);
  showReview((await api("/api/studies/" + encodeURIComponent(studyUid) + "/feedback")).items);
  const judged = result.status === "done" || result.status === "out_of_scope";
  document.getElementById("actions").hidden = !(me.may_give_feedback && judged);
  show("");
  if (me.may_give_feedback && judged) {
    const select = document.getElementById("relabel-label");
    select.replaceChildren();
    const labels = (d.labels && d.labels.length) ? d.labels : (await findingLabels()).labels;
    for (const label of labels) {
      if (label === result.label) continue;
      const o = document.createElement("option");
      o.value = label;
      text(o, label);
      select.appendChild(o);
    }
  } else if (!judged) {
    show("No AI result to judge yet (" + result.status + ").");
  }
}

async function load(who) {
  me = who;
  study = await api("/api/studies/" + encodeURIComponent(studyUid) + "/result");
  const models = study.results || [];
  if (models.length > 1) {
    const select = document.getElementById("ai-model-select");
    for (const r of models) {
      const o = document.createElement("option");
      o.value = r.model;
      text(o, r.model + ": " + (r.label || r.status) + " " + fmtScore(r.score));
      select.appendChild(o);
    }
    select.value = study.model;
    select.onchange = () => showResult(models.find((r) => r.model === select.value));
    document.getElementById("ai-models").hidden = false;
  }
  if (me.ohif_url) {
    // OHIF sends no token itself: radnode gives the viewer an HttpOnly session cookie.
    if (me.auth_enabled) await api("/api/viewer-session", { method: "POST" });
    const frame = document.getElementById("ohif");
    frame.src = me.ohif_url + "/viewer?StudyInstanceUIDs=" + encodeURIComponent(studyUid);
    frame.hidden = false;
  } else {
    document.getElementById("no-viewer").hidden = false;
  }
  await showResult(study);
  document.body.dataset.loaded = "true";
}

// The next study of the worklist's default view (unreviewed, highest AI score first).
async function nextStudy() {
  const data = await api("/api/worklist?reviewed=false&limit=200");
  const uids = data.items.map((i) => i.study_uid);
  const at = uids.indexOf(studyUid);
  const next = at >= 0 ? uids[at + 1] : uids.find((u) => u !== studyUid);
  if (next) location.href = "review.html?study=" + encodeURIComponent(next);
  else show("No other unreviewed study.");
}

function openRelabel() {
  document.getElementById("relabel-form").hidden = false;
  document.getElementById("relabel-label").focus();
}

// C confirm, R relabel, N next study; not while typing, not with a modifier key.
function shortcut(ev) {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.repeat) return;
  const t = ev.target;
  if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) return;
  const judging = !document.getElementById("actions").hidden;
  const key = ev.key.toLowerCase();
  if (key === "c" && judging) document.getElementById("confirm").click();
  else if (key === "r" && judging) openRelabel();
  else if (key === "n") nextStudy().catch((e) => show(e.message, true));
  else return;
  ev.preventDefault();
}

document.getElementById("confirm").onclick = () => send({ decision: "confirm" });
document.getElementById("relabel").onclick = openRelabel;
document.getElementById("next").onclick = () => nextStudy().catch((e) => show(e.message, true));
document.addEventListener("keydown", shortcut);
document.getElementById("relabel-save").onclick = () => send({
  decision: "relabel",
  label: document.getElementById("relabel-label").value,
  comment: document.getElementById("relabel-comment").value,
});
signIn().then(load).catch((e) => show(e.message, true));
