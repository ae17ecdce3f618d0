"""The run lifecycle (eurosat.lifecycle) inside a PyTorch Lightning Trainer, for Lightning projects.

RunCallback takes the place of Lightning's ModelCheckpoint: the run's config and provenance at the start,
the per-epoch record, line and TensorBoard scalars, last.ckpt and best.ckpt at epoch ends and every
--checkpoint-every steps, SIGINT/SIGTERM as a checkpoint and a clean stop, and the lifecycle's part of every checkpoint.
Conventions it relies on: the data module has the splits in `.data`, its train loader is a BatchLoader (a stateful
loader, so a mid-epoch resume skips exactly the trained batches), and the module logs `loss` and `acc` on steps and
epochs, `val_loss`, `val_acc` and `val_samples` on validation epochs, and holds its network in `.model` and the
images' scale in `hparams.scale` (for BatchNorm's recomputed statistics, eurosat.batchnorm).
"""

from __future__ import annotations

import csv
import logging
import os
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from lightning_fabric.strategies.launchers import subprocess_script
from pytorch_lightning.callbacks import EMAWeightAveraging
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torchmetrics import Metric

from eurosat import batchnorm
from eurosat.lifecycle import Run
from eurosat.loop import SYNC_EVERY
from eurosat.runs import load_checkpoint, save_checkpoint
from eurosat.training import LossWindow, restore_rng_state


