"""gotel's configuration: YAML in the OpenTelemetry Collector's shape, checked all at once.

A file has the Collector's four sections::

    receivers:   {goroutines: {...}}                   # the only receiver type
    processors:  {filter: {...}, sampler: {...}, batch: {...}}
    exporters:   {otlp: {...}, file/traces: {...}, debug: {...}}
    service:     {pipelines: {traces: {receivers: [...], processors: [...], exporters: [...]},
                              metrics: {...}},
                  telemetry: {metrics: {level: basic}}}

Component ids are ``type`` or ``type/name`` like the Collector's. Values may use
``${env:VAR}`` and ``${env:VAR:-default}`` (a value that is only one reference takes the YAML type of
what it expands to; ``$$`` is a literal ``$``). Each component's keys are the fields of its stage's
frozen ``Config`` dataclass, so the schema follows the code: unknown keys, wrong types and values that
fail a component's own ``validate()`` are all collected and raised as one ``ConfigError`` naming each
YAML path (``processors::batch::send_batch_max_size must be >= send_batch_size``). Durations are
written like the Collector's (``200ms``, ``5s``, ``1m30s``); a bare number is refused, except 0.

Loading is cheap (a YAML parse and a walk) and has no side effects: nothing is opened or started.
"""

import dataclasses
import inspect
import os
import re
import types
import typing
from pathlib import Path

import yaml

from pipeline import components
from pipeline.components import KINDS
from receiver.errors import ConfigError

DEFAULT_PATH = Path(__file__).resolve().parent / "default.yaml"
SIGNALS = ("traces", "metrics", "logs")
TOP_LEVEL = (*KINDS, "service", "extensions", "connectors")


# --- the result ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Component:
    """One configured component: ``id`` as written (``file/traces``), its type, and its Config."""

    kind: str
    id: str
    type: str
    config: object


@dataclasses.dataclass(frozen=True)
class Pipeline:
    id: str
    signal: str
    receivers: tuple
    processors: tuple
    exporters: tuple


@dataclasses.dataclass(frozen=True)
class TelemetryConfig:
    """service::telemetry::metrics: gotel's own metrics (the Collector's otelcol_* names)."""

    level: typing.Literal["none", "basic", "normal", "detailed"] = "basic"


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated configuration: components by id, and pipelines by id."""

    receivers: dict
    processors: dict
    exporters: dict
    pipelines: dict
    telemetry: TelemetryConfig = TelemetryConfig()

    def pipelines_for(self, signal):
        return [p for p in self.pipelines.values() if p.signal == signal]


# --- public entry points ------------------------------------------------------------------------
def load(path=None, env=None, overrides=None, receiver_settings=None):
    """Read and validate a config file (default: the embedded defaults); return a Config.

    ``env`` replaces ``os.environ`` for ``${env:...}`` expansion; ``overrides`` adds variables to it.
    ``receiver_settings`` (e.g. the targets of ``gotel trace``) replace those keys of every
    goroutines receiver before validation. Raises ConfigError listing every problem.
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError([f"cannot read config file {path}: {e.strerror or e}"]) from e
    return loads(text, env=env, overrides=overrides, source=str(path),
                 receiver_settings=receiver_settings)


