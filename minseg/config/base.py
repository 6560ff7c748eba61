"""Loading YAML configs into typed, validated objects.

Every section is a :class:`StrictModel`: unknown keys, wrong types and missing required
values fail with ``<file>: <key.path>: <reason>``. Values can be overridden from the
environment (``MINSEG__SECTION__KEY=value``, parsed as YAML) and from the command line
(``--set section.key=value``); credentials are refused in files outright.
"""

from __future__ import annotations

import functools
import os
import re
import types
from collections import abc
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from minseg.errors import InputError


ENV_PREFIX = "MINSEG__"
# Keys that can only hold a secret; they must come from the environment, never a file.
_CREDENTIAL_KEY = re.compile(
    r"(secret|password|passwd|session_token|access_key|private_key|api_key)", re.IGNORECASE
)

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: no unknown keys, no silent coercion of garbage, no infinite or NaN
    numbers (``gt=0`` alone lets ``inf`` through)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_enum_values=False, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_true_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name and bool_for_number(cls.model_fields[info.field_name].annotation, value):
            raise ValueError("a number is needed, not true / false")
        return value


def bool_for_number(annotation: Any, value: Any) -> bool:
    """Whether ``value`` holds a YAML ``true`` / ``false`` where ``annotation`` wants a number (pydantic reads them
    as 1 and 0: ``epochs: true`` would train one epoch, ``width: yes`` a full-width model): at the top, in a list or
    tuple, or as a mapping's value. A type that takes a bool there (``bool | int``, ``Any``) takes it."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return bool_for_number(get_args(annotation)[0], value)
    if isinstance(value, bool):
        choices = get_args(annotation) if origin in (Union, types.UnionType) else (annotation,)
        if any(c is bool or c is Any for c in choices):
            return False
        numbers = [c for c in choices
                   if c in (int, float) or (get_origin(c) is Literal and any(type(a) in (int, float)
                                                                            for a in get_args(c)))]
        return bool(numbers) or any(bool_for_number(c, value) for c in choices if get_origin(c) is Annotated)
    if origin in (Union, types.UnionType):
        return any(bool_for_number(c, value) for c in get_args(annotation) if c is not type(None))
    collection = isinstance(origin, type) and not issubclass(origin, (str, bytes))
    if isinstance(value, (list, tuple)) and collection and issubclass(origin, (abc.Sequence, abc.Set)):
        args = [a for a in get_args(annotation) if a is not Ellipsis]
        if origin is tuple and len(args) == len(value) and get_args(annotation)[-1] is not Ellipsis:
            return any(bool_for_number(a, v) for a, v in zip(args, value))
        return bool(args) and any(bool_for_number(args[0], v) for v in value)
    if isinstance(value, Mapping) and collection and issubclass(origin, abc.Mapping) \
            and len(get_args(annotation)) == 2:
        return any(bool_for_number(get_args(annotation)[1], v) for v in value.values())
    return False


def _multiple_of_16(value: int) -> int:
    if value % 16:
        raise ValueError("TIFF tiles must be a multiple of 16 pixels")
    return value


PositiveInt = Annotated[int, Field(gt=0)]
"""A count or size of at least 1."""

SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
"""A random seed: 0 to 2**32 - 1, what every generator minseg seeds takes (NumPy's ``SeedSequence`` and
``RandomState`` take no negative seed, ``RandomState`` none above 2**32 - 1)."""

TiffTileSize = Annotated[int, Field(ge=16), AfterValidator(_multiple_of_16)]
"""A TIFF tile side: the format wants multiples of 16."""

#: a Name's most characters: it becomes a file or folder name, inside others minseg makes longer (``manifest-<name>
#: .json``, a hidden scratch copy), and file systems take 255 bytes
MAX_NAME_LENGTH = 100
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


#: names Windows keeps for devices, with any extension (``CON.tif``): no file or folder there is named so
WINDOWS_DEVICE_NAMES = frozenset(["CON", "PRN", "AUX", "NUL", *(f"{port}{n}" for port in ("COM", "LPT")
                                                                 for n in "123456789")])


def not_portable(name: str) -> str | None:
    """Why a file or folder ``name`` made on Linux or S3 could not be copied to Windows as it is, or None: a device
    name (``WINDOWS_DEVICE_NAMES``, with or without an extension), or a trailing dot or space (Windows drops it)."""
    if name.split(".", 1)[0].rstrip(" ").upper() in WINDOWS_DEVICE_NAMES:
        return f"{name.split('.', 1)[0]} is a device name on Windows (no file or folder there can be named so)"
    if name.endswith((".", " ")):
        return "it ends with a dot or a space, which Windows drops from file and folder names"
    return None


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a :data:`Name` (a file or folder name minseg makes), or None."""
    if not _NAME.fullmatch(value):
        return ("a name of ASCII letters, digits, '.', '_' and '-', starting with a letter or digit (it names files "
                "and folders)")
    if len(value) > MAX_NAME_LENGTH:
        return f"at most {MAX_NAME_LENGTH} characters, got {len(value)} (it names files and folders)"
    if problem := not_portable(value):  # outputs are copied to a geologist's Windows laptop
        return f"not a name for files and folders: {problem}"
    return None