class _WithoutAdverts(logging.Filter):
    """Lightning's tip to install litlogger, printed at every Trainer's start, tells a user nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_WithoutAdverts())
# pytorch-lightning 2.6 still uses a torch.utils._pytree API that torch 2.9+ deprecates: a warning for Lightning, not
# for the user, printed on every run
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
# The loggers get every epoch's values whatever the epoch's length: an epoch shorter than log_every_n_steps is no news
warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging interval")


def report_lost_ranks(run: Run) -> None:
    """Lightning's launcher watches the ranks it starts (`--strategy ddp` on one machine) and SIGKILLs this process,
    rank 0, within 5 s of another's death, often before a collective fails here: its watch now says the lifecycle's
    line for a lost peer first."""

    class Watch(subprocess_script._ChildProcessObserver):
        def _terminate_all(self) -> None:
            rank, dead = next((rank, proc) for rank, proc in enumerate(self._child_processes, 1) if proc.returncode)
            how = f"signal {-dead.returncode}" if dead.returncode < 0 else f"exit status {dead.returncode}"
            run.lost_peer(f"rank {rank} (PID {dead.pid}) ended by {how}")
            super()._terminate_all()

    subprocess_script._launch_process_observer = lambda procs: Watch(child_processes=procs, main_pid=os.getpid()).start()


class RunCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first, so a crash never leaves a half-written last.ckpt; they are read
    the lifecycle's way (they hold RNG states, which torch.load's weights_only refuses)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_checkpoint(checkpoint, Path(path), keep_previous=Path(path).name == "last.ckpt")

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(Path(path))


class RunCallback(pl.Callback):
    def __init__(self, run: Run):
        self.run = run
        report_lost_ranks(run)
        # ranks other than 0 never write, but Trainer.save_checkpoint must be called on all of them with a path
        self.folder = run.directory or Path(run.config["out"])
        self.start = time.perf_counter()
        self.losses, self.losses_epoch = None, None  # this epoch's losses, checked for NaN without a sync per step
        self.bn_seconds = 0.0

    def on_train_start(self, trainer, module):
        self.run.stop.install()  # Lightning installed its own SIGTERM handler when fit started
        precision = trainer.precision
        self.run.begin(trainer.datamodule.data, module.device, trainer.world_size, trainer.is_global_zero, precision)
        if not trainer.is_global_zero:  # a mid-epoch checkpoint's running totals are every rank's (see save): count once
            for metric in module.modules():
                if isinstance(metric, Metric):
                    metric.reset()
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer, module):  # not called when resuming mid-epoch: the loader keeps its position
        trainer.train_dataloader.set_epoch(trainer.current_epoch)
        for metric in module.modules():  # a checkpoint from an epoch's end holds that epoch's totals: start from zero
            if isinstance(metric, Metric):
                metric.reset()
        self.start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, module):
        self.train_seconds = time.perf_counter() - self.start
        with trainer.precision_plugin.forward_context():  # the training precision, as validation runs
            self.bn_seconds = batchnorm.recompute_if_needed(
                module.model, trainer.train_dataloader, trainer.current_epoch, module.hparams.scale, module.device, None,
                self.run.config,
            )  # fmt: skip

    def save(self, trainer, module, best: bool = False, mid_epoch: bool = False) -> None:
        # Mid-epoch, rank 0's checkpoint holds the epoch's running totals summed over every rank, not its own only
        metrics = [m for m in module.modules() if isinstance(m, Metric)] if mid_epoch and trainer.world_size > 1 else []
        for metric in metrics:
            metric.sync()
        try:
            trainer.save_checkpoint(self.folder / "last.ckpt", weights_only=False)  # said, so Lightning need not say it
            if best:
                trainer.save_checkpoint(self.folder / "best.ckpt", weights_only=False)
        finally:
            for metric in metrics:
                metric.unsync()
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.run.timeline.mark("first_step", module.device)  # once per process
        step = batch_idx + 1
        loader = trainer.train_dataloader
        loader.batches_done = step  # the position its state_dict gives the checkpoint
        if self.losses is None or self.losses_epoch != trainer.current_epoch:  # (a mid-epoch resume starts at `step`)
            self.losses, self.losses_epoch = LossWindow(SYNC_EVERY, module.device, step), trainer.current_epoch
        self.losses.add(step, outputs["loss"] if isinstance(outputs, dict) else outputs)
        every, accum = self.run.config.get("checkpoint_every"), trainer.accumulate_grad_batches
        # a checkpoint or a stop only after an optimizer step, never inside an accumulation: at the first one after a
        # multiple of --checkpoint-every
        stepped = step % accum == 0 or step == len(loader)
        stopping = stepped and self.run.stop.agreed(trainer.world_size, module.device, step)
        saving = stopping or (stepped and every and step % every < accum and step < len(loader))
        if saving or step % SYNC_EVERY == 0 or step == len(loader):  # before validation and before any checkpoint
            with self.run.stops_at_a_nonfinite_loss(trainer.current_epoch):
                self.losses.check()
        if saving:
            self.save(trainer, module, mid_epoch=True)
        if stopping:
            raise self.run.stopped(f"epoch {trainer.current_epoch + 1} step {step}/{len(loader)}")

    def on_train_epoch_end(self, trainer, module):
        logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
        record = {
            "epoch": trainer.current_epoch + 1,
            "loss": logged["loss_epoch"],
            "acc": logged["acc_epoch"],
            "val_loss": logged["val_loss"],
            "val_acc": logged["val_acc"],
            "val_samples": int(logged["val_samples"]),
            "images_per_s": trainer.train_dataloader.samples * trainer.world_size / self.train_seconds,
            "bn_recompute_s": self.bn_seconds,
            "seconds": time.perf_counter() - self.start,
        }
        self.save(trainer, module, best=self.run.end_epoch(record, getattr(module, "epoch_val_matrix", None)))
        if self.run.stop.agreed(trainer.world_size, module.device, 0) and trainer.current_epoch + 1 < trainer.max_epochs:
            raise self.run.stopped(f"the end of epoch {trainer.current_epoch + 1}")

    def on_save_checkpoint(self, trainer, module, checkpoint):
        checkpoint.update(self.run.state())

    def on_load_checkpoint(self, trainer, module, checkpoint):
        restore_rng_state(checkpoint["rng"])


class _KeptExperimentWriter(ExperimentWriter):
    def __init__(self, log_dir: str):
        super().__init__(log_dir)
        if self._fs.isfile(self.metrics_file_path):  # a resumed run's: its columns go on, new ones are added to them
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = next(csv.reader(file), [])

    def _check_log_dir_exists(self) -> None:
        """Lightning's deletes the metrics.csv it finds: a resumed run's first part would be lost."""


class RunCSVLogger(CSVLogger):
    """Lightning's CSVLogger, writing RUN/csv/metrics.csv and hparams.yaml, which a resumed run appends to: the steps
    trained again after the checkpoint it resumed from appear a second time."""

    def __init__(self, run: Run):
        super().__init__(run.directory or run.config["out"], name="", version="csv")

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptExperimentWriter(log_dir=self.log_dir)
        return self._experiment


def trainer_settings(run: Run, callbacks: list = (), loggers: list = ()) -> dict:
    """Trainer arguments every Lightning project shares. Lightning's loggers: the run's CSV logger and a project's own
    `loggers`; the lifecycle writes TensorBoard, metrics.jsonl, last.ckpt and best.ckpt (Lightning's checkpointing is
    off). --accum-steps, --clip-grad and --ema are Lightning's accumulate_grad_batches, gradient_clip_val and
    EMAWeightAveraging. A project's own `callbacks` (LearningRateMonitor, EarlyStopping, ...) run after the average
    and before the lifecycle's callback, so that its checkpoints hold what they updated."""
    config = run.config
    averaging = [EMAWeightAveraging(decay=config["ema"])] if config.get("ema") else []
    return {
        "max_epochs": config["epochs"],
        "logger": [RunCSVLogger(run), *loggers],
        "enable_checkpointing": False,
        "log_every_n_steps": SYNC_EVERY,  # the steps between the loop's host syncs
        "callbacks": [*averaging, *callbacks, RunCallback(run)],
        "plugins": [RunCheckpointIO()],
        "use_distributed_sampler": False,  # BatchLoader shards itself
        "num_sanity_val_steps": 0,
        "enable_model_summary": False,
        "deterministic": bool(config.get("deterministic")),
        "accumulate_grad_batches": config.get("accum_steps") or 1,
        "gradient_clip_val": config.get("clip_grad"),  # --clip-grad: the global norm (Lightning unscales AMP's first)
        "default_root_dir": run.directory,
    }