def loads(text, env=None, overrides=None, source="<config>", receiver_settings=None):
    """Like load(), from YAML text."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{source}: not valid YAML{where}: {problem}"]) from e
    env = dict(os.environ if env is None else env)
    env.update(overrides or {})
    problems = []
    raw = expand(raw, env, problems, ())
    if receiver_settings and isinstance(raw, dict) and isinstance(raw.get("receivers"), dict):
        for cid, settings in raw["receivers"].items():
            if (parse_id(cid) or ("",))[0] == "goroutines":
                settings = dict(settings or {}) if isinstance(settings, dict) or settings is None \
                    else settings
                if isinstance(settings, dict):
                    for key in ("pids", "paths", "command"):
                        settings.pop(key, None)
                    settings.update(receiver_settings)
                raw["receivers"][cid] = settings
    config = build(raw, problems)
    if problems:
        raise ConfigError(problems)
    return config


def default_dict():
    """The embedded defaults as a plain dict (before ${env:...} expansion)."""
    return yaml.safe_load(DEFAULT_PATH.read_text())


# --- ${env:...} expansion -----------------------------------------------------------------------
_REF = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV = re.compile(r"env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*))?$", re.S)


def _path(parts):
    return "::".join(str(p) for p in parts) or "<top level>"


def expand(node, env, problems, where):
    """Expand ${env:VAR} and ${env:VAR:-default} in every string of a parsed YAML tree."""
    if isinstance(node, dict):
        return {k: expand(v, env, problems, (*where, k)) for k, v in node.items()}
    if isinstance(node, list):
        return [expand(v, env, problems, (*where, i)) for i, v in enumerate(node)]
    if not isinstance(node, str) or "$" not in node:
        return node

    def one(match):
        if match.group(0) == "$$":
            return "$"
        ref = _ENV.match(match.group(1))
        if ref is None:
            problems.append(f"{_path(where)}: unsupported reference {match.group(0)!r}: "
                            "use ${env:NAME} or ${env:NAME:-default}")
            return ""
        name, default = ref.group(1), ref.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        problems.append(f"{_path(where)}: environment variable {name} is not set "
                        f"(write ${{env:{name}:-default}} to give a default)")
        return ""

    whole = _REF.fullmatch(node)
    out = _REF.sub(one, node)
    if whole is not None and whole.group(0) != "$$":
        # A value that is one reference takes the type of what it expands to, as in the Collector.
        try:
            typed = yaml.safe_load(out) if out.strip() else out
        except yaml.YAMLError:
            return out
        if isinstance(typed, (int, float, bool)) or typed is None:
            return typed
    return out


# --- durations ----------------------------------------------------------------------------------
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1e3, "µs": 1e3, "ms": 1e6, "s": 1e9, "m": 60e9, "h": 3600e9}


def parse_duration_ns(value):
    """Go-style duration text ("200ms", "1m30s") -> nanoseconds (float). ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, (int, float)):
        if value == 0:
            return 0.0
        raise ValueError
    text = str(value).strip()
    if text in ("0", ""):
        if text == "":
            raise ValueError
        return 0.0
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            raise ValueError
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError
    return total


def duration_unit(field):
    """The unit a dataclass field holds a duration in ("s", "ms", "us", "ns"), declared by the
    field's ``metadata={"duration": unit}``; None for a field that is not a duration."""
    return field.metadata.get("duration")


_UNIT_SUFFIX = re.compile(r"_(ns|us|ms|s|seconds)$")


def yaml_key(field):
    """The YAML name of a dataclass field: a duration field drops its unit suffix, since YAML
    durations carry their unit ("min_park_ns" is written ``min_park: 100us``)."""
    if duration_unit(field) is not None and _UNIT_SUFFIX.search(field.name):
        return _UNIT_SUFFIX.sub("", field.name)
    return field.name


# --- building typed configs ---------------------------------------------------------------------
_MISSING = object()


def _type_name(tp):
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (tuple, list, frozenset, set):
        return "a list"
    if origin is dict or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def convert(value, tp, where, problems, unit=None):
    """Convert a YAML value to type tp, appending problems; returns _MISSING on failure."""
    origin = typing.get_origin(tp)
    path = _path(where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            scratch = []
            out = convert(value, arg, where, scratch, unit)
            if not scratch:
                return out
        problems.append(f"{path} must be {_type_name(tp)}, not {value!r}")
        return _MISSING
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        problems.append(f"{path} must be {_type_name(tp)}, not {value!r}")
        return _MISSING
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, {} if value is None else value, where, problems)
    if origin in (tuple, list, frozenset, set) or tp in (tuple, list):
        if value is None:
            value = []
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            problems.append(f"{path} must be a list, not {value!r}")
            return _MISSING
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [typing.Any]
        items = [convert(v, args[0], (*where, i), problems, unit) for i, v in enumerate(value)]
        return (origin or tp)(items) if origin is not list else items
    if origin is dict or tp is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            problems.append(f"{path} must be a mapping, not {value!r}")
            return _MISSING
        args = typing.get_args(tp) or (str, typing.Any)
        return {str(k): convert(v, args[1], (*where, k), problems) for k, v in value.items()}
    if tp is typing.Any:
        return value
    if unit is not None and tp in (int, float):
        try:
            ns = parse_duration_ns(value)
        except ValueError:
            problems.append(f"{path} must be a duration like 200ms or 5s, not {value!r}")
            return _MISSING
        scaled = ns / {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}[unit]
        return int(round(scaled)) if tp is int else scaled
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    problems.append(f"{path} must be {_type_name(tp)}, not {value!r}")
    return _MISSING


