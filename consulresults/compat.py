"""The failures :mod:`consulresults.connection` raises, as the classes Celery's built-in Consul
backend raises for the same failures: python-consul2's ``ConsulException`` and
``ACLPermissionDenied``, requests' ``ConnectionError``, ``SSLError`` and ``Timeout``. Code
written against that backend (``except consul.ConsulException``) keeps working.

Importing python-consul2 and requests takes most of a CLI command's start-up, so this module
is imported only when a failure is raised.
"""

from __future__ import annotations

import consul.base
import requests

from . import exceptions


class ConsulError(exceptions.ConsulError, consul.base.ConsulException):
    pass


class PermissionDenied(exceptions.PermissionDenied, ConsulError, consul.base.ACLPermissionDenied):
    pass


class ConsulUnreachable(exceptions.ConsulUnreachable, requests.ConnectionError):
    pass


class ConsulTLSError(exceptions.ConsulTLSError, ConsulUnreachable, requests.exceptions.SSLError):
    pass


class ConsulTimeout(exceptions.ConsulTimeout, requests.Timeout):
    pass


COMPATIBLE: dict[type[BaseException], type[BaseException]] = {
    exceptions.ConsulError: ConsulError,
    exceptions.PermissionDenied: PermissionDenied,
    exceptions.ConsulUnreachable: ConsulUnreachable,
    exceptions.ConsulTLSError: ConsulTLSError,
    exceptions.ConsulTimeout: ConsulTimeout,
}
