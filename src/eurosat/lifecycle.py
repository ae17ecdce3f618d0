"""One run's life, the same for every project: a project's train.py holds its own flags and its fit loop, and
hands them to main() here as an Experiment.

The lifecycle creates or resumes the run directory, keeps the resolved config, provenance, metrics.jsonl,
TensorBoard and, with --tracking mlflow, an MLflow run (eurosat.tracking), prints the start line and the articles'
per-epoch line, writes and checks checkpoints, turns SIGINT/SIGTERM into a checkpoint and exit status 130/143, a
lost DDP peer into one line, and runs `evaluate` and `predict`. Resume takes the run's settings from its checkpoint,
with RESUME_FLAGS (and the project's own resume_flags) from the new command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.tensorboard import SummaryWriter

from eurosat import normalization, selection
from eurosat.cli import build_parser, is_main_process, parse_args, run_cli
from eurosat.datasets import EuroSATSplits, load_configured_splits
from eurosat.errors import LostPeer, UserError
from eurosat.evaluation import matrix_report
from eurosat.evaluation import prefix as evaluation_prefix
from eurosat.files import list_files
from eurosat.gpu import resolve_device
from eurosat.inference import evaluate_command, evaluate_split, predict_command, report_evaluation
from eurosat.models import build_model, check_model_name, check_model_runs
from eurosat.normalization import normalized
from eurosat.reading import parse_bands, read_image
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
from eurosat.timeline import Timeline
from eurosat.tracking import MlflowTracker, previous_run_id
from eurosat.tracking import default_uri as default_tracking_uri
from eurosat.training import NonFiniteLoss, restore_rng_state, rng_state
from eurosat.weights import pretrained_file

# What a resume may change: how long, where it runs and where it is tracked, never what it trains
RESUME_FLAGS = ("epochs", "device", "data_on", "tracking", "tracking_uri")
NOT_RECORDED = ("command", "resume")
RUN_DIR_ENV = "EUROSAT_RUN_DIR"  # hands the run directory to processes a framework's launcher starts from rank 0
PEER_LOST = re.compile(r"Connection (closed|reset) by peer|Broken pipe|timed out|NCCL error", re.I)
EPOCH_SCALARS = ("loss", "acc", "val_loss", "val_acc", "images_per_s")
TRACKED_METRICS = (*EPOCH_SCALARS, "seconds")


@dataclass(frozen=True)
class Experiment:
    """What a project's train.py hands the lifecycle."""

    name: str  # the folder under projects/
    description: str  # train.py's docstring: the --help text
    fit: Callable[[Run], None]  # trains run.config, calling run.begin, run.end_epoch (and run.save) as it goes
    add_flags: Callable = lambda train_parser: None  # the project's own `train` flags
    resume_flags: tuple[str, ...] = ()  # its own flags a resume takes from the new command line
    # The trained network (scaled images in, logits out) from a checkpoint; default: a timm model from "model"
    load_model: Callable[[dict], torch.nn.Module] | None = None


class Stopped(Exception):
    """Training stopped on request after writing a checkpoint: args are (message, signal number)."""


class StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (docker stop, Slurm, Kubernetes) ask training to stop at the next step, after
    a checkpoint; Ctrl-C again aborts at once. SIGTERM again changes nothing: Slurm signals every process of a
    job step and torchrun passes the signal on to its workers, so each rank gets it twice (SIGKILL follows
    after the scheduler's grace time anyway)."""

    def __init__(self):
        self.signum = None
        self.previous = {}

    def install(self) -> None:
        """(Again, after a framework installed its own handlers.)"""
        for signum in (signal.SIGINT, signal.SIGTERM):
            self.previous.setdefault(signum, signal.signal(signum, self.handle))

    def release(self) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}

    def handle(self, signum, frame):
        if self.signum is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        if is_main_process():
            print(f"{signal.Signals(signum).name}: stopping after this step with a checkpoint", file=sys.stderr, flush=True)

    def agreed(self, world_size: int, device: torch.device, step: int, every: int = 10) -> bool:
        """Whether every rank stops now: ranks may see the signal at different steps, so they vote every `every`."""
        if world_size == 1:
            return self.signum is not None
        if step % every:
            return False
        vote = torch.tensor([self.signum is not None], dtype=torch.int32, device=device)
        dist.all_reduce(vote, dist.ReduceOp.MAX)
        return bool(vote.item())


