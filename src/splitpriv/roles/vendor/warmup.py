"""Load the vendor's base model before the first customer arrives.

A vendor loads its pretrained model lazily, on the first session open. On a busy machine that load took more than
two minutes: the first customer's open outlived the client's patience although nothing was wrong (issue 31's load
test, on a Ray Serve replica). A replica, or ``splitpriv serve``, that warms up first is only ready once the model is
in memory, so an open pays for a session, never for the model.
"""

from __future__ import annotations

from splitpriv.models import CAUSAL_LM, FAMILIES, SEQUENCE_CLASSIFICATION


def default_task(vendor) -> str:
    """The task customers of this model most likely open: causal LM for a family that has an LM head, else
    sequence classification."""
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(vendor.model_folder).model_type
    return CAUSAL_LM if CAUSAL_LM in FAMILIES.get(model_type).tasks else SEQUENCE_CLASSIFICATION


def warm_up(vendor, task: str | None = None) -> str:
    """Load ``vendor``'s base model for ``task`` (default :func:`default_task`; 2 labels for classification: any
    other label count shares the same pretrained tensors and adds only a head); returns the task warmed."""
    task = task or default_task(vendor)
    vendor.base(2, task)
    return task
