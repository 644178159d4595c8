"""The retraining loop: radiologist labels -> de-identified dataset -> train -> evaluate ->
promote (docs/retraining.md).

Each step is a plain function in its own module, testable without kfp: :mod:`.export`
(with :mod:`.deid` and :mod:`.split`), :mod:`.prepare`, :mod:`.finetune`,
:mod:`.evaluate`, :mod:`.promote`. :mod:`.components` wraps them as kfp v2 components,
:mod:`.pipeline` wires them; :mod:`.local` runs the pipeline (kfp.local or a KFP host),
:mod:`.runs` records runs, :mod:`.trigger` starts runs when labels accumulate.
"""

STEPS = ("export", "preprocess", "train", "evaluate", "promote")
"""Step names, in order, as kfp names the tasks (``<name>-op``); here, not in
:mod:`.pipeline`, so the run records and the API need not import kfp."""