def named_run_dir(directory: Path) -> Path:
    """--run-dir for a run that starts there: the folder, made if needed."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--run-dir {directory}: cannot create it ({exc.strerror}); pick a writable folder") from None
    return directory


def check_project(checkpoint, name: str, source) -> None:
    """A checkpoint (or run) of another project, or no checkpoint of ours at all, is one line."""
    if not isinstance(checkpoint, dict) or not {"project", "config"} <= checkpoint.keys():
        raise UserError(f"{source} is not a checkpoint written by a train.py of this repository's projects")
    if checkpoint["project"] != name:
        owner = checkpoint["project"]
        raise UserError(f"{source} belongs to project {owner}, not {name}: use projects/{owner}/train.py")


class Run:
    """The run directory and everything written into it; only the main process (rank 0) writes."""

    def __init__(self, project: str, config: dict, checkpoint: dict | None, checkpoint_path: Path | None, directory):
        self.project, self.config = project, config
        self.checkpoint, self.checkpoint_path = checkpoint, checkpoint_path  # what a resume continues from
        self.directory: Path | None = directory  # None on ranks that never write
        self.history: list[dict] = list(checkpoint["history"]) if checkpoint else []
        self.best_val_matrix = checkpoint.get("best_val_matrix") if checkpoint else None  # older checkpoints: none
        self.stop = StopRequest()
        self.lost: LostPeer | None = None
        self.reporting = threading.Lock()
        self.is_main = False
        self.writer = None
        self.tracker: MlflowTracker | None = None
        self.initial_weights: Path | None = None  # a fresh run's starting weights (None: random, or a resume)
        self.pretrained = None  # their weights.lock entry, when they are ImageNet's
        self.test_result: dict | None = None  # the test part's loss, acc and samples, once the run's end scored it
        self.timeline = Timeline()  # the project marks data_ready, model_built and first_step; epochs mark themselves

    @classmethod
    def open(cls, experiment: Experiment, args) -> Run:
        if not args.resume and args.run_dir and (Path(args.run_dir) / "last.ckpt").exists():
            args.resume = Path(args.run_dir)  # a requeued job or a restarted pod: continue the run it started there
        given = {key: str(v) if isinstance(v, Path) else v for key, v in vars(args).items() if key not in NOT_RECORDED}
        checkpoint = checkpoint_path = directory = None
        if args.resume:
            directory, checkpoint_path, checkpoint = resolve_resume(args.resume)
            check_project(checkpoint, experiment.name, f"--resume {args.resume}")
            config = {**checkpoint["config"], **{key: given[key] for key in (*RESUME_FLAGS, *experiment.resume_flags)}}
        else:
            config = {**given, "project": experiment.name}
        check_model_name(config["model"])
        files = list_files(Path(config["data"]))  # a missing or empty data folder is one line before any folder is made
        first_image = read_image(files.root / files.files[0])
        height, _, band_count = first_image.shape
        bands = parse_bands(config["bands"], band_count)
        # a ViT at 224 for 64-pixel images, a --drop-path the model lacks
        check_model_runs(config["model"], len(files.classes), len(bands), height, config.get("drop_path"))
        normalization.check(config, len(bands), first_image.dtype)
        initial, locked = None, None  # the weights training starts from, and their weights.lock entry
        if checkpoint is None and config.get("weights"):
            initial = Path(config["weights"])
        elif checkpoint is None and config.get("pretrained"):  # checked before anything is written
            initial, locked = pretrained_file(config["model"], is_main_process())
        if handed := os.environ.get(RUN_DIR_ENV):  # a process a framework's launcher started from rank 0's
            directory = Path(handed)
        elif directory is None and is_main_process():
            directory = named_run_dir(Path(config["run_dir"])) if config.get("run_dir") else None
            directory = directory or create_run_dir(Path(config["out"]), config["model"])
        run = cls(experiment.name, config, checkpoint, checkpoint_path, directory)
        run.initial_weights, run.pretrained = initial, locked
        return run

    def begin(self, data: EuroSATSplits, device, world_size: int, is_main: bool, precision, notes: str = "") -> None:
        """Record what this run trains on and how; the main process writes config.json and provenance.json,
        opens metrics.jsonl and TensorBoard at the checkpoint's epoch and prints the start line."""
        self.is_main = is_main
        self.config.update(
            classes=list(data.classes),
            bands_resolved=list(data.bands),
            scale=data.scale,
            input=data.input_spec(),
            precision_resolved=str(precision),
            world_size=world_size,
        )
        if not is_main:
            return
        write_json(self.directory / "config.json", self.config)
        record = provenance(self.config["seed"], device, world_size)
        if self.pretrained:
            record["pretrained"] = {"model": self.config["model"], "source": self.pretrained.source(), **asdict(self.pretrained)}
        if self.config.get("tracking") == "mlflow":
            self.start_tracking(record)
        record_provenance(self.directory, record)
        self.metrics = MetricsLog(self.directory)
        self.metrics.restart(self.history)
        self.writer = SummaryWriter(str(self.directory / "tensorboard"), purge_step=len(self.history) + 1)
        parts = f"{len(data.train)} train / {len(data.val)} val images"
        if data.test is not None:
            parts = f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test images ({self.config['split']} split)"
        print(
            f"run {self.directory}: {parts}, {self.config['model']} on {device} x{world_size}, precision {precision}{notes}",
            flush=True,
        )
        if self.tracker and self.tracker.active:
            print(f"tracking: MLflow run {self.tracker.run_id} at {self.tracker.url()}", flush=True)

    def start_tracking(self, record: dict) -> None:
        """Start (or, on resume, continue) the MLflow run; its id goes into the provenance record."""
        self.tracker = MlflowTracker(self.config.get("tracking_uri") or default_tracking_uri())
        recorded = self.directory / "provenance.json"
        resume_id = previous_run_id(json.loads(recorded.read_text()), self.tracker.uri) if recorded.exists() else None
        self.tracker.start(self.project, self.directory.name, self.config, resume_id)
        if self.tracker.active:
            record["tracking"] = self.tracker.record()

    def end_tracking(self, status: str) -> None:
        if self.tracker:
            self.tracker.end(self.directory, status)

    @property
    def select(self) -> str:
        return self.config.get("select", "val_acc")  # runs recorded before --select chose on val_acc

    def end_epoch(self, record: dict, val_matrix: list | None = None) -> bool:
        """Append an epoch's record (metrics.jsonl, TensorBoard, the epoch line); True when it is the best yet. The
        best epoch's validation confusion matrix is kept (and checkpointed) for the end-of-run evaluation."""
        best = selection.improves(record, self.history, self.select)
        if best:
            self.best_val_matrix = val_matrix
        record = {**record, "elapsed_s": self.timeline.epoch_end()}  # seconds from process start
        self.history.append(record)
        if self.is_main:
            self.metrics.append(record)
            for name in EPOCH_SCALARS:
                self.writer.add_scalar(name, record[name], record["epoch"])
            if self.tracker:
                self.tracker.log_epoch(record, TRACKED_METRICS)
            print(
                f"Epoch {record['epoch']}/{self.config['epochs']} loss {record['loss']:.4f} acc {record['acc']:.4f} "
                f"val_loss {record['val_loss']:.4f} val_acc {record['val_acc']:.4f} "
                f"({record['images_per_s']:.0f} img/s, {record['seconds']:.1f} s)",
                flush=True,
            )
        return best

    def state(self) -> dict:
        """The lifecycle's part of every checkpoint: whose it is, its settings, its history, the RNG state."""
        return {
            "project": self.project,
            "config": self.config,
            "history": self.history,
            "best_val_matrix": self.best_val_matrix,
            "rng": rng_state(),
        }

    def restore_rng(self) -> None:
        restore_rng_state(self.checkpoint["rng"])

    def save(self, state: dict, best: bool = False) -> None:
        """last.ckpt (the one it replaces kept as last.prev.ckpt) and, for the best epoch, best.ckpt."""
        if self.is_main:
            save_checkpoint({**state, **self.state()}, self.directory / "last.ckpt", keep_previous=True)
            if best:
                save_checkpoint({**state, **self.state()}, self.directory / "best.ckpt")

    @contextlib.contextmanager
    def stops_at_a_nonfinite_loss(self, epoch: int):
        """A NaN or infinite training loss ends the run with one line; what was saved before it stays."""
        try:
            yield
        except NonFiniteLoss as gone:
            saved = self.directory and (self.directory / "last.ckpt").exists()
            kept = f"the checkpoints in {self.directory} hold the last finite weights" if saved else "no checkpoint was written"
            raise UserError(
                f"epoch {epoch + 1} step {gone.step}: the training loss is not finite (nan or inf), so training stopped; "
                f"train with a lower --lr (now {self.config['lr']:g}), or in full precision or fp16 with its gradient "
                f"scaler (--precision); {kept}"
            ) from None

    def lost_peer(self, reason: str) -> LostPeer:
        """The error for another training process's loss, its line printed at once by the main process and only
        once: Lightning's launcher, which SIGKILLs the main process within 5 s of a rank's death, may report it
        first, from its own thread (eurosat.lightning_run)."""
        with self.reporting:
            if self.lost is None:
                self.lost = LostPeer(
                    f"lost another training process (a node or rank stopped): {reason[:200]}; "
                    f"continue from the last checkpoint with --resume {self.directory or 'runs/<project>/<run-id>'}"
                )
                if is_main_process():
                    self.lost.report()
        return self.lost

    def stopped(self, where: str) -> Stopped:
        """(Every rank stops; only the main one, which knows the directory, prints the message.)"""
        name = signal.Signals(self.stop.signum).name
        directory = self.directory or Path("runs/<project>/<run-id>")
        return Stopped(
            f"stopped by {name} at {where}: checkpoint {directory / 'last.ckpt'} written; continue with --resume {directory}",
            self.stop.signum,
        )

    def evaluate(self, experiment: Experiment) -> None:
        """The finished run's best checkpoint on its whole validation part and then, once, on its test part when the
        split has one, in the main process: the class table, evaluation.json and the confusion matrix (CSV, PNG,
        TensorBoard image, MLflow metrics and artifacts), test_... for the test part. The validation figures are
        those of the best epoch's own validation pass (its matrix, summed over the ranks: every image once), so they
        cost no second pass; the test part is scored in fp32, as `evaluate --split test` scores it. Nothing before
        this reads the test part."""
        best = selection.best(self.history, self.select)
        data = load_configured_splits(self.config, progress=False)
        checkpoint = self.directory / "best.ckpt"
        device = model = None
        epoch = len(self.history)
        for part in ("val", "test") if data.test is not None else ("val",):
            result = {"checkpoint": str(checkpoint), "data": self.config["data"]}
            if part == "val" and self.best_val_matrix is not None:
                report = matrix_report(self.best_val_matrix, list(data.classes))
                result.update(part="val", val_loss=best["val_loss"], val_acc=best["val_acc"], val_samples=report["samples"])
                result.update(report)
            else:  # the test part, or a run resumed from a checkpoint older than the kept matrix
                if model is None:
                    device = resolve_device(self.config["device"])
                    model, _ = trained_model(experiment, checkpoint, device)
                result.update(evaluate_split(model, data, device, self.config["batch_size"], part))
            picture = report_evaluation(result, self.directory)
            prefix = evaluation_prefix(part)
            with SummaryWriter(str(self.directory / "tensorboard")) as writer:
                writer.add_image(f"{prefix}confusion_matrix", picture, epoch, dataformats="HWC")
            if part == "test":
                self.test_result = {name: result[f"test_{name}"] for name in ("loss", "acc", "samples")}
                print(f"test_loss {result['test_loss']:.4f} test_acc {result['test_acc']:.4f} on {result['test_samples']} "
                      f"test images (best.ckpt, chosen by {self.select})", flush=True)  # fmt: skip
            if self.tracker:
                summary = {
                    f"{prefix}{average}_{name}": result["averages"][average][name]
                    for average in ("macro", "weighted")
                    for name in ("precision", "recall", "f1")
                }
                if part == "test":
                    summary.update(test_loss=result["test_loss"], test_acc=result["test_acc"])
                self.tracker.log_epoch({**summary, "epoch": epoch}, summary)

    def finish(self) -> None:
        """metrics.json (the summary, with the test part's figures when the split has one) and the run's last lines."""
        if self.is_main:
            self.writer.close()
            timeline = self.timeline.summary()
            test = {"test": self.test_result} if self.test_result else {}
            self.metrics.write_summary(
                self.history, run_dir=str(self.directory), split=self.config.get("split", "articles"), select=self.select,
                **test, timeline=timeline,
            )  # fmt: skip
            print(self.timeline.line(timeline))
            print(f"run directory: {self.directory}")


