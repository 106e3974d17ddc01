"""``gotel demo``: build the bundled Go HTTP server (pipeline/app/demo), trace it, print the summary.

The program is built with the newest Go toolchain that ``make setup`` installed (pipeline.app.gotool),
cached under ``.cache/demo``, launched as a command target (so it is traced from its first
instruction) with the embedded default configuration, and runs its own clients for a few seconds
before exiting. The OTLP/JSON files go to ``out_dir``.
"""

import subprocess
from pathlib import Path

from pipeline import config
from pipeline.app import gotool
from pipeline.app.runner import run_service
from receiver.errors import GotelError

SOURCE = Path(__file__).resolve().parent / "demo"
DEFAULT_SECONDS = 3.0


class DemoError(GotelError):
    """The demo program could not be built."""


def build():
    """Path of the demo binary, built with the newest available toolchain."""
    versions = list(gotool.toolchains())
    if not versions:
        raise DemoError(f"no Go toolchain under {gotool.CACHE / 'go'}; run 'make setup'")
    try:
        return gotool.build(SOURCE, (gotool.CACHE / "demo").resolve(), version=versions[-1])
    except subprocess.CalledProcessError as e:
        detail = " ".join((e.stderr or e.stdout or "").split())[:300]
        raise DemoError(f"building the demo program with Go {versions[-1]} failed: {detail}") from e


def run(out_dir="./gotel-out", duration=None):
    seconds = DEFAULT_SECONDS if duration is None else duration
    binary = build()
    print(f"gotel demo: tracing {binary.name} (an HTTP server with a worker pool and its own "
          f"clients) for {seconds:g}s", flush=True)
    cfg = config.load(overrides={"GOTEL_OUT": str(out_dir)},
                      receiver_settings={"command": [str(binary), "-duration", f"{seconds}s"]})
    # The program exits by itself; the bound only guards against a stuck run.
    service = run_service(cfg, duration=seconds + 30)
    print(f"gotel demo: OTLP/JSON traces and metrics are in {Path(out_dir).resolve()}/")
    return 0 if service.tap.spans else 1