def _file_name(value: str) -> str:
    if problem := name_problem(value):
        raise ValueError(problem)
    return value


Name = Annotated[str, AfterValidator(_file_name)]
"""A name that becomes a file or folder name (a run, a member, an evaluation, a channel, a map layer): ASCII
letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit, at most ``MAX_NAME_LENGTH`` characters."""


class ConfigError(InputError):
    """A config file (or override) that does not validate. ``problems`` holds (key, reason)."""

    def __init__(self, source: str, problems: list[tuple[str, str]], sources: list[str] | None = None,
                 values: Mapping[str, Any] | None = None):
        self.source = source
        self.problems = problems
        wheres = sources or [source] * len(problems)  # per problem, where the value came from
        self.sources = wheres
        self.values = values  # the values that did not validate (overrides applied), for checks beyond the schema
        # a --set that names the key itself is not followed by the key again
        lines = [f"{where}: {key}: {reason}" if key and where != f"--set {key}" else f"{where}: {reason}"
                 for where, (key, reason) in zip(wheres, problems)]
        super().__init__("invalid configuration\n  " + "\n  ".join(lines))


@dataclass(frozen=True)
class JobProblem:
    """What a job refuses in a config the schema takes, before any data is read (``minseg.job_checks``; said by
    ``minseg config validate`` at once). ``key``: the config key it is about (``evaluation.rank_key``; a members
    list, ``training.members``; "" when ``reason`` names it); ``members``: the members of that list it is about, by
    name; ``every``: how many they are when they are every configured member (a value from ``training.defaults``:
    said once, as ``training.members (all 6)``)."""

    key: str
    reason: str
    members: tuple[str, ...] = ()
    every: int = 0

    @property
    def where(self) -> str:
        """The key as said: ``training.members[a, b]``, ``training.members (all 6)``, ``evaluation.rank_key``."""
        if self.every:
            return f"{self.key} (all {self.every})"
        return f"{self.key}[{', '.join(self.members)}]" if self.members else self.key

    def facts(self) -> set[tuple[str, str, str]]:
        """(key, reason, member) for each member it is about ("" for none): what one config's problems share with
        another's when their members differ (``config validate`` blames each source for its own)."""
        return {(self.key, self.reason, member) for member in self.members or ("",)}

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" if self.key else self.reason


def key_path(loc: tuple[Any, ...]) -> str:
    """('training', 'members', 2, 'loss') -> 'training.members[2].loss'."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


_UNITS = {"um": "µm", "mm": "mm", "m": "m", "km": "km", "px": "pixels", "s": "s", "seconds": "s", "bytes": "bytes",
          "mib": "MiB", "gib": "GiB"}
_UNIT_SUFFIX = re.compile(rf"_({'|'.join(_UNITS)})$")  # a key's unit is its last part: pixel_size_um, cell_m
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


_USERINFO = re.compile(r"//[^/@\s'\"]+@")  # s3://KEY:SECRET@bucket: the credentials in a URI


def describe_error(error: dict[str, Any]) -> str:
    """One pydantic error (``ValidationError.errors()``) as a reason to print: no pydantic labels, the value given."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return _UNKNOWN_KEY
    if kind == "missing":
        return "required value is missing"
    got = error.get("input")
    reason = error["msg"].removeprefix("Value error, ")  # pydantic's label for a validator's ValueError
    unit = _UNIT_SUFFIX.search(str(error["loc"][-1])) if error.get("loc") else None
    if kind in _BOUND_ERRORS and unit:  # "less than 1000000" alone does not say 1 m was meant as µm
        reason += f" {_UNITS[unit.group(1)]}"
    if got is not None and not isinstance(got, (dict, list)):
        # a value pasted by mistake (a whole path, a file's text) is not printed whole; a URI's user:secret never
        shown = _USERINFO.sub("//***@", repr(got))
        reason += f" (got {shown[:60]}...{shown[-20:]})" if len(shown) > 100 else f" (got {shown})"
    elif got is None and (kind.endswith("_type") or kind in ("enum", "literal_error")):
        reason += " (got null: an empty value is null to YAML, `key:` in a file as `--set key=`)"
    if kind == "string_type" and isinstance(got, (int, float)) and not isinstance(got, bool):
        reason += ": YAML (and --set) read digits as a number; quote the text ('0815')"  # 0815 became 815
    return reason


