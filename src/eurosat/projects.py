"""The training scripts under projects/<name>/train.py, loaded as modules (by make reproduce and the tests)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from eurosat import manifest


def load_project(name: str) -> ModuleType:
    """projects/<name>/train.py as a module (its manifest checked first); its EXPERIMENT is what main() runs."""
    path = manifest.load(name).train_script
    module_name = f"project_{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
