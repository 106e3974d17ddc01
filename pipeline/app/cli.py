"""The ``gotel`` command line: inspect, trace, run, validate, demo.

Every error a user can cause is a ``receiver.errors.GotelError``: printed as one line, exit status 2.
SIGINT and SIGTERM stop tracing, flush what was collected, and exit; a second one exits at once.
"""

import argparse
import faulthandler
import logging
import os
import signal
import sys

from pipeline import config
from pipeline.app import demo
from pipeline.app.runner import Stopper, run_service
from receiver import targets
from receiver.errors import ConfigError, GotelError, TargetError

# `gotel run` (an always-on agent) holds each target under this share of its CPU time unless the
# file sets level or max_overhead (README, "Levels, windows, triggers and a budget").
RUN_DEFAULT_BUDGET = "2%"


class UsageError(GotelError):
    """A command line that cannot be run as given."""


def build_parser():
    parser = argparse.ArgumentParser(
        prog="gotel", description="OpenTelemetry traces and metrics of every goroutine of running Go "
        "programs, from eBPF uprobes on the Go runtime: no change to the programs.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what gotel does")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("inspect", help="report a Go binary's version, layout and probe points")
    p.add_argument("target", help="path of a Go binary, or a PID")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "dump", help="print every goroutine of a running Go process, as Go's traceback does",
        description="Read every goroutine's state, wait and stack from the process's memory, "
                    "without stopping it, and print them as /debug/pprof/goroutine?debug=2 does.")
    p.add_argument("pid", type=int, help="a running Go process")
    p.add_argument("--group", action="store_true", help="fold identical stacks, with counts")
    p.add_argument("--pprof", metavar="FILE", help="write a goroutine profile (go tool pprof FILE)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--all", action="store_true", help="include the runtime's own goroutines")
    p.add_argument("--depth", type=int, default=64, metavar="N", help="frames per stack (default 64)")
    p.set_defaults(func=_dump)

    p = sub.add_parser(
        "validate", help="check a configuration file and report every problem",
        description="Check FILE as `gotel run -c FILE` would use it; with targets, as `gotel trace "
                    "-c FILE TARGETS` would (then the file need not name any).")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    _target_arguments(p)
    p.set_defaults(func=_validate)

    p = sub.add_parser("run", help="run the pipelines of a configuration file until stopped")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--duration", type=duration, metavar="S", help="stop after S seconds")
    p.set_defaults(func=_run)

    p = sub.add_parser(
        "window", help="open a window of full tracing in a running gotel now",
        description="Ask a running gotel to trace its targets at the full level for one window: "
                    "over its trigger endpoint (receivers::goroutines::trigger_port, --trigger-port), "
                    "or with SIGUSR1 to its PID.")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--port", type=int, help="the running gotel's trigger_port")
    g.add_argument("--pid", type=int, help="the running gotel's PID (sends SIGUSR1)")
    p.set_defaults(func=_window)

    p = sub.add_parser(
        "trace", help="trace Go processes; without -c, write OTLP JSON to DIR and print a summary",
        usage="gotel trace [-c FILE] [--out DIR] [--duration S] "
              "(--pid PID ... | --binary PATH | -- COMMAND ARGS...)")
    p.add_argument("-c", "--config", metavar="FILE", help="configuration (default: built in)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="where the default file exporters write (default: $GOTEL_OUT, else "
                        "./gotel-out)")
    p.add_argument("--duration", type=duration, metavar="S", help="stop after S seconds")
    p.add_argument("--keep-running", action="store_true",
                   help="leave a launched command running when gotel stops (by default it is "
                        "stopped with gotel, and killed if gotel is killed)")
    p.add_argument("--func", dest="functions", action="append", default=[], metavar="PATTERN",
                   help="also make each call of the Go functions PATTERN matches a span inside its "
                        "goroutine (glob, repeatable; receivers::goroutines::functions::patterns)")
    p.add_argument("--func-args", action="store_true",
                   help="record the probed functions' arguments and results as span attributes")
    _level_arguments(p)
    _target_arguments(p)
    p.set_defaults(func=_trace)

    p = sub.add_parser(
        "funcs", help="count or time calls of Go functions per goroutine (like bcc funccount/funclatency)",
        usage="gotel funcs {count,latency} PATTERN [-e PATTERN ...] [-i S] [--duration S] "
              "(--pid PID ... | --binary PATH | -- COMMAND ARGS...)")
    p.add_argument("mode", choices=("count", "latency"))
    p.add_argument("pattern", metavar="PATTERN",
                   help="glob over Go function names, e.g. 'main.(*Server).handle*' or 'net/http.*'")
    p.add_argument("-e", "--pattern", dest="more", action="append", default=[], metavar="PATTERN",
                   help="another pattern")
    p.add_argument("-i", "--interval", type=float, metavar="S", help="print and reset every S seconds")
    p.add_argument("--duration", type=duration, metavar="S", help="stop after S seconds")
    p.add_argument("--max-functions", type=int, default=1000, metavar="N",
                   help="refuse patterns matching more functions than this (default 1000)")
    p.add_argument("--pid", nargs="+", action="extend", default=[], metavar="PID",
                   help="running processes to trace")
    p.add_argument("--binary", action="append", default=[], metavar="PATH",
                   help="trace every process running this Go binary, now and later")
    # Options may follow PATTERN: the command, everything after "--", is split off in main().
    p.set_defaults(argv=[])
    p.set_defaults(func=_funcs)

    p = sub.add_parser(
        "top", help="goroutines per process and per group, live, from memory (no probe)",
        description="Watch Go processes' goroutines like top: counts, creation and exit rates, "
                    "longest waits, leak suspects, per process and per group. Nothing is attached: "
                    "goroutines are read from the processes' memory. q quits.")
    p.add_argument("--pid", nargs="+", action="extend", default=[], type=int, metavar="PID")
    p.add_argument("--binary", action="append", default=[], metavar="PATH",
                   help="every process running this Go binary")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="the targets of receivers::goroutines in FILE (pids, paths, discovery)")
    p.add_argument("--interval", default="2s", metavar="DURATION", help="refresh (default 2s)")
    p.add_argument("--leak-after", default="60s", metavar="DURATION",
                   help="a rising group blocked this long is a leak suspect (default 60s)")
    p.add_argument("--iterations", type=int, metavar="N", help="print N frames and exit")
    p.add_argument("--no-stacks", action="store_true",
                   help="group without stacks (cheaper on huge processes)")
    p.set_defaults(func=_top)

    p = sub.add_parser("demo", help="build a bundled Go HTTP server, trace it, print a summary")
    p.add_argument("--out", metavar="DIR", default="./gotel-out")
    p.add_argument("--duration", type=duration, default=None, metavar="S",
                   help="how long the demo program runs (default: its own few seconds)")
    p.set_defaults(func=_demo)
    return parser


