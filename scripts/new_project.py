"""make new-project NAME=<name> [FROM=<project>]: a new experiment folder, projects/<NAME>/, copied from a project.

The copy is the template: FROM's train.py and project.toml (FROM's name replaced by NAME, not the default any
more) and a README.md line. Nothing outside projects/<NAME>/ changes: make, compose, the cluster files, make
reproduce, make bench and the tests find the project through its manifest. The standard library only.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from eurosat import manifest  # noqa: E402
from eurosat.errors import UserError  # noqa: E402

TEXT_FILES = (".py", ".toml", ".md", ".txt", ".yaml", ".json")


def new_project(name: str, source: str) -> Path:
    if not name:
        raise UserError("pass NAME=<name>, e.g. make new-project NAME=eurosat-vit [FROM=<project>]")
    if not manifest.PROJECT_NAME.fullmatch(name):
        raise UserError(f"NAME={name}: use lowercase letters, digits and single dashes, starting with a letter (e.g. vit-b16)")
    target = manifest.PROJECTS_DIR / name
    if target.exists():
        raise UserError(f"NAME={name}: {target.relative_to(manifest.REPO_ROOT)} exists already; pick another name")
    template = manifest.load(source)
    with tempfile.TemporaryDirectory(dir=manifest.PROJECTS_DIR, prefix=f".{name}-") as scratch:
        staging = Path(scratch) / name  # written in full, then renamed into place: never half a project
        staging.mkdir()
        for path in sorted(template.folder.iterdir()):
            if path.name.startswith(".") or path.name in ("__pycache__", "runs", "README.md") or not path.is_file():
                continue
            if path.suffix in TEXT_FILES:
                (staging / path.name).write_text(path.read_text().replace(source, name))
            else:
                shutil.copy2(path, staging / path.name)
        toml = (staging / "project.toml").read_text().replace("default = true\n", "")
        described = f'description = "{name}: a copy of {source}; say what it tries"'
        toml = toml.replace(f'description = "{template.description}"', described)
        (staging / "project.toml").write_text(toml)
        (staging / "README.md").write_text(
            f"# {name}\n\nStarted from {source} with `make new-project NAME={name} FROM={source}`: "
            f"train it with `make train PROJECT={name}`, then edit train.py and project.toml.\n"
        )
        staging.rename(target)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", default="")
    parser.add_argument("--from", dest="source", help="the project to copy (default: the default project)")
    args = parser.parse_args(argv)
    source = args.source or manifest.default_project()
    target = new_project(args.name, source)
    files = ", ".join(sorted(path.name for path in target.iterdir()))
    print(f"wrote {target.relative_to(manifest.REPO_ROOT)}/ ({files}) from {source}; train it: make train PROJECT={args.name}")


if __name__ == "__main__":
    try:
        main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
