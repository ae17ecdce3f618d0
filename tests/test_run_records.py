"""What reads a run directory back (make summary, make report, make reproduce) when the run was killed while it
wrote metrics.jsonl: the complete epochs are read, the half-written line is said, never a traceback; and a
checkpoint that cannot be written says what can be done next."""

import json
from pathlib import Path

import pytest
import torch
from helpers import cli_in_process

from eurosat import report, summary
from eurosat.errors import UserError
from eurosat.reproduce import read_run
from eurosat.runs import save_checkpoint

EPOCH = {"loss": 1.0, "acc": 0.5, "val_loss": 1.1, "val_acc": 0.4, "seconds": 2.0, "images_per_s": 100.0}


def run_dir(root: Path, name: str, epochs: int, lines: list[str], finished: bool) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    config = {"project": "eurosat-amp", "model": "test_resnet", "epochs": epochs, "seed": 1, "lr": 1e-3}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "provenance.json").write_text(json.dumps({"git": {"commit": "abc"}}))
    (folder / "metrics.jsonl").write_text("".join(line + "\n" for line in lines).rstrip("\n"))
    if finished:
        (folder / "metrics.json").write_text(json.dumps({"epochs": epochs, "final": json.loads(lines[-1])}))
    return folder


def epoch(n: int) -> str:
    return json.dumps({"epoch": n, **EPOCH})


def test_a_half_written_last_line_is_read_as_the_epochs_before_it(tmp_path):
    killed = run_dir(tmp_path / "runs", "killed", 3, [epoch(1), epoch(2), epoch(3)[:25]], finished=False)
    run_dir(tmp_path / "runs", "done", 2, [epoch(1), epoch(2)], finished=True)
    result = cli_in_process(summary.main, str(tmp_path / "runs" / "*"))
    table = (tmp_path / "runs" / "summary.md").read_text()
    assert f"- {killed}: 2 of 3 epochs; {killed / 'metrics.jsonl'} ends in a half-written line" in table
    assert "| all runs | 1 |" in table and "Traceback" not in result.stderr

    config, _, metrics = read_run(killed)  # make reproduce and make report read it the same way
    assert [record["epoch"] for record in metrics] == [1, 2]
    reported = cli_in_process(report.main, str(killed))
    assert reported.stderr.strip() == (
        f"warning: {killed / 'metrics.jsonl'} ends in a half-written line (the run stopped while writing it): read its "
        "2 complete epoch(s)"
    )
    assert (killed / "report.md").exists() and (killed / "report.png").exists()


def test_a_damaged_line_before_the_last_is_one_line(tmp_path):
    damaged = run_dir(tmp_path, "damaged", 3, [epoch(1), "{not json", epoch(3)], finished=True)
    result = cli_in_process(summary.main, str(damaged), check=False)
    assert result.returncode == 2
    assert result.stderr == f"error: {damaged / 'metrics.jsonl'}: line 2 is not JSON: the run directory is damaged\n"


@pytest.mark.parametrize("earlier", [False, True])
def test_a_checkpoint_that_cannot_be_written_says_whether_there_is_one_to_resume(tmp_path, earlier):
    folder = tmp_path / "run"
    folder.mkdir()
    if earlier:
        save_checkpoint({"step": 1}, folder / "last.ckpt")
        (folder / "best.ckpt").mkdir()  # a directory where the file goes: the write fails
        target = folder / "best.ckpt"
    else:
        (folder / "last.ckpt").mkdir()
        target = folder / "last.ckpt"
    with pytest.raises(UserError) as error:
        save_checkpoint({"step": 2}, target)
    message = str(error.value)
    assert message.startswith(f"cannot write checkpoint {target} (")
    if earlier:
        assert message.endswith(
            f"then continue with --resume {folder} ({folder / 'last.ckpt'} holds the last checkpoint written)"
        )
        assert torch.load(folder / "last.ckpt")["step"] == 1
    else:
        assert message.endswith("then train again: no checkpoint was written yet, so there is nothing to resume")


def test_provenance_names_the_image_every_runner_started(monkeypatch):
    """What an image says of itself (its Dockerfiles' ENV) and what the runner knows (compose: the id; Slurm and the
    PyTorchJob: the reference by digest) land in provenance.json; make reproduce and make report name each."""
    from eurosat import reproduce, runs
    from eurosat.report import image_line

    digest = "sha256:" + "ab" * 32
    monkeypatch.setenv("EUROSAT_IMAGE", f"registry.example.org/team/lightning@{digest}")
    monkeypatch.setenv("EUROSAT_IMAGE_REVISION", "1" * 40)
    monkeypatch.setenv("EUROSAT_IMAGE_LOCKS", "torch-ngc=aaa lightning=bbb")
    monkeypatch.delenv("CONTAINER_IMAGE_ID", raising=False)
    recorded = runs.container_image()
    assert recorded == {"in_container": True, "image": f"registry.example.org/team/lightning@{digest}", "image_id": None,
                        "digest": digest, "revision": "1" * 40, "locks": {"torch-ngc": "aaa", "lightning": "bbb"}}  # fmt: skip
    assert image_line(recorded) == f"registry.example.org/team/lightning@{digest}, built from {'1' * 40}"
    monkeypatch.setenv("EUROSAT_IMAGE_LOCKS", "torch-ngc=aaa lightning=ccc")
    now = runs.container_image()
    assert reproduce.differences({"container": recorded}, {"container": now}) == [
        "warning: container image locks differs: recorded {'torch-ngc': 'aaa', 'lightning': 'bbb'}, "
        "now {'torch-ngc': 'aaa', 'lightning': 'ccc'}"
    ]
    for name in ("EUROSAT_IMAGE", "EUROSAT_IMAGE_REVISION", "EUROSAT_IMAGE_LOCKS"):
        monkeypatch.delenv(name)
    outside = runs.container_image()  # a venv run: nothing but whether this is a container at all
    assert {key: value for key, value in outside.items() if key != "in_container"} == dict.fromkeys(
        ("image", "image_id", "digest", "revision", "locks")
    )
