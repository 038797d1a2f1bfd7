"""The built-in mechanisms under the import path they have always had; each lives in its own module
(:mod:`.dchi`, :mod:`.gaussian`, :mod:`.laplace`, :mod:`.identity`) and the interface in :mod:`.base`."""

from splitpriv.privacy.base import (
    MECHANISMS,
    Mechanism,
    MechanismCapabilityError,
    build_mechanism,
    mechanism_parameters,
    privatize,
)
from splitpriv.privacy.dchi import DChi
from splitpriv.privacy.gaussian import Gaussian
from splitpriv.privacy.identity import Identity
from splitpriv.privacy.laplace import Laplace

__all__ = ["MECHANISMS", "Mechanism", "MechanismCapabilityError", "DChi", "Gaussian", "Laplace", "Identity",
           "build_mechanism", "mechanism_parameters", "privatize"]
