"""Model families and loading.

One module per family (``bert.py``, ``roberta.py``, ``distilbert.py``, ...) declares a :class:`Family` (where the
embeddings, blocks, final norm and heads live, how a block and a head are called, what each side of a split
rebuilds from the mask) and registers it under its ``model_type``::

    FAMILIES.register("mine")(Family(model_type="mine", embeddings=..., blocks=..., ...))

Adding a family is writing one file in this folder: the registry imports every module here on first lookup, and
the split, the tuning methods and the attacks read the description instead of special-casing model classes.
"""

from splitpriv.models.family import (
    CAUSAL_LM,
    FAMILIES,
    SEQUENCE_CLASSIFICATION,
    BlockInputs,
    Family,
    family_of,
    num_blocks,
)
from splitpriv.models.loading import (
    DEFAULT_MODEL,
    default_model_path,
    load_model,
    load_tokenizer,
    resolve_model_name,
)

__all__ = [
    "CAUSAL_LM",
    "DEFAULT_MODEL",
    "FAMILIES",
    "SEQUENCE_CLASSIFICATION",
    "BlockInputs",
    "Family",
    "default_model_path",
    "family_of",
    "load_model",
    "load_tokenizer",
    "num_blocks",
    "resolve_model_name",
]
