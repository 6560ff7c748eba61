"""Learners registered by name with their defaults, source paper and task.

``build_model(name, num_classes, in_channels=3, **options)`` builds one;
``list_models()`` lists them (``minseg models`` prints the table).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from minseg.enums import Task


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    task: Task
    paper: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        """Every option the builder takes, with its default (registry defaults win)."""
        signature = inspect.signature(self.builder)
        values = {
            name: parameter.default
            for name, parameter in signature.parameters.items()
            if name not in ("num_classes", "in_channels") and parameter.default is not parameter.empty
        }
        values.update(self.defaults)
        return values


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, *, task: Task, paper: str, description: str, **defaults):
    """Decorator registering a model class or builder function under ``name``."""

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, task, paper, description, defaults)
        return builder

    return decorate


def _ensure_loaded() -> None:
    # Importing the architecture modules registers them.
    from minseg.models import (  # noqa: F401
        convnext,
        deeplab,
        mfaf,
        multiresunet,
        pspnet,
        res_unet,
        unet,
        upernet,
        vgg_unet,
    )


def list_models(task: Task | str | None = None) -> list[ModelEntry]:
    _ensure_loaded()
    entries = sorted(_REGISTRY.values(), key=lambda e: e.name)
    return [e for e in entries if task is None or e.task is Task(task)]


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def build_model(name: str, num_classes: int, in_channels: int = 3, **options):
    """Build a registered learner. Unknown options fail naming the valid ones."""
    entry = get_entry(name)
    accepted = entry.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(accepted))}"
        )
    return entry.builder(num_classes=num_classes, in_channels=in_channels, **{**entry.defaults, **options})
