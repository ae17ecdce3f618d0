"""The documentation: every `make` and `python projects/...` command in the README and docs/ names a target that
`make help` lists and flags its parser knows; the README's relative links resolve; `make docs` builds the site
strictly, so that a broken link fails it; the README stays short."""

import re
import shlex
import subprocess
import sys

import pytest
from helpers import REPO, copy_repository, make_in_clone

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
