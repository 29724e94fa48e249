"""Where the Consul connection settings come from, resolved once with one documented precedence:

    explicit setting (CLI flag or Celery ``consulresults_*`` setting)
      > backend URL (``consulresults://[TOKEN@]host[:port]/prefix?option=value``)
      > ``CONSUL_*`` environment variable
      > default

as Consul's own client (``api.NewClient``) does, with two of its rules: within one of these
levels a token file beats a token (so ``-token-file`` > ``-token`` > ``CONSUL_HTTP_TOKEN_FILE`` >
``CONSUL_HTTP_TOKEN``), and an address is one unit (host, port, socket, path) whose missing port
is its scheme's (80, 443), while ``https://`` or ``CONSUL_HTTP_SSL`` ask for TLS and ``http://``
never turns it off again. The backend URL's own ``host`` without a port keeps 8500: it is no
Consul address, and Celery's built-in backend reads it so.

python-consul2's own constructor lets ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN`` silently
override explicit arguments; everything here resolves settings before a client exists, so that
surprise cannot happen. Errors are one line and never contain the token.
"""

from __future__ import annotations

import base64
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORT = 8500
CONSISTENCY_MODES = ("default", "consistent", "stale")
# Go's strconv.ParseBool (1 t T TRUE true True, likewise false), compared in lower case, and yes/on
_TRUE = ("1", "t", "true", "yes", "on")
_FALSE = ("0", "f", "false", "no", "off")
_SCHEME_PORTS = {"http": 80, "https": 443}


class SettingsError(ValueError):
    """A setting that cannot be used; the message names it and says what to do."""


