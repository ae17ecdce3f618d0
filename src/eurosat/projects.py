"""The training scripts under projects/<name>/train.py, loaded as modules (by the benchmark and make reproduce)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from eurosat.errors import UserError
from eurosat.runs import REPO_ROOT

PROJECTS_DIR = REPO_ROOT / "projects"


def train_script(name: str):
    return PROJECTS_DIR / name / "train.py"


def load_project(name: str) -> ModuleType:
    path = train_script(name)
    if not path.is_file():
        raise UserError(f"no project {name}: expected {path}")
    module_name = f"project_{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