def build_dataclass(cls, mapping, where, problems):
    """Build a frozen dataclass from a mapping: unknown keys, bad types and validate() problems."""
    if not isinstance(mapping, dict):
        problems.append(f"{_path(where)} must be a mapping, not {mapping!r}")
        return _MISSING
    fields = {yaml_key(f): f for f in dataclasses.fields(cls) if f.init and not f.name.startswith("_")}
    hints = typing.get_type_hints(cls, include_extras=False)
    kwargs, failed_keys, failed = {}, set(), False
    for key, value in mapping.items():
        field = fields.get(key)
        if field is None:
            problems.append(f"{_path((*where, key))}: unknown key (expected one of: "
                            f"{', '.join(sorted(fields)) or 'none'})")
            failed = True
            continue
        out = convert(value, hints.get(field.name, typing.Any), (*where, key), problems,
                      duration_unit(field))
        if out is _MISSING:
            failed_keys.add(field.name)
        else:
            kwargs[field.name] = out
    missing = [key for key, field in fields.items()
               if field.name not in kwargs and field.name not in failed_keys
               and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING]
    for name in missing:
        problems.append(f"{_path((*where, name))} is required")
    if missing:
        return _MISSING
    # Even when some keys failed, the others are checked by the component's validate() (with
    # defaults in place of the failed ones), so that one run lists every problem; what it says
    # about a key already reported is left out.
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(f"{_path(where)}: {e}")
        return _MISSING
    validate = getattr(obj, "validate", None)
    found = []
    if callable(validate):
        # A validate(path=...) names paths itself; a plain validate() gives them relative to ours.
        takes_path = "path" in inspect.signature(validate).parameters
        try:
            found = (validate(path=_path(where)) if takes_path else validate()) or []
        except (TypeError, ValueError) as e:
            found = [str(e)]
        renamed = {f.name: key for key, f in fields.items() if key != f.name}
        for problem in found:
            if any(re.search(rf"\b{re.escape(k)}\b", problem) for k in failed_keys):
                continue
            for name, key in renamed.items():   # the component speaks of fields; users of YAML keys
                problem = re.sub(rf"\b{re.escape(name)}\b", key, problem)
            problems.append(problem if takes_path else f"{_path(where)}::{problem}")
    if failed or failed_keys or found:
        return _MISSING
    return obj


_ID = re.compile(r"^([a-z][a-z0-9_]*)(?:/([^/\s]+))?$")


def parse_id(text):
    """'file/traces' -> ('file', 'traces'); 'batch' -> ('batch', ''). None if malformed."""
    m = _ID.match(str(text))
    return (m.group(1), m.group(2) or "") if m else None


