"""Every curate check, one module each (or a few small ones together), found by looking.

A module here defines a check's spec (a `synth.curate.base.CheckSpec` subclass) and the class that
runs it, tied by `@runs(Spec)`. Importing this package imports every module in it, so adding a check
is adding a module here (and its test); nothing else lists check types.
"""

from __future__ import annotations

import importlib
import pkgutil

from synth.curate.base import REGISTRY, CheckSpec


def check_specs() -> list[type[CheckSpec]]:
    """The spec class of every check, in module order (sorted file names), then definition order."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return list(REGISTRY.values())
