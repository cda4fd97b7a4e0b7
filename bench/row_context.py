"""What a table row may use: ``RowContext``.

A row is any object built as ``factory()`` (a gin reference, e.g. ``@stage2/FinetuneRow``) with
``run(context: RowContext) -> metrics``. The runner hands it one context per row and seed, and the row
reaches everything through it, nothing else:

- its identity and data: ``row``, ``seed`` (the runner has seeded every global generator with it; steps
  derive their own seeds from it, ``infra.seeding``), ``dataset``, ``train_split``, ``eval_split``;
- the whole scenes of a split (``scenes``, cached on disk; ``scene_folder`` names them without making them);
- where its steps cache what they make (``cache_root``: pretraining stages, fine-tuned models, prepared
  frames, each keyed by content);
- evaluation (``evaluate``, ``fit_and_evaluate``; ``score`` for a learning curve's point), always with the
  experiment's tasks on the evaluation split, sharded over the ranks under torchrun;
- its cached result (``cached_result``: a row whose every step is unchanged is answered without loading a
  model), and what it logs: ``log_metrics`` (curves, to its MLflow child run), ``tracking_run`` (params),
  ``notes`` (what the table's conventions say, e.g. the teacher and masks).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bench.tracking import NullRun, RecordingRun, RunHandle
from datasets.scene_cache import CachedScenes
from infra import distributed, progress, steps, timing
from infra.cached_step import CachedStep
from infra.fingerprint import fingerprint
from infra.io import json_bytes

_BENCH = pathlib.Path(__file__).resolve().parent
# The code that turns predictions into metrics: a change to any of it is never answered from the cache.
METRIC_CODE = (*sorted((_BENCH / "metrics").glob("*.py")), _BENCH / "tasks.py",
               _BENCH.parent / "datasets" / "box_iou.py")


@dataclasses.dataclass
class RowContext:
    """What a row needs to run (module docstring): the data, its seed, where caches go, its MLflow child run."""

    row: str
    seed: int
    dataset: Any
    train_split: str
    eval_split: str
    task_factories: Sequence[Callable]
    cache_root: pathlib.Path
    row_results: pathlib.Path  # where cached row results go (``ResultsLayout.row_results``)
    tracking_run: RunHandle | RecordingRun | NullRun
    notes: dict[str, str] = dataclasses.field(default_factory=dict)  # e.g. teacher / masks, for tables
    _logged: list = dataclasses.field(default_factory=list, repr=False)
    _evaluation_seconds: float = dataclasses.field(default=0.0, repr=False)

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log intermediate values (e.g. loss curves) to the row's child run."""
        self._logged.append((step, dict(metrics)))
        self.tracking_run.log_metrics(metrics, step)

    def result_key(self, parts: Any) -> str:
        """The content key of a row result: ``parts`` (the row's step keys), the seed, the evaluation
        scenes, the tasks and the source of the metric code."""
        tasks = [make_task() for make_task in self.task_factories]
        eval_folder = self.scene_folder(self.eval_split).name
        return fingerprint(parts, self.seed, eval_folder, tasks, metric_code_fingerprint())

    def cached_result(self, parts: Any, compute: Callable[[], Mapping[str, float]]) -> dict[str, float]:
        """The row's metrics -- with the curves it logged, the notes it added and the steps it used --
        read from ``<cache>/results/<key>.json`` when every step that produced them is unchanged, else
        ``compute()`` (whose outcome is then stored). The key (``result_key``) covers the metric code, so a
        changed metric convention is never answered from the cache. A re-run of a finished row thus loads
        no model at all; a stored result that fails its checksum is computed again, with a warning.
        """
        step = self._result_step(parts)
        saved = step.load(_decode_result)
        if saved is not None:
            for index, metrics in saved["series"]:
                self.log_metrics(metrics, index)
            for name, value in saved["notes"].items():
                self.notes.setdefault(name, value)
            steps.used_all(saved["steps"])
            progress.step("evaluation", "read from the cache (every step of the row is unchanged)")
            return saved["metrics"]
        notes_before, logged_before = dict(self.notes), len(self._logged)
        with steps.collecting() as used:
            metrics = dict(compute())
            step.report(self._evaluation_seconds)
        if distributed.is_main():
            record = {"metrics": metrics, "series": self._logged[logged_before:], "steps": used,
                      "notes": {k: v for k, v in self.notes.items() if k not in notes_before}}
            step.save(json_bytes(record), self._evaluation_seconds)
        return metrics

    def has_cached_result(self, parts: Any) -> bool:
        """Whether a stored result answers ``cached_result(parts, ...)`` (its checksum is checked only when
        it is read)."""
        return self._result_step(parts).path.is_file()

    def _result_step(self, parts: Any) -> CachedStep:
        key = self.result_key(parts)
        return CachedStep(self.row_results / f"{key}.json", name=f"results/{key}", what="cached row result",
                          redo="computing the row again")

    def scene_folder(self, split: str) -> pathlib.Path:
        """Where the scenes of ``split`` are cached (its name is their content key); nothing is generated."""
        return CachedScenes.folder_for(self.dataset, split, self.cache_root)

    def scenes(self, split: str) -> CachedScenes:
        """The whole scenes of ``split`` (points, labels, boxes; no frames), cached on disk.

        Under torchrun every rank calls this and the ranks split the generation of missing scenes by file
        locks (``CachedScenes``): each scene is written once, by whichever rank claims it, and a rank
        waits for the others on their files, never on a collective (nor for one rank doing all of it).
        """
        return CachedScenes(self.dataset, split, self.cache_root)

    def fit_and_evaluate(self, method) -> dict[str, float]:
        """Fit ``method`` on the train split, then score it with every task on the evaluation split.

        ``method`` has ``fit(train_scenes, info)``, ``predict_segmentation(scene)`` and/or
        ``predict_detection(scene)`` as the tasks require.
        """
        method.fit(self.scenes(self.train_split), self.dataset.info)
        return self.evaluate(method)

    def score(self, method, task_key: str, num_scenes: int) -> dict[str, float]:
        """The headline metrics (``AP25``, ``mIoU``, ...; no per-class values) of ``method`` for the task
        ``task_key`` on the first ``num_scenes`` scenes of the evaluation split, quietly: a learning curve's
        point (``methods.learning_curve``), not a result. Under torchrun rank 0 alone scores these few scenes
        (``methods.train`` calls it after an epoch while the other ranks wait at the epoch's barrier)."""
        tasks = [task for task in (make_task() for make_task in self.task_factories) if task.key == task_key]
        scenes = self.scenes(self.eval_split)
        for index in range(min(num_scenes, len(scenes))):
            scene = scenes[index]
            for task in tasks:
                task.add(method, scene)
        return {key.rsplit("/", 1)[-1]: value for task in tasks
                for key, value in task.result(self.dataset.info).items() if "/class/" not in key}

    def evaluate(self, method, suffix: str = "", tasks: set[str] | None = None) -> dict[str, float]:
        """Score a fitted ``method`` with every task on the evaluation split.

        Under torchrun every rank calls it and predicts its share of the scenes (scene i on rank i mod
        world size, ``infra.distributed.gather_in_order``); the per-scene records (``bench.tasks``) come
        back to every rank in scene order, rank 0 computes the metrics once and every rank returns them:
        the same values, bit for bit, as one process predicting every scene with the same model.

        ``tasks`` keeps only the tasks of those keys (``seg``, ``det``); ``suffix`` names a protocol in the
        metric keys (``<dataset>/seg-<suffix>/mIoU``).
        """
        info = self.dataset.info
        tasks = [task for task in (make_task() for make_task in self.task_factories)
                 if tasks is None or task.key in tasks]
        for task in tasks:
            if suffix:
                task.key = f"{task.key}-{suffix}"
        scenes = self.scenes(self.eval_split)
        clock = timing.Stopwatch()
        with timing.span("evaluation"):
            records = distributed.gather_in_order(
                lambda index: [task.scene_record(method, scenes[index]) for task in tasks], len(scenes),
                desc=f"{self.row}: {self.eval_split}")
            metrics = distributed.from_main(lambda: _task_metrics(tasks, records, info))
        self._evaluation_seconds += clock.seconds
        world = distributed.world_size()
        ranks = f" on {world} ranks" if world > 1 else ""
        progress.step("evaluation", f"{len(scenes)} {info.name}/{self.eval_split} scenes{ranks} in "
                                    f"{progress.duration(clock.seconds)}")
        return metrics


def _task_metrics(tasks: Sequence, records: Sequence[Sequence], info) -> dict[str, float]:
    """Every task's metrics from per-scene records (``records[scene][task]``, scenes in split order)."""
    metrics: dict[str, float] = {}
    for position, task in enumerate(tasks):
        for scene_records in records:
            task.add_record(scene_records[position])
        metrics.update(task.result(info))
    return metrics


def metric_code_fingerprint() -> str:
    """Content fingerprint of the code that turns predictions into metrics (``METRIC_CODE``)."""
    return fingerprint([path.read_bytes() for path in METRIC_CODE])


def _decode_result(data: bytes) -> dict:
    """A stored row result (metrics, curves, notes, the steps it used); NaN is stored as null."""
    saved = json.loads(data)
    nan = float("nan")
    return {"metrics": {k: nan if v is None else float(v) for k, v in saved["metrics"].items()},
            "series": [(int(step), {k: nan if v is None else float(v) for k, v in values.items()})
                       for step, values in saved["series"]],
            "notes": {str(k): str(v) for k, v in saved["notes"].items()},
            "steps": {str(k): float(v) for k, v in saved.get("steps", {}).items()}}
