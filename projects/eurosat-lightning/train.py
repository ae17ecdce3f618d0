"""EuroSAT land-cover classification with PyTorch Lightning; data-parallel with `--strategy ddp`.

python projects/eurosat-lightning/train.py train --epochs 3
python projects/eurosat-lightning/train.py train --devices 2 --strategy ddp --batch-size 2048
python projects/eurosat-lightning/train.py evaluate runs/eurosat-lightning/<run>/best.ckpt
python projects/eurosat-lightning/train.py predict runs/eurosat-lightning/<run>/best.ckpt image.tif
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.profilers import AdvancedProfiler, PyTorchProfiler, SimpleProfiler
from torchmetrics import MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from eurosat.cache import prepare
from eurosat.cli import build_parser, parse_args, positive_int, run_cli
from eurosat.datasets import DATA_KEYS, BatchLoader, load_configured_splits, resident_device, to_input
from eurosat.errors import UserError
from eurosat.inference import evaluate_command, predict_command
from eurosat.models import build_model, check_model_name
from eurosat.runs import (
    MetricsLog,
    create_run_dir,
    load_checkpoint,
    provenance,
    record_provenance,
    resolve_resume,
    save_checkpoint,
    write_json,
)
from eurosat.training import autocast_dtype, resolve_device

PROJECT = "eurosat-lightning"
RUN_DIR_ENV = "EUROSAT_RUN_DIR"  # hands the run directory to the processes Lightning's DDP launcher starts
CHECKPOINT_ENV = "EUROSAT_RESUME_CHECKPOINT"  # and the checkpoint they resume from
PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler, "pytorch": PyTorchProfiler}


class EuroSATDataModule(pl.LightningDataModule):
    """Batches cut straight out of the cached array (eurosat.datasets.BatchLoader), held on the GPU when it fits."""

    def __init__(self, data_config: dict, batch_size: int, seed: int, data_on: str = "auto"):
        super().__init__()
        self.data_config, self.batch_size, self.seed, self.data_on = data_config, batch_size, seed, data_on
        self.data = None

    def prepare_data(self):  # once per node: decode the images into the cache
        prepare(Path(self.data_config["data"]), self.data_config["bands"], self.data_config["cache_dir"])

    def setup(self, stage=None):
        self.data = load_configured_splits(self.data_config, progress=False)

    def _loader(self, subset, shuffle: bool) -> BatchLoader:
        trainer = self.trainer
        device = trainer.strategy.root_device
        return BatchLoader(
            subset,
            max(1, self.batch_size // trainer.world_size),
            shuffle=shuffle,
            seed=self.seed,
            rank=trainer.global_rank,
            world_size=trainer.world_size,
            device=resident_device(subset, device, self.data_on),
            for_cuda=device.type == "cuda",
        )

    def train_dataloader(self):  # padded shards, reshuffled each epoch by EuroSATClassifier.on_train_epoch_start
        return self._loader(self.data.train, shuffle=True)

    def val_dataloader(self):  # unpadded shards: every validation image is counted exactly once
        return self._loader(self.data.val, shuffle=False)


class EuroSATClassifier(pl.LightningModule):
    def __init__(
        self,
        model_name: str,
        classes: list,
        bands: list,
        scale: float,
        lr: float,
        data_config: dict,
        pretrained: bool = False,
        weights: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_model(model_name, len(classes), len(bands), pretrained, weights and Path(weights))
        self.model = self.model.to(memory_format=torch.channels_last)
        # torchmetrics sum over processes, so epoch values are exact under DDP
        self.train_loss, self.val_loss = MeanMetric(), MeanMetric()
        self.train_acc = MulticlassAccuracy(len(classes), average="micro")
        self.val_acc = MulticlassAccuracy(len(classes), average="micro")
        self.val_samples = SumMetric()

    def on_train_epoch_start(self):
        self.trainer.train_dataloader.set_epoch(self.current_epoch)

    def forward(self, images):
        return self.model(to_input(images, self.hparams.scale, self.device))

    def shared_step(self, batch):
        images, labels = batch
        logits = self(images)
        return F.cross_entropy(logits, labels), logits.argmax(1), labels

    def training_step(self, batch, batch_idx):
        loss, preds, labels = self.shared_step(batch)
        self.train_loss(loss, len(labels))
        self.train_acc(preds, labels)
        self.log("loss", self.train_loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("acc", self.train_acc, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, preds, labels = self.shared_step(batch)
        self.val_loss.update(loss, len(labels))
        self.val_acc.update(preds, labels)
        self.val_samples.update(len(labels))
        self.log("val_loss", self.val_loss, prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        self.log("val_samples", self.val_samples)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints go to a temporary file first, so a crash never leaves a half-written last.ckpt."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        save_checkpoint(checkpoint, Path(path), keep_previous=Path(path).name == "last.ckpt")


class RunRecorder(pl.Callback):
    """metrics.jsonl, metrics.json and the articles' per-epoch line, written by rank 0."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.metrics, self.history = run_dir, MetricsLog(run_dir), []

    def on_train_start(self, trainer, module):
        if trainer.is_global_zero:  # on resume, keep only the epochs the checkpoint holds
            lines = self.metrics.path.read_text().splitlines() if self.metrics.path.exists() else []
            self.history = [json.loads(line) for line in lines][: trainer.current_epoch]
            self.metrics.restart(self.history)

    def on_train_epoch_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_validation_epoch_start(self, trainer, module):
        self.train_seconds = time.perf_counter() - self.start

    def on_train_epoch_end(self, trainer, module):
        if not trainer.is_global_zero:
            return
        logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
        train_images = trainer.train_dataloader.samples * trainer.world_size
        record = {
            "epoch": trainer.current_epoch + 1,
            "loss": logged["loss_epoch"],
            "acc": logged["acc_epoch"],
            "val_loss": logged["val_loss"],
            "val_acc": logged["val_acc"],
            "val_samples": int(logged["val_samples"]),
            "images_per_s": train_images / self.train_seconds,
            "seconds": time.perf_counter() - self.start,
        }
        self.history.append(record)
        self.metrics.append(record)
        print(
            f"Epoch {record['epoch']}/{trainer.max_epochs} loss {record['loss']:.4f} acc {record['acc']:.4f} "
            f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} "
            f"({record['images_per_s']:.0f} img/s, {record['seconds']:.1f} s)",
            flush=True,
        )

    def on_fit_end(self, trainer, module):
        if trainer.is_global_zero:
            self.metrics.write_summary(self.history, run_dir=str(self.run_dir))
            print(f"run directory: {self.run_dir}")


