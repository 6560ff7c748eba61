"""What each job refuses before any work, beyond the schema (``minseg config validate`` says all of it at once).

``job_problems(config)``: training's members (models, options, losses, class weights and checkpoint metrics,
built on the meta device as ``train`` checks them), the prospect section's members (as ``prospect`` checks them
before reading any input), the evaluation's rank key against ``data.classes`` (as ``evaluate``), or against the
synthetic minerals of a demo's config (a ``synth`` section, no classes listed; as ``demo``).
``invalid_config_problems(values)``: the same for a config the schema refused (``ConfigError.values``), of every
section and member, each with the values the schema refuses left out: a misspelt key, a bad default or one member's
bad value no longer hides the rest.
"""

from __future__ import annotations

from typing import Any, Mapping

from pydantic import TypeAdapter, ValidationError

from minseg.config.base import JobProblem, leave_out_refused
from minseg.config.schema import MinsegConfig


def job_problems(config: MinsegConfig, warn: bool = True,
                 configured: Mapping[str, int] | None = None) -> list[JobProblem]:
    """Every problem, each naming its key (and members); [] when there is none. ``warn``: log a local pretrained
    weights file not found here. ``configured``: how many members the config lists per section (``training``,
    ``prospect``) when ``config`` holds only those that validated (no problem is then said of "all" of them)."""
    configured = configured or {}
    problems: list[JobProblem] = []
    if config.training is not None:
        from minseg.train.ensemble import check_members_without_data

        problems += check_members_without_data(config, warn=warn, configured=configured.get("training"))
    if config.prospect is not None:
        from minseg.geo.prospect import member_problems

        problems += member_problems(config.prospect, configured=configured.get("prospect"))
    if config.evaluation is not None and config.data is not None and config.data.classes is not None:
        from minseg.ensemble.evaluate import rank_key_problem

        problems += [problem] if (problem := rank_key_problem(config)) else []
    elif config.evaluation is not None and "synth" in config.model_fields_set:
        # no classes listed, and a synth section: a demo's config, whose members train on the synthetic minerals
        from minseg.demo import demo_problems

        problems += demo_problems(config)
    return problems


def invalid_config_problems(values: Mapping[str, Any], warn: bool = True) -> list[JobProblem]:
    """``job_problems`` of the parts of a config the schema refused: each top-level section that validates; the data
    and evaluation sections with their refused values left out (``config.base.leave_out_refused``); of a training
    section that does not validate, each member (``training.defaults`` merged in, refused values left out); of a
    prospect section, its members and windows. Plus a repeated member name, which the schema says only once every
    member validates."""
    from minseg.geo.config import ProspectSettings, WindowSettings

    sections: dict[str, Any] = {}
    configured: dict[str, int] = {}
    problems: list[JobProblem] = []
    for name, field in MinsegConfig.model_fields.items():
        value = values.get(name)
        if value is None and name not in values:
            continue
        try:
            sections[name] = TypeAdapter(field.annotation).validate_python(value)
            continue
        except ValidationError:
            pass
        if name in ("data", "evaluation") and isinstance(value, Mapping):
            section, left_out = leave_out_refused(_model_of(field.annotation), value)
            # without its refused class list, a data section would bring "data.classes is required" to members
            if section is not None and not any(path[:1] == ("classes",) for path in left_out):
                sections[name] = section
        elif name == "training" and isinstance(value, Mapping):
            training, said, configured[name] = _members_alone(value, "training")
            problems += said
            if training is not None:
                sections[name] = training
        elif name not in ("data", "evaluation", "training", "prospect"):
            # given, if refused: its defaults stand in (a refused synth section still means the demo's classes)
            sections[name] = _model_of(field.annotation).model_construct()
        elif name == "prospect" and isinstance(value, Mapping) and isinstance(value.get("training"), Mapping):
            training, said, configured[name] = _members_alone(value["training"], "prospect.training")
            problems += said
            if training is not None:
                windows = leave_out_refused(WindowSettings, value.get("windows") or {})[0] or WindowSettings()
                sections[name] = ProspectSettings.model_construct(training=training, windows=windows)
    if not sections:
        return problems
    return problems + job_problems(MinsegConfig.model_construct(**sections), warn=warn, configured=configured)


def _model_of(annotation):
    """The config model of a section's annotation (``DataSettings | None`` -> ``DataSettings``)."""
    from typing import get_args

    return next(arg for arg in (*get_args(annotation), annotation) if isinstance(arg, type) and hasattr(
        arg, "model_validate"))


def _members_alone(training: Mapping[str, Any], key: str):
    """(a training section of the members that validate on their own, or None; the repeated-name problem; how many
    members the section lists)."""
    from minseg.train.config import (MemberSettings, TrainingSettings, merge_member_defaults,
                                     repeated_member_names)

    listed = training.get("members")
    if not isinstance(listed, list):
        return None, [], 0
    repeated = repeated_member_names([m["name"] for m in listed
                                      if isinstance(m, Mapping) and isinstance(m.get("name"), str)])
    merged = merge_member_defaults(dict(training))["members"]
    members = [m for m in (leave_out_refused(MemberSettings, member)[0] for member in merged
                           if isinstance(member, Mapping)) if m is not None]
    section = TrainingSettings.model_construct(members=members) if members else None
    return section, [JobProblem(f"{key}.members", repeated)] if repeated else [], len(listed)