def duration(text):
    """--duration: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds greater than 0")
    return value


def go_duration(text):
    """A duration flag as Go writes it ("20ms", "1.5s"), kept as text for the config."""
    try:
        ns = config.parse_duration_ns(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 20ms or 1s") from None
    if not ns > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a duration greater than 0")
    return text


def _target_arguments(p):
    p.add_argument("--pid", nargs="+", action="extend", default=[], metavar="PID",
                   help="running processes to trace")
    p.add_argument("--binary", action="append", default=[], metavar="PATH",
                   help="trace every process running this Go binary, now and later")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ARGS...",
                   help="launch a command and trace it from its first instruction")


def _level_arguments(p):
    p.add_argument("--level", choices=("census", "lifecycle", "full"),
                   help="what the probes see: census (no probe), lifecycle (creations and exits), "
                        "full (every status change; the default)")
    p.add_argument("--max-overhead", metavar="PCT",
                   help="hold each target's probe cost under PCT of its CPU time (e.g. 2%%)")
    p.add_argument("--window", type=float, metavar="S", help="length of a window of full tracing")
    p.add_argument("--period", type=float, metavar="S", help="open a window every S seconds")
    p.add_argument("--trigger-port", type=int, metavar="PORT",
                   help="POST http://127.0.0.1:PORT/window opens a window (gotel window --port)")
    p.add_argument("--trigger-sched-latency-p99", type=go_duration, metavar="DURATION",
                   help="open a window when the p99 of the runtime's scheduling latency over ~2 s "
                        "passes DURATION (e.g. 20ms)")


def level_settings(args):
    """receivers::goroutines keys given by the level options of the command line."""
    out = {}
    if args.level:
        out["level"] = args.level
    if args.max_overhead:
        out["max_overhead"] = args.max_overhead
    if args.window:
        out["window"] = f"{args.window}s"
    if args.period:
        out["period"] = f"{args.period}s"
    if args.trigger_port is not None:
        out["trigger_port"] = args.trigger_port
    if args.trigger_sched_latency_p99:
        out["trigger_sched_latency_p99"] = args.trigger_sched_latency_p99
    return out


def _window(args):
    if args.pid:
        try:
            os.kill(args.pid, signal.SIGUSR1)
        except OSError as e:
            raise UsageError(f"cannot signal gotel process {args.pid}: {e.strerror}") from None
        print(f"window requested from process {args.pid}")
        return 0
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{args.port}/window", method="POST"), timeout=5) as r:
            print(r.read().decode().strip())
    except OSError as e:
        raise UsageError(f"no gotel trigger endpoint on 127.0.0.1:{args.port} ({e}); start gotel "
                         f"with --trigger-port or receivers::goroutines::trigger_port") from None
    return 0


def _inspect(args):
    from receiver import inspect

    return inspect.command(args.target, as_json=args.json)


def _top(args):
    from pipeline.app import top

    def duration(flag, text):
        try:
            seconds = config.parse_duration_ns(text) / 1e9
        except ValueError:
            raise UsageError(f"{flag} {text!r}: give a duration like 2s or 500ms") from None
        if seconds <= 0:
            raise UsageError(f"{flag} {text!r}: give a duration above 0")
        return seconds

    interval, leak_after = duration("--interval", args.interval), duration("--leak-after",
                                                                          args.leak_after)
    pids, binaries, rules = list(args.pid), list(args.binary), None
    if args.config:
        for comp in config.load(args.config).receivers.values():
            pids += list(getattr(comp.config, "pids", ()))
            binaries += list(getattr(comp.config, "paths", ()))
            rules = getattr(comp.config, "discovery", None) or rules
    if not (pids or binaries or (rules is not None and rules.enabled)):
        raise UsageError("nothing to watch: give --pid PID, --binary PATH, or -c FILE with targets")
    for pid in pids:
        if not targets.is_running(pid):
            raise TargetError(f"process {pid} does not exist (it exited?); give a running PID")
    if args.iterations is not None and args.iterations < 1:
        raise UsageError("--iterations: give 1 or more")
    view = top.Top(top.pid_finder(pids, binaries, rules), interval, leak_after,
                   stacks=not args.no_stacks)
    return top.run(view, iterations=args.iterations)


def _dump(args):
    from receiver import dump

    if not 1 <= args.depth <= 1024:
        raise UsageError(f"--depth {args.depth}: give 1 to 1024 frames")
    return dump.command(args.pid, group=args.group, pprof=args.pprof, as_json_out=args.json,
                        all_goroutines=args.all, depth=args.depth)


def _validate(args):
    settings = None
    if args.pid or args.binary or args.argv:
        settings = parse_targets(args.pid, args.binary, args.argv)
    note = ""
    try:
        cfg = config.load(args.config, receiver_settings=settings)
    except ConfigError as e:
        # A file without targets is what `gotel trace -c FILE TARGETS` takes: valid for that, and
        # it says so, rather than failing the README's first step.
        untargeted = [p for p in e.problems if "give at least one of pids, paths, command" in p]
        if settings is not None or not untargeted or len(untargeted) != len(e.problems):
            raise
        # The rest is checked with a stand-in target (this process), as `gotel trace` would.
        cfg = config.load(args.config, receiver_settings={"pids": [os.getpid()]})
        note = (" (it names no targets: give them on the command line, `gotel trace -c FILE "
                "--pid PID`, or in receivers::goroutines for `gotel run`)")
    parts = []
    for p in cfg.pipelines.values():
        chain = " -> ".join([", ".join(p.receivers), *p.processors, ", ".join(p.exporters)])
        parts.append(f"{p.id} ({chain})")
    print(f"{args.config}: valid; pipelines: {'; '.join(parts)}{note}")
    return 0


def parse_targets(pids=(), binaries=(), argv=()):
    """The receiver settings for the targets of `gotel trace`, checked before anything is loaded."""
    from receiver import targets

    argv = list(argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    given = sum(bool(x) for x in (pids, binaries, argv))
    if given == 0:
        raise UsageError("nothing to trace: give --pid PID, --binary PATH, or -- COMMAND ARGS...")
    if given > 1:
        raise UsageError("give only one of --pid, --binary, -- COMMAND")
    if pids:
        out = []
        for text in pids:
            try:
                pid = int(text)
            except ValueError:
                raise UsageError(f"--pid {text!r} is not a process id") from None
            if pid <= 0:
                raise UsageError(f"--pid {text!r} is not a process id")
            if not targets.is_running(pid):
                raise TargetError(f"process {pid} does not exist (it exited?); give a running PID")
            targets.open_binary(pid)
            out.append(pid)
        return {"pids": out}
    if binaries:
        for path in binaries:
            if not os.path.exists(path):
                raise TargetError(f"{path}: no such file")
            targets.open_binary(path)
        return {"paths": [os.path.abspath(p) for p in binaries]}
    targets.open_binary(targets.resolve_program(argv[0]))
    return {"command": argv}


def _run(args):
    cfg = config.load(args.config)
    rc = [c.config for c in cfg.receivers.values()]
    if all(c.level == "full" and not c.max_overhead for c in rc):
        cfg = config.load(args.config, receiver_settings={"max_overhead": RUN_DEFAULT_BUDGET})
    return run_service(cfg, args.duration).exit_status


def _trace(args):
    settings = parse_targets(args.pid, args.binary, args.argv)
    if args.keep_running:
        if "command" not in settings:
            raise UsageError("--keep-running is for a launched command (-- COMMAND ARGS...)")
        settings["keep_running"] = True
    if args.functions:
        settings["functions"] = {"patterns": list(args.functions), "arguments": args.func_args}
    settings.update(level_settings(args))
    overrides = {"GOTEL_OUT": args.out} if args.out is not None else None
    cfg = config.load(args.config, overrides=overrides, receiver_settings=settings)
    return run_service(cfg, args.duration).exit_status


def _funcs(args):
    from pipeline import functrace

    settings = parse_targets(args.pid, args.binary, args.argv)
    with Stopper() as stop:
        functrace.run(args.mode, [args.pattern, *args.more], pids=settings.get("pids", ()),
                      paths=settings.get("paths", ()), command=settings.get("command"),
                      interval=args.interval, duration=args.duration, limit=args.max_functions,
                      stop=stop.event)
    return 0


def _demo(args):
    return demo.run(out_dir=args.out, duration=args.duration)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    subcommand = next((a for a in argv if not a.startswith("-")), None)
    if subcommand == "funcs" and "--" in argv:
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if command is not None:
        args.argv = command
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="gotel: %(message)s", stream=sys.stderr)
    # `kill -QUIT` prints every thread's stack on stderr and gotel goes on: what a gotel that does
    # not stop is waiting for.
    try:
        faulthandler.register(signal.SIGQUIT, all_threads=True, chain=False)
    except (AttributeError, ValueError, OSError):   # stderr is no file (called from Python)
        pass
    try:
        return args.func(args) or 0
    except GotelError as e:
        print(f"gotel: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
