"""Load a user's hook from ``[[hooks.python]] object = "package.module:Class"``.

The part after the colon is an attribute path in the module (``Class`` or ``attr.sub``).
A class (or any function) found there is called with the entry's ``options`` as keyword
arguments and the result is the hook; any other object is used as the hook itself and then
takes no options. The hook must have at least one of the event methods (api.EVENTS).

Modules are imported once per process, as Python does: a reload that changes ``options``
makes a new instance, but changed code needs a restart.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING, Any

from ..api import EVENTS
from ..errors import HookLoadError

if TYPE_CHECKING:
    from ...config.models import PythonHook

__all__ = ["load_python_hook"]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _has_method(hook: object, name: str) -> bool:
    try:
        return callable(getattr(hook, name, None))
    except Exception:
        return False


def load_python_hook(config: PythonHook) -> object:
    """Import, instantiate and check one Python hook; HookLoadError says what went wrong."""
    spec = config.object
    where = f"[[hooks.python]] object {spec!r}"
    module_name, colon, attr_path = spec.partition(":")
    module_name, attr_path = module_name.strip(), attr_path.strip()
    if not colon or not module_name or not attr_path:
        raise HookLoadError(f'{where}: must be "package.module:Class"')
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import runs the user's code: anything may come out
        raise HookLoadError(f"{where}: cannot import {module_name}: {_one_line(exc)}") from exc

    target: Any = module
    walked = module_name
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise HookLoadError(f"{where}: {walked} has no attribute {part!r}") from None
        except Exception as exc:  # a property or module __getattr__ of the user's
            raise HookLoadError(f"{where}: {walked}.{part} raised {_one_line(exc)}") from exc
        walked = f"{walked}.{part}"

    if inspect.isclass(target) or inspect.isroutine(target):
        try:
            hook = target(**config.options)
        except Exception as exc:
            raise HookLoadError(f"{where}: {attr_path}(**options) raised {_one_line(exc)}") from exc
    elif config.options:
        raise HookLoadError(
            f"{where}: {attr_path} is a {type(target).__name__}, not a class, so it takes no options"
        )
    else:
        hook = target

    if not any(_has_method(hook, event) for event in EVENTS):
        raise HookLoadError(
            f"{where}: {type(hook).__name__} object has none of the hook methods {', '.join(EVENTS)}"
        )
    return hook
