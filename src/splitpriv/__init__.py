"""splitpriv: Split-and-Privatize fine-tuning of language models as a service."""

from splitpriv import _moved
from splitpriv.models import load_model
from splitpriv.parts import SplitModel, split_model

__all__ = ["load_model", "split_model", "SplitModel"]
__version__ = "0.1.0"

_moved.install()  # the paths modules had before the layered tree keep working, with a warning