@dataclass(frozen=True)
class ConsulSettings:
    """Everything needed to talk to Consul and to lay results out under a prefix."""

    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    prefix: str = ""
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    socket: str | None = None  # a unix socket's path: dialled instead of host and port
    path_prefix: str = ""  # an address's path (a reverse proxy's), kept in front of /v1/...
    http_auth: str | None = field(default=None, repr=False)  # user[:password], basic auth
    ca_file: str | None = None
    ca_path: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None
    verify: bool = True
    datacenter: str | None = None
    namespace: str | None = None  # Consul Enterprise's; sent only when set
    partition: str | None = None
    consistency: str = "consistent"
    timeout: float = 10.0
    session_window: float | None = None
    max_connections: int = 4
    idle_timeout: float = 5.0
    backpressure_patience: float = 30.0
    batching: bool = True
    # where each setting came from (a CONSUL_* variable, the backend URL, a consulresults_*
    # setting or a CLI flag), for `doctor`; never a value
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def base_url(self) -> str:
        """The agent's address for messages, in Consul's form (``unix:///path`` for a socket)."""
        if self.socket:
            return f"unix://{self.socket}" + (" (TLS)" if self.scheme == "https" else "")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path_prefix}"

    @property
    def endpoint(self) -> str:
        """What tells one agent, or one way to it, from another: the socket, or host and port,
        the address's path, and the basic-auth credentials as a digest (a proxy may route on
        them). Connection pools, the waiting service's batching and the host-pressure file
        (whose name holds a hash of this) are per endpoint; the credentials never appear."""
        where = self.socket or f"{self.host}:{self.port}"
        auth = hashlib.sha256(self.http_auth.encode()).hexdigest()[:16] if self.http_auth else ""
        return where + self.path_prefix + (f"#{auth}" if auth else "")

    def redacted_url(self, backend_scheme: str = "consulresults") -> str:
        """A URL for logs and ``as_uri()``: the token and the basic auth are never part of it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = "" if self.socket else f"{host}:{self.port}"
        options = [
            *(["scheme=https"] if self.scheme == "https" else []),
            *([f"socket={self.socket}"] if self.socket else []),
            *([f"path_prefix={self.path_prefix}"] if self.path_prefix else []),
        ]
        url = f"{backend_scheme}://{netloc}/{self.prefix}"
        return url + (f"?{'&'.join(options)}" if options else "")

    @property
    def authorization(self) -> str | None:
        """The ``Authorization`` header of ``http_auth`` (split at the first colon, a missing
        password empty, as Consul's client does), or None."""
        if not self.http_auth:
            return None
        user, _, password = self.http_auth.partition(":")
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def resolved_token(self) -> str | None:
        """The token, or the contents of the token file (read when needed, never logged)."""
        if self.token:
            return _checked_token(self.token, "the Consul token")
        if self.token_file:
            try:
                with open(self.token_file, encoding="utf-8") as handle:
                    token = handle.read().strip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise SettingsError(
                    f"cannot read the Consul token file {self.token_file}: {reason} "
                    "(check the path and its permissions)"
                ) from None
            if not token:
                raise SettingsError(
                    f"the Consul token file {self.token_file} is empty (write the token in it, "
                    "or leave the token file unset to go without one)"
                )
            return _checked_token(token, f"the Consul token in {self.token_file}")
        return None


def _checked_token(token: str, what: str) -> str:
    """A token is sent as an HTTP header: a stray newline or quote must fail here, clearly, and
    without showing the token, not deep in the HTTP library with the token in the message."""
    if not (token.isascii() and token.isprintable()) or any(c.isspace() for c in token):
        raise SettingsError(
            f"{what} contains spaces, control or non-ASCII characters, so it cannot be sent "
            "(check for a stray newline, space or quote around it)"
        )
    return token


def parse_address(text: str, source: str) -> dict[str, Any]:
    """Consul's address forms, read as its client reads them: ``host``, ``host:port``,
    ``[v6]:port``, ``http(s)://host[:port][/path]`` (the path kept in front of ``/v1/…``, for a
    reverse proxy) and ``unix:///path/to/socket``. An address is one unit: every part is set,
    so it replaces one from a lower level whole. A missing port is None, the scheme's own (80,
    443), decided once the scheme is known; ``_tls`` says ``https://`` asked for TLS."""
    value = text.strip()
    scheme = None
    if "://" in value:
        scheme, _, value = value.partition("://")
        if scheme == "unix":
            return socket_address(value, source)
        if scheme not in ("http", "https"):
            raise SettingsError(
                f"{source}: unsupported scheme {scheme!r} (use http://, https:// or unix://)"
            )
    authority, slash, path = value.partition("/")
    if "@" in authority:  # never echoed: it would show the credentials
        raise SettingsError(
            f"{source}: no credentials in the address (basic auth: CONSUL_HTTP_AUTH or "
            "--http-auth; a token: the token settings)"
        )
    host, port = _host_port(authority, text, source)
    return {
        "host": host,
        "port": port,
        "socket": None,
        "path_prefix": normalize_path_prefix(slash + path),
        "_tls": scheme == "https",
    }


def socket_address(path: str, source: str) -> dict[str, Any]:
    """A unix socket as a whole address (``unix://`` optional): requests name ``localhost``, as
    Consul's client sends them; TLS only if the scheme asks for it."""
    path = path.removeprefix("unix://")
    if not path:
        raise SettingsError(
            f"{source}: no socket path (expected unix:///path, e.g. unix:///run/consul.sock)"
        )
    return {"host": "localhost", "port": None, "socket": path, "path_prefix": "", "_tls": False}


def _host_port(value: str, text: str, source: str) -> tuple[str, int | None]:
    host, port = value, None
    if value.startswith("[") and "]" not in value:
        raise SettingsError(f"{source}: unclosed '[' in {text!r} (IPv6 looks like [::1]:8500)")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    if not host:
        raise SettingsError(
            f"{source}: no host in {text!r} (expected host:port, e.g. 127.0.0.1:8500)"
        )
    return host, None if port is None else parse_port(port, source)


def normalize_path_prefix(path: str) -> str:
    """``consul/`` or ``/consul/`` → ``/consul``, and ``/`` → nothing (Consul's client would
    send ``//v1/…`` for a trailing slash, which the agent answers with a redirect)."""
    stripped = path.strip("/")
    return f"/{stripped}" if stripped else ""


def parse_port(text: str, source: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise SettingsError(f"{source}: invalid port {text!r} (use a number from 1 to 65535)")
    return int(text)


def parse_bool(value: object, source: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise SettingsError(f"{source}: expected true or false, not {value!r}")


def parse_seconds(value: object, source: str) -> float:
    try:
        seconds = float(cast(Any, value))  # anything: float() is the check
    except (TypeError, ValueError):
        raise SettingsError(f"{source}: expected a number of seconds, not {value!r}") from None
    if not 0 < seconds < math.inf:  # NaN compares false
        raise SettingsError(f"{source}: must be more than 0 seconds and finite, not {value!r}")
    return seconds


def parse_connections(value: object, source: str) -> int:
    """A connection budget: a whole number, at least 2 (a long blocking read may never take the
    last connection, so one is always free for stores)."""
    text = str(value).strip()
    if not text.isdigit() or not 2 <= int(text) <= 1000:
        raise SettingsError(f"{source}: expected a whole number from 2 to 1000, not {value!r}")
    return int(text)


ENVIRONMENT = {  # the settings read as they are from one CONSUL_* variable each
    "token": "CONSUL_HTTP_TOKEN",
    "token_file": "CONSUL_HTTP_TOKEN_FILE",
    "http_auth": "CONSUL_HTTP_AUTH",
    "ca_file": "CONSUL_CACERT",
    "ca_path": "CONSUL_CAPATH",
    "client_cert": "CONSUL_CLIENT_CERT",
    "client_key": "CONSUL_CLIENT_KEY",
    "tls_server_name": "CONSUL_TLS_SERVER_NAME",
    "namespace": "CONSUL_NAMESPACE",
    "partition": "CONSUL_PARTITION",
}


def from_environment(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from the Consul CLI's environment variables (both a token and a token file:
    the file wins, see :func:`resolve`)."""
    found: dict[str, Any] = {}
    if environ.get("CONSUL_HTTP_ADDR"):
        found.update(parse_address(environ["CONSUL_HTTP_ADDR"], "CONSUL_HTTP_ADDR"))
    if environ.get("CONSUL_HTTP_SSL") and parse_bool(environ["CONSUL_HTTP_SSL"], "CONSUL_HTTP_SSL"):
        found["scheme"] = "https"
    if environ.get("CONSUL_HTTP_SSL_VERIFY"):
        found["verify"] = parse_bool(environ["CONSUL_HTTP_SSL_VERIFY"], "CONSUL_HTTP_SSL_VERIFY")
    for name, env in ENVIRONMENT.items():
        if environ.get(env):
            found[name] = environ[env]
    return found


def from_url(url: str, source: str = "result_backend URL") -> dict[str, Any]:
    """Settings from ``consulresults://[TOKEN@]host[:port]/prefix?option=value``; the host
    without a port is port 8500 (the URL is no Consul address: Celery's built-in backend reads
    it so); ``?socket=PATH`` names a unix socket instead of a host."""
    if "://" not in url:
        raise SettingsError(f"{source}: expected consulresults://host:port/prefix")
    try:
        parts = urlsplit("http://" + url.split("://", 1)[1])
    except ValueError as exc:  # the URL may hold a token: name the fault, not the URL
        raise SettingsError(
            f"{source}: malformed ({exc}); expected consulresults://host:port/prefix"
        ) from None
    netloc = parts.netloc
    found: dict[str, Any] = {}
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        token = unquote(credentials.partition(":")[2] or credentials.partition(":")[0])
        if token:
            found["token"] = token
    options: dict[str, object] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        name = URL_ALIASES.get(name, name)
        if name not in URL_OPTIONS:
            known = sorted([*URL_OPTIONS, *URL_ALIASES])
            raise SettingsError(f"{source}: unknown option {name!r} (known: {', '.join(known)})")
        options[name] = value
    if netloc and "socket" in options:
        raise SettingsError(f"{source}: a host or ?socket=, not both (consulresults:///p?socket=…)")
    if netloc:
        address = parse_address(netloc, source)
        found.update(address, port=address["port"] or DEFAULT_PORT, path_prefix="")
    found["prefix"] = normalize_prefix(unquote(parts.path))
    found.update(_coerced(options, source))
    return found


def _coerced(options: Mapping[str, object], source: str) -> dict[str, Any]:
    """Options of one level, validated; the address's path after the address (``socket`` and
    ``address`` set a whole address, their path included), whatever order they came in."""
    found: dict[str, Any] = {}
    for name, value in sorted(options.items(), key=lambda item: item[0] == "path_prefix"):
        if value is not None:
            found.update(coerce_option(name, value, source))
    return found


def coerce_option(name: str, value: object, source: str) -> dict[str, Any]:
    """Validate one named option from a URL query, a Celery setting or a CLI flag."""
    option = OPTIONS.get(name)
    if option is None:
        raise SettingsError(f"unknown Consul setting {name!r}")
    return option.parse(value, f"{source} option {name}")


def normalize_prefix(path: str) -> str:
    """``/myapp/`` → ``myapp``: keys are ``<prefix>/<name>``, as Celery's own backend writes."""
    prefix = path.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise SettingsError(f"invalid prefix {path!r}: no empty, '.' or '..' path segments")
    if not prefix.isprintable():
        raise SettingsError(f"invalid prefix {path!r}: control characters are not allowed")
    return prefix


def resolve(
    url: str | None = None,
    explicit: Mapping[str, object] | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> ConsulSettings:
    """Merge default < environment < URL < ``explicit`` settings < ``overrides`` (an app's
    ``consulresults_*`` settings and the CLI's flags over them) into one
    :class:`ConsulSettings`."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    environment = from_environment(os.environ if environ is None else environ)
    _merge_level(merged, environment, sources, lambda name: ENVIRONMENT.get(name, "CONSUL_*"))
    if url:
        _merge_level(merged, from_url(url), sources, lambda name: "the backend URL")
    _merge_level(merged, _coerced(explicit or {}, "setting"), sources, "consulresults_{}".format)
    _merge_level(merged, _coerced(overrides or {}, "setting"), sources, _flag_of)
    if merged.pop("_tls", False):  # https:// asked for it; http:// never turns TLS off
        merged["scheme"] = "https"
    if merged.get("port", DEFAULT_PORT) is None:
        merged["port"] = _SCHEME_PORTS[merged.get("scheme", "http")]
    return replace(ConsulSettings(), **merged, sources=sources)


def _flag_of(name: str) -> str:
    option = OPTIONS.get(name)
    return option.flag if option is not None and option.flag else name


def _merge_level(
    merged: dict[str, Any],
    found: Mapping[str, Any],
    sources: dict[str, str],
    source: Callable[[str], str],
) -> None:
    """One level's settings over the levels below. A token or token file replaces both of the
    lower levels'; within the level the file wins, as in Consul's client."""
    if found.get("token") or found.get("token_file"):
        for name in ("token", "token_file"):
            merged.pop(name, None)
            sources.pop(name, None)
        if found.get("token_file"):
            found = {name: value for name, value in found.items() if name != "token"}
    merged.update(found)
    sources.update((name, source(name)) for name, value in found.items() if value is not None)


def _text(name: str) -> Callable[[object, str], dict[str, Any]]:
    return lambda value, where: {name: None if value is None else str(value)}


def _choice(name: str, choices: tuple[str, ...]) -> Callable[[object, str], dict[str, Any]]:
    def parse(value: object, where: str) -> dict[str, Any]:
        if value not in choices:
            allowed = " or ".join(choices) if len(choices) == 2 else f"one of {', '.join(choices)}"
            raise SettingsError(f"{where}: must be {allowed}, not {value!r}")
        return {name: value}

    return parse


def _seconds(name: str) -> Callable[[object, str], dict[str, Any]]:
    return lambda value, where: {name: parse_seconds(value, where)}


def _no_effect(value: object, where: str) -> dict[str, Any]:
    """Celery's built-in backend reads ``one_client`` (one python-consul2 client per backend
    instead of one per call); every backend here already shares one pooled client per process,
    so the option is accepted, checked, and changes nothing."""
    parse_bool(value, where)
    return {}


@dataclass(frozen=True)
class Option:
    """One connection setting: its parser, whether a URL query may carry it, its CLI flag and
    the environment variable only that flag reads (``cli_env``).

    The URL options, the ``consulresults_<name>`` Celery settings and the CLI's connection flags
    are all read off :data:`OPTIONS`, so a new setting is added in one place.
    """

    name: str
    parse: Callable[[object, str], dict[str, Any]]
    in_url: bool = True
    flag: str | None = None
    metavar: str = ""
    help: str = ""
    cli_env: str | None = None


OPTIONS: dict[str, Option] = {
    option.name: option
    for option in (
        Option(
            "address",
            lambda value, where: parse_address(str(value), where),
            in_url=False,
            flag="--http-addr",
            metavar="ADDR",
            help="Consul address, as CONSUL_HTTP_ADDR: host[:port], http(s)://host[:port][/path] "
            "(no port: 80, or 443 for https or CONSUL_HTTP_SSL=true) or unix:///path/to/socket.",
        ),
        Option("socket", lambda value, where: socket_address(str(value), where)),
        Option(
            "path_prefix",
            lambda value, where: {"path_prefix": normalize_path_prefix(str(value))},
        ),
        Option(
            "prefix",
            lambda value, where: {"prefix": normalize_prefix(str(value))},
            in_url=False,
            flag="--prefix",
            metavar="PREFIX",
            help="KV prefix of the results (overrides the URL's path, wherever each came from).",
            cli_env="CONSUL_RESULTS_PREFIX",
        ),
        Option(
            "token",
            _text("token"),
            in_url=False,
            flag="--token",
            metavar="TOKEN",
            help="ACL token (prefer --token-file or CONSUL_HTTP_TOKEN_FILE: flags show in ps); "
            "--token-file beats it, it beats CONSUL_HTTP_TOKEN_FILE and CONSUL_HTTP_TOKEN.",
        ),
        Option(
            "token_file",
            _text("token_file"),
            flag="--token-file",
            metavar="FILE",
            help="File holding the ACL token (beats --token and the environment's).",
        ),
        Option(
            "http_auth",
            _text("http_auth"),
            flag="--http-auth",
            metavar="USER[:PASSWORD]",
            help="HTTP basic auth on every request, as CONSUL_HTTP_AUTH (for a proxy in front "
            "of Consul; prefer the variable: flags show in ps).",
        ),
        Option("scheme", _choice("scheme", ("http", "https"))),
        Option(
            "ca_file",
            _text("ca_file"),
            flag="--ca-file",
            metavar="FILE",
            help="CA to verify Consul's TLS (the only one trusted; beats --ca-path).",
        ),
        Option(
            "ca_path",
            _text("ca_path"),
            flag="--ca-path",
            metavar="DIR",
            help="Directory of CA certificates (PEM files, any names, searched recursively) to "
            "verify Consul's TLS, as CONSUL_CAPATH: the only ones trusted.",
        ),
        Option(
            "client_cert",
            _text("client_cert"),
            flag="--client-cert",
            metavar="FILE",
            help="TLS client certificate.",
        ),
        Option(
            "client_key",
            _text("client_key"),
            flag="--client-key",
            metavar="FILE",
            help="TLS client key.",
        ),
        Option(
            "tls_server_name",
            _text("tls_server_name"),
            flag="--tls-server-name",
            metavar="NAME",
            help="Name to expect in Consul's certificate (and to send as SNI).",
        ),
        Option("verify", lambda value, where: {"verify": parse_bool(value, where)}),
        Option(
            "datacenter",
            _text("datacenter"),
            flag="--datacenter",
            metavar="DC",
            help="Datacenter to query.",
        ),
        Option(
            "namespace",
            _text("namespace"),
            flag="--namespace",
            metavar="NS",
            help="Consul Enterprise namespace of the results and their sessions, as "
            "CONSUL_NAMESPACE (Consul CE refuses any).",
        ),
        Option(
            "partition",
            _text("partition"),
            flag="--partition",
            metavar="PARTITION",
            help="Consul Enterprise admin partition, as CONSUL_PARTITION (Consul CE refuses any).",
        ),
        Option("consistency", _choice("consistency", CONSISTENCY_MODES)),
        Option("timeout", _seconds("timeout")),
        Option("session_window", _seconds("session_window")),
        Option(
            "max_connections",
            lambda value, where: {"max_connections": parse_connections(value, where)},
        ),
        Option("idle_timeout", _seconds("idle_timeout")),
        Option("backpressure_patience", _seconds("backpressure_patience")),
        Option("batching", lambda value, where: {"batching": parse_bool(value, where)}),
        Option("one_client", _no_effect),
    )
}
URL_OPTIONS = frozenset(name for name, option in OPTIONS.items() if option.in_url)
URL_ALIASES = {"dc": "datacenter", "ns": "namespace"}
