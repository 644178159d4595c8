// radnode: the AI result and Confirm / Relabel on Orthanc Explorer's study page.
// Orthanc Explorer 1 (jQuery Mobile); "../" is the REST root (the explorer lives in app/).
(function () {
  "use strict";

  function esc(s) { return $("<div>").text(s === null || s === undefined ? "" : String(s)).html(); }

  function panel() {
    var p = $("#radnode-ai");
    if (!p.length) {
      p = $('<div id="radnode-ai" style="padding:0.6em;margin:0.6em 0;border:1px solid #888;border-radius:6px"></div>');
      p.insertBefore($("#study-info").closest("ul").length ? $("#study-info").closest("ul") : $("#study .ui-content").children().first());
    }
    return p;
  }

  function render(studyUid, r) {
    var p = panel();
    var judged = r.status === "done" || r.status === "out_of_scope";
    var html = '<h3 style="margin:0 0 0.4em 0">radnode AI result</h3>' +
      '<div>Status: <b id="radnode-status">' + esc(r.status) + "</b></div>" +
      '<div>Score: <b id="radnode-score">' + (r.score === null || r.score === undefined ? "-" : Number(r.score).toFixed(3)) + "</b></div>" +
      '<div>Label: <b id="radnode-label">' + esc(r.label) + "</b></div>" +
      '<div>Model: <span id="radnode-model">' + esc(r.model_version) + "</span></div>";
    var fb = (r.feedback || [])[0];
    html += '<div>Review: <span id="radnode-review">' + (fb ? esc(fb.decision + ": " + fb.label + " by " + fb.observer_name) : "unreviewed") + "</span></div>";
    // The label to relabel as: the positive one, or from the positive to the other one.
    var vocabulary = r.vocabulary || { labels: [], positive: null };
    var other = r.label !== vocabulary.positive ? vocabulary.positive :
      vocabulary.labels.filter(function (l) { return l !== vocabulary.positive; })[0];
    if (judged) {
      html += '<div style="margin-top:0.5em"><button id="radnode-confirm" data-role="none">Confirm</button>' +
        (other ? ' <button id="radnode-relabel" data-role="none">Relabel as ' + esc(other) + "</button>" : "") +
        "</div>";
    }
    html += '<div id="radnode-message" style="word-break:break-all"></div>';
    p.html(html);
    function send(body) {
      body.sr_sop_instance_uid = r.sr_sop_instance_uid;
      $.ajax({
        url: "../radnode/studies/" + studyUid + "/feedback", type: "POST",
        contentType: "application/json", data: JSON.stringify(body), dataType: "json",
        success: function (rec) {
          $("#radnode-review").text(rec.decision + ": " + rec.label + " by " + rec.observer_name);
          $("#radnode-message").text("Recorded: " + rec.decision + ", SR " + rec.sr_sop_instance_uid)
            .attr("data-done", "true").attr("data-sr-uid", rec.sr_sop_instance_uid);
        },
        error: function (xhr) {
          var detail = xhr.responseText;
          try { detail = JSON.parse(xhr.responseText).detail; } catch (e) { /* keep text */ }
          $("#radnode-message").text("Not recorded: " + detail).attr("data-error", "true");
        }
      });
    }
    $("#radnode-confirm").click(function () { send({ decision: "confirm" }); });
    $("#radnode-relabel").click(function () { send({ decision: "relabel", label: other }); });
  }

  $("#study").live("pagebeforeshow", function () {
    if (!$.mobile.pageData || !$.mobile.pageData.uuid) { return; }
    $("#radnode-ai").remove();
    $.ajax({
      url: "../studies/" + $.mobile.pageData.uuid, dataType: "json",
      success: function (study) {
        var uid = study.MainDicomTags.StudyInstanceUID;
        $.ajax({
          url: "../radnode/studies/" + uid + "/result", dataType: "json",
          success: function (r) { render(uid, r); },
          error: function (xhr) { panel().html("radnode: no AI result (" + xhr.status + ")").attr("data-status", xhr.status); }
        });
      }
    });
  });
})();
