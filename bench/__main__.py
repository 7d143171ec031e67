"""`make bench` / `python -m bench [--quick]`: every figure of what a payment costs.

Runs the worker, webhook, pipeline, fleet and reconcile benchmarks one after the other (never
side by side: they would measure each other), each as its own process writing its own
results file, then merges them into `bench/results.json`, writes the table
`bench/results.md` and the plots `bench/throughput.png` (worker throughput against
tasks in flight, paystep and the naive consumer on the same axes) and
`bench/fleet.png` (the fleets' create rate against Stripe's limit over time).

A fixed calibration workload (`bench/calibration.py`) is measured before and after
the runs; CPU per task and events/s are also given as multiples of it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

HERE: Final = Path(__file__).parent
RUNS: Final = (
    ("bench.worker_bench", HERE / "results-worker.json"),
    ("bench.webhook_bench", HERE / "results-webhook.json"),
    ("bench.pipeline_bench", HERE / "results-pipeline.json"),
    ("bench.fleet_bench", HERE / "results-fleet.json"),
    ("bench.reconcile_bench", HERE / "results-reconcile.json"),
)
STRIPE_LATENCY_S: Final = 0.2

# (key, figure, how, target, check)
TABLE: Final = (
    ("stripe_calls_per_payment", "Stripe API calls per successful card payment",
     "counted at a proxy before the Stripe emulator, full local stack", "1", lambda v, _: v == 1),
    ("sqs_requests_per_task", "SQS requests per task under load",
     "counted at the SQS endpoint, worker benchmark", "<= 0.25", lambda v, _: v <= 0.25),
    ("state_transitions_per_payment", "Step Functions state transitions per successful payment",
     "execution history on the local stack (one item)", "report", None),
    ("state_transitions_per_payment_no_items", "the same, for an order without items",
     "execution history on the local stack", "report", None),
    ("usd_per_million_payments", "USD per million payments ($0.025 per 1,000 transitions)",
     "transitions x price", "report", None),
    ("worker_tasks_per_s", "worker tasks/s at 16 / 64 / 256 in flight (Stripe 200 ms)",
     "worker benchmark", ">= 90% of in-flight / latency", lambda v, _: all(
         float(rate) >= 0.9 * int(level) / STRIPE_LATENCY_S for level, rate in v.items())),
    ("speedup_vs_naive", "speed-up over the naive consumer at 64 in flight",
     "worker benchmark, same run", ">= 20x", lambda v, _: v >= 20),
    ("worker_cpu_ms_per_task", "worker CPU per task", "process CPU time / tasks", "<= 1 ms",
     lambda v, _: v <= 1),
    ("worker_peak_rss_mb", "worker peak RSS (256 in flight)", "worker benchmark", "<= 150 MB",
     lambda v, _: v <= 150),
    ("webhook_events_per_s", "webhook verified events/s on one core", "webhook benchmark",
     ">= 1,000/s", lambda v, _: v >= 1000),
    ("webhook_p99_ms", "webhook p99 at 200 events/s", "webhook benchmark", "< 20 ms",
     lambda v, _: v < 20),
    ("pipeline_overhead_ms_median", "pipeline overhead, start to SUCCEEDED minus Stripe's and "
     "the webhook delivery's own delays", "end to end on the local stack", "< 100 ms median",
     lambda v, _: v < 100),
    ("worker_cpu_per_task_calibrated", "worker CPU per task / calibration unit",
     "same run, bench/calibration.py", "report", None),
    ("webhook_events_per_s_calibrated", "webhook events/s x calibration unit (s)",
     "same run, bench/calibration.py", "report", None),
    ("fleet_share_of_limit_k1", "1 worker: creates/s over the 25/s endpoint limit",
     "fleet benchmark, settled full-limit phase", ">= 0.95", lambda v, _: v >= 0.95),
    ("fleet_share_of_limit_k2", "2 workers: creates/s over the limit", "fleet benchmark",
     ">= 0.95", lambda v, _: v >= 0.95),
    ("fleet_share_of_limit_k4", "4 workers: creates/s over the limit", "fleet benchmark",
     ">= 0.95", lambda v, _: v >= 0.95),
    ("fleet_429_per_payment", "429s per successful payment once settled (worst K)",
     "fleet benchmark, from 3 s after the first 429 to the halving", "<= 0.02",
     lambda v, _: v <= 0.02),
    ("fleet_429_per_payment_from_5s", "429s per successful payment from 5 s, the first 429s "
     "included (worst K)", "fleet benchmark, 5 s to the halving", "report", None),
    ("fleet_recovery_s", "recovery after the limit halves (worst K)", "fleet benchmark",
     "<= 10 s", lambda v, _: v is not None and v <= 10),
    ("fleet_enqueue_to_created_p99_s", "enqueue to PaymentIntent created p99 (worst K)",
     "fleet benchmark, orders at 1.2x the limit", "report", None),
    ("fleet_lost", "orders lost / duplicated in the fleet runs", "fleet benchmark", "0",
     lambda v, r: v == 0 and r.get("fleet_duplicated") == 0),
    ("webhook_quota_lost_events", "webhook events lost under the SendTask* quota",
     "webhook benchmark, events at 1.6x the quota, 503s redelivered", "0", lambda v, _: v == 0),
    ("webhook_quota_503_share", "share of deliveries answered 503 under the quota",
     "webhook benchmark", "report", None),
    ("reconcile_s_per_20k", "reconcile: one run over 20,000 finished and 200 unfinished payments",
     "reconcile benchmark, fast fakes at Stripe's and Step Functions' quotas", "< 120 s",
     lambda v, _: v < 120),
    ("reconcile_sendtask_per_open", "SendTask* calls per unfinished payment (none for a "
     "finished one)", "reconcile benchmark, counted by the fake Step Functions", "<= 1.1",
     lambda v, r: v <= 1.1 and r.get("reconcile_sendtask_finished") == 0),
    ("reconcile_sendtask_second_run", "SendTask* calls of a second run right after",
     "reconcile benchmark", "0", lambda v, _: v == 0),
)  # fmt: skip

CALIBRATED: Final = (
    ("worker_cpu_per_task_calibrated", "worker_cpu_ms_per_task", lambda v, unit_ms: v / unit_ms),
    ("webhook_events_per_s_calibrated", "webhook_events_per_s", lambda v, ms: v * ms / 1000),
)  # fmt: skip


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "measured_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _format(value: Any) -> str:
    if isinstance(value, dict):
        return " / ".join(_format(v) for v in value.values())
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        f"Measured {machine['measured_at']} on {machine['cpu']}, {machine['cores']} cores, "
        f"Python {machine['python']}{' (quick run)' if results['quick'] else ''}.",
        "",
        f"Calibration unit (bench/calibration.py): {results['calibration']['calibration_ms']:.3f} "
        "ms CPU, measured before and after the runs.",
        "",
        "| figure | how | target | measured | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, figure, how, target, check in TABLE:
        value = results.get(key)
        met = "-" if check is None or value is None else ("yes" if check(value, results) else "no")
        lines.append(f"| {figure} | {how} | {target} | {_format(value)} | {met} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(int(level) for level in results["worker_tasks_per_s"])
    paystep = [results["worker_tasks_per_s"][str(level)] for level in levels]
    naive = [results["naive_tasks_per_s"]] * len(levels)
    ideal = [level / STRIPE_LATENCY_S for level in levels]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(levels, ideal, linestyle=":", color="grey", label="in flight / Stripe latency")
    ax.plot(levels, paystep, marker="o", label="paystep worker")
    ax.plot(levels, naive, marker="s", label="naive consumer (one at a time)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(levels, [str(level) for level in levels])
    ax.set_xlabel("tasks in flight")
    ax.set_ylabel("tasks/s (Stripe latency 200 ms)")
    ax.set_title("Worker throughput against tasks in flight")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_fleet(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fleets = results["runs"]["bench.fleet_bench"]["fleet_by_pods"]
    limit = results["runs"]["bench.fleet_bench"]["fleet_binding_limit_per_s"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    halved_at = end = 0.0
    for pods, figures in fleets.items():
        times = [t + 1.0 for t, _, _ in figures["series"]]  # the middle of each 2 s window
        ax.plot(times, [r for _, r, _ in figures["series"]], label=f"{pods} worker(s)")
        halved_at, end = figures["halved_at_s"], max(end, times[-1])
    run_s = results["runs"]["bench.fleet_bench"]["fleet_run_s"]
    ax.step(
        [0, halved_at, run_s, end],
        [limit, limit / 2, limit, limit],
        where="post",
        color="black",
        linestyle=":",
        label="endpoint limit (halved; restored once orders stop, to drain)",
    )
    ax.set_xlabel("seconds since the first order (rate over 2 s windows)")
    ax.set_ylabel("PaymentIntents created/s")
    ax.set_title("A fleet of workers against Stripe's 25/s create limit")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a reduced run (under a minute)")
    args = parser.parse_args(argv)
    from bench.calibration import calibrate

    results: dict[str, Any] = {"quick": args.quick, "machine": _machine(), "runs": {}}
    before = calibrate()
    failed = []
    for module, output in RUNS:
        begun = time.monotonic()
        print(f"== {module}{' --quick' if args.quick else ''}", flush=True)
        command = [sys.executable, "-m", module, *(["--quick"] if args.quick else [])]
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(module)
        figures = json.loads(output.read_text())
        results["runs"][module] = {"seconds": round(time.monotonic() - begun, 1), **figures}
        # The pipeline run's Stripe count is the one on the real stack: it wins.
        results.update({k: v for k, v in figures.items() if k in dict.fromkeys(t[0] for t in TABLE)
                        or k in ("naive_tasks_per_s", "fleet_duplicated",
                                 "reconcile_sendtask_finished")})  # fmt: skip
    after = calibrate()
    unit_ms = (before["calibration_ms"] + after["calibration_ms"]) / 2
    results["calibration"] = {"before": before, "after": after, "calibration_ms": unit_ms}
    for key, source, convert in CALIBRATED:
        if isinstance(results.get(source), int | float):
            results[key] = round(convert(results[source], unit_ms), 3)
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    (HERE / "results.md").write_text(table)
    plot(results, HERE / "throughput.png")
    plot_fleet(results, HERE / "fleet.png")
    print()
    print(table)
    print(f"wrote results.json, results.md, throughput.png and fleet.png in {HERE}")
    if failed:
        print(f"benchmarks that reported failures: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
