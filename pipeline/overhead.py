"""``gotel.target.overhead``: gotel's estimate of what its probes cost each traced process.

A gauge per process (under that process's Resource), the fraction of the process's CPU time spent
in gotel's probe hits, as ``receiver.levels.LevelController`` estimates it (hits per second x the
cost of one hit calibrated at start / the process's CPU time per second), with the level the
process is traced at now as ``gotel.level``.
"""

NAME = "gotel.target.overhead"


def add_to_request(request, controller, resource_for, now_ns):
    """Append the gauge to an ExportMetricsServiceRequest (into each process's ResourceMetrics,
    or a new one for a process without runtime metrics yet)."""
    if controller is None:
        return request
    by_pid = {}
    for unit in controller.status():
        for pid in unit["pids"]:
            by_pid[pid] = unit
    if not by_pid:
        return request
    rms = {}
    for rm in request.resource_metrics:
        for kv in rm.resource.attributes:
            if kv.key == "process.pid":
                rms[kv.value.int_value] = rm
    for pid, unit in sorted(by_pid.items()):
        rm = rms.get(pid)
        if rm is None:
            rm = request.resource_metrics.add()
            rm.resource.CopyFrom(resource_for(pid))
            rm.scope_metrics.add().scope.name = "gotel"
        metric = rm.scope_metrics[0].metrics.add(
            name=NAME, unit="1",
            description="Estimated share of the process's CPU time spent in gotel's probes.")
        dp = metric.gauge.data_points.add(time_unix_nano=now_ns, as_double=float(unit["overhead"]))
        attr = dp.attributes.add(key="gotel.level")
        attr.value.string_value = unit["level"]
    return request


def describe(unit):
    """One summary line for a unit of ``LevelController.status()``."""
    who = f"process {unit['pid']}" if unit["pid"] > 0 else unit["path"]
    total = unit["cost_ns"] / unit["cpu_ns"] if unit["cpu_ns"] else 0.0
    line = (f"{who}: {unit['level']} now, estimated overhead {total * 100:.2f}% of its CPU time "
            f"over the run ({unit['overhead'] * 100:.2f}% lately)")
    if unit["windows"]:
        line += f", {unit['windows']} window(s) of full tracing ({unit['window_s']:.1f}s)"
    return line
