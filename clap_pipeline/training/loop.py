"""Fine-tune CLAP on (prompt, 5-s clip) pairs: symmetric InfoNCE, early stopping, MLflow, resume.

No Dagster here: the `clap_model` asset is a thin wrapper, and the same code runs
standalone, on one device or data-parallel under torchrun::

    python -m clap_pipeline.training --max-epochs 3 --batch-size 16
    torchrun --standalone --nproc_per_node 2 -m clap_pipeline.training --batch-size 16

``train()`` reads as its phases: set up (data, device, MLflow run or resume) ->
epochs (train, validate, checkpoint) -> register the best epoch -> report. Per
epoch, train loss, validation loss and R@1/5/10 in both directions are logged to
MLflow (step = epoch) and a ``save_pretrained`` checkpoint is written to
``$CLAP_DATA_DIR/checkpoints/<mlflow run id>/epoch-<k>/``. The best epoch (highest
validation text->audio R@5, ties -> lower validation loss) is registered as a
version of ``clap-fma`` and ends in ``reports/training.json``.

Under torchrun each rank reads its own shard of the training rows, the loss is
taken over the global batch (features gathered from all ranks), and rank 0 alone
validates, talks to MLflow and writes checkpoints (``distributed.py``).

A run killed mid-epoch resumes from its last completed epoch, in the same MLflow
run, when started again with the same config, data and world size (``resume.py``).
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from clap_pipeline import registry, run_names, tracking
from clap_pipeline.metrics import SELECTION_METRIC, retrieval_metrics_blockwise
from clap_pipeline.model.clap import LoadedClap, load_clap, pick_device, save_checkpoint, tokenize
from clap_pipeline.model.features import features_for_model
from clap_pipeline.progress import ProgressLog
from clap_pipeline.reporting import Log
from clap_pipeline.storage import remove_orphaned_temps
from clap_pipeline.training import distributed, report, resume, wise_ft
from clap_pipeline.training.config import (
    NonFiniteLossError,
    TrainConfig,
    TrainingError,
    TrainInputs,
    learning_rate_at,
)
from clap_pipeline.training.data import ClipBatch, TrainingData, prefetch
from clap_pipeline.training.distributed import Ranks
from clap_pipeline.training.features import CachedFeatures
from clap_pipeline.training.loss import (
    EpochRecord,
    best_epoch,
    clamp_logit_scale,
    contrastive_loss,
    contrastive_loss_rows,
    optimizer_groups,
    prepare_logit_scales,
    should_stop,
)
from clap_pipeline.training.report import TrainingResult
from clap_pipeline.training.session import (
    ProgressCallback,
    Session,
    TrainingHooks,
    TrainingProgress,
)
from clap_pipeline.training_report import WiseFt


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _autocast(device: torch.device, precision: str = TrainConfig.precision):
    """A context factory: bf16 autocast on CUDA (``auto`` where the card supports it)."""
    bf16_ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16_ok:
        raise TrainingError(
            f"precision='bf16' needs a CUDA card with bf16 support; the device is {device}: "
            "use precision 'auto' or 'fp32'"
        )
    if precision in ("auto", "bf16") and bf16_ok:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def _oom_types() -> tuple[type[BaseException], ...]:
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom,) if oom else ()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The ``ClapModel`` inside a DDP wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def batch_tensors(
    batch: ClipBatch,
    features: torch.nn.Module | CachedFeatures,
    tokenizer,
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Log-mel features (B, 1, 1001, 64) computed on ``device`` (or cached) + the prompts."""
    if isinstance(features, CachedFeatures):
        input_features = features(batch, device)
    else:
        waves = torch.from_numpy(batch.waveforms).to(device, non_blocking=True)
        with torch.no_grad():
            input_features = features(waves)
    return input_features, tokenize(tokenizer, batch.texts, device)


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    input_features: torch.Tensor,
    tokens: dict[str, torch.Tensor],
    device: torch.device,
    *,
    epoch: int = 0,
    step: int = 0,
    precision: str = TrainConfig.precision,
    ranks: Ranks | None = None,
) -> float:
    """One optimiser step on the symmetric InfoNCE; the logit scale is clamped afterwards.

    ``model`` may be DDP-wrapped (``ranks`` distributed): the loss is then this rank's
    rows of the global-batch loss over features gathered from all ranks, and the
    returned value is the global-batch loss (the same on every rank). A non-finite
    loss raises, on every rank, before the weights change.
    """
    ranks = ranks or Ranks.single()
    clap = unwrap(model)
    with _autocast(device, precision)():
        out = model(
            input_ids=tokens["input_ids"],
            attention_mask=tokens["attention_mask"],
            input_features=input_features,
        )
    if ranks.distributed:
        loss = contrastive_loss_rows(
            out.text_embeds,
            out.audio_embeds,
            distributed.gather_with_grad(ranks, out.text_embeds),
            distributed.gather_with_grad(ranks, out.audio_embeds),
            clap.logit_scale_a,
            first_row=ranks.rank * out.text_embeds.shape[0],
        )
        value = float(distributed.mean_over_ranks(ranks, loss.detach()))
    else:
        loss = contrastive_loss(out.text_embeds, out.audio_embeds, clap.logit_scale_a)
        value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(epoch, step, value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    clamp_logit_scale(clap)
    return value


@torch.no_grad()
def evaluate_split(
    model,
    features: torch.nn.Module | CachedFeatures,
    tokenizer,
    data: TrainingData,
    split: str,
    batch_size: int,
    device: torch.device,
    precision: str = TrainConfig.precision,
) -> tuple[float, dict[str, float]]:
    """(loss, retrieval metrics) of ``model`` on a split, in a fixed order.

    The loss is the symmetric InfoNCE over consecutive blocks of ``batch_size``
    clips (the remainder joins the last block), comparable with the train loss.
    """
    model.eval()
    autocast = _autocast(device, precision)
    text_embs, audio_embs = [], []
    for batch in data.eval_batches(split, batch_size):
        input_features, tokens = batch_tensors(batch, features, tokenizer, device)
        with autocast():
            out = model(
                input_ids=tokens["input_ids"],
                attention_mask=tokens["attention_mask"],
                input_features=input_features,
            )
        text_embs.append(out.text_embeds.float().cpu())
        audio_embs.append(out.audio_embeds.float().cpu())
    text, audio = torch.cat(text_embs), torch.cat(audio_embs)
    n = text.shape[0]
    logit_scale = model.logit_scale_a.detach().float().cpu()
    bounds = list(range(0, n, batch_size))
    if len(bounds) > 1 and n - bounds[-1] < batch_size:
        bounds.pop()  # the short remainder joins the previous block
    loss_sum = 0.0
    for i, start in enumerate(bounds):
        end = bounds[i + 1] if i + 1 < len(bounds) else n
        loss_sum += float(contrastive_loss(text[start:end], audio[start:end], logit_scale)) * (
            end - start
        )
    return loss_sum / n, retrieval_metrics_blockwise(text.numpy(), audio.numpy())


@dataclass
class _EpochStats:
    loss: float
    clips: int  # this rank's
    seconds: float
    data_seconds: float


def _epoch_batches(data: TrainingData, config: TrainConfig, epoch: int, ranks: Ranks):
    """This rank's shuffled batches of the epoch, read ahead on a thread."""
    return prefetch(
        data.train_batches(
            config.batch_size,
            seed=config.seed,
            epoch=epoch,
            resample=config.resample_templates,
            buffer_clips=config.shuffle_buffer,
            rank=ranks.rank,
            world_size=ranks.world_size,
        )
    )


def _step_log(report: ProgressCallback, prefix: str, epoch: int, step: int, steps: int) -> Log:
    """The shared rate/ETA line (global clips), prefixed with where the epoch is."""
    return lambda line: report(
        TrainingProgress(
            message=f"{prefix} | {line}", epoch=epoch, step=step, steps_per_epoch=steps
        )
    )


def _train_epoch(
    *,
    model,
    optimizer: torch.optim.Optimizer,
    features: torch.nn.Module | CachedFeatures,
    tokenizer,
    data: TrainingData,
    config: TrainConfig,
    epoch: int,
    device: torch.device,
    hooks: TrainingHooks,
    report_progress: ProgressCallback,
    ranks: Ranks,
) -> _EpochStats:
    model.train()
    steps = data.n_train_batches(config.batch_size, ranks.world_size)
    batches = _epoch_batches(data, config, epoch, ranks)
    start = time.perf_counter()
    global_batch = config.batch_size * ranks.world_size
    progress = ProgressLog("train", steps * global_batch, log=None)
    loss_sum, clips, data_seconds = 0.0, 0, 0.0
    with contextlib.closing(batches):  # stops the reader thread when a step raises
        for step in range(1, steps + 1):
            t_data = time.perf_counter()
            batch = next(batches)
            input_features, tokens = batch_tensors(batch, features, tokenizer, device)
            data_seconds += time.perf_counter() - t_data
            if hooks.before_step:
                hooks.before_step(epoch, step, unwrap(model))
            lr = learning_rate_at(config, (epoch - 1) * steps + step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            value = train_step(
                model,
                optimizer,
                input_features,
                tokens,
                device,
                epoch=epoch,
                step=step,
                precision=config.precision,
                ranks=ranks,
            )
            loss_sum += value * len(batch)
            clips += len(batch)
            where = f"epoch {epoch}/{config.max_epochs} step {step}/{steps}"
            prefix = f"{where} loss {value:.4f} lr {lr:.2e}"
            progress.log = _step_log(report_progress, prefix, epoch, step, steps)
            progress.update(step * global_batch)
    return _EpochStats(
        loss=loss_sum / max(clips, 1),
        clips=clips,
        seconds=time.perf_counter() - start,
        data_seconds=data_seconds,
    )


# --------------------------------------------------------------------------- the run


@dataclass
class _Model:
    """The trained model (DDP-wrapped under torchrun), its optimizer and input pipeline."""

    loaded: LoadedClap
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    features: CachedFeatures

    @property
    def clap(self) -> torch.nn.Module:
        return unwrap(self.model)


def train(
    config: TrainConfig,
    inputs: TrainInputs,
    *,
    dagster_run_id: str | None = None,
    on_progress: ProgressCallback | None = None,
    hooks: TrainingHooks | None = None,
    ranks: Ranks | None = None,
) -> TrainingResult | None:
    """Fine-tune, track in MLflow, register the best epoch, write ``training.json``.

    Resumes the newest interrupted run with the same config and data (when
    ``config.resume``) from its last completed epoch, in the same MLflow run.
    ``ranks``: this process's place under torchrun (default: one process). Every
    rank trains; rank 0 returns the result, the others None.
    """
    ranks = ranks or Ranks.single()
    session = _set_up(config, inputs, on_progress, hooks, ranks)
    state: _Model | None = None
    try:
        with _mlflow_run(session, dagster_run_id):
            state = _build_model(session)
            _run_epochs(session, state)
            if not ranks.is_main:
                session.status = "FINISHED"
                return None
            best = best_epoch(session.history)
            wise = _interpolate(session, state, best)
            version, alias = _register(session, best, state, wise)
            result = report.write_report(session, best, version, alias, wise)
            resume.save_resume_state(session.run_dir, session.state("completed"), None)
            session.status = "FINISHED"
            return result
    finally:
        # DDP's reducer must go while the process group lives: freed after it, gloo's
        # destructor waits for a thread that waits for the GIL (the process hangs at exit).
        state = None
        distributed.destroy_process_group(ranks)


def _load_data(
    config: TrainConfig, inputs: TrainInputs, ranks: Ranks, report: ProgressCallback
) -> tuple[TrainingData, torch.device, str]:
    """The splits and batches, the device, and the fingerprint every rank must share."""
    data = TrainingData.load(
        inputs.prompts_path,
        inputs.waveforms_dir,
        inputs.duckdb_path,
        split_mode=config.split,
        seed=config.seed,
        batch_size=config.batch_size,
        feedback_weight=config.feedback_weight,
    )
    data.check_shards(config.batch_size, ranks.world_size)
    report(TrainingProgress(message=f"data: {data.describe_counts()}"))
    device = distributed.device_for(ranks, pick_device(config.device))
    _autocast(device, config.precision)  # an impossible precision fails before any run exists
    fingerprint = resume.training_fingerprint(
        {
            "config": config.numeric_dict(),
            "model": inputs.model_source,
            "device": device.type,
            "prompts": data.prompts_version,
            "waveforms": data.index.data_version,
            "splits": data.splits.as_dict(),
        }
    )
    return data, device, fingerprint


def _open_run(
    config: TrainConfig,
    inputs: TrainInputs,
    ranks: Ranks,
    fingerprint: str,
    report: ProgressCallback,
) -> tuple[Any, str, str, dict | None]:
    """Rank 0 opens (or finds) the MLflow run; every rank learns its id and resume state.

    Returns (client on rank 0 else None, experiment id, run id, resume state or None).
    """
    client, experiment_id, run_id, state = None, "", "", None
    if ranks.is_main:
        client = tracking.client(inputs.tracking_uri)
        experiment_id = tracking.configure(inputs.tracking_uri, inputs.experiment)
        state = resume.resumable_state(
            client, inputs.checkpoints_dir, fingerprint, config.resume, ranks.world_size
        )
        if state:
            run_id = state["run_id"]
            client.update_run(run_id, status="RUNNING")
            message = f"resuming MLflow run {run_id} after epoch {state['last_epoch']}"
            report(TrainingProgress(message=message))
        else:
            run_id = client.create_run(
                experiment_id,
                run_name=f"clap-{time.strftime('%Y%m%d-%H%M%S')}",
                tags={run_names.SOURCE_TAG: run_names.TRAINING_SOURCE},
            ).info.run_id
        tracking.close_abandoned_runs(client, experiment_id, run_id)  # after kill -9
    experiment_id, run_id, state = distributed.broadcast_object(
        ranks, (experiment_id, run_id, state)
    )
    return client, experiment_id, run_id, state


def _set_up(
    config: TrainConfig,
    inputs: TrainInputs,
    on_progress: ProgressCallback | None,
    hooks: TrainingHooks | None,
    ranks: Ranks,
) -> Session:
    """Data, device and process group, then (rank 0) the MLflow run: new or resumed."""
    config.validate()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-shard bars would flood the run log
    wall_start = time.perf_counter()

    def report_progress(p: TrainingProgress) -> None:
        if on_progress and ranks.is_main:
            on_progress(p)

    data, device, fingerprint = _load_data(config, inputs, ranks, report_progress)
    distributed.init_process_group(ranks, device)
    if not distributed.same_on_all_ranks(ranks, [fingerprint]):
        raise TrainingError(
            f"rank {ranks.rank} sees other data or settings than rank 0 (fingerprint "
            f"{fingerprint}): every host must read the same prompts and waveforms"
        )
    client, experiment_id, run_id, state = _open_run(
        config, inputs, ranks, fingerprint, report_progress
    )
    history = [EpochRecord(**r) for r in state["history"]] if state else []
    return Session(
        config=config,
        inputs=inputs,
        data=data,
        device=device,
        ranks=ranks,
        client=client,
        experiment_id=experiment_id,
        run_id=run_id,
        fingerprint=fingerprint,
        val_fingerprint=data.validation_fingerprint(),
        report=report_progress,
        hooks=hooks or TrainingHooks(),
        history=history,
        resumed_from_epoch=history[-1].epoch if history else 0,
        prior_wall_s=float(state["wall_time_s"]) if state else 0.0,
        wall_start=wall_start,
        resume_tensors=state["tensors"] if state else None,
    )


@contextlib.contextmanager
def _mlflow_run(session: Session, dagster_run_id: str | None):
    """Params, system metrics and, on every exit, the run's final status (rank 0)."""
    config, client, run_id = session.config, session.client, session.run_id
    threads_before = torch.get_num_threads()
    if config.cpu_threads:
        torch.set_num_threads(config.cpu_threads)
    if session.ranks.is_main:
        report.log_run_setup(session, dagster_run_id)
        session.monitor = report.start_system_metrics(
            config.system_metrics and session.inputs.system_metrics,
            run_id,
            session.inputs.tracking_uri,
            resumed=session.resumed_from_epoch > 0 or session.resume_tensors is not None,
        )
    try:
        yield
    except NonFiniteLossError as exc:
        if client is not None:
            client.set_tag(run_id, "failure", str(exc))
        raise
    except RuntimeError as exc:
        # torch.OutOfMemoryError, or cuBLAS/MPS errors that only say "out of memory".
        if not isinstance(exc, _oom_types()) and "out of memory" not in str(exc).lower():
            raise
        if client is not None:
            client.set_tag(run_id, "failure", "out of memory")
        raise TrainingError(
            f"out of memory on {session.device} at batch_size={config.batch_size}: lower "
            f"batch_size (e.g. {max(2, config.batch_size // 2)}) in the clap_model config"
        ) from exc
    except BaseException as exc:
        if not isinstance(exc, Exception):  # Ctrl-C, Dagster run termination
            session.status = "KILLED"
        raise
    finally:
        torch.set_num_threads(threads_before)
        report.stop_system_metrics(session.monitor)
        if client is not None:
            client.set_terminated(run_id, status=session.status)


def _build_model(session: Session) -> _Model:
    """Weights (last completed epoch, else CLAP_MODEL), optimizer, features; resume tensors."""
    config, ranks, history, device = session.config, session.ranks, session.history, session.device
    if ranks.is_main:
        session.run_dir.mkdir(parents=True, exist_ok=True)
        remove_orphaned_temps(session.run_dir.glob(".*.tmp"))  # of a trainer killed mid-save
    # Other ranks need no checkpoint on their disk: DDP copies rank 0's weights to them.
    source = history[-1].checkpoint if history and ranks.is_main else session.inputs.model_source
    loaded = load_clap(source)
    clap = loaded.model.to(device)
    prepare_logit_scales(clap)
    model: torch.nn.Module = clap
    if ranks.distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        model = DistributedDataParallel(clap, device_ids=device_ids)
    features = CachedFeatures(features_for_model(loaded, device), config.feature_cache_mb)
    optimizer = torch.optim.AdamW(
        optimizer_groups(clap, config.weight_decay), lr=config.learning_rate
    )
    set_seed(config.seed + ranks.rank)  # after loading: from_pretrained may draw random numbers
    saved = None
    if session.resume_tensors and ranks.is_main:
        # weights_only: tensors and plain containers only, never unpickled code.
        path = resume.resume_tensors_path(session.run_dir, session.resume_tensors)
        saved = torch.load(path, weights_only=True)
    saved = distributed.broadcast_object(ranks, saved) if session.resume_tensors else None
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        if ranks.is_main:  # the other ranks keep their own seeds
            torch.set_rng_state(saved["torch_rng"])
            if saved.get("cuda_rng") is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
    elif ranks.is_main:
        resume.save_resume_state(session.run_dir, session.state(), optimizer)
    return _Model(loaded=loaded, model=model, optimizer=optimizer, features=features)


def _run_epochs(session: Session, state: _Model) -> None:
    """Epochs from the last completed one until max_epochs or early stopping."""
    config, history, ranks = session.config, session.history, session.ranks
    epoch = history[-1].epoch if history else 0
    while epoch < config.max_epochs and not should_stop(history, config.patience):
        epoch += 1
        state.features.keep_new = epoch < config.max_epochs  # no later epoch reads the last's
        stats = _train_epoch(
            model=state.model,
            optimizer=state.optimizer,
            features=state.features,
            tokenizer=state.loaded.tokenizer,
            data=session.data,
            config=config,
            epoch=epoch,
            device=session.device,
            hooks=session.hooks,
            report_progress=session.report,
            ranks=ranks,
        )
        # Rank 0 validates on the full split and checkpoints; all ranks share its record.
        record = _close_epoch(session, state, epoch, stats) if ranks.is_main else None
        record = distributed.broadcast_object(ranks, record)
        history.append(record)
        if ranks.is_main:
            # The epoch counts as done only once its checkpoint and the resume state are on disk.
            resume.save_resume_state(session.run_dir, session.state(), state.optimizer)
            session.report(TrainingProgress(message=report.epoch_summary(record), epoch=epoch))
        if session.hooks.after_epoch:
            session.hooks.after_epoch(record)


def _close_epoch(session: Session, state: _Model, epoch: int, stats: _EpochStats) -> EpochRecord:
    """Validation, checkpoint and MLflow metrics of an epoch (rank 0)."""
    config, clap = session.config, state.clap
    t_eval = time.perf_counter()
    val_loss, metrics = evaluate_split(
        clap,
        state.features,
        state.loaded.tokenizer,
        session.data,
        "validation",
        config.batch_size,
        session.device,
        config.precision,
    )
    if not math.isfinite(val_loss):
        raise NonFiniteLossError(epoch, None, val_loss, phase="validation")
    eval_seconds = time.perf_counter() - t_eval
    checkpoint = save_checkpoint(clap, state.loaded.processor, session.run_dir / f"epoch-{epoch}")
    record = EpochRecord(
        epoch=epoch,
        train_loss=stats.loss,
        val_loss=val_loss,
        metrics=metrics,
        checkpoint=str(checkpoint),
        train_clips=stats.clips * session.ranks.world_size,
        train_seconds=stats.seconds,
        data_seconds=stats.data_seconds,
        eval_seconds=eval_seconds,
        logit_scale_a=float(clap.logit_scale_a.detach()),
        logit_scale_t=float(clap.logit_scale_t.detach()),
    )
    report.log_epoch(session.client, session.run_id, record, config.log_checkpoints)
    return record


def _validate(session: Session, state: _Model, model: torch.nn.Module):
    """(val loss, validation metrics) of ``model`` with the run's features and tokenizer."""
    config = session.config
    return evaluate_split(
        model, state.features, state.loaded.tokenizer, session.data, "validation",
        config.batch_size, session.device, config.precision,
    )  # fmt: skip


def _interpolate(session: Session, state: _Model, best: EpochRecord) -> WiseFt | None:
    """WiSE-FT over the grid of ``wise_ft_steps`` (rank 0); None when it is off."""
    if not session.config.wise_ft_steps:
        return None
    wise = wise_ft.interpolate_weights(
        state.clap,
        session.inputs.model_source,
        str(best.checkpoint),
        session.config.wise_ft_steps,
        score=lambda model: _validate(session, state, model),
        save=lambda model: str(
            save_checkpoint(model, state.loaded.processor, session.run_dir / wise_ft.FOLDER)
        ),
        log=lambda message: session.report(TrainingProgress(message=message)),
    )
    report.log_wise_ft(session, wise)
    return wise


def _register(
    session: Session, best: EpochRecord, state: _Model, wise: WiseFt | None
) -> tuple[str, str]:
    """Register the kept weights (WiSE-FT's, else the best epoch's); alias champion if they
    beat the champion, else challenger."""

    def score(folder: Path) -> float:
        model = load_clap(folder).model.to(session.device)
        return _validate(session, state, model)[1][SELECTION_METRIC]

    candidate = registry.Candidate(
        run_id=session.run_id,
        epoch=best.epoch,
        checkpoint=Path(wise.checkpoint if wise else str(best.checkpoint)),
        val_recall_at_5=wise.chosen.metrics[SELECTION_METRIC] if wise else best.val_recall_at_5,
        val_fingerprint=session.val_fingerprint,
        training_fingerprint=session.fingerprint,
        wise_ft_alpha=wise.alpha if wise else None,
    )
    return registry.register_candidate(
        session.client,
        session.inputs.registered_model,
        candidate,
        source=report.checkpoint_source(session, best, wise),
        score=score,
        report=lambda message: session.report(TrainingProgress(message=message)),
        tracking_uri=session.inputs.tracking_uri,
    )
