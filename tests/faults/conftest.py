"""The fault suite: gotel under collector outages, killed and crowded targets, reused PIDs, ring
overflow storms, its own SIGKILL, and the least capability set. Each test records its figures with
``figure(...)``; they are printed at the end of the run ("Reliability figures") and copied by hand
into benchmarks/RESULTS.md."""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# faultkit, otlp_server, spanfactory; appended, so that `import conftest` elsewhere still finds
# tests/conftest.py first.
for folder in (HERE, HERE.parent, HERE.parent / "pipeline"):
    if str(folder) not in sys.path:
        sys.path.append(str(folder))

FIGURES = []


@pytest.fixture
def figure(request):
    """figure(what, value, unit=""): one line of the suite's figures, under this test's name."""

    def record(what, value, unit=""):
        FIGURES.append((request.node.name, what, value, unit))

    return record


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("Reliability figures")
    for test, what, value, unit in FIGURES:
        v = f"{value:,}" if isinstance(value, int) else (f"{value:.3g}" if isinstance(value, float)
                                                         else str(value))
        terminalreporter.write_line(f"{test}: {what}: {v} {unit}".rstrip())


