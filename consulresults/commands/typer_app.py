"""The Typer app class every ``consul-results`` command group is built from: Typer's own, with
plain help that leaves out Typer's type labels (``<bool>``, ``<list[str]>``). A flag takes no
value, and every other option and argument already names what it takes (``SECONDS``,
``ID...``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

if TYPE_CHECKING:
    from typer.models import CommandFunctionType


def _without_type_labels(params: list[Any]) -> list[Any]:
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # Typer shows the metavar, when one is set, instead of <bool>
        elif isinstance(param, TyperArgument) and param.metavar:
            # an instance attribute on purpose: only this parameter's type label goes
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
    return params


class _Command(TyperCommand):
    def get_params(self, ctx: Any) -> list[Any]:
        return _without_type_labels(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _without_type_labels(super().get_params(ctx))


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
