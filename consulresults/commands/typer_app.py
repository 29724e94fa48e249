"""The Typer app class every ``consul-results`` command group is built from: Typer's own, with
plain help that leaves out Typer's type labels (``<bool>``, ``<list[str]>``), and values coerced
without pydantic where no coercion is needed.

A flag takes no value, and every other option and argument already names what it takes
(``SECONDS``, ``ID...``).

Both reach into Typer's private internals (the fast path): each parameter's
``get_runtime_param`` and an argument's ``display_type_rich`` are replaced, and its
``type_descriptor`` (``annotation``, ``parameter_info``, ``is_choice``) is read. It halves a
command's start-up (``get ID`` 0.107 s against 0.202 s), so it runs only where it was tested:
:func:`fast_path` allows it when the installed Typer is within ``TESTED_TYPER`` (0.29.x today,
the range the matrix in ``noxfile.py`` runs) and every internal it touches is there with the
shape it expects. Anywhere else, on a newer Typer or one that renamed an internal, nothing is
patched: Typer's own coercion and help (with its type labels), slower, never wrong.

``CONSUL_RESULTS_TYPER_FALLBACK=1`` in the environment forces that plain-Typer path (any value
but empty or ``0``): for the tests, and for anyone a Typer change catches out.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args, get_origin

import typer
import typer.core
from typer.core import TyperCommand, TyperGroup

if TYPE_CHECKING:
    from typer.models import CommandFunctionType

# the Typer releases (major, minor; every patch release of them) the fast path was tested on, by
# the matrix's lowest and newest sessions (noxfile.py); pyproject.toml's comment says the same
TESTED_TYPER = ((0, 29), (0, 29))
FALLBACK_ENV = "CONSUL_RESULTS_TYPER_FALLBACK"
_COERCE = ("value", "param", "ctx")  # RuntimeParam.coerce's parameters, which _PlainValues takes


def fast_path() -> bool:
    """Whether the fast path may patch Typer's parameters in this process: not forced off by
    ``CONSUL_RESULTS_TYPER_FALLBACK``, a tested Typer, and every internal it needs present.

    Checked for every command line (a few attribute look-ups; nothing is imported)."""
    if os.environ.get(FALLBACK_ENV, "") not in ("", "0"):
        return False
    return typer_tested(getattr(typer, "__version__", "")) and typer_internals_present()


def typer_tested(version: str) -> bool:
    """Whether a Typer version (``typer.__version__``) is within ``TESTED_TYPER``."""
    match = re.match(r"(\d+)\.(\d+)(\.\d+)?$", version)  # a pre-release is not a tested one
    if match is None:
        return False
    lowest, newest = TESTED_TYPER
    return lowest <= (int(match[1]), int(match[2])) <= newest


def typer_internals_present() -> bool:
    """Whether every Typer internal the fast path touches is there, with the expected shape."""
    coercion = sys.modules.get("typer._coercion")  # imported by typer.core where it exists
    models = sys.modules.get("typer.models")
    parameters = [getattr(typer.core, name, None) for name in ("TyperArgument", "TyperOption")]
    descriptor = getattr(coercion, "TypeDescriptor", None)
    info = getattr(models, "ParameterInfo", None)
    return (
        all(
            isinstance(cls, type)
            and _takes(getattr(cls, "get_runtime_param", None), ())
            and _takes(getattr(cls, "display_type_rich", None), ("ctx",))
            and "type_descriptor" in _parameters(getattr(cls, "__init__", None))
            for cls in parameters
        )
        and _takes(getattr(getattr(coercion, "RuntimeParam", None), "coerce", None), _COERCE)
        and isinstance(getattr(descriptor, "is_choice", None), property)
        and {"annotation", "parameter_info"} <= set(getattr(descriptor, "__dataclass_fields__", ()))
        and {"parser", "min", "max"} <= set(_parameters(getattr(info, "__init__", None)))
    )


def _parameters(function: Any) -> tuple[str, ...]:
    """A plain function's parameter names, ``self`` included; () for anything else."""
    code = getattr(function, "__code__", None)
    if code is None:
        return ()
    names: tuple[str, ...] = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    return names


def _takes(function: Any, names: tuple[str, ...]) -> bool:
    """Whether ``function`` is a method taking ``self`` and exactly these parameters."""
    return callable(function) and _parameters(function)[1:] == names


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
    """The fast path on a command's parameters, where :func:`fast_path` allows it; else
    Typer's parameters as they are."""
    if not fast_path():
        return params
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # Typer shows the metavar, when one is set, instead of <bool>
        elif isinstance(param, typer.core.TyperArgument) and param.metavar:
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
    """``typer.Typer`` whose groups and commands print plain help, without type labels where
    :func:`fast_path` allows. Plain, like git's or consul's: Typer's rich help imports rich's
    markdown renderer and halves the speed of ``--help`` (0.19 s against 0.09 s here); rich stays
    for tables and ``watch``. The command and group classes are Typer's public ones
    (``TyperCommand``, ``TyperGroup``), whose ``get_params`` hands the parameters to the fast
    path or, outside it, unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rich_markup_mode", None)
        super().__init__(cls=_Group, **kwargs)

    def command(
        self, *args: Any, **kwargs: Any
    ) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)
