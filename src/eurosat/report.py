"""make report RUN=runs/<project>/<id>: a run on one page without Jupyter. report.png (learning curves and the
confusion matrix) and report.md (settings, provenance, the epochs, the classes) in the run directory.

python -m eurosat.report RUN_DIR
"""

from __future__ import annotations

import json
from argparse import ArgumentParser, RawDescriptionHelpFormatter
from pathlib import Path

from eurosat.cli import run_cli
from eurosat.errors import UserError
from eurosat.reproduce import read_run

EVALUATION_KEYS = {"checkpoint", "samples", "accuracy", "classes", "per_class", "averages", "confusion_matrix"}
EVALUATE_AGAIN = "write it again with `python projects/<project>/train.py evaluate RUN/best.ckpt`"
SETTINGS = (
    "project", "model", "epochs", "batch_size", "lr", "opt", "momentum", "weight_decay", "sched", "warmup_epochs",
    "label_smoothing", "clip_grad", "accum_steps", "ema", "drop_path", "augment", "normalize", "precision_resolved", "world_size",
    "seed", "data", "split", "select",
)  # fmt: skip


def read_evaluation(run_dir: Path, name: str = "evaluation.json") -> dict | None:
    """The end-of-run evaluation (test_evaluation.json: of the test part), or None for a run that did not finish
    (stopped, or older than evaluation.json) or has no test part."""
    path = run_dir / name
    try:
        evaluation = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise UserError(f"{path} is not JSON ({exc}): {EVALUATE_AGAIN}") from None
    missing = sorted(EVALUATION_KEYS - set(evaluation))
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}: {EVALUATE_AGAIN}")
    return evaluation


def figure(metrics: list[dict], evaluation: dict | None):
    """Loss and accuracy per epoch (training and validation) and, when there is one, the row-normalised confusion matrix."""
    import matplotlib

    from eurosat.evaluation import draw_matrix  # torch: here, so that a mistyped RUN answers at once

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 3 if evaluation else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.4), dpi=100)
    epochs = [record["epoch"] for record in metrics]
    for ax, name in zip(axes, ("loss", "acc"), strict=False):
        ax.plot(epochs, [record[name] for record in metrics], marker="o", label="training")
        ax.plot(epochs, [record[f"val_{name}"] for record in metrics], marker="o", label="validation")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title({"loss": "cross-entropy loss", "acc": "accuracy"}[name])
        ax.grid(alpha=0.3)
        ax.legend()
    if evaluation:
        draw_matrix(axes[2], evaluation, counts=False, fontsize=7)
        axes[2].set_title(f"confusion matrix (share of each true class), accuracy {evaluation['accuracy']:.4f}", fontsize=9)
    fig.tight_layout()
    return fig


def image_line(container: dict) -> str:
    """The image a run ran in, as provenance.json names it: reference, id or digest, the commit it was built from."""
    if not container.get("image") and not container.get("image_id"):
        return "none"
    named = " ".join(filter(None, (container.get("image"), container.get("image_id"))))  # a digest is in the reference
    return named + (f", built from {container['revision']}" if container.get("revision") else "")


def markdown(
    run_dir: Path, config: dict, provenance: dict, metrics: list[dict], evaluation: dict | None, test: dict | None = None
) -> str:
    versions, hardware = provenance.get("versions", {}), provenance.get("hardware", {})
    git, gpus = provenance.get("git", {}), ", ".join(hardware.get("gpus") or []) or "no GPU"
    lines = [f"# Run {run_dir.name}", "", "![learning curves and confusion matrix](report.png)", "", "## Settings", ""]
    lines += ["| setting | value |", "|---|---|"] + [f"| {key} | {config.get(key)} |" for key in SETTINGS]
    lines += ["", "## Provenance", "", "| | |", "|---|---|"]
    lines += [
        f"| started | {provenance.get('started')} |",
        f"| git commit | {git.get('commit')}{' (uncommitted changes)' if git.get('dirty') else ''} |",
        f"| lockfile sha256 | {provenance.get('lockfile', {}).get('sha256')} |",
        f"| container image | {image_line(provenance.get('container') or {})} |",
        f"| versions | {', '.join(f'{name} {version}' for name, version in versions.items())} |",
        f"| hardware | {hardware.get('device')} x{hardware.get('world_size')}, {gpus}, {hardware.get('cpus')} CPUs |",
    ]
    lines += [
        "",
        "## Epochs",
        "",
        "| epoch | loss | acc | val_loss | val_acc | images/s | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in metrics:
        lines.append(
            f"| {r['epoch']} | {r['loss']:.4f} | {r['acc']:.4f} | {r['val_loss']:.4f} | {r['val_acc']:.4f} "
            f"| {r['images_per_s']:.0f} | {r['seconds']:.1f} |"
        )
    lines += ["", "## Classes", ""]
    if evaluation:
        from eurosat.evaluation import table

        lines += [f"{Path(evaluation['checkpoint']).name} on {evaluation['samples']} validation images:", "", "```"]
        lines += [table(evaluation), "```"]
        if test:  # the checkpoint was chosen on the validation part (--select); the test part was read once, at the end
            chosen = f"chosen by {config.get('select', 'val_acc')}"
            lines += ["", f"{Path(test['checkpoint']).name} ({chosen}) on {test['samples']} test images:", "", "```"]
            lines += [table(test), "```"]
    else:
        lines.append("No evaluation.json: the run did not finish. Evaluate a checkpoint with its train.py `evaluate`.")
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path) -> tuple[Path, Path]:
    from matplotlib import pyplot as plt

    config, provenance, metrics = read_run(run_dir)
    if not metrics:
        raise UserError(f"RUN={run_dir} has no finished epoch yet: nothing to report")
    evaluation, test = read_evaluation(run_dir), read_evaluation(run_dir, "test_evaluation.json")
    fig = figure(metrics, evaluation)
    fig.savefig(run_dir / "report.png")
    plt.close(fig)
    (run_dir / "report.md").write_text(markdown(run_dir, config, provenance, metrics, evaluation, test))
    return run_dir / "report.md", run_dir / "report.png"


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, metavar="RUN", help="a run directory, runs/<project>/<run-id>")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise UserError(f"RUN={args.run}: no such run directory; pass RUN=runs/<project>/<run-id>")
    for path in write_report(args.run):
        print(f"wrote {path}")


if __name__ == "__main__":
    run_cli(main)
