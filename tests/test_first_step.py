"""The first-step study: each depthwise-convolution layout computes what the default one computes (outputs and
gradients, the same state_dict), and bench/first_step.py measures every layout in a process of its own."""

import json
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from helpers import run

from eurosat.conv_layout import LAYOUTS, apply_layout, is_depthwise, model_input_format

MODEL = "tf_mobilenetv3_small_minimal_100"  # depthwise convolutions with TF "SAME" padding (timm's Conv2dSame), as b5


def gradients(layout: str, images: torch.Tensor, labels: torch.Tensor):
    torch.manual_seed(0)
    model = apply_layout(timm.create_model(MODEL, num_classes=10), layout).train()
    loss = F.cross_entropy(model(images.contiguous(memory_format=model_input_format(layout))), labels)
    loss.backward()
    return model, loss.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("layout", LAYOUTS[1:])
def test_every_layout_computes_the_same_loss_and_gradients_with_the_same_state_dict(layout):
    images, labels = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(4)
    reference_model, reference_loss, reference = gradients("channels_last", images, labels)
    model, loss, grads = gradients(layout, images, labels)
    assert list(model.state_dict()) == list(reference_model.state_dict())
    depthwise = [m for m in model.modules() if is_depthwise(m)]
    assert depthwise and all(layout.replace("-", "_") in type(m).__name__ for m in depthwise) == layout.startswith("depthwise")
    assert torch.allclose(loss, reference_loss, atol=1e-5)
    # (summation order differs between layouts: compare whole gradients against their size, not element by element;
    # some parameters' gradients are rounding noise around zero)
    flat = torch.cat([grad.flatten() for grad in grads.values()])
    reference_flat = torch.cat([reference[name].flatten() for name in grads])
    assert (flat - reference_flat).norm() <= 1e-3 * reference_flat.norm()
    for module in depthwise:  # the convolutions the layout changes
        grad, expected = module.weight.grad, dict(reference_model.named_modules())[name_of(model, module)].weight.grad
        assert (grad - expected).norm() <= 1e-2 * expected.norm()


def name_of(model, module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def test_the_study_measures_each_layout_in_its_own_process_and_writes_the_rows(tmp_path):
    out = tmp_path / "first-step.json"
    args = ["--device", "cpu", "--model", MODEL, "--batch-size", "8", "--steps", "1", "--out", out]
    result = run(sys.executable, "bench/first_step.py", *args)
    rows = json.loads(out.read_text())["rows"]
    assert [row["layout"] for row in rows] == list(LAYOUTS)
    assert all(row["first_step_s"] > 0 and row["steady_images_per_s"] > 0 for row in rows)
    assert [line.split()[0] for line in result.stdout.splitlines()] == list(LAYOUTS)


def test_the_start_up_profile_names_every_phase_up_to_the_split_in_memory(sample_dir, tmp_path):
    out = tmp_path / "startup.json"
    result = run(
        sys.executable, "bench/startup.py", "--data", sample_dir, "--device", "cpu", "--model", "test_resnet", "--out", out
    )
    phases = json.loads(out.read_text())["phases"]
    names = [name for name, _ in phases]
    assert names[:4] == ["interpreter start", "import torch", "import timm", "import the lifecycle"]
    assert names[-3:] == ["build test_resnet", "model to the device", "train and val images into host memory"]
    assert all(seconds >= 0 for _, seconds in phases) and "cache check (shape, size, checksum)" in names
    assert result.stdout.splitlines()[-2].endswith("s  in all, from process start")
    assert result.stdout.splitlines()[-1].endswith("s  then the process's exit, after its last line")
    assert json.loads(out.read_text())["exit_s"] > 0
