"""Privacy mechanisms applied to token representations, and Contributing Token Identification (CTI)."""

from splitpriv.privacy.cti import ContributingTokens, CTIConfig
from splitpriv.privacy.mechanisms import DChi, Gaussian, Identity, Laplace, Mechanism, build_mechanism, privatize

__all__ = ["Mechanism", "DChi", "Gaussian", "Laplace", "Identity", "build_mechanism", "privatize", "ContributingTokens", "CTIConfig"]
