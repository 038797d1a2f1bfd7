"""The mechanisms under the import path they have always had; each lives in its own module (:mod:`.dchi`,
:mod:`.gaussian`, :mod:`.laplace`, :mod:`.identity`) and the interface in :mod:`.base`."""

from splitpriv.privacy import *  # noqa: F403
from splitpriv.privacy import __all__  # noqa: F401
