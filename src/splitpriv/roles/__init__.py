"""The two parties of Split-and-Privatize. Roles speak :mod:`splitpriv.protocol` through a transport interface
and never know whether it is in-process or HTTP."""
