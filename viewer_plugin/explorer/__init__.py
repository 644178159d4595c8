"""Orthanc Explorer extension: the AI result and Confirm / Relabel on each study page.

Runs inside Orthanc's Python plugin (Debian's Python, standard library only; the
``orthanc`` module is passed in, so tests use a fake). It registers:

* JavaScript (``orthanc.ExtendOrthancExplorer``) that, when Orthanc Explorer shows a
  study, adds a panel with radnode's result (status, score, label, model version) and,
  when there is a result to judge, the buttons Confirm and Relabel;
* two REST routes in Orthanc, ``/radnode/studies/{uid}/result`` (GET) and
  ``/radnode/studies/{uid}/feedback`` (POST), that forward to radnode's API with the
  plugin's own bearer token, so the page talks to its own origin (no CORS). The result
  comes with the study's judgements (``feedback``) and the finding labels
  (``vocabulary``, radnode's ``/api/labels``) the Relabel button chooses from.

Configuration, in Orthanc's configuration file (``Radnode`` section)::

    "Radnode": {"Url": "http://radnode-api:8080", "FeedbackToken": "<radiologist token>"}

Every Orthanc Explorer user judges as that token's holder (radnode records that name);
Orthanc's own users are not mapped to radnode users. Orthanc serves the routes behind its
own authentication.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

UID = r"([0-9]+(?:\.[0-9]+)*)"
RESULT_ROUTE = rf"/radnode/studies/{UID}/result"
FEEDBACK_ROUTE = rf"/radnode/studies/{UID}/feedback"
SCRIPT = Path(__file__).resolve().parent / "explorer.js"
MAX_BODY = 8192


@dataclass(frozen=True)
class FeedbackTarget:
    url: str
    token: str | None = None
    timeout_s: float = 30.0

    @classmethod
    def from_orthanc_config(cls, config: dict[str, Any]) -> FeedbackTarget:
        section = config.get("Radnode") or {}
        if not section.get("Url"):
            raise ValueError('the Orthanc configuration has no "Radnode": {"Url": ...} section')
        token = section.get("FeedbackToken") or section.get("Token")
        return cls(url=str(section["Url"]).rstrip("/"), token=token)


def _valid_uid(uid: str) -> bool:
    return len(uid) <= 64 and re.fullmatch(UID, uid) is not None


class ExplorerExtension:
    """The REST callbacks (``on_result``, ``on_feedback``) and the explorer's JavaScript."""

    def __init__(self, orthanc: Any, target: FeedbackTarget) -> None:
        self.orthanc = orthanc
        self.target = target

    def forward(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """One call to radnode's API; (status, JSON body). Network trouble is a 502."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        request = urllib.request.Request(
            f"{self.target.url}{path}", data=body, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=self.target.timeout_s) as response:
                return int(response.status), response.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except (urllib.error.URLError, OSError) as exc:
            detail = json.dumps({"detail": f"radnode unreachable: {type(exc).__name__}"})
            return 502, detail.encode()

    def _answer(self, output: Any, status: int, body: bytes) -> None:
        if status in (200, 201):
            output.AnswerBuffer(body, "application/json")
        else:
            output.SendHttpStatus(status, body, len(body))

    def on_result(self, output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "GET":
            output.SendMethodNotAllowed("GET")
            return
        uid = request["groups"][0]
        if not _valid_uid(uid):
            self._answer(output, 400, b'{"detail": "bad Study Instance UID"}')
            return
        status, body = self.forward("GET", f"/api/studies/{uid}/result")
        if status == 200:
            result = json.loads(body)
            status_fb, feedback = self.forward("GET", f"/api/studies/{uid}/feedback")
            result["feedback"] = json.loads(feedback).get("items", []) if status_fb == 200 else []
            status_labels, labels = self.forward("GET", "/api/labels")
            result["vocabulary"] = json.loads(labels) if status_labels == 200 else None
            body = json.dumps(result).encode()
        self._answer(output, status, body)

    def on_feedback(self, output: Any, uri: str, **request: Any) -> None:
        if request.get("method") != "POST":
            output.SendMethodNotAllowed("POST")
            return
        uid = request["groups"][0]
        body = request.get("body") or b""
        if isinstance(body, str):
            body = body.encode()
        if not _valid_uid(uid) or len(body) > MAX_BODY:
            self._answer(output, 400, b'{"detail": "bad request"}')
            return
        status, answer = self.forward("POST", f"/api/studies/{uid}/feedback", body)
        self._answer(output, status, answer)


def register(orthanc: Any) -> ExplorerExtension:
    """Register the routes and the Orthanc Explorer JavaScript (called by the entry script)."""
    target = FeedbackTarget.from_orthanc_config(json.loads(orthanc.GetConfiguration()))
    extension = ExplorerExtension(orthanc, target)
    orthanc.RegisterRestCallback(RESULT_ROUTE, extension.on_result)
    orthanc.RegisterRestCallback(FEEDBACK_ROUTE, extension.on_feedback)
    orthanc.ExtendOrthancExplorer(SCRIPT.read_text())
    orthanc.LogWarning(f"radnode explorer extension: results and feedback via {target.url}")
    return extension
