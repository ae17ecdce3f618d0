"""The recipe settings (--opt, --momentum, --weight-decay, --sched, --warmup-epochs, --label-smoothing, --clip-grad,
--accum-steps, --ema, --drop-path, --augment), each checked against a reference computed another way, not against an
accuracy; the defaults are the articles' Adam at a constant learning rate and cross-entropy."""

import json
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    PROJECTS,
    REPO,
    SMALL,
    assert_same_weights,
    kill_after_first_checkpoint,
    main_in_process,
    read_metrics,
    single_run_dir,
    without_timings,
)

from eurosat import recipe
from eurosat.loop import Process, train_one_epoch


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 5))


def test_the_defaults_are_the_articles_adam_in_one_parameter_group():
    optimizer = recipe.make_optimizer(small_model(), {"lr": 1e-3}, torch.device("cpu"))
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["lr"] == 1e-3 and optimizer.param_groups[0]["weight_decay"] == 0.0


@pytest.mark.parametrize(("opt", "kind"), [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)])
def test_weight_decay_spares_biases_and_normalisation_weights(opt, kind):
    model = small_model()
    config = {"lr": 0.1, "opt": opt, "weight_decay": 0.05, "momentum": 0.8}
    optimizer = recipe.make_optimizer(model, config, torch.device("cpu"))
    assert type(optimizer) is kind
    decayed, spared = optimizer.param_groups
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    assert sorted(names[id(p)] for p in decayed["params"]) == ["0.weight", "3.weight"] and decayed["weight_decay"] == 0.05
    assert sorted(names[id(p)] for p in spared["params"]) == ["0.bias", "1.bias", "1.weight", "3.bias"]
    assert spared["weight_decay"] == 0.0
    if opt == "sgd":
        assert decayed["momentum"] == 0.8


def test_label_smoothing_is_the_mixture_of_cross_entropy_and_the_uniform_target():
    torch.manual_seed(1)
    logits, labels = torch.randn(6, 5), torch.tensor([0, 1, 2, 3, 4, 0])
    smoothed = recipe.training_loss({"label_smoothing": 0.1})(logits, labels)
    log_p = logits.log_softmax(1)
    reference = 0.9 * F.nll_loss(log_p, labels) + 0.1 * (-log_p.mean(1)).mean()
    assert torch.allclose(smoothed, reference)
    assert torch.equal(recipe.training_loss({})(logits, labels), F.cross_entropy(logits, labels))  # the default


def test_clip_grad_clips_the_global_norm_before_the_step():
    """One step of the shared loop with --clip-grad equals a step taken by hand after clip_grad_norm_."""
    torch.manual_seed(2)
    batch = (torch.rand(8, 3, 6, 6), torch.randint(0, 5, (8,)))
    stepped, by_hand = small_model(), small_model()
    proc, scaler = Process(0, 1, torch.device("cpu")), torch.amp.GradScaler("cpu", enabled=False)
    sgd = recipe.make_optimizer(stepped, {"lr": 0.5, "opt": "sgd", "momentum": 0.0}, proc.device)
    train_one_epoch(stepped, [batch], sgd, scaler, None, 1.0, proc, "test", channels_last=False, clip_grad=0.01)

    reference = torch.optim.SGD(by_hand.parameters(), lr=0.5)
    by_hand.train()
    F.cross_entropy(by_hand(batch[0]), batch[1]).backward()
    norm = torch.nn.utils.clip_grad_norm_(by_hand.parameters(), 0.01)
    assert norm > 0.01  # the clip did something
    reference.step()
    for (name, a), b in zip(stepped.state_dict().items(), by_hand.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float()), name


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_the_recipe_settings_are_recorded_and_shown(project, sample_dir, tmp_path):
    flags = ["--opt", "sgd", "--momentum", "0.8", "--weight-decay", "1e-4", "--label-smoothing", "0.1", "--clip-grad", "1"]
    main_in_process(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *flags, *SMALL)
    run_dir = single_run_dir(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    assert {name: config[name] for name in ("opt", "momentum", "weight_decay", "label_smoothing", "clip_grad")} == {
        "opt": "sgd", "momentum": 0.8, "weight_decay": 1e-4, "label_smoothing": 0.1, "clip_grad": 1.0
    }  # fmt: skip
    from eurosat.report import markdown

    report = markdown(run_dir, config, {}, [], None)
    assert "| opt | sgd |" in report and "| weight_decay | 0.0001 |" in report and "| clip_grad | 1.0 |" in report


def schedule(config: dict, steps: int, steps_per_epoch: int) -> list[float]:
    """The learning rates a scheduler made by the recipe gives `steps` optimizer steps, read off the optimizer."""
    optimizer = torch.optim.SGD(small_model().parameters(), lr=config["lr"])
    scheduler = recipe.make_scheduler(optimizer, config, steps_per_epoch)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_the_schedules_give_each_optimizer_step_its_learning_rate():
    assert schedule({"lr": 0.1}, 5, 2) == [0.1] * 5  # the default: constant
    # 2 epochs of 4 steps, a warm-up of half an epoch (2 steps): 1/3, 2/3 of lr, then a cosine over the 6 steps left
    rates = schedule({"lr": 0.3, "sched": "cosine", "warmup_epochs": 0.5, "epochs": 2}, 8, 4)
    cosine = [0.15 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert rates == pytest.approx([0.1, 0.2, *cosine])
    # step: x 0.5 every 1.5 epochs of 2 steps (3 steps), counted from the first step
    rates = schedule({"lr": 1.0, "sched": "step", "decay_epochs": 1.5, "decay_rate": 0.5, "epochs": 4}, 8, 2)
    assert rates == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])


