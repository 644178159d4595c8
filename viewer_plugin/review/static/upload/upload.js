// radnode upload page: DICOM by STOW-RS in chunks, .zip and JPEG/PNG by the upload API.
"use strict";

const CHUNK_FILES = 16;
const CHUNK_BYTES = 8 * 1024 * 1024;
const KNOWN_BATCH = 500;
const RETRIES = 12;

// PS3.18 10.5.3.1 / PS3.4 Annex B FailureReason values, in words.
const FAILURE_REASONS = {
  0xA700: "Out of resources: the node could not store it (too large, or its disk is full). Try again later or ask the administrator.",
  0xA900: "Data set does not match its SOP class, or its SOP Instance UID is already stored in another study or series.",
  0xC000: "Cannot understand: not a readable DICOM file (broken header, elements that do not decode, or pixel data of the wrong length).",
  0x0110: "Processing failure on the node.",
  0x0122: "SOP class not supported.",
  0x0124: "Refused: not authorized.",
  0xC122: "Referenced transfer syntax not supported.",
};
function explain(code) {
  return FAILURE_REASONS[code] || ("Refused (status 0x" + Number(code).toString(16).toUpperCase().padStart(4, "0") + ").");
}

const items = [];      // {file, name, kind, size, done, row, uid, state}
let running = false;
let pendingImages = [];

function statusLine(msg, isError) {
  const p = document.getElementById("status");
  text(p, msg);
  p.className = "message" + (isError ? " error" : "");
}

// -- the table and the progress bars ------------------------------------------------

function addRow(name, size) {
  const tr = document.createElement("tr");
  const tdName = document.createElement("td"); tdName.className = "name"; text(tdName, name);
  const tdBar = document.createElement("td");
  const bar = document.createElement("progress"); bar.max = 100; bar.value = 0; tdBar.appendChild(bar);
  const tdOut = document.createElement("td"); tdOut.className = "outcome"; text(tdOut, "waiting");
  const tdWhy = document.createElement("td"); tdWhy.className = "why";
  tr.append(tdName, tdBar, tdOut, tdWhy);
  tr.dataset.name = name;
  document.querySelector("#files tbody").appendChild(tr);
  return { tr, bar, tdOut, tdWhy, size };
}

function setProgress(item, fraction) {
  item.done = Math.max(item.done, Math.min(1, fraction));
  item.row.bar.value = Math.round(item.done * 100);
  updateTotal();
}

function finish(item, outcome, why) {
  item.state = outcome;
  setProgress(item, 1);
  text(item.row.tdOut, outcome);
  item.row.tdOut.className = "outcome " + outcome.split(" ")[0];
  item.row.tr.dataset.outcome = outcome;
  if (why) text(item.row.tdWhy, why);
}

function updateTotal() {
  const total = items.reduce((s, i) => s + Math.max(i.size, 1), 0);
  const done = items.reduce((s, i) => s + Math.max(i.size, 1) * i.done, 0);
  const pct = total ? Math.floor((done / total) * 100) : 0;
  const bar = document.getElementById("total-progress");
  bar.value = pct;
  const finished = items.filter((i) => i.state).length;
  text(document.getElementById("total-text"), pct + " % (" + finished + " of " + items.length + " files done)");
}

// -- reading what was dropped -------------------------------------------------------

function readEntries(reader) {
  return new Promise((resolve, reject) => reader.readEntries(resolve, reject));
}

async function walk(entry, prefix, out) {
  if (entry.isFile) {
    const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
    out.push({ file, name: prefix + file.name });
  } else if (entry.isDirectory) {
    const reader = entry.createReader();
    for (;;) {
      const batch = await readEntries(reader);
      if (!batch.length) break;
      for (const child of batch) await walk(child, prefix + entry.name + "/", out);
    }
  }
}

function isZip(file) { return /\.zip$/i.test(file.name) || file.type === "application/zip" || file.type === "application/x-zip-compressed"; }
function isImage(file) { return /^image\/(jpeg|png)$/.test(file.type) || /\.(jpe?g|png)$/i.test(file.name); }

