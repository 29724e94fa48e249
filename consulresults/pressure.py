"""Back-pressure felt by any process of this user on this host, for one agent.

A Consul agent limits the connections of each client IP (``limits.http_max_conns_per_client``),
so every process on a host shares one budget. Only a process that opens a connection while the
agent is full learns of it (the agent's 429); the processes holding the agent's slots do not, and
without word from the others they would keep them while the refused ones starve. A refused
process therefore touches a file named for the agent in the temporary directory, and every
process looks at its time now and then (a ``stat``, at most every ``CHECK_EVERY`` seconds): while
it is recent, each process gives its connections back after a short lease.

The file is the user's own (mode 0600; its name has the uid; opened without following a
symbolic link, and read only if it is a regular file of this user), so another user on the host
cannot slow this user's processes down, nor make them write elsewhere; processes of other users,
in other containers or with a private temporary directory (systemd's PrivateTmp) feel the
pressure only when the agent refuses them. Nothing is written while the agent is not refusing,
and without a usable temporary directory nothing is shared at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import time

CHECK_EVERY = 0.1


class HostPressure:
    """The shared mark of one agent's refusals: :meth:`refused` sets it, :meth:`felt` reads it."""

    def __init__(self, endpoint: str, lasts: float) -> None:
        """``endpoint`` names the agent (``host:port``, a socket's path, with an address's path
        and a digest of basic auth): only its hash is in the file's name."""
        agent = hashlib.sha256(endpoint.encode()).hexdigest()[:16]
        self._uid = os.getuid() if hasattr(os, "getuid") else 0
        self.path: str | None = None
        with contextlib.suppress(OSError):  # no usable temporary directory: nothing shared
            name = f"consulresults-{self._uid}-{agent}.pressure"
            self.path = os.path.join(tempfile.gettempdir(), name)
        self.lasts = lasts
        self._checked_at = 0.0
        self._told_at = 0.0
        self._until = 0.0  # monotonic

    def refused(self) -> None:
        """This process was refused: let the others know (best effort; a failure is ignored),
        at most every ``CHECK_EVERY`` seconds, as often as they look."""
        now = time.monotonic()
        if self.path is None or now < self._told_at:
            return
        self._told_at = now + CHECK_EVERY
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        with contextlib.suppress(OSError):
            fd = os.open(self.path, flags, 0o600)
            try:
                if self._ours(os.fstat(fd)):
                    os.utime(fd if os.utime in os.supports_fd else self.path)
            finally:
                os.close(fd)

    def felt(self) -> float:
        """Until when (monotonic) the host is under pressure, as last seen; 0 if it is not."""
        now = time.monotonic()
        if self.path is not None and now >= self._checked_at:
            self._checked_at = now + CHECK_EVERY
            with contextlib.suppress(OSError):
                found = os.stat(self.path, follow_symlinks=False)
                if self._ours(found):
                    self._until = now + self.lasts - (time.time() - found.st_mtime)
        return self._until

    def _ours(self, found: os.stat_result) -> bool:
        """A regular file of this user (not a link, nor another user's file)."""
        return stat.S_ISREG(found.st_mode) and (
            found.st_uid == self._uid or not hasattr(os, "getuid")
        )