def run_directory(config: dict, resumed: tuple[Path, Path] | None) -> tuple[Path, Path | None]:
    """(run directory, checkpoint to resume from); processes started by Lightning's launcher reuse rank 0's."""
    if os.environ.get("LOCAL_RANK", "0") != "0" and RUN_DIR_ENV in os.environ:
        checkpoint = os.environ.get(CHECKPOINT_ENV)
        return Path(os.environ[RUN_DIR_ENV]), Path(checkpoint) if checkpoint else None
    if resumed:
        return resumed
    return create_run_dir(Path(config["out"]), config["model"]), None


def train(args) -> list[dict]:
    config = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    resumed = resolve_resume(args.resume) if args.resume else None
    if resumed:  # the run's own settings, with the new --epochs, --device, --devices, --data-on
        run_dir = resumed[0]
        try:
            saved = json.loads((run_dir / "config.json").read_text())
        except (OSError, ValueError):
            raise UserError(f"--resume {args.resume}: {run_dir / 'config.json'} is missing or unreadable") from None
        config = {**saved, **{key: config[key] for key in ("epochs", "device", "devices", "data_on", "resume")}}
    check_model_name(config["model"])
    device = resolve_device(config["device"])
    data_config = {key: config[key] for key in DATA_KEYS}
    datamodule = EuroSATDataModule(data_config, config["batch_size"], config["seed"], config["data_on"])
    datamodule.prepare_data()
    datamodule.setup()
    pl.seed_everything(config["seed"], verbose=False)
    data = datamodule.data
    module = EuroSATClassifier(
        config["model"],
        list(data.classes),
        list(data.bands),
        data.scale,
        config["lr"],
        data_config,
        config["pretrained"],
        config["weights"],
    )

    run_dir, ckpt_path = run_directory(config, resumed)
    precision = config["precision"]
    if precision == "auto":
        precision = {torch.bfloat16: "bf16-mixed", torch.float16: "16-mixed", None: "32-true"}[autocast_dtype("auto", device)]
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=config["devices"],
        num_nodes=config.get("num_nodes", 1),
        strategy=config["strategy"],
        precision=precision,
        max_epochs=config["epochs"],
        logger=TensorBoardLogger(str(run_dir), name="", version="tensorboard"),
        callbacks=[
            ModelCheckpoint(
                dirpath=run_dir, filename="best", monitor="val_acc", mode="max", save_last=True, enable_version_counter=False
            ),
            RunRecorder(run_dir),
        ],
        profiler=PROFILERS[config["profiler"]](dirpath=run_dir, filename="profile") if config["profiler"] else None,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # the data module shards itself (see val_dataloader)
        num_sanity_val_steps=0,
        enable_model_summary=False,
        deterministic=bool(config.get("deterministic")),
        default_root_dir=run_dir,
    )
    if trainer.is_global_zero:
        write_json(
            run_dir / "config.json",
            {
                **config,
                "classes": list(data.classes),
                "bands_resolved": list(data.bands),
                "scale": data.scale,
                "precision_resolved": precision,
                "world_size": trainer.world_size,
            },
        )
        record_provenance(run_dir, provenance(config["seed"], device, trainer.world_size))
        print(
            f"run {run_dir}: {len(data.train)} train / {len(data.val)} val images, {config['model']}, precision {precision}",
            flush=True,
        )
    os.environ.update({RUN_DIR_ENV: str(run_dir), CHECKPOINT_ENV: str(ckpt_path or "")})
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        os.environ.pop(CHECKPOINT_ENV, None)
    return trainer.callbacks[-1].history if isinstance(trainer.callbacks[-1], RunRecorder) else []


