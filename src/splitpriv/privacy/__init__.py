"""Privacy mechanisms applied to token representations, and Contributing Token Identification (CTI).

A new mechanism is one module in this package that subclasses :class:`Mechanism` and registers itself with
``@MECHANISMS.register(name)`` (see :mod:`.base`); nothing else needs an edit.
"""

from splitpriv.privacy.cti import ContributingTokens, CTIConfig
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
           "build_mechanism", "mechanism_parameters", "privatize", "ContributingTokens", "CTIConfig"]
