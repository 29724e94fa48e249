"""The connection budget of one process for one agent: at most ``max_connections`` open (in
use or idle), shared by every transport built with the same address, TLS and limits.

- **Requests queue in arrival order.** A request that finds the budget spent waits in a queue;
  a connection given back goes to the first request in the queue that may take it (one woken,
  not all), so nobody is overtaken by a request that came later. A blocking read may hold all
  connections but one, so stores, renewals and short reads always have one: a blocking read at
  the head of the queue that may not have the last connection lets the requests behind it by.
- **Waiting is bounded by the patience**, not by one request timeout: a burst of callers
  beyond the budget queues (as long as the caller's deadline allows) instead of failing while
  Consul is healthy.
- **Idle and old connections are closed** (after ``idle_timeout``, by the background thread;
  a connection's first request past ``MAX_AGE`` asks the agent to close it), so a busy process
  gives its slots back now and then (the socket's TIME_WAIT is the agent's) and an idle one
  holds none. Sockets are closed outside the pool's lock.
- **Under back-pressure** (the agent refused a connection) the budget is halved for
  ``PRESSURE_COOLDOWN`` seconds. While this process or another of the host was refused lately
  (:mod:`consulresults.pressure`), a connection serves requests for ``PRESSED_LEASE`` only, and
  the process waits a random while (as long as a refused one would) before it opens the next:
  the slot it gave back goes to a process that was waiting for one, not back to itself.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from . import forks
from .background import BACKGROUND, Timer
from .pressure import HostPressure
from .settings import ConsulSettings
from .sockets import Connection, Late, tls_context

MAX_AGE = 5.0  # a busy process gives its slot back this often: the agent's limit is shared
PRESSURE_COOLDOWN = 10.0
PRESSED_LEASE = 0.5  # under back-pressure, a connection serves requests for this long
# after a 429, the next try within this (uniformly), and within the second once the request has
# waited PUSHBACK_HURRY seconds: see pushback_delay
PUSHBACK_WAIT = (0.25, 0.1)
PUSHBACK_HURRY = 0.4


@dataclass(frozen=True)
class Limits:
    """A process's budget for one agent (as httpx's ``Limits``): how many connections, how
    long one may stay idle, and how long a request may wait for one, or ride out the agent's
    refusals (``backpressure_patience``)."""

    max_connections: int
    idle_timeout: float
    patience: float

    @classmethod
    def of(cls, settings: ConsulSettings) -> Limits:
        return cls(settings.max_connections, settings.idle_timeout, settings.backpressure_patience)


class PoolExhausted(Late):
    """No connection of the budget came free within the request's patience."""


class _Waiter:
    """A request in the queue: the connection granted to it, and the event it sleeps on."""

    __slots__ = ("event", "granted", "long")

    def __init__(self, long: bool) -> None:
        self.long = long
        self.granted: Connection | None = None
        self.event = threading.Event()