def train(experiment: Experiment, args) -> list[dict]:
    """Create or resume the run, fit it; returns the per-epoch history. Every rank calls this."""
    run = Run.open(experiment, args)
    handing_over = is_main_process() and RUN_DIR_ENV not in os.environ
    if handing_over:
        os.environ[RUN_DIR_ENV] = str(run.directory)
    run.stop.install()
    status = "FAILED"  # the MLflow run's end state
    try:
        experiment.fit(run)
        if run.is_main:
            run.evaluate(experiment)
            run.finish()  # after the evaluation: the summary holds the test figures, the timeline the whole run
        status = "FINISHED"
    except Stopped as stopped:
        status = "KILLED"
        if run.is_main:
            print(stopped.args[0], file=sys.stderr, flush=True)
        sys.exit(128 + stopped.args[1])
    except RuntimeError as exc:  # gloo and NCCL raise RuntimeError (or its DistError subclasses) when a peer is gone
        if run.config.get("world_size", 1) == 1 or not (isinstance(exc, dist.DistError) or PEER_LOST.search(str(exc))):
            raise
        raise run.lost_peer(str(exc).strip().splitlines()[0]) from None
    finally:
        run.stop.release()
        run.end_tracking(status)
        if handing_over:
            os.environ.pop(RUN_DIR_ENV, None)
            if not any(run.directory.iterdir()):  # stopped by bad input before anything was written
                run.directory.rmdir()
    return run.history


