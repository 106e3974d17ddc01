"""The one registry of gotel's components, by kind and type, as a Collector build lists its factories.

Every module listed here declares ``TYPE``, ``SIGNALS`` (the pipelines it can serve), a frozen
``Config`` dataclass whose fields are its YAML keys (``validate()`` lists problems), and
``create(settings, config, next)`` (``pipeline.stage.Settings``; ``next`` is the stage after it,
None for exporters). Adding a component is one module and one line here.
"""

from pipeline.exporters import debug, file, otlp_grpc
from pipeline.processors import batch, filter as span_filter, sampler
from pipeline.receivers import goroutines, goruntime

KINDS = ("receivers", "processors", "exporters")

REGISTRY = {
    "receivers": (goroutines, goruntime),
    "processors": (span_filter, sampler, batch),
    "exporters": (otlp_grpc, file, debug),
}
# Other names a type is known by, as in the Collector (``otlp`` is its gRPC exporter).
ALIASES = {("exporters", "otlp"): "otlp_grpc"}


def _check():
    for kind, modules in REGISTRY.items():
        types = [m.TYPE for m in modules]
        assert len(set(types)) == len(types), f"{kind}: a type is registered twice"


_check()
BY_TYPE = {(kind, m.TYPE): m for kind, modules in REGISTRY.items() for m in modules}


def module(kind, type_):
    """The component module of a type (aliases resolved), or None when gotel has no such type."""
    return BY_TYPE.get((kind, ALIASES.get((kind, type_), type_)))


def known_types(kind):
    """Every type name a kind accepts, aliases included, sorted."""
    return sorted([t for k, t in BY_TYPE if k == kind] + [t for k, t in ALIASES if k == kind])