// The SOP Instance UID of a Part 10 file, from its File Meta Information (explicit VR LE).
async function sopInstanceOf(file) {
  const head = new DataView(await file.slice(0, 4096).arrayBuffer());
  if (head.byteLength < 132) return null;
  const magic = String.fromCharCode(head.getUint8(128), head.getUint8(129), head.getUint8(130), head.getUint8(131));
  if (magic !== "DICM") return null;
  let at = 132;
  while (at + 8 <= head.byteLength) {
    const group = head.getUint16(at, true), element = head.getUint16(at + 2, true);
    if (group !== 0x0002) break;
    const vr = String.fromCharCode(head.getUint8(at + 4), head.getUint8(at + 5));
    let length, value;
    if (["OB", "OW", "OF", "SQ", "UT", "UN"].includes(vr)) { length = head.getUint32(at + 8, true); value = at + 12; }
    else { length = head.getUint16(at + 6, true); value = at + 8; }
    if (element === 0x0003) {
      let uid = "";
      for (let k = 0; k < length && value + k < head.byteLength; k++) {
        const c = head.getUint8(value + k);
        if (c) uid += String.fromCharCode(c);
      }
      return uid.trim() || "";
    }
    at = value + length;
  }
  return "";
}

async function accept(list) {
  const dicom = [];
  const images = [];
  for (const { file, name } of list) {
    const item = { file, name, size: file.size, done: 0, state: null, uid: null };
    item.row = addRow(name, file.size);
    items.push(item);
    if (isZip(file)) { item.kind = "zip"; continue; }
    if (isImage(file)) { item.kind = "image"; images.push(item); text(item.row.tdOut, "waiting for the form"); continue; }
    const uid = await sopInstanceOf(file);
    if (uid === null) { item.kind = "other"; finish(item, "skipped", "Not a DICOM file (no DICM prefix): skipped."); continue; }
    item.kind = "dicom"; item.uid = uid; dicom.push(item);
  }
  updateTotal();
  if (images.length) showImageForm(images);
  await run();
}

// -- DICOM by STOW-RS ---------------------------------------------------------------

async function knownOf(uids) {
  const known = new Set();
  for (let i = 0; i < uids.length; i += KNOWN_BATCH) {
    const body = JSON.stringify({ sop_instance_uids: uids.slice(i, i + KNOWN_BATCH) });
    const answer = await api("/api/upload/known", { method: "POST", headers: { "Content-Type": "application/json" }, body });
    for (const uid of answer.known) known.add(uid);
  }
  return known;
}

// Skip what the node has already (a resumed upload, or files sent twice).
async function skipKnown(list) {
  const uids = list.filter((i) => i.uid).map((i) => i.uid);
  const known = await knownOf(uids);
  const rest = [];
  for (const item of list) {
    if (item.uid && known.has(item.uid)) finish(item, "already stored", "The node has this instance already: not sent again.");
    else rest.push(item);
  }
  return rest;
}

function chunksOf(list) {
  const out = [];
  let cur = [], bytes = 0;
  for (const item of list) {
    if (cur.length && (cur.length >= CHUNK_FILES || bytes + item.size > CHUNK_BYTES)) { out.push(cur); cur = []; bytes = 0; }
    cur.push(item); bytes += item.size;
  }
  if (cur.length) out.push(cur);
  return out;
}

// One XHR (progress events, unlike fetch); resolves {status, body}, rejects on a dropped connection.
function send(method, url, body, headers, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(method, url);
    for (const [k, v] of Object.entries(authHeaders(headers))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (ev) => { if (ev.lengthComputable && onProgress) onProgress(ev.loaded, ev.total); };
    xhr.onload = () => {
      let parsed = null;
      try { parsed = JSON.parse(xhr.responseText); } catch (e) { parsed = null; }
      resolve({ status: xhr.status, body: parsed });
    };
    xhr.onerror = () => reject(new Error("connection lost"));
    xhr.ontimeout = () => reject(new Error("timed out"));
    xhr.send(body);
  });
}

function multipart(chunk, boundary) {
  const parts = [];
  for (const item of chunk) {
    parts.push("--" + boundary + "\r\nContent-Type: application/dicom\r\n\r\n", item.file, "\r\n");
  }
  parts.push("--" + boundary + "--\r\n");
  return new Blob(parts);
}

function uidOf(entry) { return entry && entry["00081155"] && entry["00081155"].Value ? entry["00081155"].Value[0] : null; }