def default_model(checkpoint: dict) -> torch.nn.Module:
    config = checkpoint["config"]
    size = config.get("input", {}).get("height")  # (runs before input was recorded: built at the model's own size)
    model = build_model(config["model"], len(config["classes"]), len(config["bands_resolved"]), img_size=size)
    model = normalized(model, config.get("normalization"))  # (--normalize band-stats, imagenet)
    model.load_state_dict(checkpoint["model"])
    return model


def trained_model(experiment: Experiment, path: Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    checkpoint = load_checkpoint(path)
    check_project(checkpoint, experiment.name, path)
    model = (experiment.load_model or default_model)(checkpoint)
    return model.to(device, memory_format=torch.channels_last).eval(), checkpoint["config"]


def evaluate_checkpoint(experiment: Experiment, args) -> dict:
    device = resolve_device(args.device)
    model, config = trained_model(experiment, args.checkpoint, device)
    return evaluate_command(model, config, args, device)


def predict_checkpoint(experiment: Experiment, args) -> list:
    device = resolve_device(args.device)
    model, config = trained_model(experiment, args.checkpoint, device)
    return predict_command(model, args, config, device)


def make_parser(experiment: Experiment):
    """The shared flags plus the project's own (make reproduce reads them too)."""
    parser, commands = build_parser(experiment.description, experiment.name)
    experiment.add_flags(commands["train"])
    return parser, commands


def main(experiment: Experiment, argv=None):
    """`train` (the default), `evaluate CHECKPOINT` or `predict CHECKPOINT FILE...`; what the command returns."""
    args = parse_args(make_parser(experiment)[0], argv)
    return {"train": train, "evaluate": evaluate_checkpoint, "predict": predict_checkpoint}[args.command](experiment, args)


def run(experiment: Experiment) -> None:
    """A train.py's `if __name__ == "__main__"`: main() with bad input as one line and exit status 2."""
    run_cli(lambda argv: main(experiment, argv))
