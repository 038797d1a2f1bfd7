"""The two parties of Split-and-Privatize, one package each (:mod:`.customer`, :mod:`.vendor`). Roles speak
:mod:`splitpriv.contract` through a transport interface and never know whether it is in-process or HTTP."""
