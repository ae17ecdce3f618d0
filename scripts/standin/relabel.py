"""Make PyPI's torch and torchvision look to pip like NGC's own builds (run inside the stand-in NGC build).

    python3 relabel.py torch=2.9.0a0+145a3a7bda.nv25.10 torchvision=0.24.0a0+094e7af5 --hide 'nvidia-*' 'cuda-*'

Each NAME=VERSION gets VERSION in its metadata, its dist-info folder name, its RECORD and its `version.py`
(so `torch.__version__` says it too). Distributions matching --hide lose their dist-info, so pip no longer
lists them while their files stay importable: NGC installs CUDA system-wide, not as pip packages. A
Requires-Dist on a hidden distribution is dropped (and on triton, which NGC ships as pytorch-triton and the
stand-in leaves out); one on a relabelled distribution is pinned to its new version.
"""

import argparse
import fnmatch
import re
import shutil
from importlib.metadata import distribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def rewrite_requirements(metadata: str, hidden: set[str], relabelled: dict[str, str]) -> str:
    lines = []
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.split(":", 1)[1].strip())
            name = canonicalize_name(requirement.name)
            if name in hidden or name == "triton":
                continue
            if name in relabelled:
                marker = f" ; {requirement.marker}" if requirement.marker else ""
                line = f"Requires-Dist: {requirement.name}=={relabelled[name]}{marker}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def relabel(name: str, version: str, hidden: set[str], relabelled: dict[str, str]) -> None:
    dist = distribution(name)
    old_info = Path(dist._path)  # the .dist-info folder
    old_version = dist.version
    metadata = re.sub(r"^Version: .*$", f"Version: {version}", (old_info / "METADATA").read_text(), count=1, flags=re.M)
    (old_info / "METADATA").write_text(rewrite_requirements(metadata, hidden, relabelled))
    new_info = old_info.with_name(f"{dist.metadata['Name'].replace('-', '_')}-{version}.dist-info")
    old_info.rename(new_info)
    record = new_info / "RECORD"
    record.write_text(record.read_text().replace(f"{old_info.name}/", f"{new_info.name}/"))
    version_py = new_info.parent / name / "version.py"
    if version_py.exists():
        text = re.sub(r"^__version__ = .*$", f"__version__ = '{version}'", version_py.read_text(), flags=re.M)
        version_py.write_text(text)
    print(f"relabelled {name} {old_version} as {version}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pins", nargs="+", metavar="NAME=VERSION")
    parser.add_argument("--hide", nargs="*", default=[], metavar="PATTERN")
    args = parser.parse_args()
    relabelled = dict(pin.split("=", 1) for pin in args.pins)
    hidden = {
        canonicalize_name(dist.metadata["Name"])
        for dist in distributions()
        if any(fnmatch.fnmatch(canonicalize_name(dist.metadata["Name"]), pattern) for pattern in args.hide)
    }
    for name, version in relabelled.items():
        relabel(name, version, hidden, relabelled)
    for name in sorted(hidden):
        shutil.rmtree(distribution(name)._path)
    print(f"hid {len(hidden)} distributions from pip: {' '.join(sorted(hidden))}")


if __name__ == "__main__":
    main()