def describe_errors(exc: ValidationError) -> str:
    """Every error of a ``ValidationError`` as ``key: reason`` (:func:`describe_error`), joined by "; "."""
    return "; ".join(f"{key_path(e['loc'])}: {describe_error(e)}" for e in exc.errors())


def _find_credential_keys(data: Any, loc: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    found = []
    if isinstance(data, Mapping):
        for key, value in data.items():
            if isinstance(key, str) and _CREDENTIAL_KEY.search(key):
                found.append(
                    (
                        key_path(loc + (key,)),
                        "credentials must not be stored in config files; set them in the "
                        "environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN "
                        "or AWS_PROFILE)",
                    )
                )
            found.extend(_find_credential_keys(value, loc + (key,)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(_find_credential_keys(value, loc + (index,)))
    return found


def _key_parts(dotted: str) -> list[tuple[str, bool]]:
    """``training.members[0].loss`` (as errors name keys) or ``training.members.0.loss`` -> its parts, each with
    whether it was written in brackets (an index, whatever the entries are named)."""
    found = re.findall(r"\[([^\]]*)\]|([^.\[\]]+)", dotted)
    return [(bracketed or plain, bool(bracketed)) for bracketed, plain in found if bracketed or plain]


def _set_path(data: dict[str, Any], dotted: str, value: Any, source: str, made: list[str] | None = None) -> str:
    """Set ``value`` at ``dotted`` in ``data``: sections by key (created when absent), list entries by index
    (``training.members[0].stages`` as validation errors name them, or ``training.members.0.stages``) or, in a list
    of named entries, by name (``training.members.unet-a.loss``). Returns the key as errors name it
    (``training.members[0].loss``); ``made`` gets the first part of it that ``data`` lacked (or held as null): the
    section the override made, with everything a validation says is missing in it. Raises ConfigError naming the
    key that cannot be followed."""
    parts = _key_parts(dotted)
    if not parts:
        raise ConfigError(source, [("", f"empty key in override {dotted!r}")])
    node: Any = data
    path: list[str | int] = []
    for depth, (part, bracketed) in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            step: str | int = _list_index(node, part, bracketed, key_path(tuple(path)), source)
        elif isinstance(node, dict):
            step = part
            if made is not None and not made and node.get(part) is None:
                made.append(key_path(tuple(path) + (part,)))
            if not last and node.get(part) is None and (parts[depth + 1][1] or _INDEX.fullmatch(parts[depth + 1][0])):
                raise ConfigError(source, [(key_path(tuple(path) + (part,)), "no list here to take an entry of (the "
                                            "configuration does not set it): set the whole list, e.g. "
                                            f"{key_path(tuple(path) + (part,))}='[...]'")])
            if not last and node.get(part) is None:  # absent, or null as `config show` writes unset sections
                node[part] = {}
        else:
            raise ConfigError(source, [(dotted, f"cannot set a key inside {key_path(tuple(path))!r}, which is not "
                                                "a section or a list")])
        path.append(step)
        if last:
            node[step] = value
        else:
            node = node[step]
    return key_path(tuple(path))


_INDEX = re.compile(r"-?[0-9]+")


def _list_index(entries: list, part: str, bracketed: bool, listed_at: str, source: str) -> int:
    """Which entry of the list at ``listed_at`` ``part`` names: an index from 0, or the ``name`` of one entry.
    In brackets a number is always an index and anything else a name (``members[unet.v2]``: a name holding dots);
    dotted, a number that is also another entry's name is refused as ambiguous."""
    where = f"{listed_at}[{part}]"
    names = [str(entry["name"]) for entry in entries if isinstance(entry, dict) and "name" in entry]
    named = [i for i, entry in enumerate(entries) if isinstance(entry, dict) and "name" in entry
             and str(entry["name"]) == part]
    if not named and source.startswith("environment "):
        # a variable's name is upper-cased and holds no '-': MINSEG__TRAINING__MEMBERS__UNET_B__SEED is unet-b's
        named = [i for i, entry in enumerate(entries) if isinstance(entry, dict) and "name" in entry
                 and _as_variable(str(entry["name"])) == _as_variable(part)]
    if _INDEX.fullmatch(part):
        index = int(part)
        if named and named != [index] and not bracketed:
            raise ConfigError(source, [(where, f"{part!r} is both an index and the name of entry {named[0]}: write "
                                               f"{listed_at}[{index}] for the entry at index {index}")])
        if not 0 <= index < len(entries):
            held = f"{len(entries)} (0 to {len(entries) - 1})" if entries else "none"
            raise ConfigError(source, [(where, f"no entry {index}: the list holds {held}")])
        return index
    if len(named) == 1:
        return named[0]
    listed = f"; entries named: {', '.join(names)}" if names else ""
    if any(name.startswith(part + ".") for name in names):
        listed += f" (a name holding dots goes in brackets: {listed_at}[<name>])"
    problem = "names several entries" if named else "is not an index (0, 1, ...) or the name of an entry"
    raise ConfigError(source, [(where, f"{part!r} {problem} of this list of {len(entries)}{listed}")])


def _as_variable(name: str) -> str:
    return name.lower().replace("-", "_")


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``MINSEG__STORAGE__ENDPOINT_URL=...`` -> ``{'storage.endpoint_url': '...'}``."""
    environ = os.environ if environ is None else environ
    return {
        name[len(ENV_PREFIX):].lower().replace("__", "."): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX)
    }


def validate_config(
    data: Mapping[str, Any] | None,
    model: type[M],
    source: str = "<config>",
    overrides: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> M:
    """Validate a mapping into ``model``; overrides are ``dotted.key -> YAML text``.

    Precedence, lowest first: ``defaults`` (values a command supplies, e.g. ``score --data``'s sources, used where
    the file has none), the file, environment variables, explicit overrides.
    """
    if data is None:
        data = {}
    if defaults:
        data = _under(defaults, data)
    if not isinstance(data, Mapping):
        raise ConfigError(source, [("", f"top level must be a mapping of sections, got {type(data).__name__}")])
    problems = _find_credential_keys(data)
    if problems:
        raise ConfigError(source, problems)
    merged: dict[str, Any] = _deep_copy(data)
    origins: dict[str, str] = {}  # dotted key -> where its value came from, when not from the file
    # values YAML cannot read: key as errors name it -> (where, why, the first part of the key the override made)
    unreadable: dict[str, tuple[str, str, str]] = {}
    typed: dict[str, str] = {}  # an unreadable value's key as given -> as errors name it
    for origin, values in (("environment", env_overrides(environ)), ("override", overrides or {})):
        for dotted, text in values.items():
            label = (f"--set {dotted}" if origin == "override" else
                     f"environment {ENV_PREFIX}{dotted.upper().replace('.', '__')}")
            if _CREDENTIAL_KEY.search(dotted):
                raise ConfigError(label, [("", "credentials are read from AWS_* variables (or AWS_PROFILE), not "
                                               "from config keys")])
            # a key under an unreadable value is not set (there is no mapping to set it in: the value is said);
            # one that sets an unreadable value's key again, or a section above it, wins over it (--set over
            # the environment)
            if any(dotted.startswith((bad + ".", bad + "[")) for bad in typed):
                continue
            for bad in [bad for bad in typed if _related(dotted, bad)]:
                unreadable.pop(typed.pop(bad), None)
            value, reason = _override_value(dotted, text)
            if reason:
                # set as typed, so that a misspelt key is said with it (every problem at once), not after a rerun
                made: list[str] = []
                key = _set_path(merged, dotted, text, label, made)
                unreadable[key], origins[key] = (label, reason, made[0] if made else key), label
                typed[dotted] = key
                continue
            if isinstance(value, (Mapping, list)) and "\n" not in text.strip() \
                    and not text.lstrip().startswith(("{", "[")):
                # on one line a mapping or list is written {..} / [..]: `iou:` or `- a` is the text typed
                value = text.strip()
            origins[_set_path(merged, dotted, value, label)] = label  # by the key errors name
    try:
        validated = model.model_validate(merged)
    except ValidationError as exc:
        # a member's value that came from its list's defaults is reported once, at the defaults key that set it
        problems = [(key_path(loc), reason) for loc, reason in _problems(exc, merged, model)]
        if unreadable:  # what the typed text of an unreadable value caused (its type, its section's checks, the
            # keys missing from a section only it made) is not said; a misspelt key is
            problems = [(key, reason) for key, reason in problems
                        if reason == _UNKNOWN_KEY or not any(_related(key, new) for *_, new in unreadable.values())]
        # blame the --set or variable that set a key, not the file
        wheres = [_origin(key, origins, source) for key, _ in problems]
    else:
        if not unreadable:
            return validated
        problems, wheres = [], []
    problems += [(key, reason) for key, (_, reason, _) in unreadable.items()]
    wheres += [where for where, *_ in unreadable.values()]
    raise ConfigError(source, problems, wheres, values=merged) from None


def _override_value(dotted: str, text: Any) -> tuple[Any, str]:
    """An override's YAML text (``--set KEY=TEXT``, ``MINSEG_…``) read: (value, "") or (None, why it cannot be)."""
    try:
        value = load_yaml(text) if isinstance(text, str) else text
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        hint = ""
        if text.strip()[:1] in _YAML_INDICATORS:  # `decimal=,`: a text YAML reads as syntax
            quoted = yaml.safe_dump(text.strip(), default_style="'", width=1 << 20).strip()
            hint = f"; quote a text that starts with punctuation: {dotted}=\"{quoted}\""
        return None, f"value {text!r} is not valid YAML ({problem}){hint}"
    except RecursionError:
        return None, f"value {_TOO_DEEP}"
    return (None, f"value {_TOO_DEEP}") if nests_too_deep(value) else (value, "")


def _related(key: str, other: str) -> bool:
    """Whether one key is the other or lies under it (``segment``, ``segment.block``; list entries ``a[0]``)."""
    return any(a == b or a.startswith((b + ".", b + "[")) for a, b in ((key, other), (other, key)))


def validate_section(model: type[M], data: Mapping[str, Any], section: str, source: str,
                     sources: Mapping[str, str] | None = None) -> M:
    """Validate one section (``section``: its key in the config, e.g. ``segment``) from values that came from
    ``source`` (a config file) or, per field, from ``sources`` (field -> where it came from, e.g.
    ``{"level": "--level"}``); errors are the :class:`ConfigError` a config file's are, blaming the flag.

    Raises:
        ConfigError: ``<source or flag>: <section.key>: <reason>`` per problem.
    """
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise section_error(exc, section, source, sources, model, data) from None


def section_error(exc: ValidationError, section: str, source: str, sources: Mapping[str, str] | None = None,
                  model: type[BaseModel] | None = None, data: Any = None) -> ConfigError:
    """A pydantic ``ValidationError`` of one section as a :class:`ConfigError` (``validate_section``). A model
    validator's error has no key; when its message starts with a field of ``model`` (``"block: ..."``), it is
    that field's. With the validated ``data`` and ``model``, keys are named as the user wrote them
    (:func:`_problems`)."""
    problems, wheres = [], []
    for loc, reason in (_problems(exc, data, model) if model is not None and data is not None
                        else [(tuple(e["loc"]), describe_error(e)) for e in exc.errors()]):
        if not loc and model is not None:
            name, sep, rest = reason.partition(": ")
            if sep and name in model.model_fields:
                loc, reason = (name,), rest
        problems.append((key_path(((section,) if section else ()) + loc), reason))
        wheres.append((sources or {}).get(loc[0], source) if loc else source)
    return ConfigError(source, problems, wheres)


def _problems(exc: ValidationError, data: Any, model: type[BaseModel]) -> list[tuple[tuple, str]]:
    """(loc, reason) per problem of ``exc``, raised validating ``data`` into ``model``, with keys as the user wrote
    them: a member's value from its list's defaults at the defaults key (:func:`_defaults_loc`), and without the
    labels pydantic adds for the branches of a union (``prospect.deposits.points.crs`` is ``prospect.deposits.crs``).
    The branches' complaints about one value become one problem (``cache``: "a valid boolean; or 'auto'")."""
    labels = _branch_labels(model)
    reasons: dict[tuple, list[str]] = {}
    errors = exc.errors()
    # a member validator's error (at the member, no key) whose message starts with the key it is about, the same for
    # every member of its list, all taking that key from the defaults: the defaults key's, said once (not once per
    # member); a member with its own reason (its own checkpoint_metric) keeps its index
    at_member = [(tuple(e["loc"])[:-1], describe_error(e)) for e in errors
                 if e["type"] == "value_error" and e["loc"] and isinstance(e["loc"][-1], int)]
    for error in errors:
        reason, raw = describe_error(error), tuple(error["loc"])
        named = re.match(r"(\w+)[: ]", reason) if (raw[:-1], reason) in at_member else None
        members = _child_at(data, raw[:-1])
        if named and isinstance(members, list) and at_member.count((raw[:-1], reason)) == len(members) \
                and _defaults_loc(data, raw + (named.group(1),)) != raw + (named.group(1),):
            raw += (named.group(1),)
        loc = _input_loc(data, _defaults_loc(data, raw), labels, error["type"] == "missing")
        if reason not in reasons.setdefault(loc, []):
            reasons[loc].append(reason)
    return [(loc, _either(said)) for loc, said in reasons.items()]


def _either(reasons: list[str]) -> str:
    """Several branches' reasons as one: "A (got 'x')", "B (got 'x')" -> "A; or B (got 'x')"."""
    if len(reasons) == 1:
        return reasons[0]
    got = re.search(r" \(got [^\n]*\)$", reasons[-1])
    tail = got.group(0) if got and all(reason.endswith(got.group(0)) for reason in reasons) else ""
    return "; or ".join(reason.removesuffix(tail) for reason in reasons) + tail


@functools.cache
def _branch_labels(model: type[BaseModel]) -> frozenset[str]:
    """What pydantic may put in an error's loc for a union branch of ``model``'s fields: the tags of tagged unions
    and the names of model classes (a value's own scalar branches are recognised by :func:`_input_loc`)."""
    found: set[str] = set()
    pending: list[Any] = [model.__pydantic_core_schema__]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if node.get("type") == "tagged-union":
                found.update(str(tag) for tag in node.get("choices", {}))
            if node.get("type") == "model" and isinstance(node.get("cls"), type):
                found.add(node["cls"].__name__)
            pending.extend(node.values())
        elif isinstance(node, (list, tuple)):
            pending.extend(node)
    return frozenset(found)


def _input_loc(data: Any, loc: tuple, labels: frozenset[str], missing: bool = False) -> tuple:
    """``loc`` without union-branch labels: a part the input does not hold that is one of ``labels``, or any part
    below a value that holds no keys (``cache.bool`` -> ``cache``), or, unless the error is a ``missing`` key, any
    part a mapping given in a value's place lacks (``cache: {x: 1}``: ``cache.bool`` -> ``cache``). A missing key
    and what follows it are kept."""
    kept: list[Any] = []
    node = data
    for n, part in enumerate(loc):
        if (isinstance(node, Mapping) and part in labels
                and (part not in node or (n + 1 < len(loc) and loc[n + 1] in node))):
            continue  # a tag, also when a branch holds a key of its name (``raster``)
        child = _child(node, part, _ABSENT)
        if child is not _ABSENT:
            kept.append(part)
            node = child
        elif not isinstance(node, (Mapping, list)):
            continue  # a branch label under a value that holds no keys
        elif isinstance(node, list) and not isinstance(part, int):
            continue  # a branch label under a list value ('list[float]')
        elif isinstance(node, Mapping) and not missing and n == len(loc) - 1:
            continue  # a scalar branch's label under a mapping given where a value belongs
        else:
            return tuple(kept) + loc[n:]
    return tuple(kept)


def leave_out_refused(model: type[M], value: Mapping[str, Any], rounds: int = 8) -> tuple[M | None, list[tuple]]:
    """``value`` validated as ``model`` with each value the schema refuses left out (its default taken), so that
    the rest of it can be checked past the schema (``minseg.job_checks``: a bad ``training.defaults`` value refuses
    every member, whose models were then never looked at): (the model, or None where a required value is refused
    or a check spans the whole model; the key paths left out). A refused value in a list leaves out the whole list
    (its other entries would shift); union branch labels are not keys (``cache.bool`` is ``cache``)."""
    data = _deep_copy(value)
    labels = _branch_labels(model)
    left_out: list[tuple] = []
    for _ in range(rounds):
        try:
            return model.model_validate(data), left_out
        except ValidationError as exc:
            paths = {_up_to_list(_input_loc(data, tuple(error["loc"]), labels, error["type"] == "missing"))
                     for error in exc.errors()}
            removed = [path for path in paths if path and _remove_key(data, path)]
            if not removed:
                return None, left_out
            left_out += removed
    return None, left_out


def _up_to_list(loc: tuple) -> tuple:
    """The key path of an error's value, up to the list that holds it."""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            return tuple(loc[:index])
    return tuple(loc)


def _remove_key(data: Any, path: tuple) -> bool:
    """Delete the key at ``path`` (mapping keys) from ``data``; False where the path leads to nothing there (a
    missing key, a check over the whole model)."""
    for part in path[:-1]:
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    if isinstance(data, dict) and path[-1] in data:
        del data[path[-1]]
        return True
    return False


def _defaults_loc(data: Mapping[str, Any], loc: tuple) -> tuple:
    """``loc`` of a validation error, or, when it is inside ``members[i]`` of a section with ``defaults`` (merged
    into every member before validation: ``training``, ``prospect.training``) and the member does not set the key
    itself but the defaults do, the loc of that defaults key: the error then names what the user wrote, once for
    all members, and the ``--set`` or variable that set it."""
    node: Any = data
    for n, part in enumerate(loc):
        if (part == "members" and isinstance(node, Mapping) and isinstance(node.get("defaults"), Mapping)
                and n + 1 < len(loc) and isinstance(loc[n + 1], int)):
            member, rest = _child(node.get("members"), loc[n + 1]), loc[n + 2:]
            from_defaults = rest and not _member_sets(member, rest) and _holds(node["defaults"], rest)
            if isinstance(member, Mapping) and from_defaults:
                return loc[:n] + ("defaults",) + rest
            return loc
        node = _child(node, part)
        if node is None:
            return loc
    return loc


_ABSENT = object()


def _child_at(node: Any, loc: tuple) -> Any:
    """The value at ``loc`` (keys and indices) in ``node``, None when there is none."""
    for part in loc:
        node = _child(node, part)
    return node


def _child(node: Any, part: Any, absent: Any = None) -> Any:
    """``node[part]`` of a mapping or a list (an index), ``absent`` when there is none."""
    if isinstance(node, Mapping):
        return node.get(part, absent)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return absent


def _member_sets(member: Mapping[str, Any], path: tuple) -> bool:
    """Whether a member's own mapping decides the value at ``path``: it sets the key, or a list or ``model_options``
    above it (those replace the defaults' whole, ``train.config._deep_merge``)."""
    node: Any = member
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False
        if part == "model_options" or not isinstance(node[part], Mapping):
            return True
        node = node[part]
    return True


def _holds(node: Any, path: tuple) -> bool:
    """Whether ``node`` sets the key at ``path`` (mappings and list indexes)."""
    for part in path:
        node = _child(node, part, _ABSENT)
        if node is _ABSENT:
            return False
    return True


def _origin(key: str, origins: Mapping[str, str], source: str) -> str:
    """Where the value at ``key`` came from: the --set or environment variable that set it or, the nearest, a
    section or list above it; else, when such overrides set keys below it (a check over the whole section, such as
    split ratios summing to 1), ``source`` with them; else ``source``."""
    above = [dotted for dotted in origins if key == dotted or key.startswith((dotted + ".", dotted + "["))]
    if above:
        return origins[max(above, key=len)]
    below = [origins[dotted] for dotted in origins if key and dotted.startswith((key + ".", key + "["))]
    return f"{source} with {', '.join(below)}" if below else source


def _under(defaults, data):
    """``data`` with ``defaults`` filling the keys it lacks, section by section (its own values win)."""
    if data is None:
        return _deep_copy(defaults)
    if not (isinstance(defaults, Mapping) and isinstance(data, Mapping)):
        return data
    return {**_deep_copy(defaults), **{k: _under(defaults[k], v) if k in defaults else v for k, v in data.items()}}


def _deep_copy(data):
    """Sections and lists copied (an override may set inside either), values shared."""
    if isinstance(data, Mapping):
        return {k: _deep_copy(v) for k, v in data.items()}
    return [_deep_copy(v) for v in data] if isinstance(data, list) else data


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's integers: ``010`` is ten and ``1:30`` is text. YAML 1.1 (PyYAML's
    default) reads ``010`` as octal 8 and ``1:30`` as sexagesimal 90: a class code list ``[005, 010, 015]`` would
    map pixels to codes 5, 8 and 13 without a word. A key repeated in one mapping is refused (YAML requires unique
    keys; PyYAML keeps the last: a second ``training:`` section replaced the first without a word)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark,
                        f"the key {key!r} is given twice in one mapping (first on line {seen[key].line + 1}); "
                        "keep one", key_node.start_mark)
                if isinstance(key, (str, int, float, bool)):
                    seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_INT, _FLOAT = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
# decimal (digit groups with _ as before), 0o octal, 0x hex; no 1.1 leading-0 octal, 0b binary or base 60
ConfigLoader.add_implicit_resolver(_INT, re.compile(r"^(?:[-+]?[0-9][0-9_]*|0o[0-7]+|0x[0-9a-fA-F]+)$"),
                                   list("-+0123456789"))
# PyYAML's floats without the base-60 form (1:30.5 is text, not 5430.5)
ConfigLoader.add_implicit_resolver(_FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
                    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))


