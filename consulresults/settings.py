"""Where the Consul connection settings come from, resolved once with one documented precedence:

    explicit setting (CLI flag or Celery ``consulresults_*`` setting)
      > backend URL (``consulresults://[TOKEN@]host[:port]/prefix?option=value``)
      > ``CONSUL_*`` environment variable
      > default

python-consul2's own constructor lets ``CONSUL_HTTP_ADDR`` and ``CONSUL_HTTP_TOKEN`` silently
override explicit arguments; everything here resolves settings before a client exists, so that
surprise cannot happen. Errors are one line and never contain the token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from urllib.parse import parse_qsl, unquote, urlsplit

DEFAULT_PORT = 8500
CONSISTENCY_MODES = ("default", "consistent", "stale")
URL_OPTIONS = {
    "scheme",
    "token_file",
    "ca_file",
    "client_cert",
    "client_key",
    "tls_server_name",
    "verify",
    "datacenter",
    "dc",
    "consistency",
    "timeout",
    "session_window",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


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
    ca_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    tls_server_name: str | None = None
    verify: bool = True
    datacenter: str | None = None
    consistency: str = "default"
    timeout: float = 10.0
    session_window: float | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    def redacted_url(self, backend_scheme: str = "consulresults") -> str:
        """A URL for logs and ``as_uri()``: the token is never part of it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        url = f"{backend_scheme}://{host}:{self.port}/{self.prefix}"
        return url + ("?scheme=https" if self.scheme == "https" else "")

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


def parse_address(text: str, source: str) -> dict:
    """Parse Consul's address forms: ``host``, ``host:port``, ``[v6]:port``, ``http(s)://…``."""
    value = text.strip()
    scheme = None
    if "://" in value:
        scheme, _, value = value.partition("://")
        if scheme not in ("http", "https"):
            raise SettingsError(
                f"{source}: unsupported scheme {scheme!r} in {text!r} (use http:// or https://)"
            )
    value = value.rstrip("/")
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
    result: dict = {"host": host}
    if scheme:
        result["scheme"] = scheme
    if port is not None:
        result["port"] = parse_port(port, source)
    return result


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
        seconds = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{source}: expected a number of seconds, not {value!r}") from None
    if seconds <= 0:
        raise SettingsError(f"{source}: must be more than 0 seconds, not {value!r}")
    return seconds


def from_environment(environ: Mapping[str, str]) -> dict:
    """Settings from the Consul CLI's environment variables."""
    found: dict = {}
    if environ.get("CONSUL_HTTP_ADDR"):
        found.update(parse_address(environ["CONSUL_HTTP_ADDR"], "CONSUL_HTTP_ADDR"))
    if environ.get("CONSUL_HTTP_SSL") and parse_bool(environ["CONSUL_HTTP_SSL"], "CONSUL_HTTP_SSL"):
        found["scheme"] = "https"
    if environ.get("CONSUL_HTTP_SSL_VERIFY"):
        found["verify"] = parse_bool(environ["CONSUL_HTTP_SSL_VERIFY"], "CONSUL_HTTP_SSL_VERIFY")
    for env, name in (
        ("CONSUL_HTTP_TOKEN", "token"),
        ("CONSUL_HTTP_TOKEN_FILE", "token_file"),
        ("CONSUL_CACERT", "ca_file"),
        ("CONSUL_CLIENT_CERT", "client_cert"),
        ("CONSUL_CLIENT_KEY", "client_key"),
        ("CONSUL_TLS_SERVER_NAME", "tls_server_name"),
    ):
        if environ.get(env):
            found[name] = environ[env]
    return found


def from_url(url: str, source: str = "result_backend URL") -> dict:
    """Settings from ``consulresults://[TOKEN@]host[:port]/prefix?option=value``."""
    if "://" not in url:
        raise SettingsError(f"{source}: expected consulresults://host:port/prefix")
    try:
        parts = urlsplit("http://" + url.split("://", 1)[1])
    except ValueError as exc:  # the URL may hold a token: name the fault, not the URL
        raise SettingsError(
            f"{source}: malformed ({exc}); expected consulresults://host:port/prefix"
        ) from None
    netloc = parts.netloc
    found: dict = {}
    if "@" in netloc:
        credentials, _, netloc = netloc.rpartition("@")
        token = unquote(credentials.partition(":")[2] or credentials.partition(":")[0])
        if token:
            found["token"] = token
    if netloc:
        found.update(parse_address(netloc, source))
    found["prefix"] = normalize_prefix(unquote(parts.path))
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            raise SettingsError(
                f"{source}: unknown option {name!r} (known: {', '.join(sorted(URL_OPTIONS))})"
            )
        found.update(coerce_option("datacenter" if name == "dc" else name, value, source))
    return found


def coerce_option(name: str, value: object, source: str) -> dict:
    """Validate one named option from a URL query or a Celery setting."""
    where = f"{source} option {name}"
    if name == "address":
        return parse_address(str(value), where)
    if name == "scheme":
        if value not in ("http", "https"):
            raise SettingsError(f"{where}: must be http or https, not {value!r}")
        return {"scheme": value}
    if name == "verify":
        return {"verify": parse_bool(value, where)}
    if name == "consistency":
        if value not in CONSISTENCY_MODES:
            raise SettingsError(f"{where}: must be one of {', '.join(CONSISTENCY_MODES)}")
        return {"consistency": value}
    if name in ("timeout", "session_window"):
        return {name: parse_seconds(value, where)}
    if name == "port":
        return {"port": parse_port(str(value), where)}
    if name == "prefix":
        return {"prefix": normalize_prefix(str(value))}
    return {name: str(value) if value is not None else None}


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
) -> ConsulSettings:
    """Merge default < environment < URL < explicit settings into one :class:`ConsulSettings`."""
    merged: dict = {}
    merged.update(from_environment(os.environ if environ is None else environ))
    if url:
        merged.update(from_url(url))
    for name, value in (explicit or {}).items():
        if value is not None:
            merged.update(coerce_option(name, value, "setting"))
    known = {f.name for f in fields(ConsulSettings)}
    unknown = set(merged) - known
    if unknown:
        raise SettingsError(f"unknown Consul setting(s): {', '.join(sorted(unknown))}")
    return replace(ConsulSettings(), **merged)
