"""The recipe settings (--opt, --momentum, --weight-decay, --label-smoothing, --clip-grad), each checked against a
reference computed another way, not against an accuracy; the defaults are the articles' Adam and cross-entropy."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import PROJECTS, SMALL, main_in_process, single_run_dir

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