def step_once(model, batches, accum_steps) -> None:
    proc, scaler = Process(0, 1, torch.device("cpu")), torch.amp.GradScaler("cpu", enabled=False)
    sgd = recipe.make_optimizer(model, {"lr": 0.5, "opt": "sgd", "momentum": 0.0}, proc.device)
    train_one_epoch(model, batches, sgd, scaler, None, 1.0, proc, "test", channels_last=False, accum_steps=accum_steps)


def test_accumulating_two_batches_takes_the_step_of_one_batch_twice_as_large():
    torch.manual_seed(3)
    images, labels = torch.rand(8, 3, 6, 6), torch.randint(0, 5, (8,))
    linear = [torch.nn.Flatten(), torch.nn.Linear(108, 5)]  # no BatchNorm: its statistics are per batch
    accumulated, large = torch.nn.Sequential(*linear), torch.nn.Sequential(*[torch.nn.Flatten(), torch.nn.Linear(108, 5)])
    large.load_state_dict(accumulated.state_dict())
    before = {k: v.clone() for k, v in large.state_dict().items()}
    step_once(accumulated, [(images[:4], labels[:4]), (images[4:], labels[4:])], accum_steps=2)
    step_once(large, [(images, labels)], accum_steps=1)
    for (name, a), b in zip(accumulated.state_dict().items(), large.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6) and not torch.equal(a, before[name]), name


def test_the_ema_follows_its_formula_buffers_included():
    model, decay = small_model(), 0.75
    ema = recipe.make_ema(model, {"ema": decay})
    assert recipe.make_ema(model, {}) is None
    reference = None
    for step in range(3):
        model(torch.rand(4, 3, 6, 6))  # training mode: BatchNorm's running statistics move
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.1 * (step + 1))
        ema.update_parameters(model)
        state = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        # the first update copies, each later one moves (1 - decay) of the way
        reference = state if reference is None else {k: decay * reference[k] + (1 - decay) * state[k] for k in state}
    averaged = ema.module.state_dict()
    assert "1.running_mean" in reference
    for name, value in reference.items():
        assert torch.allclose(averaged[name], value, atol=1e-6), name


def dihedral(image: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(image, k, (-2, -1)) for k in range(4)]
    return turns + [turn.flip(-1) for turn in turns]


