"""The one list of tasks: ``register_task`` adds one (the built-ins use it too).

The built-in tasks register themselves when their modules are imported; the registry imports
them by name the first time it is asked, so that the runtime, which imports this module, holds
no import of the modules behind a task (``surety_serving.judge``, ``surety_serving.uncertainty``).
"""

from __future__ import annotations

import importlib
import re
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field, TypeAdapter

if TYPE_CHECKING:
    from surety_serving.tasks.base import Endpoint, Task

#: Modules of the tasks that ship with Surety; each calls ``register_task`` on import.
BUILTIN = ("surety_serving.tasks.classifier", "surety_serving.tasks.judge")
#: An endpoint's name is the last segment of its path.
ENDPOINT_NAME = re.compile(r"[a-z][a-z0-9_-]*")
#: Endpoint names no task may take: OIP's own.
RESERVED = frozenset({"infer", "ready", "versions"})

_tasks: dict[str, Task] = {}
_builtins_loaded = False


def register_task(task: Task) -> Task:
    """Add ``task``; ValueError if its name or one of its endpoints clashes with another
    task's (an endpoint name may be shared only with the same definition). Returns it."""
    _load_builtins()
    return _register(task)


def unregister_task(name: str) -> None:
    """Remove a task (tests that register their own)."""
    _tasks.pop(name, None)
    config_adapter.cache_clear()


def get_task(name: str) -> Task:
    """The task of this ``task:`` value; KeyError if none is registered."""
    _load_builtins()
    return _tasks[name]


def tasks() -> tuple[Task, ...]:
    """Every registered task: the built-ins in ``BUILTIN``'s order (whichever module was
    imported first), then the others in registration order."""
    _load_builtins()
    return tuple(sorted(_tasks.values(), key=_rank))


def endpoints() -> dict[str, Endpoint]:
    """Every task endpoint by name, in registration order."""
    found: dict[str, Endpoint] = {}
    for task in tasks():
        for endpoint in task.endpoints:
            found.setdefault(endpoint.name, endpoint)
    return found


def serving(endpoint: str) -> list[str]:
    """The names of the tasks that serve ``endpoint``."""
    return [task.name for task in tasks() if endpoint in task.serves()]


@cache
def config_adapter() -> TypeAdapter[Any]:
    """Validates a config.yaml into its task's config class: a union discriminated on
    ``task``, rebuilt when the registry changes."""
    classes = tuple(task.config for task in tasks())
    if len(classes) == 1:
        return TypeAdapter(classes[0])
    union: Any = Annotated[Union[classes], Field(discriminator="task")]  # noqa: UP007
    return TypeAdapter(union)


def _register(task: Task) -> Task:
    existing = _tasks.get(task.name)
    if existing is not None and type(existing) is not type(task):
        raise ValueError(f"task '{task.name}' is registered already")
    for endpoint in task.endpoints:
        if not ENDPOINT_NAME.fullmatch(endpoint.name):
            raise ValueError(
                f"task '{task.name}': endpoint '{endpoint.name}' is not a path segment"
            )
        if endpoint.name in RESERVED:
            raise ValueError(f"task '{task.name}': endpoint '{endpoint.name}' is reserved")
        for other in _tasks.values():
            for theirs in other.endpoints:
                if other.name != task.name and theirs.name == endpoint.name and theirs != endpoint:
                    raise ValueError(
                        f"task '{task.name}': endpoint '{endpoint.name}' differs from task "
                        f"'{other.name}''s"
                    )
    _tasks[task.name] = task
    config_adapter.cache_clear()
    return task


def _rank(task: Task) -> int:
    module = type(task).__module__
    return BUILTIN.index(module) if module in BUILTIN else len(BUILTIN)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
