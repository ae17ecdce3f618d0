"""EuroSAT land-cover classification with PyTorch Lightning; data-parallel with `--strategy ddp`.

python projects/eurosat-lightning/train.py train --epochs 3
python projects/eurosat-lightning/train.py train --devices 2 --strategy ddp --batch-size 2048
python projects/eurosat-lightning/train.py evaluate runs/eurosat-lightning/<run>/best.ckpt
python projects/eurosat-lightning/train.py predict runs/eurosat-lightning/<run>/best.ckpt image.tif
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from eurosat import lifecycle
from eurosat.cache import prepare
from eurosat.cli import positive_int
from eurosat.datasets import IGNORE_INDEX, BatchLoader, load_configured_splits, resident_device, to_input
from eurosat.gpu import resolve_device
from eurosat.lightning_run import trainer_settings
from eurosat.models import build_model
from eurosat.normalization import normalized, statistics
from eurosat.recipe import RECIPE, make_augment, make_optimizer, make_scheduler, optimizer_steps, training_loss
from eurosat.training import autocast_dtype, set_matmul_precision

PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}
PRECISIONS = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed", None: "32-true"}


class EuroSATDataModule(pl.LightningDataModule):
    """Batches cut straight out of the cached array (eurosat.datasets.BatchLoader), held on the GPU when it fits."""

    def __init__(self, config: dict):
        super().__init__()
        self.config = config
        self.data = None

    def prepare_data(self):  # once per node: decode the images into the cache
        prepare(Path(self.config["data"]), self.config["bands"], self.config["cache_dir"])

    def setup(self, stage=None):
        self.data = load_configured_splits(self.config, progress=False)

    def _loader(self, subset, shuffle: bool) -> BatchLoader:
        trainer, device = self.trainer, self.trainer.strategy.root_device
        return BatchLoader(
            subset,
            max(1, self.config["batch_size"] // trainer.world_size),
            shuffle=shuffle,
            seed=self.config["seed"],
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            device=resident_device(subset, device, self.config["data_on"]),
            for_cuda=device.type == "cuda",
        )

    def train_dataloader(self):  # padded shards, reshuffled each epoch
        return self._loader(self.data.train, shuffle=True)

    def val_dataloader(self):  # every validation image is counted exactly once: the padding is labelled IGNORE_INDEX
        return self._loader(self.data.val, shuffle=False)


class EuroSATClassifier(pl.LightningModule):
    def __init__(
        self,
        model_name: str,
        classes: list,
        bands: list,
        scale: float,
        lr: float,
        weights=None,
        img_size=None,
        recipe=None,
        normalization=None,
    ):
        super().__init__()
        self.save_hyperparameters()
        drop_path = (recipe or {}).get("drop_path")
        self.model = build_model(model_name, len(classes), len(bands), weights and Path(weights), img_size, drop_path)
        self.model = normalized(self.model, normalization)  # --normalize band-stats, imagenet: their statistics
        # channels_last: the fastest whole default run measured (docs/speed.md, H100 2026-12-05)
        self.model = self.model.to(memory_format=torch.channels_last)
        # torchmetrics sum over processes, so epoch values are exact under DDP; persistent, so that a mid-epoch
        # checkpoint keeps the epoch's running totals
        # a NaN loss stops the run (eurosat.lightning_run), so the metrics need no NaN check (and no warning) of their own
        self.train_loss, self.val_loss = MeanMetric(nan_strategy="disable"), MeanMetric(nan_strategy="disable")
        self.train_acc = MulticlassAccuracy(len(classes), average="micro")
        self.val_acc = MulticlassAccuracy(len(classes), average="micro", ignore_index=IGNORE_INDEX)
        self.val_samples = SumMetric()
        # the end of the run reports the best epoch's classes from its matrix, without a second pass
        self.val_matrix = MulticlassConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX)
        self.epoch_val_matrix = None  # the last validation's, summed over the processes
        # --opt, --sched, --label-smoothing, --augment, ... (eurosat.recipe); none in runs from before them: the
        # articles'. Replace any of these with a function of this project's own.
        self.recipe = {**(recipe or {}), "lr": lr}
        self.training_loss = training_loss(self.recipe, ignore_index=IGNORE_INDEX)
        self.augment = make_augment(self.recipe)
        for metric in (self.train_loss, self.train_acc):
            metric.persistent(True)

    def forward(self, images):
        return self.model(to_input(images, self.hparams.scale, self.device))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        x = to_input(images, self.hparams.scale, self.device)
        if self.augment is not None:  # seeded by the position, so that a resumed or repeated run flips the same
            x = self.augment(x, batch_idx + 1, self.current_epoch, self.global_rank)
        logits = self.model(x)
        loss, preds = self.training_loss(logits, labels), logits.argmax(1)
        self.train_loss(loss, len(labels))
        self.train_acc(preds, labels)
        self.log("loss", self.train_loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch  # the last batch is padded to the batch shape: count the images
        logits = self(images)
        loss, preds = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX), logits.argmax(1)  # plain, as timm's
        images = (labels != IGNORE_INDEX).sum()
        self.val_loss.update(loss, images)
        self.val_acc.update(preds, labels)
        self.val_samples.update(images)
        self.val_matrix.update(preds, labels)
        self.log("val_loss", self.val_loss, prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        self.log("val_samples", self.val_samples)

    def on_validation_epoch_end(self):
        self.epoch_val_matrix = self.val_matrix.compute().tolist()
        self.val_matrix.reset()

    def configure_optimizers(self):
        """The optimizer and its schedule, stepped every optimizer step (after --accum-steps batches)."""
        optimizer = make_optimizer(self, self.recipe, self.device, fused=False)
        # the loader's length, without building one before a resume restores its position
        trainer, config = self.trainer, self.trainer.datamodule.config
        batch_size = max(1, config["batch_size"] // trainer.world_size)
        batches = BatchLoader.training_batches(len(trainer.datamodule.data.train), batch_size, trainer.world_size)
        steps_per_epoch = optimizer_steps(batches, {"accum_steps": trainer.accumulate_grad_batches})
        scheduler = make_scheduler(optimizer, self.recipe, steps_per_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def callbacks(config: dict) -> list:
    """Lightning callbacks of this project's own (LearningRateMonitor, EarlyStopping, ...): none by default."""
    return []


