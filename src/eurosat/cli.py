"""Command-line plumbing shared by both projects: the common flags, sub-commands and one-line errors."""

from __future__ import annotations

import argparse
import atexit
import gc
import math
import os
import sys
from pathlib import Path

import numpy as np

from eurosat.errors import UserError
from eurosat.selection import SELECTION_METRICS

COMMANDS = ("train", "evaluate", "predict")
SCHEDULES, AUGMENTS = ("constant", "cosine", "step"), ("none", "flips")  # eurosat.recipe's
NORMALIZATIONS = ("articles", "band-stats", "imagenet")  # eurosat.normalization's


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line instead of usage plus error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, minimum, what, maximum=math.inf):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not minimum <= value <= maximum:  # NaN fails both
            raise argparse.ArgumentTypeError(f"{text} must be {what}")
        return value

    return parse


non_negative_int = _number(int, 0, "0 or more")
non_negative_float = _number(float, 0.0, "a finite number, 0 or more", sys.float_info.max)
positive_float = _number(float, math.ulp(0.0), "a finite number above 0", sys.float_info.max)
fraction = _number(float, 0.0, "0 or more and below 1", math.nextafter(1.0, 0.0))
positive_int = _number(int, 1, "1 or more")
# Parameters and optimizer state are float32: a learning rate it cannot hold is no learning rate
FLOAT32 = (float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max))
learning_rate = _number(float, FLOAT32[0], f"a positive number float32 holds ({FLOAT32[0]:.3g} to {FLOAT32[1]:.3g})", FLOAT32[1])


