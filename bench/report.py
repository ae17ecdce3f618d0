"""make bench's report: a markdown table and a chart of whatever rows were measured (a run stopped by its budget or
by Ctrl-C reports the rows it finished and names the others)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def _ratio(value) -> str:
    return "" if value is None else f"{value:.2f}x"


def header(result: dict) -> list[str]:
    machine, settings, data, budget = result["machine"], result["settings"], result["data"], result["budget"]
    source = "synthetic, official format" if data["synthetic"] else data["path"]
    lines = [
        f"{machine['gpu'] or 'CPU'} ({machine['device']}, {machine['cpus']} CPUs, {machine['threads']} threads), "
        f"torch {machine['torch']}; {settings['model']}, batch {settings['batch_size']}, {settings['workers']} workers "
        f"(baseline), {data['train_images']} train images ({source}); training speed over {settings['steps']} steps "
        f"after {settings['warmup_steps']} warm-up, best of {settings['repeats']}; project precision "
        f"{settings.get('project_precision') or '-'}",
        "",
        f"Measured in {budget['used_seconds']:.0f} s of a {budget['seconds']:.0f} s budget, after a one-time prepare of "
        f"{result['prepare_seconds']:.1f} s.",
    ]
    if budget["skipped"]:
        lines.append(f"Not measured ({budget['stopped'] or 'over budget'}): {'; '.join(budget['skipped'])}.")
    return lines


def comparison(result: dict) -> list[str]:
    pipe, train = result.get("input_pipeline") or {}, result.get("training") or {}
    images, prepare = result["data"]["train_images"], result["prepare_seconds"]

    def sides(figure):  # (baseline, project) of one figure of the training rows; None where a row is missing
        return tuple(figure(train[side]) if side in train else None for side in ("baseline", "project"))

    rows = [
        ("input pipeline, samples/s", pipe.get("baseline_samples_per_s"), pipe.get("project_samples_per_s"), pipe.get("speedup")),
        ("one-time prepare, s (baseline: one epoch of reads)", pipe.get("baseline_epoch_seconds"), prepare, None),
        ("training end to end, images/s", *sides(lambda f: f["images_per_s"]), train.get("speedup")),
        ("an epoch at that speed, s", *sides(lambda f: images / f["images_per_s"]), None),
        ("data wait, % of step time", *sides(lambda f: 100 * f["data_wait_share"]), None),
        ("peak memory, MiB", *sides(lambda f: f["peak_memory_mb"]), None),
        ("model only (one batch already on the device), images/s", None, result.get("model_only_images_per_s"), None),
    ]
    return [
        "| figure | baseline | project | project / baseline |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {_fmt(b)} | {_fmt(p)} | {_ratio(r)} |" for name, b, p, r in rows),
    ]


def ablation(result: dict) -> list[str]:
    rows = result.get("ablation") or {}
    reference = (result.get("training") or {}).get("project")
    lines = [
        "| ablation: the project's path with | images/s | vs the project path | data wait, % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, figures in rows.items():
        extra = f" (compile time {figures['compile_seconds']:.1f} s)" if "compile_seconds" in figures else ""
        versus = reference and figures["images_per_s"] / reference["images_per_s"]
        lines.append(
            f"| {name}{extra} | {_fmt(figures['images_per_s'])} | {_ratio(versus)} | {_fmt(100 * figures['data_wait_share'])} |"
        )
    return lines if rows else []


def _reached(run: dict) -> str:
    if run["seconds_to_target"] is None:
        return f"not reached in {len(run['epochs'])} epochs"
    return f"{run['seconds_to_target']:.1f} (epoch {run['epoch_reaching_target']})"


def accuracy(result: dict) -> list[str]:
    accuracy = result.get("time_to_accuracy")
    if not accuracy:
        return []
    base, proj = accuracy["baseline"], accuracy["project"]
    lines = [
        f"| time to {accuracy['target']:.1%} validation accuracy, from process start | baseline | project |",
        "| --- | ---: | ---: |",
        f"| seconds (epoch reaching it) | {_reached(base)} | {_reached(proj)} |",
        f"| start-up before the first step, s | {_fmt(base['startup_seconds'])} "
        f"| {_fmt(proj['startup_seconds'])} (one-time prepare {result['prepare_seconds']:.1f} s of it) |",
        f"| whole run, s | {_fmt(base['finished_seconds'])} | {_fmt(proj['finished_seconds'])} |",
    ]
    for i, (b, p) in enumerate(zip(base["epochs"], proj["epochs"], strict=True)):
        lines.append(f"| val_acc after epoch {i + 1} (seed {accuracy['seed']}) | {b['val_acc']:.4f} | {p['val_acc']:.4f} |")
    finals = accuracy["final_val_acc"]
    if len(finals) > 1:
        last = len(base["epochs"])
        for f in finals[1:]:
            lines.append(f"| val_acc after epoch {last}, seed {f['seed']} | {f['baseline']:.4f} | {f['project']:.4f} |")
        for name, pick in (("mean", np.mean), ("lowest", np.min)):
            figures = [pick([f[side] for f in finals]) for side in ("baseline", "project")]
            lines.append(f"| {name} over the {len(finals)} seeds | {figures[0]:.4f} | {figures[1]:.4f} |")
    return lines


def markdown(result: dict) -> str:
    sections = [header(result), comparison(result), ablation(result), accuracy(result)]
    return "\n\n".join("\n".join(section) for section in sections if section) + "\n"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pipe, train = result.get("input_pipeline"), result.get("training") or {}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 2.4]})
    if pipe:
        speeds = [pipe["baseline_samples_per_s"], pipe["project_samples_per_s"]]
        left.bar(["baseline", "project"], speeds, color=["grey", "tab:blue"])
        left.set_yscale("log")
        left.set_title(f"input pipeline, samples/s ({pipe['speedup']:.0f}x)")
    bars = [("baseline", train["baseline"]["images_per_s"], "grey")] if "baseline" in train else []
    for i, (name, figures) in enumerate((result.get("ablation") or {}).items()):
        bars.append((name, figures["images_per_s"], "tab:blue" if i == 0 else "tab:orange"))
    if result.get("model_only_images_per_s"):
        bars.append(("model only (ceiling)", result["model_only_images_per_s"], "tab:green"))
    if bars:
        names, values, colors = zip(*bars[::-1], strict=True)
        right.barh(names, values, color=colors)
    right.set_title("training end to end, images/s")
    right.tick_params(axis="y", labelsize=8)
    machine = result["machine"]
    fig.suptitle(f"{machine['gpu'] or 'CPU'}, {result['settings']['model']}, batch {result['settings']['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
