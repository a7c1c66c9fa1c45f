#!/usr/bin/env python3
"""nightly_report: a scheduled jetrun function (config/examples/schedules.toml),
written with the jetrun Python SDK (sdk/python).

Each tick is a CloudEvent of type `jetrun.schedule.tick` whose data names the
function and the time the tick was scheduled for:

    {"type": "jetrun.schedule.tick",
     "data": {"function": "nightly-report", "scheduled_at": "2026-12-06T02:00:00+01:00"}}

It emits `report.daily.ready` for that night. The emitted event's id is
derived from the tick's, so a retried tick emits it once.

Try it by hand:

    echo '{"id": "nightly-report@2026-12-06T02:00:00+01:00", "type": "jetrun.schedule.tick", "data": {"function": "nightly-report", "scheduled_at": "2026-12-06T02:00:00+01:00"}}' \
        | python3 functions/examples/nightly_report.py
"""

import os
import sys

try:
    import jetrun
except ImportError:  # run from the repository, without `pip install ./sdk/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "sdk", "python"))
    import jetrun


@jetrun.handler
def report(event):
    """The night's report, ready: one event for the tick's date."""
    data = jetrun.data(event)
    night = str(data.get("scheduled_at", ""))[:10]
    print(f"nightly-report: building the report for {night}", file=sys.stderr)
    return [{"type": "report.daily.ready", "data": {"night": night}}]


if __name__ == "__main__":
    report.run()