def test_flips_give_each_image_one_of_its_eight_symmetries_chosen_by_the_key():
    x = torch.rand(64, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    flipped = recipe.flips(x, (42, 0, 1, 0))
    assert flipped.is_contiguous(memory_format=torch.channels_last)
    chosen = []
    for image, out in zip(x, flipped, strict=True):
        matches = [k for k, candidate in enumerate(dihedral(image)) if torch.equal(out, candidate)]
        assert len(matches) == 1
        chosen.append(matches[0])
    assert set(chosen) == set(range(8))  # all eight, over 64 images
    assert torch.equal(recipe.flips(x, (42, 0, 1, 0)), flipped)  # the same key: the same flips
    assert not torch.equal(recipe.flips(x, (42, 0, 2, 0)), flipped)  # the next step: others
    assert recipe.make_augment({"augment": "none", "seed": 1}) is None


def test_drop_path_reaches_the_model_and_a_model_without_it_is_one_line():
    from eurosat.errors import UserError
    from eurosat.models import build_model, check_model_runs

    model = build_model("test_resnet", 10, 3, drop_path=0.2)
    assert any(getattr(m, "drop_prob", 0) for m in model.modules())  # timm's DropPath, in the residual blocks
    with pytest.raises(UserError, match=r"^--drop-path 0.2: vgg11 has no stochastic depth; leave --drop-path at 0$"):
        check_model_runs("vgg11", 10, 3, 64, drop_path=0.2)


RECIPE_FLAGS = ["--sched", "cosine", "--warmup-epochs", "0.5", "--ema", "0.9", "--accum-steps", "2", "--augment", "flips"]
# 432 training images at batch 16: 27 batches, 14 optimizer steps an epoch; a checkpoint at the steps after 4, 8, ...
RESUMED = ["--model", "resnet10t", "--batch-size", "16", "--no-pretrained", "--epochs", "2", "--deterministic"]


@pytest.mark.slow
@pytest.mark.parametrize("project", [pytest.param(p, marks=pytest.mark.xdist_group(f"resume-{p}")) for p in PROJECTS])
def test_a_run_killed_mid_epoch_with_the_whole_recipe_resumes_to_the_uninterrupted_run(project, sample_dir, tmp_path):
    """Cosine with warm-up, EMA, accumulation and flips: SIGKILL just after a mid-epoch checkpoint, --resume, and the
    metrics, the averaged weights and the weights training went on from are the uninterrupted run's."""
    flags = ["--data", sample_dir, *RESUMED, *RECIPE_FLAGS, "--checkpoint-every", "4"]
    main_in_process(project, "train", "--out", tmp_path / "whole", *flags)
    whole = single_run_dir(tmp_path / "whole")
    out = tmp_path / "killed"
    command = [sys.executable, REPO / "projects" / project / "train.py", "train", "--out", out, *flags]
    killed = kill_after_first_checkpoint(command, out)
    checkpoint = torch.load(killed / "last.ckpt", weights_only=False)
    assert "current_model_state" in checkpoint
    loops = checkpoint.get("loops")
    position = loops["fit_loop"]["state_dict"]["combined_loader"][0]["batches_done"] if loops else checkpoint["step"]
    assert position % 2 == 0 and 0 < position < 27  # mid-epoch, after an optimizer step
    main_in_process(project, "train", "--resume", killed, "--epochs", "2")
    assert without_timings(read_metrics(killed)) == without_timings(read_metrics(whole))
    assert_same_weights(killed / "last.ckpt", whole / "last.ckpt")
    resumed, uninterrupted = (torch.load(d / "last.ckpt", weights_only=False) for d in (killed, whole))
    for name, value in uninterrupted["current_model_state"].items():
        assert torch.equal(resumed["current_model_state"][name], value), name
    config = json.loads((killed / "config.json").read_text())
    assert {k: config[k] for k in ("sched", "warmup_epochs", "ema", "accum_steps", "augment")} == {
        "sched": "cosine", "warmup_epochs": 0.5, "ema": 0.9, "accum_steps": 2, "augment": "flips"
    }  # fmt: skip
    from eurosat.report import markdown

    report = markdown(killed, config, {}, [], None)
    assert "| sched | cosine |" in report and "| ema | 0.9 |" in report and "| augment | flips |" in report
