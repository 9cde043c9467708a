"""Airlock's Python SDK: the sandbox side (``airlock.sandbox``) and the operator side
(``airlock.operator``). Standard library only; Python 3.9+."""

from ._http import AirlockError, AuthError, SessionEnded, TransportError
from .operator import OperatorClient
from .sandbox import SandboxClient

__all__ = ["AirlockError", "AuthError", "SessionEnded", "TransportError", "OperatorClient", "SandboxClient"]
__version__ = "0.1.0"
