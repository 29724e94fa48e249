"""The Typer app class every ``consul-results`` command group is built from: Typer's own, with
plain help that leaves out Typer's type labels (``<bool>``, ``<list[str]>``), and values coerced
without pydantic where no coercion is needed.

A flag takes no value, and every other option and argument already names what it takes
(``SECONDS``, ``ID...``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args, get_origin

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

if TYPE_CHECKING:
    from typer.models import CommandFunctionType

# ASCII digits only (Typer refuses fullwidth or Arabic-Indic ones), and ints short enough
# for int() to take (it refuses over 4,300 digits)
_NUMBER = {
    int: re.compile(r"[+-]?[0-9]{1,100}"),
    float: re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?"),
}
# values that are already what they should be (a float option's default of 30 becomes 30.0)
_ALREADY = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


class _PlainValues:
    """A parameter's coercion that answers plain values itself and hands the rest to Typer's.

    Typer (0.29 and later) coerces every value through a pydantic ``TypeAdapter`` built on first
    use; importing pydantic for that is a fifth of a command's start-up. A parameter left out,
    a string, a flag or a plain decimal number needs none of it. Anything else (a path, a malformed
    number whose error Typer words) goes to Typer's own coercion, so the results are Typer's.
    """

    def __init__(self, leaf: type | None, typers_own: Callable[[], Any]) -> None:
        self._leaf = leaf
        self._typers_own = typers_own

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        many = param.multiple or param.nargs == -1
        if value is None:
            return () if many else None
        leaf = self._leaf
        if leaf is not None:
            if many and isinstance(value, (list, tuple)) and all(_is(leaf, v) for v in value):
                return [leaf(item) for item in value]
            if not many and _is(leaf, value):
                return leaf(value)
        return self._typers_own().coerce(value, param=param, ctx=ctx)


def _is(leaf: type, value: Any) -> bool:
    """Whether ``value`` is plainly a ``leaf``: one already, or a decimal number's text."""
    if type(value) in _ALREADY[leaf]:
        return True
    number = _NUMBER.get(leaf)
    return isinstance(value, str) and number is not None and number.fullmatch(value) is not None


def _plain_leaf(descriptor: Any) -> type | None:
    """``str``, ``int``, ``float`` or ``bool`` when the parameter is one of them (or a list of
    them) with no parser, range or choices; else None."""
    info = descriptor.parameter_info
    if info.parser is not None or info.min is not None or info.max is not None:
        return None
    annotation = descriptor.annotation
    if get_origin(annotation) is list:
        (annotation,) = get_args(annotation)
    return annotation if annotation in _ALREADY and not descriptor.is_choice else None


def _prepared(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # Typer shows the metavar, when one is set, instead of <bool>
        elif isinstance(param, TyperArgument) and param.metavar:
            # an instance attribute on purpose: only this parameter's type label goes
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        descriptor = getattr(param, "type_descriptor", None)
        typers_own = getattr(param, "get_runtime_param", None)  # (another Typer: left alone)
        if descriptor and typers_own and "get_runtime_param" not in vars(param):  # once
            plain = _PlainValues(_plain_leaf(descriptor), typers_own)
            param.get_runtime_param = lambda plain=plain: plain
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _prepared(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _prepared(super().get_params(ctx))


class App(typer.Typer):
    """``typer.Typer`` whose groups and commands print plain help without type labels. Plain,
    like git's or consul's: Typer's rich help imports rich's markdown renderer and halves the
    speed of ``--help`` (0.19 s against 0.09 s here); rich stays for tables and ``watch``."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rich_markup_mode", None)
        super().__init__(cls=_Group, **kwargs)

    def command(
        self, *args: Any, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)
