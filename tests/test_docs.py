"""The documentation: every `make` and `python projects/...` command in the README and docs/ names a target that
`make help` lists and flags its parser knows; every code block that trains (make train, new-project, sweep) runs as
written, in a copy of the repository, on the sample data; the README's relative links resolve; `make docs` builds
the site strictly, so that a broken link fails it; the README stays short."""

import re
import shlex
import subprocess
import sys

import pytest
from helpers import MODEL, REPO, copy_repository, make_in_clone

from eurosat import manifest
from eurosat.lifecycle import make_parser
from eurosat.projects import load_project

PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
TRAIN_ARGS_TARGETS = {"train", "train-nodes", "cluster-files", "slurm-up"}  # their ARGS are train.py's flags


def commands() -> list[tuple[str, int, str]]:
    """(page, line, command) for each command line in the pages' code blocks: every line of a shell block that
    starts with make, python projects/ or torchrun; in a text block, only those after a `$ ` prompt."""
    found = []
    for page in PAGES:
        language = None
        for number, line in enumerate((REPO / page).read_text().splitlines(), 1):
            if line.startswith("```"):
                language = None if language is not None else (line[3:].strip() or "text")
                continue
            text = line.strip()
            if language is None or (language == "text" and not text.startswith("$ ")):
                continue
            text = text.removeprefix("$ ")
            if text.startswith(("make ", "python projects/", "torchrun ")):
                found.append((page, number, text.split("  #")[0].split(" # ")[0].strip()))
    return found


TRAINING_TARGETS = {"train", "new-project", "sweep"}
RUN_WITH_THEM = {"data", "data-sample", "summary", "report", "reproduce"}  # in such a block; the rest (a server, the
# tests, a download) is checked as written by test_every_documented_command_exists_as_written
# What makes a documented example cheap here: one epoch, a small batch, random weights, the CPU, in the venv; the
# tests' small model where the example names none (the default model's run is the same code, tested elsewhere)
CHEAP = ["--epochs", "1", "--batch-size", "16", "--no-pretrained", "--device", "cpu"]


def training_blocks() -> list[tuple[str, int, tuple[str, ...]]]:
    """(page, line, commands) for each code block with a make command that trains, its commands in order; a block
    that two pages share is listed once."""
    blocks: dict[tuple[str, ...], tuple[str, int]] = {}
    by_block: dict[tuple[str, int], list[str]] = {}
    for page, line, command in commands():
        key = next((k for k in by_block if k[0] == page and k[1] + len(by_block[k]) == line), (page, line))
        by_block.setdefault(key, []).append(command)
    for (page, line), block in by_block.items():
        targets = {word for command in block for word in shlex.split(command)[1:] if command.startswith("make ")}
        if TRAINING_TARGETS & targets and tuple(block) not in blocks:
            blocks[tuple(block)] = (page, line)
    return [(page, line, block) for block, (page, line) in blocks.items()]


def cheap(command: str) -> list[str]:
    """A documented make command as this test runs it: make data becomes make data-sample, training in the venv,
    on the CPU, one epoch of a small batch, random weights."""
    words = shlex.split(command)
    words = ["data-sample" if word == "data" else word for word in words]
    if not TRAINING_TARGETS - {"new-project"} & set(words):
        return words
    args = [word for word in words if word.startswith("ARGS=")]
    given = shlex.split(args[0].split("=", 1)[1]) if args else []
    model = [] if "--model" in given else ["--model", MODEL]
    words = [word for word in words if not word.startswith("ARGS=")]
    return [*words, "RUNNER=local", f"ARGS={shlex.join([*given, *model, *CHEAP])}"]


@pytest.mark.slow
@pytest.mark.parametrize(("page", "line", "block"), training_blocks(), ids=lambda value: str(value)[:50])
def test_every_documented_training_example_runs(page, line, block, tmp_path):
    clone = copy_repository(tmp_path / "repo")
    make_in_clone(clone, "data-sample")  # make data's place, for the blocks that train on data/eurosat
    for command in block:
        words = cheap(command)
        if not (TRAINING_TARGETS | RUN_WITH_THEM) & set(words[1:]):
            continue
        result = make_in_clone(clone, *words[1:], check=False, timeout=900)
        where = f"{page}:{line}: {command} (run as {shlex.join(words)})"
        assert result.returncode == 0, f"{where}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        assert "Traceback" not in result.stderr, where
        if "train" in words:
            assert "Epoch 1/1 loss" in result.stdout, where
        if "sweep" in words:
            assert re.search(r"sweep: (\d+) of \1 run\(s\) finished", result.stdout), where
    trained = sorted(clone.glob("runs/*/*/best.ckpt")) + sorted(clone.glob("runs/*/*/*/*/best.ckpt"))
    assert trained, f"{page}:{line}: no run finished"


