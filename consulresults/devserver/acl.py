"""ACL tokens and rules for the dev server, in a subset of Consul's own rule language.

Rules use Consul's JSON rule form, so users write what they already write for a real agent::

    {"key_prefix": {"myapp/": {"policy": "write"}}, "session_prefix": {"": {"policy": "write"}}}

(the short form ``{"key_prefix": {"myapp/": "write"}}`` is accepted too). Resources: ``key``,
``key_prefix``, ``session``, ``session_prefix``, ``agent``, ``agent_prefix``. Resolution follows
Consul: an exact rule beats the longest matching prefix rule, which beats the default policy.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

_RESOURCES = ("key", "session", "agent")
_POLICIES = ("read", "write", "list", "deny")
_GRANTS = {
    "read": {"read"},
    "list": {"read", "list"},
    "write": {"read", "list", "write"},
    "deny": set(),
}


class AclRuleError(ValueError):
    """A rule document that cannot be understood; the message says which part and why."""


class PermissionDenied(Exception):
    """Carries Consul's 403 text for the denied permission."""


class AclNotFound(Exception):
    """The request named a secret that no token has."""


@dataclass
class ResourceRules:
    """Exact and prefix rules for one resource type (key, session or agent)."""

    exact: dict[str, str] = field(default_factory=dict)
    prefix: dict[str, str] = field(default_factory=dict)

    def policy_for(self, name: str) -> str | None:
        """The policy that applies to ``name``, or None when no rule matches."""
        if name in self.exact:
            return self.exact[name]
        best = None
        for pre, policy in self.prefix.items():
            if name.startswith(pre) and (best is None or len(pre) > len(best[0])):
                best = (pre, policy)
        return best[1] if best else None

    def rules_under(self, prefix: str) -> list[str]:
        """Policies of every rule whose name lies within ``prefix`` (for KeyWritePrefix)."""
        return [p for n, p in (*self.exact.items(), *self.prefix.items()) if n.startswith(prefix)]


@dataclass
class Token:
    """A secret with its rules; management tokens may do everything."""

    secret: str
    rules: dict[str, ResourceRules]
    management: bool = False
    accessor_id: str = ""

    def __post_init__(self) -> None:
        if not self.accessor_id:
            self.accessor_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "consul-results:" + self.secret))


def parse_rules(document: str | dict[str, Any]) -> dict[str, ResourceRules]:
    """Parse Consul's JSON rule form into per-resource rules."""
    try:
        data = json.loads(document) if isinstance(document, str) else document
    except json.JSONDecodeError as exc:
        raise AclRuleError(f"ACL rules are not valid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise AclRuleError('ACL rules must be a JSON object such as {"key_prefix": {...}}')
    rules = {res: ResourceRules() for res in _RESOURCES}
    for section, entries in data.items():
        resource, _, kind = section.partition("_")
        if (
            resource not in _RESOURCES
            or kind not in ("", "prefix")
            or not isinstance(entries, dict)
        ):
            raise AclRuleError(f"unsupported ACL rule section {section!r}")
        target = rules[resource].prefix if kind else rules[resource].exact
        for name, value in entries.items():
            policy = value.get("policy") if isinstance(value, dict) else value
            if policy not in _POLICIES:
                raise AclRuleError(f"rule {section}.{name!r}: policy must be one of {_POLICIES}")
            target[name] = policy
    return rules


class Authorizer:
    """Answers "may this request do X" for one resolved token and the default policy."""

    def __init__(self, token: Token | None, default_policy: str, node: str) -> None:
        self.token = token
        self.default_allows = default_policy == "allow"
        self.node = node

    def _allowed(self, resource: str, name: str, access: str) -> bool:
        if self.token is not None and self.token.management:
            return True
        rules = self.token.rules[resource] if self.token is not None else None
        policy = rules.policy_for(name) if rules is not None else None
        if policy is None:
            return self.default_allows
        return access in _GRANTS[policy]

    def denial(self, permission: str, name: str) -> PermissionDenied:
        """Build the exception with Consul's (1.12+) wording for a denied permission."""
        if self.token is None:
            return PermissionDenied(
                f"Permission denied: anonymous token lacks permission '{permission}' on "
                f'"{name}". The anonymous token is used implicitly when a request does not '
                "specify a token."
            )
        return PermissionDenied(
            f"Permission denied: token with AccessorID '{self.token.accessor_id}' lacks "
            f"permission '{permission}' on \"{name}\""
        )

    def key_read(self, key: str) -> bool:
        return self._allowed("key", key, "read")

    def key_write(self, key: str) -> bool:
        return self._allowed("key", key, "write")

    def key_write_prefix(self, prefix: str) -> bool:
        """Consul's KeyWritePrefix: the covering rule and every rule under the prefix must grant
        write; with no covering rule and nothing under the prefix, the default policy decides."""
        if self.token is not None and self.token.management:
            return True
        rules = self.token.rules["key"] if self.token is not None else ResourceRules()
        if any("write" not in _GRANTS[p] for p in rules.rules_under(prefix)):
            return False
        return self._allowed("key", prefix, "write")

    def session_read(self, node: str) -> bool:
        return self._allowed("session", node, "read")

    def session_write(self, node: str) -> bool:
        return self._allowed("session", node, "write")

    def agent_read(self, node: str) -> bool:
        return self._allowed("agent", node, "read")

    def require(self, allowed: bool, permission: str, name: str) -> None:
        """Raise Consul's 403 denial unless ``allowed``."""
        if not allowed:
            raise self.denial(permission, name)


class AclConfig:
    """The server's ACL settings: enabled or not, default policy, and the known tokens."""

    def __init__(
        self,
        enabled: bool = False,
        default_policy: str = "allow",
        management_token: str | None = None,
        tokens: dict[str, str | dict[str, Any]] | None = None,
        default_token: str | None = None,
    ) -> None:
        if default_policy not in ("allow", "deny"):
            raise AclRuleError("ACL default policy must be 'allow' or 'deny'")
        self.enabled = enabled
        self.default_policy = default_policy if enabled else "allow"
        self.default_token = default_token
        self.tokens: dict[str, Token] = {}
        if management_token:
            self.tokens[management_token] = Token(management_token, parse_rules({}), True)
        for secret, rules in (tokens or {}).items():
            self.tokens[secret] = Token(secret, parse_rules(rules))

    def authorizer(self, secret: str | None, node: str) -> Authorizer:
        """Resolve a request's secret (already picked from query/header/bearer) to an authorizer."""
        if not self.enabled:
            return Authorizer(Token("", parse_rules({}), management=True), "allow", node)
        secret = secret or self.default_token
        if not secret or secret == "anonymous":
            return Authorizer(None, self.default_policy, node)
        token = self.tokens.get(secret)
        if token is None:
            raise AclNotFound("ACL not found")
        return Authorizer(token, self.default_policy, node)
