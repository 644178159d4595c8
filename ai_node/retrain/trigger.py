"""The label-count trigger: start a retraining run when enough new labels have arrived.

``radnode serve`` and ``radnode worker`` start one :class:`LabelTrigger` when
``retraining_trigger_labels`` is above 0. Every ``retraining_check_s`` it looks at each
active model whose card says ``trainable: true``, counts the feedback on that model's
results recorded since that model's newest run (``labels_upto``) and, at the threshold,
starts ``radnode retrain --model NAME --trigger labels`` as a child process (training
never runs in the serving process). One run at a time: it starts nothing while its child
or any other recorded run is still running, and the next model due waits for the next
check; with several worker replicas, enable it on one of them.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading

from ai_node.registry import ModelRegistry, RegistryError
from ai_node.retrain.labels import label_count_since
from ai_node.retrain.local import retrain_command
from ai_node.retrain.runs import RunStore
from radnode_core.node import Node
from radnode_core.settings import Settings

logger = logging.getLogger(__name__)


def child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus the settings a CLI flag may have set, so the child
    opens the same data dir, index and registry."""
    env = dict(os.environ)
    config_file = settings.model_config.get("toml_file")
    if config_file:  # given as --config: the child reads the same file
        env["RADNODE_CONFIG"] = str(config_file)
    env["RADNODE_DATA_DIR"] = str(settings.data_dir)
    if settings.database_url:
        env["RADNODE_DATABASE_URL"] = settings.database_url
    if settings.models_dir is not None:
        env["RADNODE_MODELS_DIR"] = str(settings.models_dir)
    env["RADNODE_HTTP_PORT"] = str(settings.http_port)
    env["RADNODE_HOST"] = settings.host
    return env


class LabelTrigger:
    @classmethod
    def for_node(cls, node: Node) -> LabelTrigger | None:
        """The trigger of ``node`` when its settings enable one (serve and worker run it)."""
        if node.settings.retraining_trigger_labels <= 0:
            return None
        return cls(node)

    def __init__(self, node: Node) -> None:
        self.node = node
        self.runs = RunStore(node.index)
        self.threshold = int(node.settings.retraining_trigger_labels)
        self.interval_s = float(node.settings.retraining_check_s)
        self.child: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def trainable_models(self) -> list[str]:
        """The active models whose cards say ``trainable: true``, by name."""
        registry = ModelRegistry(self.node.settings.models_dir)
        names = []
        for name, version in sorted(registry.active().items()):
            try:
                if registry.model_card(name, version).trainable:
                    names.append(name)
            except RegistryError:
                logger.warning("model card unreadable", extra={"model": name})
        return names

    def due_model(self) -> str | None:
        """The first trainable model whose own new labels reached the threshold, when no
        run is going on; else None."""
        if self.threshold <= 0:
            return None
        if self.child is not None and self.child.poll() is None:
            return None
        if self.runs.running():
            return None
        for name in self.trainable_models():
            since = self.runs.labels_upto(name)
            if label_count_since(self.node.index, since, name) >= self.threshold:
                return name
        return None

    def due(self) -> bool:
        """True when some trainable model's threshold is reached and no run is going on."""
        return self.due_model() is not None

    def check(self) -> bool:
        """Start a run if one is due; True when one was started."""
        model = self.due_model()
        if model is None:
            return False
        self.child = subprocess.Popen(
            retrain_command("labels", model),
            env=child_environment(self.node.settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        logger.info(
            "retraining started by the label count",
            extra={"pid": self.child.pid, "model": model},
        )
        return True

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # database unavailable: try again next time
                logger.exception("retraining trigger check failed")

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name="radnode-retrain-trigger", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