def load_trained_model(checkpoint_path: Path, device: torch.device) -> EuroSATClassifier:
    checkpoint = load_checkpoint(checkpoint_path)
    if not isinstance(checkpoint, dict) or "hyper_parameters" not in checkpoint or "state_dict" not in checkpoint:
        raise UserError(f"{checkpoint_path} is not an {PROJECT} checkpoint")
    module = EuroSATClassifier(**{**checkpoint["hyper_parameters"], "pretrained": False, "weights": None})
    module.load_state_dict(checkpoint["state_dict"])
    return module.to(device).eval()


def evaluate_checkpoint(args) -> dict:
    device = resolve_device(args.device)
    module = load_trained_model(args.checkpoint, device)
    return evaluate_command(module.model, dict(module.hparams.data_config), args, device)


def predict_checkpoint(args) -> list:
    device = resolve_device(args.device)
    hparams = (module := load_trained_model(args.checkpoint, device)).hparams
    return predict_command(module.model, args.files, hparams.bands, hparams.scale, hparams.classes, device)


def devices_flag(text: str):
    return int(text) if text.isdigit() else text


def make_parser():
    """The shared flags plus this project's own (make reproduce reads them too)."""
    parser, commands = build_parser(__doc__, PROJECT)
    train_parser = commands["train"]
    train_parser.add_argument(
        "--precision",
        choices=("auto", "32-true", "16-mixed", "bf16-mixed"),
        default="auto",
        help="auto: bf16-mixed on GPUs that support it, else 16-mixed; bf16-mixed on CPUs with native bf16, else 32-true",
    )
    train_parser.add_argument("--devices", type=devices_flag, default=1, help="devices per node: a count or 'auto' (default: 1)")
    train_parser.add_argument("--num-nodes", type=positive_int, default=1, help="nodes, each with --devices (default: 1)")
    train_parser.add_argument(
        "--strategy", default="auto", help="auto, ddp (data-parallel; Lightning 2 removed dp), ddp_spawn, ... (default: auto)"
    )
    train_parser.add_argument("--profiler", choices=sorted(PROFILERS), help="write a profiler report into the run directory")
    return parser, commands


def main(argv=None):
    args = parse_args(make_parser()[0], argv)
    return {"train": train, "evaluate": evaluate_checkpoint, "predict": predict_checkpoint}[args.command](args)


if __name__ == "__main__":
    run_cli(main)