function applyStowAnswer(chunk, body) {
  const byUid = new Map(chunk.map((i) => [i.uid, i]));
  for (const ref of (body && body["00081199"] && body["00081199"].Value) || []) {
    const item = byUid.get(uidOf(ref));
    if (item) { finish(item, "stored", ""); byUid.delete(item.uid); }
  }
  for (const bad of (body && body["00081198"] && body["00081198"].Value) || []) {
    const code = bad["00081197"] && bad["00081197"].Value ? bad["00081197"].Value[0] : 0x0110;
    const item = byUid.get(uidOf(bad)) || [...byUid.values()].find((i) => !i.state);
    if (item) { finish(item, "failed", "FailureReason 0x" + code.toString(16).toUpperCase() + ": " + explain(code)); byUid.delete(item.uid); }
  }
  for (const item of byUid.values()) if (!item.state) finish(item, "failed", "The node did not report this file.");
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

async function stowChunk(chunk) {
  for (let attempt = 0; ; attempt++) {
    const todo = attempt ? await skipKnown(chunk.filter((i) => !i.state)) : chunk;
    if (!todo.length) return;
    const boundary = "radnode-" + Math.random().toString(16).slice(2);
    const body = multipart(todo, boundary);
    const offsets = [];
    let acc = 0;
    for (const item of todo) { offsets.push([item, acc, acc + item.size]); acc += item.size; text(item.row.tdOut, "sending"); }
    try {
      const answer = await send("POST", "/dicom-web/studies", body, {
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=' + boundary,
        "Accept": "application/dicom+json",
      }, (loaded, total) => {
        const sent = loaded * acc / Math.max(total, 1);
        for (const [item, from, to] of offsets) setProgress(item, to > from ? (sent - from) / (to - from) : 1);
      });
      if (answer.status === 401 || answer.status === 403 || answer.status === 413 || answer.status === 415 || answer.status === 400) {
        const why = (answer.body && answer.body.detail) || ("HTTP " + answer.status);
        for (const item of todo) finish(item, "failed", "Refused: " + why);
        return;
      }
      if (answer.status >= 500 || answer.status === 408) throw new Error("HTTP " + answer.status);
      applyStowAnswer(todo, answer.body);
      return;
    } catch (e) {
      if (attempt >= RETRIES) { for (const item of todo) finish(item, "failed", "Upload failed: " + e.message); return; }
      const wait = Math.min(15000, 500 * 2 ** attempt);
      document.body.dataset.resumed = String(Number(document.body.dataset.resumed || 0) + 1);
      statusLine("Connection lost (" + e.message + "): resuming in " + Math.round(wait / 1000) + " s; instances already stored are skipped.");
      await sleep(wait);
    }
  }
}

// -- .zip and images by the upload API ----------------------------------------------

function addZipMembers(zipItem, files) {
  for (const f of files) {
    const row = addRow(zipItem.name + " / " + f.name, 0);
    const sub = { name: f.name, size: 0, done: 0, state: null, row };
    items.push(sub);
    const why = f.outcome === "failed" ? "FailureReason 0x" + f.failure_reason.toString(16).toUpperCase() + ": " + f.explanation : (f.explanation || "");
    finish(sub, f.outcome, why);
  }
}

async function sendFile(item, url, contentType) {
  for (let attempt = 0; ; attempt++) {
    text(item.row.tdOut, "sending");
    try {
      const answer = await send("POST", url, item.file, { "Content-Type": contentType }, (loaded, total) => setProgress(item, loaded / Math.max(total, 1)));
      if (answer.status >= 500 || answer.status === 408) throw new Error("HTTP " + answer.status);
      return answer;
    } catch (e) {
      if (attempt >= RETRIES) return { status: 0, body: { detail: e.message } };
      const wait = Math.min(15000, 500 * 2 ** attempt);
      statusLine("Connection lost (" + e.message + "): resuming in " + Math.round(wait / 1000) + " s.");
      await sleep(wait);
    }
  }
}

async function sendZip(item) {
  const answer = await sendFile(item, "/api/upload/zip", "application/zip");
  if (answer.status !== 200) {
    finish(item, "failed", "Zip refused: " + ((answer.body && answer.body.detail) || ("HTTP " + answer.status)));
    return;
  }
  const counts = answer.body.counts || {};
  finish(item, "stored", Object.entries(counts).map(([k, v]) => v + " " + k).join(", "));
  addZipMembers(item, answer.body.files || []);
}

function showImageForm(images) {
  pendingImages = pendingImages.concat(images);
  text(document.getElementById("image-count"), String(pendingImages.length));
  document.getElementById("image-form").hidden = false;
}

async function sendImages(ev) {
  ev.preventDefault();
  const err = document.getElementById("image-error");
  const patientId = document.getElementById("f-patient-id").value.trim();
  if (!patientId) { text(err, "A patient ID is required."); return; }
  text(err, "");
  const list = pendingImages;
  pendingImages = [];
  document.getElementById("image-form").hidden = true;
  let studyUid = null;
  for (const item of list) {
    const q = new URLSearchParams({
      patient_id: patientId,
      patient_name: document.getElementById("f-patient-name").value.trim(),
      study_description: document.getElementById("f-study-description").value.trim(),
      modality: document.getElementById("f-modality").value,
      body_part: document.getElementById("f-body-part").value.trim().toUpperCase(),
    });
    if (studyUid) q.set("study_uid", studyUid);
    const type = /png$/i.test(item.file.type || item.name) ? "image/png" : "image/jpeg";
    const answer = await sendFile(item, "/api/upload/image?" + q.toString(), type);
    if (answer.status !== 200) {
      finish(item, "failed", "Refused: " + ((answer.body && answer.body.detail) || ("HTTP " + answer.status)));
      continue;
    }
    const [f] = answer.body.files;
    if (f.outcome === "failed") finish(item, "failed", "FailureReason 0x" + f.failure_reason.toString(16).toUpperCase() + ": " + f.explanation);
    else { studyUid = studyUid || f.study_uid; finish(item, "stored", "Stored as " + f.sop_instance_uid); }
  }
  checkDone();
}

// -- the run ------------------------------------------------------------------------

function checkDone() {
  updateTotal();
  const open = items.filter((i) => !i.state).length;
  if (!open && items.length) {
    const failed = items.filter((i) => i.state === "failed").length;
    const skipped = items.filter((i) => i.state === "skipped").length;
    statusLine("Done: " + (items.length - failed - skipped) + " stored, " + failed + " failed, " + skipped + " skipped. The results appear in the worklist once analysed.", failed > 0);
    document.body.dataset.done = "true";
  } else {
    document.body.dataset.done = "false";
  }
}

async function run() {
  if (running) return;
  running = true;
  document.body.dataset.done = "false";
  try {
    for (;;) {
      const dicom = items.filter((i) => i.kind === "dicom" && !i.state && !i.queued);
      const zips = items.filter((i) => i.kind === "zip" && !i.state && !i.queued);
      if (!dicom.length && !zips.length) break;
      for (const i of dicom.concat(zips)) i.queued = true;
      if (dicom.length) {
        statusLine("Checking which instances the node has already ...");
        const rest = await skipKnown(dicom);
        statusLine("Uploading ...");
        for (const chunk of chunksOf(rest)) await stowChunk(chunk);
      }
      for (const zip of zips) await sendZip(zip);
    }
  } catch (e) {
    statusLine("Upload stopped: " + e.message, true);
  } finally {
    running = false;
    checkDone();
  }
}

// -- wiring -------------------------------------------------------------------------

async function checkAccess() {
  const who = document.getElementById("who");
  document.getElementById("signin-go").onclick = () => {
    sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value.trim());
    location.reload();
  };
  document.getElementById("signout").onclick = () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); };
  try {
    await api("/api/upload/known", { method: "POST", headers: { "Content-Type": "application/json" }, body: '{"sop_instance_uids": []}' });
    text(who, token() ? "Signed in" : "Authentication off (demo)");
    document.body.dataset.ready = "true";
  } catch (e) {
    if (e.status === 401) { document.getElementById("signin").style.display = "flex"; text(who, "Not signed in"); }
    else { text(who, "Not allowed to upload (" + e.message + ")"); }
    document.getElementById("drop").hidden = true;
    document.body.dataset.ready = "refused";
    throw e;
  }
}

function picked(input) {
  const list = [...input.files].map((file) => ({ file, name: file.webkitRelativePath || file.name }));
  input.value = "";
  accept(list);
}

const drop = document.getElementById("drop");
drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", async (ev) => {
  ev.preventDefault();
  drop.classList.remove("over");
  const entries = [...ev.dataTransfer.items].map((i) => i.webkitGetAsEntry && i.webkitGetAsEntry()).filter(Boolean);
  const list = [];
  if (entries.length) for (const e of entries) await walk(e, "", list);
  else for (const file of ev.dataTransfer.files) list.push({ file, name: file.name });
  accept(list);
});
document.getElementById("pick-files").addEventListener("change", (ev) => picked(ev.target));
document.getElementById("pick-folder").addEventListener("change", (ev) => picked(ev.target));
document.getElementById("image-form").addEventListener("submit", sendImages);
checkAccess().catch(() => {});