def build_parser(description: str, project: str) -> tuple[ArgumentParser, dict[str, ArgumentParser]]:
    """The parser every project shares; projects add their own flags to the returned sub-parsers."""
    parser = ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="{train,evaluate,predict}")
    train = commands.add_parser("train", help="train a model (the default command)")
    train.add_argument("--data", type=Path, default=Path("data/eurosat"), help="EuroSAT folder (default: %(default)s)")
    train.add_argument("--out", type=Path, default=Path("runs") / project, help="runs are created in here (default: %(default)s)")
    train.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="the run's folder, instead of a new one under --out: started there, or continued from DIR/last.ckpt when "
        "it holds one (a requeued job, a restarted pod)",
    )
    train.add_argument("--epochs", type=positive_int, default=3, help="epochs to train, 1 or more (default: %(default)s)")
    train.add_argument("--batch-size", type=positive_int, default=1024, help="global batch size (default: %(default)s)")
    train.add_argument("--lr", type=learning_rate, default=1e-3, help="learning rate (default: %(default)s)")
    # the recipe (eurosat.recipe), with timm's names; the defaults are the articles' Adam and plain cross-entropy
    train.add_argument("--opt", choices=("adam", "adamw", "sgd"), default="adam", help="the optimizer (default: %(default)s)")
    train.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD's momentum (default: %(default)s)")
    train.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=0.0,
        help="weight decay (decoupled for adamw), never on biases and normalisation weights, as timm's (default: 0)",
    )
    train.add_argument(
        "--label-smoothing", type=fraction, default=0.0, help="label smoothing of the training loss, below 1 (default: 0)"
    )
    train.add_argument(
        "--clip-grad", type=positive_float, metavar="NORM", help="clip the gradients' global norm to NORM (default: none)"
    )
    train.add_argument(
        "--sched",
        choices=SCHEDULES,
        default="constant",
        help="the learning-rate schedule, stepped every optimizer step: constant, cosine (to 0 at the last step) or "
        "step (x --decay-rate every --decay-epochs) (default: %(default)s)",
    )
    train.add_argument(
        "--warmup-epochs",
        type=non_negative_float,
        default=0.0,
        help="a linear warm-up to --lr over these epochs (a fraction is fine), before --sched (default: 0)",
    )
    train.add_argument(
        "--decay-epochs", type=positive_float, default=30.0, help="--sched step: epochs between decays (default: 30)"
    )
    train.add_argument(
        "--decay-rate", type=positive_float, default=0.1, help="--sched step: the factor of each decay (default: 0.1)"
    )
    train.add_argument(
        "--accum-steps",
        type=positive_int,
        default=1,
        metavar="N",
        help="accumulate the gradients of N batches per optimizer step: the step of a batch N times larger (default: 1)",
    )
    train.add_argument(
        "--ema",
        type=fraction,
        metavar="DECAY",
        help="validate, save and predict with an exponential moving average of the weights, e.g. 0.999 (default: none)",
    )
    train.add_argument("--drop-path", type=fraction, default=0.0, help="stochastic depth rate of the model (default: 0)")
    train.add_argument(
        "--augment",
        choices=AUGMENTS,
        default="none",
        help="flips: each training image in one of its eight flips and quarter turns, on the device, seeded (default: none)",
    )
    train.add_argument(
        "--normalize",
        choices=NORMALIZATIONS,
        default="articles",
        help="articles: /4000 clipped to [0, 1]; band-stats: each band by the training part's mean and std; imagenet: "
        "[0, 1], then the pretrained weights' mean and std (RGB) (default: %(default)s)",
    )
    train.add_argument("--model", default="tf_efficientnet_b5", help="timm model name (default: %(default)s)")
    train.add_argument("--bands", default="rgb", help="rgb (channels 3,2,1), all, or channel numbers like 3,2,1")
    train.add_argument("--seed", type=int, default=42, help="training seed (default: %(default)s)")
    train.add_argument("--split-seed", type=int, default=42, help="seed of the stratified split (default: %(default)s)")
    train.add_argument(
        "--split",
        choices=("articles", "torchgeo"),
        default="articles",
        help="articles: stratified train/validation by --val-fraction and --split-seed (default); torchgeo: the published "
        "train/val/test lists (eurosat-{train,val,test}.txt in the --data folder, fetched by make data)",
    )
    train.add_argument("--val-fraction", type=float, default=0.2, help="validation share (default: %(default)s)")
    train.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="--split articles: first hold out this stratified share of the images as a test part (default: none)",
    )
    train.add_argument("--cache-dir", type=Path, help="decoded-image cache (default: $EUROSAT_CACHE_DIR, else .cache/eurosat)")
    train.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="start from the model's ImageNet weights, the file weights.lock pins (default); --no-pretrained: random weights",
    )
    train.add_argument("--weights", type=Path, help="initial weights from a local file (timm/safetensors/torch)")
    train.add_argument("--resume", type=Path, metavar="RUN", help="continue a run from RUN/last.ckpt (RUN or a .ckpt)")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument(
        "--data-on",
        choices=("auto", "device", "host"),
        default="auto",
        help="where the decoded images live while training; auto: on the GPU when they take under a quarter of its free memory",
    )
    train.add_argument(
        "--bn-stats",
        choices=("auto", "recompute", "running"),
        default="auto",
        help="BatchNorm statistics of the validated and saved model: recompute them over the training split before each "
        "validation, or keep the running averages; auto: recompute when an epoch has fewer than 100 steps",
    )
    train.add_argument("--deterministic", action="store_true", help="deterministic algorithms: runs repeat to the bit")
    train.add_argument(
        "--select",
        choices=SELECTION_METRICS,
        default="val_acc",
        help="the validation metric that chooses best.ckpt: the highest val_acc or the lowest val_loss, a tie broken "
        "by the other, a full tie keeping the earlier epoch (default: %(default)s)",
    )
    train.add_argument(
        "--checkpoint-every",
        type=non_negative_int,
        default=0,
        metavar="STEPS",
        help="also write last.ckpt every STEPS steps, with the position in the epoch (0: at epoch ends only)",
    )

    train.add_argument("--tracking", choices=("none", "mlflow"), default="none", help="also log the run to MLflow")
    train.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store or server (default: $MLFLOW_TRACKING_URI, else a local database: sqlite:///runs/mlflow.db)",
    )

    evaluate = commands.add_parser(
        "evaluate", help="validation loss, accuracy, per-class metrics and confusion matrix of a checkpoint"
    )
    evaluate.add_argument("checkpoint", type=Path)
    evaluate.add_argument("--data", type=Path, help="EuroSAT folder (default: the one the run used)")
    evaluate.add_argument("--cache-dir", type=Path)
    evaluate.add_argument(
        "--split",
        dest="part",
        choices=("val", "test"),
        default="val",
        help="the run's validation part (default) or its test part (--split torchgeo, or --test-fraction)",
    )
    evaluate.add_argument("--batch-size", type=positive_int, default=256)
    evaluate.add_argument(
        "--out", type=Path, help="folder for evaluation.json and the confusion matrix (default: the checkpoint's folder)"
    )
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")

    predict = commands.add_parser("predict", help="class of each image file, or of every image in folders")
    predict.add_argument("checkpoint", type=Path)
    predict.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files and folders (searched recursively)")
    predict.add_argument("--output", type=Path, help="write path,class,probability and the top 3 classes as CSV here")
    predict.add_argument("--batch-size", type=positive_int, default=256)
    predict.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    return parser, {"train": train, "evaluate": evaluate, "predict": predict}


def parse_args(parser: ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`train` is the default command: `train.py --epochs 2` means `train.py train --epochs 2`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "train")
    return parser.parse_args(argv)


def is_main_process() -> bool:
    """Rank 0, or no ranks: torchrun sets RANK; a framework's own launcher (Lightning's) sets LOCAL_RANK and
    NODE_RANK in the processes it starts."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def exit_without_a_final_collection() -> None:
    """Python's last garbage collection at exit walks every object torch, Lightning and timm created (about 500,000):
    2 s of CPU per process (0.4 s without), which a stopped run spends between its checkpoint and its exit, inside
    its launcher's and Slurm's grace. Frozen, they are still freed by reference counting and closed as usual."""
    atexit.register(gc.freeze)


def run_cli(main, argv=None) -> None:
    """Run main(argv); bad input becomes one line on stderr and exit status 2 (a lost peer: 75)."""
    exit_without_a_final_collection()
    try:
        main(argv)
    except UserError as exc:
        if is_main_process():
            exc.report()
        sys.exit(exc.exit_status)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
