// radnode review UI: shared helpers (token, API calls, sign-in line).
"use strict";

const TOKEN_KEY = "radnode.token";

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}

async function api(path, options) {
  const opts = Object.assign({}, options || {});
  opts.headers = authHeaders(opts.headers);
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  if (!r.ok) {
    const err = new Error((body && body.detail) ? String(body.detail) : ("HTTP " + r.status));
    err.status = r.status;
    throw err;
  }
  return body;
}

// The finding labels and the positive one (GET /api/labels), fetched once per page.
let labelsAnswer = null;
function findingLabels() {
  if (!labelsAnswer) labelsAnswer = api("/api/labels");
  return labelsAnswer;
}

function text(el, value) { el.textContent = value === null || value === undefined ? "" : String(value); }

function fmtScore(s) { return (s === null || s === undefined) ? "-" : Number(s).toFixed(3); }

function fmtDate(d) { return d && d.length === 8 ? d.slice(0, 4) + "-" + d.slice(4, 6) + "-" + d.slice(6) : (d || ""); }

// Shows who is signed in; offers a token box when the API wants one. Resolves to whoami.
async function signIn() {
  const who = document.getElementById("who");
  const box = document.getElementById("signin");
  const input = document.getElementById("token");
  document.getElementById("signin-go").onclick = () => {
    sessionStorage.setItem(TOKEN_KEY, input.value.trim());
    location.reload();
  };
  document.getElementById("signout").onclick = () => {
    sessionStorage.removeItem(TOKEN_KEY);
    // and the embedded viewer's session cookie
    fetch("/api/viewer-session", { method: "DELETE" }).finally(() => location.reload());
  };
  try {
    const me = await api("/api/whoami");
    text(who, "Signed in as " + me.observer_name + (me.role ? " (" + me.role + ")" : "") +
      (me.auth_enabled ? "" : " [demo: authentication off]"));
    who.dataset.user = me.user;
    return me;
  } catch (e) {
    box.style.display = "flex";
    text(who, e.status === 401 ? "Not signed in" : "Not allowed: " + e.message);
    throw e;
  }
}