class Pool:
    """The budget (see the module's docstring). All its state changes under one lock, in
    :meth:`_assign` and the few methods that open, return or close connections."""

    def __init__(self, settings: ConsulSettings) -> None:
        self._context = tls_context(settings)
        self._host, self._port = settings.host, settings.port
        self._server_name = settings.tls_server_name or settings.host
        self._socket = settings.socket
        self.limits = Limits.of(settings)
        self.limit = self.limits.max_connections
        self.idle_timeout = self.limits.idle_timeout
        self._host_pressure = HostPressure(settings.endpoint, PRESSURE_COOLDOWN)
        self.reset()
        forks.reset_in_forked_child(self)  # the idle sockets would be the parent's

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[_Waiter] = deque()
        self._idle: list[tuple[Connection, float]] = []  # (connection, when it became idle)
        self._closing: list[Connection] = []  # closed once the lock is released
        self._open = 0  # in use or idle
        self._long = 0  # in use by long requests
        self.peak = 0
        self._cap = self.limit
        self._calm_at = 0.0  # when a cap lowered by back-pressure is restored
        self._turn_at = 0.0  # no new connection before, once one was given back under pressure
        self._reaper: Timer | None = None

    # ------------------------------------------------------------------ taking

    def take(self, long: bool, deadline: float) -> Connection:
        """A connection (idle, or new and not yet connected), in arrival order, waiting for
        one until ``deadline`` (monotonic) if the budget is spent."""
        waiter = _Waiter(long)
        with self._lock:
            self._queue.append(waiter)
            self._assign()
        try:
            self._await(waiter, deadline)
        except BaseException:  # interrupted (a gevent kill, KeyboardInterrupt): leave the queue
            self._withdraw(waiter)
            raise
        with self._lock:
            if waiter.granted is None:
                self._queue.remove(waiter)
                raise PoolExhausted(
                    f"all {self._cap} connections of this process's budget stayed busy"
                )
        self._close_pending()
        return waiter.granted

    def _await(self, waiter: _Waiter, deadline: float) -> None:
        """Sleep until a connection is granted, or the deadline; a time gate (the turn under
        pressure, the end of a lowered cap) is checked again as it opens."""
        while waiter.granted is None:
            now = time.monotonic()
            if now >= deadline:
                return
            gate = min(t for t in (self._turn_at, self._calm_at, deadline) if t > now)
            waiter.event.wait(min(deadline, gate) - now)
            if waiter.granted is None:
                with self._lock:
                    self._assign()

    def _withdraw(self, waiter: _Waiter) -> None:
        with self._lock:
            if waiter in self._queue:
                self._queue.remove(waiter)
            granted, waiter.granted = waiter.granted, None
        if granted is not None:
            self.give_back(granted, waiter.long)

    def _assign(self) -> None:
        """Grant connections to the queue's requests, in order (under the lock). A short
        request that cannot be served stops it: nobody behind can be. A long one that may not
        take the last connection lets the others by."""
        now = time.monotonic()
        if now >= self._calm_at:
            self._cap = self.limit
        for waiter in list(self._queue):
            connection = self._grant(waiter.long, now)
            if connection is None:
                if waiter.long:
                    continue
                return
            self._queue.remove(waiter)
            waiter.granted = connection
            waiter.event.set()

    def _grant(self, long: bool, now: float) -> Connection | None:
        if long and self._long >= self._cap - 1:
            return None
        connection = self._reuse()
        if connection is None and self._open < self._cap and now >= self._turn_at:
            self._open += 1
            self.peak = max(self.peak, self._open)
            connection = Connection(
                self._host, self._port, self._context, self._server_name, self._socket
            )
        if connection is not None and long:
            self._long += 1
        return connection

    def _reuse(self) -> Connection | None:
        while self._idle:
            connection, _ = self._idle.pop()
            if not connection.dropped():
                return connection
            self._drop(connection)
        return None

    # ------------------------------------------------------------------ giving back

    def give_back(self, connection: Connection, long: bool) -> None:
        """A connection whose answer was read in full: kept idle, or closed if it is too old,
        the agent is pushing back, or the budget shrank meanwhile; then the queue is served."""
        with self._lock:
            self._long -= long
            now = time.monotonic()
            # one past MAX_AGE is kept: its next request asks the agent to close it (the
            # TIME_WAIT is then the agent's); under pressure its slot is given back now
            lease_over = self.pressed() and now - connection.born >= PRESSED_LEASE
            if self._open <= self._cap and not lease_over:
                self._idle.append((connection, now))
                self._schedule_reaper(self.idle_timeout)
            else:
                self._release(connection)
            self._assign()
        self._close_pending()

    def discard(self, connection: Connection, long: bool) -> None:
        """A connection that failed, was interrupted or that the server closes: under pressure,
        the next one waits its turn."""
        with self._lock:
            self._long -= long
            self._release(connection)
            self._assign()
        self._close_pending()

    def _release(self, connection: Connection) -> None:
        """Close ``connection``; if it served requests under pressure, its slot is another
        process's turn: this one waits as long as a refused process would."""
        self._drop(connection)
        if connection.answered and self.pressed():
            self._turn_at = time.monotonic() + pushback_delay(0.0)

    def _drop(self, connection: Connection) -> None:
        """One connection fewer (under the lock); its socket is closed once the lock is free."""
        self._open -= 1
        self._closing.append(connection)

    def _close_pending(self) -> None:
        with self._lock:
            closing, self._closing = self._closing, []
        for connection in closing:
            connection.close()

    # ------------------------------------------------------------------ pressure and age

    def pushed_back(self) -> None:
        """The agent refused a connection: use fewer for a while, and give idle ones back."""
        self._host_pressure.refused()
        with self._lock:
            self._cap = max(min(2, self.limit), self._cap // 2)
            self._calm_at = time.monotonic() + PRESSURE_COOLDOWN
            while self._idle:
                self._drop(self._idle.pop()[0])
        self._close_pending()

    def pressed(self) -> bool:
        """Whether the agent pushed this process or another of the host back lately."""
        now = time.monotonic()
        return now < self._calm_at or now < self._host_pressure.felt()

    def last_use(self, connection: Connection) -> bool:
        """Whether a request on ``connection`` should be its last: it is older than a busy
        process may hold a slot (``MAX_AGE``, or ``PRESSED_LEASE`` under pressure). The agent
        is asked to close it (``Connection: close``), so the TIME_WAIT is the agent's."""
        age = time.monotonic() - connection.born
        return age >= MAX_AGE or (age >= PRESSED_LEASE and self.pressed())

    def stats(self) -> dict[str, int]:
        """Open, idle and long-held connections, queued requests, the budget now and at most,
        and the peak."""
        with self._lock:
            return {
                "open": self._open,
                "idle": len(self._idle),
                "long": self._long,
                "queued": len(self._queue),
                "cap": self._cap,
                "limit": self.limit,
                "peak": self.peak,
            }

    def _schedule_reaper(self, delay: float) -> None:
        if self._reaper is None:
            self._reaper = BACKGROUND.call_later(delay, self._reap)

    def _reap(self) -> None:
        """Close the connections idle for ``idle_timeout``; come back for the rest."""
        with self._lock:
            self._reaper = None
            expiry = time.monotonic() - self.idle_timeout
            expired = [entry for entry in self._idle if entry[1] <= expiry]
            self._idle = [entry for entry in self._idle if entry[1] > expiry]
            for connection, _ in expired:
                self._drop(connection)
            if self._idle:
                self._schedule_reaper(self._idle[0][1] - expiry)
            self._assign()
        self._close_pending()


_POOLS: dict[tuple[Any, ...], Pool] = {}
_POOLS_LOCK = forks.Lock()


def pool_for(settings: ConsulSettings) -> Pool:
    """The process's pool for this agent (its endpoint: socket or host and port, address path,
    basic auth), TLS set-up and limits (made on first use)."""
    key = (
        settings.scheme,
        settings.endpoint,
        settings.ca_file,
        settings.ca_path,
        settings.client_cert,
        settings.client_key,
        settings.tls_server_name,
        settings.verify,
        Limits.of(settings),
    )
    with _POOLS_LOCK:
        pool = _POOLS.get(key)
        if pool is None:
            pool = _POOLS[key] = Pool(settings)
        return pool


def pushback_delay(waited: float) -> float:
    """How long to wait before trying again after the agent refused a connection, ``waited``
    seconds into the request. The agent's slots go to whichever process asks first when one
    comes free, so this is a lottery among the waiting processes: a flat random wait (no
    exponential growth, which would make the unlucky ones ask ever less often) under 250 ms,
    and under 100 ms once a request has waited 400 ms, so those that waited longest win
    more often and the slowest waits stay short. A refusal costs the agent little."""
    usual, hurried = PUSHBACK_WAIT
    return random.uniform(0, hurried if waited >= PUSHBACK_HURRY else usual)