def loggers(config: dict) -> list:
    """Lightning loggers of this project's own (TensorBoardLogger, MLFlowLogger, WandbLogger(offline=True), ...),
    beside the CSV logger every run has (RUN/csv/metrics.csv): none by default."""
    return []


def fit(run: lifecycle.Run) -> None:
    config = run.config
    # a forking strategy needs CUDA uninitialised in this process, so the GPUs' architectures go unchecked
    forks = any(word in config["strategy"] for word in ("fork", "notebook"))
    device = resolve_device(config["device"], inspect_gpus=not forks)
    set_matmul_precision(device)
    datamodule = EuroSATDataModule(config)
    datamodule.prepare_data()
    datamodule.setup()
    run.timeline.mark("data_ready")
    pl.seed_everything(config["seed"], verbose=False)
    data = datamodule.data
    weights = run.initial_weights and str(run.initial_weights)
    size = data.input_spec()["height"]  # a model built for one input size (a ViT) is built for the data's
    settings = {name: config[name] for name in RECIPE if name in config}  # (a run resumed from before them: none)
    config["normalization"] = statistics(config, data)  # --normalize: in the model, and recorded
    module = EuroSATClassifier(
        config["model"], list(data.classes), list(data.bands), data.scale, config["lr"], weights, size, settings,
        config["normalization"],
    )  # fmt: skip
    run.timeline.mark("model_built")  # on the CPU: Lightning moves it to the device when fit starts
    precision = config["precision"]
    if precision == "auto":
        precision = PRECISIONS[autocast_dtype("auto", device)]
    profiler = config["profiler"] and PROFILERS[config["profiler"]](dirpath=run.directory, filename="profile")
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=config["devices"],
        num_nodes=config["num_nodes"],
        strategy=config["strategy"],
        precision=precision,
        profiler=profiler or None,
        **trainer_settings(run, callbacks(config), loggers(config)),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=run.checkpoint_path)


def load_model(checkpoint: dict) -> torch.nn.Module:
    settings = {key: value for key, value in checkpoint["hyper_parameters"].items() if key != "pretrained"}  # (older runs)
    module = EuroSATClassifier(**{**settings, "weights": None})
    module.load_state_dict(checkpoint["state_dict"])
    return module.model


def devices_flag(text: str):
    return int(text) if text.isdigit() else text


def add_flags(train):
    train.add_argument(
        "--precision",
        choices=("auto", "32-true", "16-mixed", "bf16-mixed"),
        default="auto",
        help="auto: bf16-mixed on GPUs that support it, else 16-mixed; bf16-mixed on CPUs with native bf16, else 32-true",
    )
    train.add_argument("--devices", type=devices_flag, default=1, help="devices per node: a count or 'auto' (default: 1)")
    train.add_argument("--num-nodes", type=positive_int, default=1, help="nodes, each with --devices (default: 1)")
    train.add_argument(
        "--strategy", default="auto", help="auto, ddp (data-parallel; Lightning 2 removed dp), ddp_spawn, ... (default: auto)"
    )
    train.add_argument("--profiler", choices=sorted(PROFILERS), help="write a profiler report into the run directory")


EXPERIMENT = lifecycle.Experiment(
    Path(__file__).parent.name, __doc__, fit, add_flags, resume_flags=("devices", "num_nodes", "strategy"), load_model=load_model
)


def main(argv=None):
    return lifecycle.main(EXPERIMENT, argv)


if __name__ == "__main__":
    lifecycle.run(EXPERIMENT)
