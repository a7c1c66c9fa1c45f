"""Draws the "how cost grows" section of a jetrun-bench JSON file as a PNG.

    target/release/jetrun-bench --only scaling --runs 5 --json bench/scaling.json
    python bench/plot.py bench/scaling.json bench/scaling.png

Needs matplotlib (`pip install matplotlib`, in the bench venv say). Three
columns, one per axis (functions sharing the load, payload size, the
function's concurrency); the top row is events per second (median, with the
runs' min-max as error bars), the bottom row the consumer's CPU per event.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AXES = [
    ("functions", "functions sharing the load", "log"),
    ("payload_bytes", "payload (bytes)", "log"),
    ("concurrency", "concurrency of the function", "log"),
]
SERIES = [("baseline", "bare async-nats consumer", "tab:gray"), ("jetrun", "jetrun noop", "tab:blue")]


def main(source, target):
    with open(source) as f:
        report = json.load(f)
    scaling = report.get("scaling")
    if not scaling:
        sys.exit(f"{source} has no scaling section: run jetrun-bench --only scaling --json ...")
    figure, grid = plt.subplots(2, 3, figsize=(14, 7.5), constrained_layout=True)
    for column, (axis, label, scale) in enumerate(AXES):
        points = sorted((p for p in scaling["points"] if p["axis"] == axis), key=lambda p: p["value"])
        xs = [p["value"] for p in points]
        rate, cpu = grid[0][column], grid[1][column]
        for key, name, colour in SERIES:
            series = [p[key] for p in points]
            medians = [s["median_events_per_second"] or 0 for s in series]
            below = [m - (s["min_events_per_second"] or m) for m, s in zip(medians, series)]
            above = [(s["max_events_per_second"] or m) - m for m, s in zip(medians, series)]
            rate.errorbar(xs, medians, yerr=[below, above], marker="o", capsize=3, label=name, color=colour)
            cpu.plot(xs, [s["median_consumer_cpu_us"] or 0 for s in series], marker="o", label=name, color=colour)
        for point in points:
            if point["ratio"] is not None:
                rate.annotate(
                    f'{point["ratio"]:.2f}x',
                    (point["value"], point["jetrun"]["median_events_per_second"] or 0),
                    textcoords="offset points",
                    xytext=(0, -14),
                    ha="center",
                    fontsize=8,
                    color="tab:blue",
                )
        for ax in (rate, cpu):
            ax.set_xscale(scale, base=2 if axis != "functions" else 10)
            ax.set_xticks(xs)
            ax.set_xticklabels([human(x, axis) for x in xs])
            ax.grid(True, alpha=0.3)
            ax.set_ylim(bottom=0)
        rate.set_title(label)
        cpu.set_xlabel(label)
        if column == 0:
            rate.set_ylabel("events/s (median, min-max)")
            cpu.set_ylabel("consumer CPU µs per event")
        rate.legend(fontsize=8, loc="lower left")
    setup = report.get("setup", {})
    figure.suptitle(
        f'jetrun-bench: how cost grows ({scaling["runs"]} runs, nats-server {setup.get("nats_server", "?")}; '
        "labels: jetrun ÷ baseline)"
    )
    figure.savefig(target, dpi=100)


def human(value, axis):
    if axis == "payload_bytes":
        return f"{value // 1024} KiB" if value >= 1024 else f"{value} B"
    return str(value)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
