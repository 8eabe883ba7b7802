"""Optional features: import a package that an extra (``pip install 'cnnlab[NAME]'``) brings, or say which."""

from __future__ import annotations

import importlib
from types import ModuleType

from cnnlab.errors import CnnlabError


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise a one-line CnnlabError naming the pip command that installs it.

    ``feature`` is what the user asked for, e.g. "cnnlab sweep"; ``extra`` the optional-dependency group.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CnnlabError(
            f"{feature} needs the Python package '{module.split('.')[0]}', which is not installed "
            f"({exc.__class__.__name__}: {exc}); install it with: pip install 'cnnlab[{extra}]'") from None