def _yaml_int(loader: ConfigLoader, node) -> int:
    text = loader.construct_scalar(node).replace("_", "")
    return int(text, 0) if text[:2] in ("0o", "0x") else int(text, 10)


ConfigLoader.add_constructor(_INT, _yaml_int)


def load_yaml(text: str) -> Any:
    """YAML text as Python values, integers as YAML 1.2 reads them (``ConfigLoader``). Raises yaml.YAMLError."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


#: how deep a config's mappings and lists may nest (minseg's own go 6 deep): deeper, or an alias inside its own
#: anchor (``a: &x [*x]``, endless), is no config, and would exhaust the recursion of every reader of it
MAX_NESTING = 64


def nests_too_deep(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` (parsed YAML) nests mappings and lists deeper than ``MAX_NESTING``, or endlessly."""
    if depth > MAX_NESTING:
        return True
    if isinstance(value, Mapping):
        return any(nests_too_deep(item, depth + 1) for item in value.values())
    if isinstance(value, list):
        return any(nests_too_deep(item, depth + 1) for item in value)
    return False


_TOO_DEEP = (f"nests deeper than {MAX_NESTING} levels, or an alias refers to its own anchor (a: &x [*x]): not a "
             "config")


def parse_yaml(text: str, source: str) -> Any:
    """A config file's text as YAML values.

    Raises:
        ConfigError: not valid YAML (naming line and column), or nesting too deep or endlessly."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [("", f"{where}not valid YAML ({problem})")]) from None
    except RecursionError:
        raise ConfigError(source, [("", _TOO_DEEP)]) from None
    if nests_too_deep(value):
        raise ConfigError(source, [("", _TOO_DEEP)])
    return value


#: characters that start YAML syntax, not text (YAML indicators; not `[` and `{`, which start the lists and
#: mappings a value may mean): a text typed starting with one is read as syntax and needs quotes
_UNKNOWN_KEY = "unknown key (check spelling; see docs/configuration.md)"
_YAML_INDICATORS = set("-?:,]}#&*!|>'\"%@`")


def parse_set_options(pairs: list[str] | None) -> dict[str, str]:
    """CLI ``--set a.b=value`` pairs into an overrides mapping."""
    result: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", [("", f"expected KEY=VALUE, got {pair!r}")])
        if any(not part.strip() for part in key.strip().split(".")):  # `segment..block`: read as segment.block
            raise ConfigError("--set", [("", f"{key.strip()!r} has an empty part between dots: give KEY as "
                                             "section.key (e.g. segment.block)")])
        result[key.strip()] = value
    return result
