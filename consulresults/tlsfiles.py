"""Why a certificate or key file could not be loaded, in words a user can act on.

Shared by the client side (:mod:`consulresults.connection`) and the dev server, which depend on
nothing else of each other: OpenSSL's own text (``[SSL] PEM lib (_ssl.c:3905)``) says nothing
about what is wrong with the file.
"""

from __future__ import annotations

import ssl


def load_error(exc: OSError) -> str:
    """``no such file or directory``, ``no certificate or crl found``, ``key values mismatch``…"""
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or "not PEM, or the key does not match").replace("_", " ").lower()
    return (exc.strerror or type(exc).__name__).lower()