@pytest.fixture(scope="module")
def make_targets() -> set[str]:
    help_text = subprocess.run(["make", "help"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return {re.sub(r"\x1b\[[0-9;]*m", "", line).split()[0] for line in help_text.splitlines()[2:] if line.strip()}


def option_strings(parser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def train_flags(project: str) -> dict[str, set[str]]:
    _, commands_ = make_parser(load_project(project).EXPERIMENT)
    return {name: option_strings(parser) for name, parser in commands_.items()}


def flags(words) -> list[str]:
    return [word.split("=")[0] for word in words if word.startswith("--")]


@pytest.mark.parametrize(("page", "line", "command"), commands(), ids=lambda value: str(value)[:60])
def test_every_documented_command_exists_as_written(page, line, command, make_targets):
    words = shlex.split(command.replace("<", "").replace(">", ""))
    where = f"{page}:{line}: {command}"
    if words[0] == "make":
        settings = dict(word.split("=", 1) for word in words[1:] if "=" in word and not word.startswith("-"))
        targets = [word for word in words[1:] if "=" not in word]
        assert targets and all(target in make_targets for target in targets), where
        project = settings.get("PROJECT", manifest.default_project())
        if project not in manifest.project_names():  # an example of a new project: a copy of an existing one
            project = manifest.default_project()
        extra = flags(shlex.split(settings.get("ARGS", "")))
        if TRAIN_ARGS_TARGETS & set(targets):
            unknown = set(extra) - train_flags(project)["train"]
            assert not unknown, f"{where}: train.py of {project} has no {sorted(unknown)}"
        if "bench" in targets:
            bench = [sys.executable, "bench/run.py", "--help"]
            bench_help = subprocess.run(bench, cwd=REPO, capture_output=True, text=True).stdout
            assert all(flag in bench_help for flag in extra), where
        return
    script = next(word for word in words if word.startswith("projects/"))
    project = script.split("/")[1]
    after = words[words.index(script) + 1 :]
    command_name = after[0] if after and after[0] in ("train", "evaluate", "predict") else "train"
    unknown = set(flags(after)) - train_flags(project)[command_name]
    assert not unknown, f"{where}: {command_name} of {project} has no {sorted(unknown)}"


def test_the_readme_is_one_screen_of_decisions_and_its_links_resolve():
    readme = (REPO / "README.md").read_text()
    assert len(readme) <= 15_000
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), target
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()


ARTICLES = {  # the articles the recipe and the containers come from: named and linked in the README and the docs
    "Pytorch + Docker": "https://juansensio.com/blog/072_pytorch_docker",
    "Deep learning with containers. Part 1": "https://towardsdatascience.com/deep-learning-with-containers-part-1-4779877492a1",
    "Why use Docker containers for machine learning development?":
        "https://aws.amazon.com/blogs/opensource/why-use-docker-containers-for-machine-learning-development/",
    "Reproducible ML Models using Docker": "https://blog.mkari.de/posts/reproducible-ml-models-using-docker/",
}  # fmt: skip


@pytest.mark.parametrize("page", ["README.md", "docs/architecture.md"])
def test_the_articles_are_named_and_linked(page):
    text = " ".join((REPO / page).read_text().split())  # titles may wrap
    for title, address in ARTICLES.items():
        assert f'["{title}"]({address})' in text, f"{page} does not link {title!r}"
    assert "Pytorch Lightning - Optimización" in text and "072_pytorch_docker" in text


def test_make_docs_builds_the_site_strictly_and_a_broken_link_fails_it(tmp_path):
    clone = copy_repository(tmp_path / "repo")
    make_in_clone(clone, "docs")
    assert (clone / "site" / "index.html").is_file() and (clone / "site" / "troubleshooting" / "index.html").is_file()
    # Python-Markdown nests a list only under 4 spaces and starts one only after a blank line: a list written
    # otherwise shows up as text with dashes in it
    for html in (clone / "site").glob("*/index.html"):
        text = re.sub(r"<pre.*?</pre>", "", html.read_text().split("<body", 1)[1], flags=re.S)
        assert not re.search(r"\n\s*- [A-Za-z<*`]", text), f"{html.parent.name}: a list rendered as text"
    page = clone / "docs" / "training.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    result = make_in_clone(clone, "docs", check=False)
    assert result.returncode != 0
    assert "'training.md' contains a link 'missing.md'" in result.stdout + result.stderr
