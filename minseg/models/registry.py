"""Learners registered by name with their defaults, source paper, task and input spec.

``build_model(name, num_classes, in_channels=3, **options)`` builds one;
``list_models()`` lists them (``minseg models`` prints the table). What a learner
takes (channels, a fixed class count, the smallest input) is its entry's
``input_spec``, so nothing outside ``minseg.models`` needs to name a model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from minseg.config.base import bool_for_number
from minseg.errors import InputError
from minseg.enums import Task


@dataclass(frozen=True)
class InputSpec:
    """What a registered learner takes as input.

    ``channels``: the in_channels to build it with when the caller does not know
    better (e.g. listing parameter counts); MFAF takes 10 evidence channels.
    ``num_classes``: a class count its task fixes (2 for the binary MFAF
    prospectivity classifier), or None for any.
    ``min_size``: the smallest input height/width in pixels it accepts; the model
    refuses smaller inputs with a ValueError naming the minimum.
    """

    channels: int = 3
    num_classes: int | None = None
    min_size: int = 1

    def __post_init__(self):
        if self.channels < 1:
            raise ValueError(f"InputSpec.channels must be >= 1, got {self.channels}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"InputSpec.num_classes must be >= 1 or None, got {self.num_classes}")
        if self.min_size < 1:
            raise ValueError(f"InputSpec.min_size must be >= 1, got {self.min_size}")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., Any]
    task: Task
    paper: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    input_spec: InputSpec = field(default_factory=InputSpec)

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

    def checked_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` as the builder's annotations read them (``width: float``, ``stn: bool``: ``"false"`` is
        False, ``"x"`` no width); options without an annotation pass as given.

        Raises:
            InputError: a value of the wrong type, naming the model and the option."""
        from typing import get_type_hints

        from pydantic import TypeAdapter, ValidationError

        target = self.builder.__init__ if isinstance(self.builder, type) else self.builder
        try:
            hints = get_type_hints(target)
        except (NameError, TypeError):  # an annotation that does not resolve: nothing to check against
            return dict(options)
        checked = {}
        for key, value in options.items():
            if key not in hints:
                checked[key] = value
                continue
            if bool_for_number(hints[key], value):  # pydantic would read true as 1: a full-width model
                raise InputError(f"model {self.name!r} option {key}: a number is needed, not true / false "
                                 f"(got {value!r})")
            try:
                checked[key] = TypeAdapter(hints[key]).validate_python(value)
            except ValidationError as exc:
                problem = exc.errors()[0]["msg"]
                raise InputError(f"model {self.name!r} option {key}: {problem} (got {value!r})") from None
        return checked


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, *, task: Task, paper: str, description: str, input_spec: InputSpec | None = None, **defaults
):
    """Decorator registering a model class or builder function under ``name``.

    ``input_spec`` (default ``InputSpec()``) says what the learner takes; a model
    class gets its ``min_size`` from it, so ``MinsegModel.check_input`` enforces it.
    """
    input_spec = input_spec or InputSpec()

    def decorate(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        if isinstance(builder, type) and hasattr(builder, "min_size"):
            builder.min_size = input_spec.min_size  # the spec is the one place the minimum is written
        _REGISTRY[name] = ModelEntry(name, builder, task, paper, description, defaults, input_spec)
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
        raise InputError(f"unknown model {name!r}; registered models: {', '.join(sorted(_REGISTRY))}") from None


def build_model(name: str, num_classes: int, in_channels: int = 3, **options):
    """Build a registered learner. Unknown options fail naming the valid ones."""
    entry = get_entry(name)
    accepted = entry.options()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise InputError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; its options are: {', '.join(sorted(accepted))}"
        )
    return entry.builder(num_classes=num_classes, in_channels=in_channels,
                         **entry.checked_options({**entry.defaults, **options}))
