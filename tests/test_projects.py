"""Every project under projects/, through its train.py's main(argv) in this process: training, the run directory,
resume, evaluate, predict, and the lifecycle's checks of what it is handed. A new project is picked up by itself."""

import csv
import json
import shutil
import struct

import numpy as np
import pytest
import tifffile
import torch
from helpers import MODEL, PROJECTS, SMALL, assert_same_weights, main_in_process, read_metrics, single_run_dir, without_timings
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from eurosat import report
from eurosat.timeline import Timeline
from eurosat.training import cpu_has_native_bf16, set_matmul_precision

EPOCH_KEYS = {"epoch", "loss", "acc", "val_loss", "val_acc", "val_samples", "images_per_s", "bn_recompute_s", "seconds"}
EPOCH_KEYS |= {"elapsed_s"}


@pytest.fixture(scope="module", params=PROJECTS)
def trained(request, sample_dir, tmp_path_factory):
    """(project, run directory, stdout) of a 2-epoch run."""
    out = tmp_path_factory.mktemp(f"{request.param}-runs")
    result = main_in_process(request.param, "train", "--data", sample_dir, "--out", out, "--epochs", "2", *SMALL)
    return request.param, single_run_dir(out), result


def test_trains_clearly_above_chance_and_writes_the_run_directory(trained):
    project, run_dir, result = trained
    history = read_metrics(run_dir)
    assert [r["epoch"] for r in history] == [1, 2] and history[-1]["val_acc"] > 0.5  # 10 classes: chance is 0.1
    assert without_timings(result.value) == without_timings(history)  # main() returns the history
    assert all(set(r) == EPOCH_KEYS and r["val_samples"] == 108 for r in history)
    assert result.stdout.startswith(f"run {run_dir}: 432 train / 108 val images, {MODEL} on cpu x1, precision ")
    assert "Epoch 2/2 loss " in result.stdout and f"run directory: {run_dir}" in result.stdout
    for name in ("config.json", "metrics.jsonl", "metrics.json", "last.ckpt", "last.prev.ckpt", "best.ckpt", "provenance.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["epochs"] == 2 and summary["best"]["val_acc"] == max(r["val_acc"] for r in history)
    timeline = summary["timeline"]  # seconds from process start (here pytest's) to each milestone, in order
    milestones = [timeline[f"{name}_s"] for name in ("data_ready", "model_built", "first_step", "first_epoch")]
    assert 0 < milestones[0] <= milestones[1] <= milestones[2] <= milestones[3] == timeline["epoch_end_s"][0]
    assert timeline["epoch_end_s"] == sorted(timeline["epoch_end_s"]) == [r["elapsed_s"] for r in history]
    assert timeline["epoch_end_s"][-1] <= timeline["finished_s"]
    assert Timeline.line(timeline) in result.stdout.splitlines()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["project"] == project and config["model"] == MODEL and config["world_size"] == 1
    assert config["bands_resolved"] == [3, 2, 1] and config["scale"] == 4000.0
    assert config["input"] == {"format": "tif", "bands": 13, "height": 64, "width": 64}
    assert ("bf16" in config["precision_resolved"]) == cpu_has_native_bf16()  # bf16 only where the CPU has it natively
    checkpoint = torch.load(run_dir / "last.ckpt", weights_only=False)
    assert checkpoint["project"] == project and checkpoint["config"] == config
    assert without_timings(checkpoint["history"]) == without_timings(history) and checkpoint["rng"]
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["seed"] == 42 and provenance["hardware"]["device"] == "cpu" and len(provenance["lockfile"]["sha256"]) == 64


def test_the_end_of_a_run_evaluates_its_best_checkpoint_class_by_class(trained):
    """Per-class table, evaluation.json, the confusion matrix as CSV, PNG and TensorBoard image: every validation
    image once, the figures of the best epoch's own validation pass (no second pass), so exactly its val_acc."""
    _, run_dir, result = trained
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    assert evaluation["checkpoint"] == str(run_dir / "best.ckpt") and evaluation["classes"] == sorted(evaluation["classes"])
    matrix = np.array(evaluation["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == evaluation["samples"] == evaluation["val_samples"] == 108
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    assert evaluation["val_acc"] == best["val_acc"] and evaluation["val_loss"] == best["val_loss"]
    assert evaluation["accuracy"] == pytest.approx(best["val_acc"], abs=1e-6) and evaluation["samples"] == best["val_samples"]
    assert np.trace(matrix) == round(best["val_acc"] * 108)
    lines = result.stdout.splitlines()
    # the evaluation, then the run's last lines: its timeline (which counts the evaluation) and its directory
    assert lines[-3] == f"evaluation: {run_dir / 'evaluation.json'}, confusion_matrix.csv, confusion_matrix.png"
    assert lines[-2].startswith("time from process start (s): ") and lines[-1] == f"run directory: {run_dir}"
    first_words = {line.split()[0] for line in lines if line.strip()}
    assert lines[-4].split()[:2] == ["weighted", "avg"] and set(evaluation["classes"]) <= first_words  # the table
    assert (run_dir / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run_dir / "confusion_matrix.csv").read_text().splitlines()[0].startswith("true \\ predicted,AnnualCrop,")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    (image,) = events.Images("confusion_matrix")
    assert image.step == 2 and image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_equals_uninterrupted(trained, sample_dir, tmp_path):
    """1 epoch, then --resume to 2: the metrics and weights of the 2-epoch run; the first start's record is kept."""
    project, full_dir, _ = trained
    main_in_process(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *SMALL)
    half_dir = single_run_dir(tmp_path)
    result = main_in_process(project, "train", "--resume", half_dir, "--epochs", "2")
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout  # continued at the next epoch
    assert without_timings(read_metrics(half_dir)) == without_timings(read_metrics(full_dir))
    assert_same_weights(half_dir / "last.ckpt", full_dir / "last.ckpt")
    provenance = json.loads((half_dir / "provenance.json").read_text())
    assert len(provenance["resumes"]) == 1
    assert json.loads((half_dir / "config.json").read_text())["epochs"] == 2
    if (half_dir / "csv").exists():  # Lightning's CSVLogger: the resumed run appended, the first part is kept
        with open(half_dir / "csv" / "metrics.csv") as rows:
            validated = [row["epoch"] for row in csv.DictReader(rows) if row["val_loss"]]
        assert validated == ["0", "1"]


def test_the_same_command_with_run_dir_continues_its_run_as_a_requeued_job_does(trained, sample_dir, tmp_path):
    """--run-dir DIR: the first start creates the run there; started again with the same command (a requeued
    Slurm job, a restarted pod), it continues from DIR/last.ckpt and ends as an uninterrupted run."""
    project, full_dir, _ = trained
    run_dir = tmp_path / "job-123"
    command = ["train", "--data", sample_dir, "--out", tmp_path / "unused", "--run-dir", run_dir, *SMALL]
    first = main_in_process(project, *command, "--epochs", "1")
    assert first.stdout.startswith(f"run {run_dir}: ") and not (tmp_path / "unused").exists()
    again = main_in_process(project, *command, "--epochs", "2")
    assert "Epoch 2/2" in again.stdout and "Epoch 1/2" not in again.stdout  # continued, not started over
    assert without_timings(read_metrics(run_dir)) == without_timings(read_metrics(full_dir))
    assert_same_weights(run_dir / "last.ckpt", full_dir / "last.ckpt")


def test_evaluate_and_predict(trained, sample_dir, tmp_path):
    """evaluate reproduces the recorded best val_acc; predict names the right class for most files."""
    project, run_dir, _ = trained
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    result = main_in_process(project, "evaluate", run_dir / "best.ckpt", "--out", tmp_path / "evaluated")
    assert f"val_acc {best['val_acc']:.4f} on 108 validation images" in result.stdout
    assert result.value["val_acc"] == pytest.approx(best["val_acc"])
    written = json.loads((tmp_path / "evaluated" / "evaluation.json").read_text())
    assert written == result.value and sum(map(sum, written["confusion_matrix"])) == 108
    at_the_end = json.loads((run_dir / "evaluation.json").read_text())  # the same checkpoint at the end of training
    assert written["per_class"] == at_the_end["per_class"] and written["confusion_matrix"] == at_the_end["confusion_matrix"]
    copy = tmp_path / "copy"  # without --out: beside the checkpoint
    copy.mkdir()
    shutil.copy(run_dir / "last.ckpt", copy)
    main_in_process(project, "evaluate", copy / "last.ckpt")
    assert json.loads((copy / "evaluation.json").read_text())["checkpoint"] == str(copy / "last.ckpt")
    assert sorted(p.name for p in copy.iterdir()) == [
        "confusion_matrix.csv",
        "confusion_matrix.png",
        "evaluation.json",
        "last.ckpt",
    ]
    files = [sample_dir / name / f"{name}_{n}.tif" for name in ("Forest", "River", "SeaLake") for n in (1, 2, 3, 4)]
    lines = [line.split("\t") for line in main_in_process(project, "predict", run_dir / "best.ckpt", *files).stdout.splitlines()]
    assert [line[0] for line in lines] == [str(f) for f in files]
    assert all(0 < float(p) <= 1 for _, _, p in lines)
    correct = sum(f.parent.name == label for f, (_, label, _) in zip(files, lines, strict=True))
    assert correct >= 8  # of 12; chance is about 1


def test_predict_over_folders_equals_predict_file_by_file(trained, sample_dir, tmp_path):
    """Folders are searched recursively for the trained format (hidden files, OS litter and other formats left out),
    predicted in batches; --output writes path, class, probability and the top 3 as CSV, one row per image."""
    project, run_dir, _ = trained
    folder = tmp_path / "scenes"
    shutil.copytree(sample_dir / "River", folder / "north" / "River")
    shutil.copytree(sample_dir / "Forest", folder / "Forest")
    (folder / ".DS_Store").write_bytes(b"\0")
    (folder / "Forest" / "Thumbs.db").write_bytes(b"\0")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(folder / "preview.jpg")
    extra = sample_dir / "SeaLake" / "SeaLake_1.tif"
    output = tmp_path / "predictions.csv"
    result = main_in_process(project, "predict", run_dir / "best.ckpt", folder, extra, "--output", output, "--batch-size", "7")
    rows = list(csv.DictReader(output.open()))
    images = sorted((folder / "Forest").glob("*.tif")) + sorted((folder / "north" / "River").glob("*.tif")) + [extra]
    assert [row["path"] for row in rows] == [str(path) for path in images]
    assert result.stdout.strip() == f"predictions: {len(images)} images -> {output}"
    assert list(rows[0]) == ["path", "class", "probability", "class_1", "probability_1", "class_2", "probability_2",
                             "class_3", "probability_3"]  # fmt: skip
    for row in rows:
        top = [float(row[f"probability_{rank}"]) for rank in (1, 2, 3)]
        assert row["class_1"] == row["class"] and top[0] == float(row["probability"])
        assert top == sorted(top, reverse=True) and sum(top) <= 1 + 1e-5 and len({row[f"class_{r}"] for r in (1, 2, 3)}) == 3

    one_by_one = main_in_process(project, "predict", run_dir / "best.ckpt", *images[::9]).stdout.splitlines()
    by_path = {row["path"]: row for row in rows}
    for path, label, probability in (line.split("\t") for line in one_by_one):
        assert by_path[path]["class"] == label and float(by_path[path]["probability"]) == pytest.approx(
            float(probability), abs=1e-4
        )


def test_predict_over_an_empty_folder_or_a_missing_path_is_one_line(trained, tmp_path):
    project, run_dir, _ = trained
    (tmp_path / "empty" / ".ipynb_checkpoints").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no images")
    result = main_in_process(project, "predict", run_dir / "best.ckpt", tmp_path / "empty", check=False)
    assert_one_line(result, f"{tmp_path / 'empty'}: no .tif images in it or its sub-folders")
    result = main_in_process(project, "predict", run_dir / "best.ckpt", tmp_path / "nothing", check=False)
    assert_one_line(result, f"{tmp_path / 'nothing'}: no such file or folder")
    output = tmp_path / "kept.csv"
    output.write_text("earlier predictions\n")
    result = main_in_process(project, "predict", run_dir / "best.ckpt", tmp_path / "empty", "--output", output, check=False)
    assert result.returncode == 2 and output.read_text() == "earlier predictions\n"  # nothing written is lost


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_a_report_of_the_run_without_jupyter(trained, tmp_path):
    """report.png (curves and the confusion matrix) and report.md (settings, provenance, epochs, classes); a run that
    did not finish has no evaluation.json and gets the curves alone."""
    project, run_dir, _ = trained
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    report.main([str(copy)])
    text = (copy / "report.md").read_text()
    assert text.startswith(f"# Run {copy.name}\n") and "![learning curves and confusion matrix](report.png)" in text
    assert f"| project | {project} |" in text and f"| model | {MODEL} |" in text
    commit = json.loads((copy / "provenance.json").read_text())["git"]["commit"]
    assert f"| git commit | {commit}" in text and "| hardware | cpu x1, no GPU, " in text
    epochs = [line for line in text.splitlines() if line.startswith(("| 1 |", "| 2 |"))]
    assert [line.split("|")[5].strip() for line in epochs] == [f"{r['val_acc']:.4f}" for r in read_metrics(copy)]
    assert "best.ckpt on 108 validation images:" in text and "weighted avg" in text and "SeaLake" in text
    assert png_size(copy / "report.png") == (1500, 440)  # three panels

    (copy / "evaluation.json").unlink()
    report.main([str(copy)])
    assert "No evaluation.json: the run did not finish." in (copy / "report.md").read_text()
    assert png_size(copy / "report.png") == (1000, 440)  # the curves alone


def assert_one_line(result, *expected):
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and all(text in lines[0] for text in expected), result.stderr


@pytest.mark.parametrize(
    ("name", "image", "mismatch"),
    [
        ("photo.jpg", np.zeros((64, 64, 3), np.uint8), "not a tif file"),  # an RGB JPEG: other scaling, other bands
        ("four.tif", np.zeros((64, 64, 4), np.uint16), "is 64x64 with 4 bands"),
        ("large.tif", np.zeros((128, 128, 13), np.uint16), "is 128x128 with 13 bands"),
    ],
)
def test_predict_refuses_an_image_unlike_the_training_images(trained, tmp_path, name, image, mismatch):
    project, run_dir, _ = trained
    path = tmp_path / name
    if name.endswith(".jpg"):
        Image.fromarray(image).save(path)
    else:
        tifffile.imwrite(path, image)
    result = main_in_process(project, "predict", run_dir / "best.ckpt", path, check=False)
    assert_one_line(result, str(path), mismatch, "the model was trained on 64x64 tif images with 13 bands")
    assert result.stdout == ""  # no prediction at all


def test_evaluate_refuses_data_whose_classes_differ_from_the_model(trained, sample_dir, tmp_path):
    """One class missing would shift every later label by one: a val_acc that means nothing. One line instead."""
    project, run_dir, _ = trained
    data = tmp_path / "eurosat"
    shutil.copytree(sample_dir, data)
    shutil.rmtree(data / "Highway")
    result = main_in_process(project, "evaluate", run_dir / "best.ckpt", "--data", data, check=False)
    expected = f"--data {data}: its classes are not the ones the model was trained on (missing: Highway; extra: none)"
    assert_one_line(result, expected)
    assert "val_acc" not in result.stdout
    shutil.copytree(sample_dir / "Highway", data / "Motorway")  # the class renamed
    result = main_in_process(project, "evaluate", run_dir / "best.ckpt", "--data", data, check=False)
    assert_one_line(result, "(missing: Highway; extra: Motorway)")


def test_a_checkpoint_or_run_of_another_project_is_one_line(trained, tmp_path):
    project, run_dir, _ = trained
    other_run = tmp_path / "other-run"
    shutil.copytree(run_dir, other_run)
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(other_run / name, weights_only=False)
        torch.save({**checkpoint, "project": "someone-else"}, other_run / name)
    for argv in (["evaluate", other_run / "best.ckpt"], ["predict", other_run / "best.ckpt", other_run / "config.json"]):
        result = main_in_process(project, *argv, check=False)
        assert_one_line(result, "belongs to project someone-else, not " + project, "projects/someone-else/train.py")
    result = main_in_process(project, "train", "--resume", other_run, check=False)
    assert_one_line(result, f"--resume {other_run}", "belongs to project someone-else")
    torch.save({"weights": {}}, tmp_path / "foreign.ckpt")
    result = main_in_process(project, "evaluate", tmp_path / "foreign.ckpt", check=False)
    assert_one_line(result, "foreign.ckpt is not a checkpoint written by a train.py of this repository's projects")


@pytest.mark.parametrize("project", PROJECTS)
def test_help_lists_the_shared_and_the_project_flags(project):
    result = main_in_process(project, "train", "--help")
    assert "--checkpoint-every" in result.stdout and "--resume" in result.stdout


def test_float32_matmul_precision_is_decided_for_gpus_only():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        set_matmul_precision(torch.device("cpu"))
        assert torch.get_float32_matmul_precision() == "highest"
        set_matmul_precision(torch.device("cuda"))  # TF32 where the GPU has it, so Lightning has no hint to print
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


@pytest.mark.parametrize("project", PROJECTS)
def test_the_model_meets_one_training_shape_and_one_evaluation_shape(project, sample_dir, tmp_path):
    """Batch 20 divides neither split (432 train, 108 val): the last batches are the ones that used to differ."""
    shapes = set()

    def record(module, inputs):
        if hasattr(module, "pretrained_cfg") and inputs[0].device.type != "meta":  # the timm model, not its layers or its check
            shapes.add(("train" if module.training else "eval", tuple(inputs[0].shape)))

    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        args = ["--model", MODEL, "--batch-size", "20", "--epochs", "1", "--no-pretrained", "--data", sample_dir]
        args += ["--out", tmp_path]
        main_in_process(project, "train", *args)
    finally:
        hook.remove()
    assert shapes == {("train", (20, 3, 64, 64)), ("eval", (20, 3, 64, 64))}
    assert read_metrics(single_run_dir(tmp_path))[0]["val_samples"] == 108


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_a_vit_made_for_224_pixels_is_built_for_the_data_and_its_checkpoint_evaluates(project, sample_dir, tmp_path):
    """timm's ViTs take one input size (224): the model is built for the data's 64 pixels (img_size), in training and
    when evaluate rebuilds it from the checkpoint. (The README's example, a Lightning copy training a ViT through
    make, runs in test_docs.)"""
    args = ["--model", "vit_small_patch16_224", "--batch-size", "32", "--epochs", "1", "--no-pretrained"]
    main_in_process(project, "train", "--data", sample_dir, "--out", tmp_path, *args)
    run_dir = single_run_dir(tmp_path)
    assert json.loads((run_dir / "config.json").read_text())["input"]["height"] == 64
    result = main_in_process(project, "evaluate", run_dir / "best.ckpt", "--out", tmp_path / "evaluated")
    assert result.value["val_acc"] == pytest.approx(json.loads((run_dir / "metrics.json").read_text())["best"]["val_acc"])


@pytest.mark.parametrize("project", PROJECTS)
def test_a_model_that_cannot_classify_the_images_is_one_line_before_the_run_directory(project, sample_dir, tmp_path):
    """Inception v3 shrinks 64 pixels below its kernels: found on the meta device, before anything is written."""
    args = ["--model", "inception_v3", "--epochs", "1", "--no-pretrained", "--data", sample_dir, "--out", tmp_path / "runs"]
    result = main_in_process(project, "train", *args, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: --model inception_v3: cannot classify 3-band 64x64 images (")
    assert not (tmp_path / "runs").exists()