def build(raw, problems):
    """A Config from an expanded YAML tree, appending every problem found."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"the configuration must be a mapping with {', '.join(KINDS)} and service")
        return None
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"{key}: unknown section (expected one of: {', '.join(TOP_LEVEL)})")
        elif key in ("extensions", "connectors") and raw[key]:
            problems.append(f"{key}: gotel has no {key}")
    sections = {}
    for kind in KINDS:
        sections[kind] = {}
        section = raw.get(kind) or {}
        if not isinstance(section, dict):
            problems.append(f"{kind} must be a mapping of component id to settings")
            continue
        for cid, settings in section.items():
            parsed = parse_id(cid)
            if parsed is None:
                problems.append(f"{kind}::{cid}: malformed component id (expected type or type/name)")
                continue
            type_ = parsed[0]
            module = components.module(kind, type_)
            if module is None:
                problems.append(f"{kind}::{cid}: unknown {kind[:-1]} type {type_!r} "
                                f"(known: {', '.join(components.known_types(kind))})")
                continue
            cfg = build_dataclass(module.Config, {} if settings is None else settings, (kind, cid),
                                  problems)
            if cfg is not _MISSING:
                sections[kind][str(cid)] = Component(kind, str(cid), module.TYPE, cfg)
    service = raw.get("service")
    pipelines, telemetry = {}, TelemetryConfig()
    if not isinstance(service, dict):
        service = {}
    if not service.get("pipelines"):
        problems.append("service::pipelines is required: at least one of traces, metrics")
    for key in service:
        if key not in ("pipelines", "telemetry", "extensions"):
            problems.append(f"service::{key}: unknown key (expected one of: extensions, pipelines, "
                            "telemetry)")
    if service.get("extensions"):
        problems.append("service::extensions: gotel has no extensions")
    tele = service.get("telemetry") or {}
    if not isinstance(tele, dict):
        problems.append("service::telemetry must be a mapping")
    else:
        for key in tele:
            if key != "metrics":
                problems.append(f"service::telemetry::{key}: unknown key (expected one of: metrics)")
        built = build_dataclass(TelemetryConfig, tele.get("metrics") or {},
                                ("service", "telemetry", "metrics"), problems)
        if built is not _MISSING:
            telemetry = built
    defined = {kind: set((raw.get(kind) or {}) if isinstance(raw.get(kind), dict) else ())
               for kind in KINDS}
    raw_pipelines = service.get("pipelines")
    if raw_pipelines and not isinstance(raw_pipelines, dict):
        problems.append("service::pipelines must be a mapping of pipeline id to settings")
        raw_pipelines = {}
    for pid, spec in (raw_pipelines or {}).items():
        where = ("service", "pipelines", pid)
        parsed = parse_id(pid)
        if parsed is None or parsed[0] not in SIGNALS:
            problems.append(f"{_path(where)}: unknown pipeline type (gotel produces: "
                            f"{', '.join(SIGNALS)})")
            continue
        signal = parsed[0]
        if not isinstance(spec, dict):
            problems.append(f"{_path(where)} must be a mapping with receivers, processors, exporters")
            continue
        lists = {}
        for key in spec:
            if key not in KINDS:
                problems.append(f"{_path((*where, key))}: unknown key (expected one of: "
                                f"{', '.join(KINDS)})")
        for kind in KINDS:
            ids = spec.get(kind) or []
            if not isinstance(ids, list):
                problems.append(f"{_path((*where, kind))} must be a list of component ids")
                ids = []
            if kind != "processors" and not ids:
                problems.append(f"{_path((*where, kind))} must name at least one {kind[:-1]}")
            seen = set()
            for cid in ids:
                cid = str(cid)
                if not cid:
                    continue            # an empty expansion, reported where it was expanded
                if cid in seen:
                    problems.append(f"{_path((*where, kind))}: {cid} is listed twice")
                seen.add(cid)
                if cid not in defined[kind]:
                    problems.append(f"{_path((*where, kind))}: {cid} is not defined in {kind}")
                    continue
                comp = sections[kind].get(cid)
                if comp is not None:
                    signals = components.module(kind, comp.type).SIGNALS
                    if signal not in signals:
                        problems.append(f"{_path((*where, kind))}: {cid} does not support "
                                        f"{signal} (only {', '.join(signals)})")
            lists[kind] = tuple(str(c) for c in ids)
        procs = lists["processors"]
        batches = [c for c in procs if parse_id(c) and parse_id(c)[0] == "batch"]
        if batches and procs[-1] != batches[-1]:
            problems.append(f"{_path((*where, 'processors'))}: batch must be the last processor")
        if signal == "traces":
            order = [parse_id(c)[0] for c in procs if parse_id(c)]
            if "filter" in order and "sampler" in order and order.index("filter") > order.index("sampler"):
                problems.append(f"{_path((*where, 'processors'))}: filter must come before sampler")
        pipelines[str(pid)] = Pipeline(str(pid), signal, lists["receivers"], procs, lists["exporters"])
    used = sorted({r for p in pipelines.values() for r in p.receivers
                   if (parse_id(r) or ("",))[0] != "goruntime"})   # census receivers: any number
    if len(used) > 1:
        problems.append(f"service::pipelines: gotel runs one receiver, and every pipeline takes its "
                        f"data from it; the pipelines use {len(used)} ({', '.join(used)})")
    return Config(sections["receivers"], sections["processors"], sections["exporters"], pipelines,
                  telemetry)
