"""The command line: user errors are one line on stderr and exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.app import cli

REPO = Path(__file__).resolve().parents[2]
GOTEL = [sys.executable, "-m", "pipeline.app.cli"]


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gotel: ")
    for w in words:
        assert w in lines[0], lines[0]


def test_validate_a_good_file(capsys, tmp_path):
    f = tmp_path / "gotel.yaml"
    f.write_text((REPO / "config" / "default.yaml").read_text().replace(
        "collection_interval: 10s", "collection_interval: 10s\n    pids: [1]"))
    code, out, err = run(capsys, "validate", "-c", str(f))
    assert code == 0 and err == ""
    assert "valid; pipelines: traces (goroutines -> filter -> sampler -> batch -> file/traces)" in out


def test_validate_with_targets_like_trace(capsys, go_build):
    shipped = str(REPO / "config" / "default.yaml")
    code, out, err = run(capsys, "validate", "-c", shipped)    # the README's first step
    assert code == 0 and err == ""
    assert "valid; pipelines" in out and "names no targets" in out
    code, out, err = run(capsys, "validate", "-c", shipped, "--binary", str(go_build("spawner")))
    assert code == 0 and "valid; pipelines" in out


def test_validate_lists_every_problem_on_one_line(capsys, tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("receivers: {goroutines: {pids: [1]}}\nprocessors: {batch: {send_batch_size: 10, "
                 "send_batch_max_size: 5, timeout: soon}}\nexporters: {debug: {}}\nservice: "
                 "{pipelines: {traces: {receivers: [goroutines], processors: [batch], exporters: [otlp]}}}\n")
    code, out, err = run(capsys, "validate", "-c", str(f))
    assert code == 2 and out == ""
    one_line_error(err, "invalid configuration:",
                   "processors::batch::timeout must be a duration like 200ms or 5s, not 'soon'",
                   "processors::batch::send_batch_max_size must be >= send_batch_size",
                   "service::pipelines::traces::exporters: otlp is not defined in exporters")


def test_validate_a_missing_file(capsys):
    code, _, err = run(capsys, "validate", "-c", "/no/such/gotel.yaml")
    assert code == 2
    one_line_error(err, "cannot read config file /no/such/gotel.yaml")


@pytest.mark.parametrize("argv,words", [
    (["trace"], ["nothing to trace"]),
    (["trace", "--pid", "abc"], ["--pid 'abc' is not a process id"]),
    (["trace", "--pid", "-5"], ["is not a process id"]),
    (["trace", "--pid", "1", "--binary", "/bin/true"], ["give only one of"]),
    (["trace", "--binary", "/no/such/binary"], ["/no/such/binary: no such file"]),
    (["trace", "--", "no-such-command-gotel"], ["no-such-command-gotel: command not found"]),
    (["trace", "--", "/tmp"], ["/tmp: is a directory, not a program"]),
    (["trace", "--", "./no-such-file"], ["./no-such-file: no such file"]),
])
def test_trace_usage_errors(capsys, argv, words):
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_line_error(err, *words)


def test_trace_a_dead_pid(capsys):
    proc = subprocess.Popen(["true"])
    proc.wait()
    code, _, err = run(capsys, "trace", "--pid", str(proc.pid))
    assert code == 2
    one_line_error(err, f"process {proc.pid} does not exist")


@pytest.mark.parametrize("make", ["text", "elf", "empty"])
def test_trace_something_that_is_not_go(capsys, tmp_path, make):
    if make == "text":
        target = tmp_path / "script.sh"
        target.write_text("#!/bin/sh\necho hi\n")
    elif make == "empty":
        target = tmp_path / "empty"
        target.write_bytes(b"")
    else:
        target = Path("/bin/true")                 # an ELF, but C
    target.chmod(0o755) if make != "elf" else None
    code, _, err = run(capsys, "trace", "--binary", str(target))
    assert code == 2
    one_line_error(err, "is not a Go program")
    code, _, err = run(capsys, "trace", "--", str(target))
    assert code == 2
    one_line_error(err, "is not a Go program")


def test_trace_a_running_process_that_is_not_go(capsys):
    proc = subprocess.Popen(["sleep", "30"])
    try:
        code, _, err = run(capsys, "trace", "--pid", str(proc.pid))
    finally:
        proc.kill()
        proc.wait()
    assert code == 2
    one_line_error(err, f"process {proc.pid} is not a Go program")


def test_trace_with_a_bad_config(capsys, tmp_path, go_build):
    f = tmp_path / "bad.yaml"
    f.write_text("receivers: {goroutines: {}}\nexporters: {file: {}}\n"
                 "service: {pipelines: {traces: {receivers: [goroutines], exporters: [file]}}}\n")
    code, _, err = run(capsys, "trace", "-c", str(f), "--binary", str(go_build("spawner")))
    assert code == 2
    one_line_error(err, "invalid configuration: exporters::file::path is required")


def test_the_installed_entry_point_exits_2_with_one_line():
    proc = subprocess.run([*GOTEL, "trace", "--pid", "0"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert proc.returncode == 2
    one_line_error(proc.stderr, "--pid '0' is not a process id")


def test_trace_a_file_that_is_not_executable(capsys, tmp_path, go_build):
    target = tmp_path / "server"
    target.write_bytes(Path(go_build("spawner")).read_bytes())
    target.chmod(0o644)
    code, _, err = run(capsys, "trace", "--", str(target))
    assert code == 2
    one_line_error(err, f"{target}: is not executable")


@pytest.mark.parametrize("value", ["-5", "0", "nan", "soon"])
def test_a_duration_that_is_not_positive_is_refused(capsys, value):
    with pytest.raises(SystemExit) as e:
        cli.main(["trace", "--duration", value, "--pid", "1"])
    assert e.value.code == 2
    assert "--duration" in capsys.readouterr().err


def test_an_endpoint_with_another_scheme_says_so(capsys, tmp_path):
    f = tmp_path / "ftp.yaml"
    f.write_text("receivers: {goroutines: {pids: [1]}}\nexporters: {otlp: {endpoint: "
                 "'ftp://collector:4317'}}\nservice: {pipelines: {traces: {receivers: "
                 "[goroutines], exporters: [otlp]}}}\n")
    code, _, err = run(capsys, "validate", "-c", str(f))
    assert code == 2
    one_line_error(err, "scheme ftp:// is not supported")
    assert "path" not in err


def test_pid_1_says_what_the_kernel_refuses(capsys):
    code, _, err = run(capsys, "trace", "--pid", "1")
    assert code == 2
    if os.geteuid() == 0:
        # PID 1 here is not a Go program, or is protected: either way, never "run as root".
        assert "run as root" not in err
        one_line_error(err, "process 1")


def test_gotel_out_is_honoured_with_a_config(tmp_path, monkeypatch, go_build):
    """`gotel trace -c FILE` without --out: ${env:GOTEL_OUT} in the file is the environment's;
    with --out, --out wins."""
    seen = []

    class Ran:
        exit_status = 0

    monkeypatch.setattr(cli, "run_service", lambda cfg, duration=None: seen.append(cfg) or Ran())
    monkeypatch.setenv("GOTEL_OUT", str(tmp_path / "elsewhere"))
    target = str(go_build("spawner"))
    shipped = str(REPO / "config" / "default.yaml")
    assert cli.main(["trace", "-c", shipped, "--binary", target]) == 0
    assert cli.main(["trace", "-c", shipped, "--out", str(tmp_path / "here"), "--binary", target]) == 0
    paths = [cfg.exporters["file/traces"].config.path for cfg in seen]
    assert paths == [f"{tmp_path}/elsewhere/traces.jsonl", f"{tmp_path}/here/traces.jsonl"]


def test_trigger_sched_latency_flag_reaches_the_config(capsys):
    """--trigger-sched-latency-p99 takes a Go duration into receivers::goroutines; a bad one is one
    line and exit status 2."""
    from pipeline import config

    args = cli.build_parser().parse_args(["trace", "--trigger-sched-latency-p99", "20ms", "--pid", "1"])
    settings = cli.level_settings(args)
    assert settings == {"trigger_sched_latency_p99": "20ms"}
    cfg = config.loads((REPO / "config" / "default.yaml").read_text(),
                       receiver_settings={"pids": [1], **settings})
    assert cfg.receivers["goroutines"].config.trigger_sched_latency_p99_s == pytest.approx(0.02)
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(["trace", "--trigger-sched-latency-p99", "fast", "--pid", "1"])
    assert e.value.code == 2
    assert "is not a duration like 20ms" in capsys.readouterr().err
