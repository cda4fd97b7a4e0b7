"""Pretraining stages as cached steps, and the table row that runs them.

A stage = objective + tokenizer + schedule (+ the stage before it). Its checkpoint folder is keyed by the
content fingerprint of its configuration, of the stage before it, of the prepared data and of the seed, so
rows that share a stage train it once, an interrupted stage resumes from its last epoch, and a changed
parameter retrains exactly the stages downstream of it.
"""
from __future__ import annotations

import dataclasses
import pathlib

import gin
import torch

from infra import timing
from infra.fingerprint import fingerprint
from infra.progress import note_once
from infra.seeding import derive_seed, torch_seeded
from methods.batching import TokenizedFrames, collate
from methods.encoder import EncoderSpec
from methods.step_memory import (
    FLOAT_BYTES,
    StepMemory,
    block_values,
    encoder_parameters,
    encoder_parts,
    parameter_part,
    point_parts,
)
from methods.tokenizers.report import stage_token_report
from methods.train import TrainSchedule, train


@gin.register
class PretrainStage:
    """One pretraining stage (e.g. ``stage1/PretrainStage``, ``stage2/PretrainStage`` under gin scopes).

    Args:
      name: label used in logs, metric keys and the checkpoint folder.
      objective: an objective spec with ``build(teacher_dim, group_weights, previous)`` (e.g.
        ``@RegionDistillation()``).
      tokenizer: called as ``tokenizer(xyz, region_ids, seed=...)`` (e.g. ``@SamGuidedTokenizer()``).
      schedule: a ``TrainSchedule``.
      previous: the stage whose encoder this one starts from or distils (None for the first stage).
    """

    def __init__(self, name: str = gin.REQUIRED, objective=gin.REQUIRED, tokenizer=gin.REQUIRED,
                 schedule: TrainSchedule | None = None, previous: PretrainStage | None = None):
        self.name = name
        self.objective = objective
        self.tokenizer = tokenizer
        self.schedule = schedule or TrainSchedule()
        self.previous = previous

    def key(self, data_key: str, seed: int) -> str:
        """Content key of this stage's result: its whole configuration (the chain before it included),
        the data and the seed."""
        return fingerprint(self, data_key, seed)

    @property
    def depth(self) -> int:
        """How many stages come before this one in its chain (0 for a first stage)."""
        return 0 if self.previous is None else self.previous.depth + 1

    def step_seed(self, seed: int) -> int:
        """The seed of everything random in this stage (initialisation, data order, tokens, masks,
        drop-path): the row's ``seed`` and the stage's place in its chain (``infra.seeding``)."""
        return derive_seed(seed, f"pretrain/{self.depth}")

    def step_memory(self, points_per_frame: int, world_size: int = 1) -> StepMemory:
        """The estimate of one training step of this stage in one process (``methods.step_memory``): every
        token through the encoder (masking only shrinks it), the decoder's blocks, reconstructed points."""
        encoder = getattr(self.objective, "encoder", None) or EncoderSpec()
        decoder = getattr(self.objective, "decoder", None)
        batch = max(1, self.schedule.batch_size // world_size)
        tokens, group = self.tokenizer.num_tokens, self.tokenizer.group_size
        where = f"{self.name} stage"
        parts = encoder_parts(encoder, tokens, group, batch, where)
        parameters = encoder_parameters(encoder)
        if decoder is not None:
            parts[f"{where}: {tokens} tokens x batch {batch} through {decoder.depth} decoder blocks (DecoderSpec)"] = \
                batch * tokens * decoder.depth * block_values(encoder.width, decoder.mlp_ratio) * FLOAT_BYTES
            parameters *= 2  # the decoder, and a teacher copy of the encoder where the objective keeps one
        reconstructed = getattr(self.objective, "num_points", 0)
        if reconstructed:
            name = f"{where}: {type(self.objective).__name__}.num_points = {reconstructed} points per token"
            parts[name] = batch * tokens * reconstructed * 3 * 3 * FLOAT_BYTES
        parts.update(point_parts("FramePreparation", points_per_frame, batch, 0.0))
        parts.update(parameter_part(parameters, encoder))
        return StepMemory(parts)

    def run(self, prepared, data_key: str, cache_root: pathlib.Path, seed: int) -> dict:
        """Train (or resume, or reuse) this stage after the ones before it; returns ``encoder`` (the state
        dict handed on) and ``histories`` (stage name -> per-epoch losses, for the whole chain)."""
        previous, histories = None, {}
        if self.previous is not None:
            before = self.previous.run(prepared, data_key, cache_root, seed)
            previous, histories = before["encoder"], before["histories"]
        folder = pathlib.Path(cache_root) / "stages" / f"{self.name}-{self.key(data_key, seed)}"
        teacher_dim = int(prepared[0].region_features.shape[1])
        step_seed = self.step_seed(seed)
        with torch_seeded(step_seed), timing.span(f"pretrain/{self.name}"):
            module = self.objective.build(teacher_dim, prepared.groups["weights"], previous, seed=step_seed)
        history = train(module, TokenizedFrames(prepared, self.tokenizer, step_seed), collate, self.schedule,
                        folder / "checkpoint.pt", step_seed, name=f"pretrain/{self.name}")
        return {"encoder": {k: v.detach().cpu() for k, v in module.encoder.state_dict().items()},
                "histories": {**histories, self.name: history}}


@dataclasses.dataclass
class Pretrained:
    """The outcome of a pretraining chain: the encoder to fine-tune, its content key, its loss metrics."""

    encoder: dict[str, torch.Tensor]
    key: str
    metrics: dict[str, float]


@gin.register
class PretrainRow:
    """A table row that prepares the training frames and runs a chain of pretraining stages.

    Its metrics are each stage's first and last epoch losses; the pretrained encoder is what a
    fine-tuning row (``FinetuneRow.pretrain``) starts from.

    Args:
      preparation: the ``FramePreparation`` (masks, teacher features, sampled points per frame).
      stage: the last ``PretrainStage`` of the chain (it names the stages before it).
      dataset: where the pretraining frames come from; None = the experiment's dataset. The paper
        pretrains once on ScanNet frames and fine-tunes on ScanNet, SUN RGB-D and S3DIS, which is
        ``PretrainRow.dataset = @pretrain/ScanNetExport()`` under another ``Experiment.dataset``.
      split: the split of ``dataset`` whose frames are used; None = the experiment's train split.
    """

    def __init__(self, preparation=gin.REQUIRED, stage: PretrainStage = gin.REQUIRED, dataset=None,
                 split: str | None = None):
        self.preparation = preparation
        self.stage = stage
        self.dataset = dataset
        self.split = split

    def _source(self, context) -> tuple:
        """(dataset, split) of the pretraining frames."""
        return (context.dataset if self.dataset is None else self.dataset,
                context.train_split if self.split is None else self.split)

    def data_key(self, context) -> str:
        """The content key of this row's prepared frames and groups (rows sharing it share the preparation)."""
        dataset, split = self._source(context)
        return self.preparation.data_key(dataset, split, context.cache_root)

    def key(self, context) -> str:
        """The content key of this row's pretrained encoder, computed without preparing or training."""
        return self.stage.key(self.data_key(context), context.seed)

    def stage_keys(self, context) -> list[str]:
        """The content keys of every stage of the chain, first stage first (nothing is run)."""
        stage, keys = self.stage, []
        while stage is not None:
            keys.insert(0, stage.key(self.data_key(context), context.seed))
            stage = stage.previous
        return keys

    def prepare_data(self, context, shard: tuple[int, int] | None = None) -> None:
        """Prepare this row's pretraining frames and, without ``shard``, their groups; train nothing
        (``run_bench.py --prepare``)."""
        dataset, split = self._source(context)
        self.preparation.prepare(dataset, split, context.cache_root, shard=shard)

    def pretrain(self, context) -> Pretrained:
        """Prepare (cached), pretrain (cached by stage), log each stage's token report (``tokens/<stage>/*``,
        on the first frames) and the loss curves, report the curves' end points."""
        dataset, split = self._source(context)
        # Every process prepares: torchrun ranks split the scenes by their file locks and wait on files,
        # never on a collective, for as long as the preparation takes (methods.preparation).
        prepared = self.preparation.prepare(dataset, split, context.cache_root)
        context.notes.setdefault("pretraining data", f"{dataset.info.name}/{split}")
        context.notes.setdefault("teacher", self.preparation.teacher.description)
        context.notes.setdefault("masks", self.preparation.mask_source.description)
        wanted = self.preparation.points_per_frame
        if prepared.most_points is not None and prepared.most_points < wanted:
            note = (f"FramePreparation.points_per_frame = {wanted} is more than any frame has (at most "
                    f"{prepared.most_points}): every frame keeps all its points")
            context.notes.setdefault("size: points_per_frame", note)
            note_once(note)
        groups = prepared.groups
        context.log_metrics({**prepared.cost(), **{f"prepare/kmeans_{k}": float(groups[k]) for k in
                                                   ("iterations", "inertia", "regions") if k in groups}})
        result = self.stage.run(prepared, prepared.key, context.cache_root, context.seed)
        stage = self.stage
        while stage is not None:  # what each stage's first-epoch tokens cover (methods/tokenizers/report.py)
            context.log_metrics(stage_token_report(stage.name, stage.tokenizer, prepared, stage.step_seed(context.seed)))
            stage = stage.previous
        metrics: dict[str, float] = {}
        for name, history in result["histories"].items():
            # Whole curves are logged here, not live, so a run that reuses cached stages shows them too.
            for epoch, values in enumerate(history):
                context.log_metrics({f"pretrain/{name}/{k}": v for k, v in values.items()}, epoch)
            metrics[f"pretrain/{name}/loss_first"] = history[0]["loss"]
            metrics[f"pretrain/{name}/loss_last"] = history[-1]["loss"]
        return Pretrained(result["encoder"], self.stage.key(prepared.key, context.seed), metrics)

    def step_memories(self, info=None, world_size: int = 1) -> dict[str, StepMemory]:
        """Each stage of the chain -> its step's memory estimate (``methods.step_memory``)."""
        out, stage = {}, self.stage
        while stage is not None:
            out[f"pretraining stage {stage.name}"] = stage.step_memory(self.preparation.points_per_frame, world_size)
            stage = stage.previous
        return out

    def components(self) -> dict[str, str]:
        """The chain's resolved components (stage names, objectives, tokenizers, re-weighting), as params."""
        out, stage, chain = {}, self.stage, []
        while stage is not None:
            chain.insert(0, stage)
            stage = stage.previous
        out["pretraining"] = " -> ".join(s.name for s in chain)
        for s in chain:
            out[f"pretrain/{s.name}/objective"] = type(s.objective).__name__
            out[f"pretrain/{s.name}/tokenizer"] = type(s.tokenizer).__name__
            balancing = getattr(s.objective, "balancing", None)
            if balancing is not None:
                out[f"pretrain/{s.name}/reweighting"] = "on" if balancing.enabled else "off"
        return out

    def run(self, context) -> dict[str, float]:
        """A pretraining-only row: its metrics are the loss curves' end points."""
        return self.pretrain(context).metrics
