"""A module that is imported on first use, so that what only describes (a config, a layer table) starts fast.

``nn = lazy_module("torch.nn")`` at the top of a module reads like ``from torch import nn``, but torch (1-3 s
to import) is imported only when the first attribute of ``nn`` is looked up: when something is built.
``importlib.util.LazyLoader`` is not used: it puts a half-imported torch in ``sys.modules``, which makes
``"torch" in sys.modules`` lie and runs torch's import at a surprising moment inside another import.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it when one of its attributes is first looked up."""

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"


def lazy_module(name: str) -> Any:
    """Return a stand-in for the module ``name`` that imports it on first attribute access."""
    return LazyModule(name)
