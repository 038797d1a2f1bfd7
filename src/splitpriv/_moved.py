"""Where modules went when the tree got its layers (issue 29): ``import splitpriv.split`` and the other old paths
keep working, as a module holding the new module's names, with a ``DeprecationWarning`` naming the new path. The
source tree itself never uses an old path (tests/test_architecture.py)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED = {
    "splitpriv.split": "splitpriv.parts",
    "splitpriv.causal": "splitpriv.tasks.causal_lm",
    "splitpriv.disclosure": "splitpriv.parts.disclosure",
    "splitpriv.split_privatizer": "splitpriv.parts.privatizer",
    "splitpriv.decoder_candidates": "splitpriv.candidates",
    "splitpriv.protocol": "splitpriv.contract",
    "splitpriv.errors": "splitpriv.contract.errors",
    "splitpriv.limits": "splitpriv.contract.limits",
    "splitpriv.run": "splitpriv.runs.run",
    "splitpriv.causal_run": "splitpriv.runs.run",
    "splitpriv.centralized": "splitpriv.runs.centralized",
    "splitpriv.centralized_lm": "splitpriv.runs.centralized",
    "splitpriv.wire_export": "splitpriv.runs.wire_export",
    "splitpriv.options": "splitpriv.cli.options",
    "splitpriv.cli.causal": "splitpriv.cli.inference",
    "splitpriv.roles.causal_customer": "splitpriv.roles.customer.customer",
    "splitpriv.roles.journal": "splitpriv.roles.customer.journal",
    "splitpriv.roles.privatizer_warm_start": "splitpriv.roles.customer.warm_start",
    **{f"splitpriv.roles.{name}": f"splitpriv.roles.vendor.{name}" for name in (
        "checkpoint", "denoise", "idle", "lease", "memory", "privatizer_pretrain", "replica", "robust_top", "session",
        "tenant_batch", "training_batch")},
}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path of :data:`MOVED` and loads it as its new module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        return None  # a fresh module: the new one keeps its own name and spec

    def exec_module(self, module) -> None:
        new = MOVED[module.__name__]
        warnings.warn(f"{module.__name__} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        source = importlib.import_module(new)
        module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("__") or k == "__all__"})


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
