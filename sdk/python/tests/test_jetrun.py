"""Unit tests of the jetrun SDK: each mode's protocol, spoken to a real
child process as jetrun would (without jetrun or NATS), and the helpers.

    cd sdk/python && python3 -m unittest discover -s tests
"""

import datetime
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

import jetrun

SDK = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import os, sys
    import jetrun

    @jetrun.handler
    def handle(event):
        data = jetrun.data(event)
        print("a log line")
        sys.stdout.write("written to sys.stdout\\n")
        os.system("echo from a child")
        if data.get("bad"):
            raise jetrun.Permanent("bad\\ninput")
        if data.get("boom"):
            raise ValueError("boom")
        if data.get("dict"):
            return {"type": "x"}
        return [jetrun.emit("x.out", {"n": data["n"], "attempt": jetrun.attempt()})]

    @jetrun.projection
    def project(event, key, state):
        if jetrun.data(event).get("delete"):
            return jetrun.DELETE
        if jetrun.data(event).get("forget"):
            return None
        return {"key": key, "count": (state or {}).get("count", 0) + 1}

    {"handle": handle, "project": project}[sys.argv[1]].run()
    """
)


class Child(unittest.TestCase):
    def setUp(self):
        folder = tempfile.TemporaryDirectory()
        self.addCleanup(folder.cleanup)
        self.script = os.path.join(folder.name, "script.py")
        with open(self.script, "w") as f:
            f.write(SCRIPT)

    def run_child(self, role, stdin, env):
        base = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": SDK}
        return subprocess.run(
            [sys.executable, self.script, role],
            input=stdin,
            env=dict(base, **env),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def per_event(self, data, role="handle"):
        event = {"id": "e-1", "type": "x.in", "data": data}
        env = {"JETRUN_FUNCTION": "f", "JETRUN_ATTEMPT": "3"}
        return self.run_child(role, json.dumps(event), env)

    def test_per_event_emits_on_stdout_and_logs_on_stderr(self):
        done = self.per_event({"n": 1})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            json.loads(done.stdout), {"emit": [{"type": "x.out", "data": {"n": 1, "attempt": 3}}]}
        )
        for line in ["a log line", "written to sys.stdout", "from a child"]:
            self.assertIn(line, done.stderr)

    def test_per_event_permanent_exits_65_with_the_reason_last(self):
        done = self.per_event({"bad": True})
        self.assertEqual((done.returncode, done.stdout), (65, ""))
        self.assertEqual(done.stderr.strip().splitlines()[-1], "bad input")

    def test_per_event_exception_exits_1_with_a_traceback(self):
        done = self.per_event({"boom": True})
        self.assertEqual((done.returncode, done.stdout), (1, ""))
        self.assertIn("Traceback", done.stderr)
        self.assertEqual(done.stderr.strip().splitlines()[-1], "ValueError: boom")

    def test_per_event_a_return_the_protocol_cannot_carry_is_retried(self):
        self.assertEqual(self.per_event({"dict": True}).returncode, 1)
        self.assertEqual(self.per_event({"forget": True}, role="project").returncode, 1)

    def test_worker_answers_each_request_by_id_and_survives_failures(self):
        requests = [
            {"id": 4, "event": {"id": "a", "type": "x.in", "data": {"n": 1}}, "attempt": 2},
            {"id": 5, "event": {"id": "b", "type": "x.in", "data": {"bad": True}}, "attempt": 1},
            {"id": 6, "event": {"id": "c", "type": "x.in", "data": {"boom": True}}, "attempt": 1},
            {"id": 7, "event": {"id": "d", "type": "x.in", "data": {"n": 2}}, "attempt": 1},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests)
        done = self.run_child("handle", stdin, {"JETRUN_FUNCTION": "f"})
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual(
            replies,
            [
                {"id": 4, "ok": True, "emit": [{"type": "x.out", "data": {"n": 1, "attempt": 2}}]},
                {"id": 5, "ok": False, "error": "bad input", "retryable": False},
                {"id": 6, "ok": False, "error": "ValueError: boom", "retryable": True},
                {"id": 7, "ok": True, "emit": [{"type": "x.out", "data": {"n": 2, "attempt": 1}}]},
            ],
        )
        self.assertIn("from a child", done.stderr)

    def test_worker_answers_a_batch_line_with_results_per_item(self):
        batch = [
            {"id": 8, "event": {"id": "a", "type": "x.in", "data": {"n": 1}}, "attempt": 2},
            {"id": 9, "event": {"id": "b", "type": "x.in", "data": {"bad": True}}, "attempt": 1},
            {"id": 10, "event": {"id": "c", "type": "x.in", "data": {"boom": True}}, "attempt": 1},
        ]
        single = {"id": 11, "event": {"id": "d", "type": "x.in", "data": {"n": 2}}, "attempt": 1}
        stdin = json.dumps(batch) + "\n" + json.dumps(single) + "\n"
        done = self.run_child("handle", stdin, {"JETRUN_FUNCTION": "f"})
        self.assertEqual(done.returncode, 0, done.stderr)
        replies = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual(
            replies,
            [
                {
                    "results": [
                        {"id": 8, "ok": True, "emit": [{"type": "x.out", "data": {"n": 1, "attempt": 2}}]},
                        {"id": 9, "error": "bad input", "permanent": True},
                        {"id": 10, "error": "ValueError: boom"},
                    ]
                },
                {"id": 11, "ok": True, "emit": [{"type": "x.out", "data": {"n": 2, "attempt": 1}}]},
            ],
        )

    def test_per_event_a_batch_on_stdin_is_answered_per_item_by_event_id(self):
        events = [
            {"id": "a", "type": "x.in", "data": {"n": 1}},
            {"id": "b", "type": "x.in", "data": {"bad": True}},
        ]
        env = {"JETRUN_FUNCTION": "f", "JETRUN_ATTEMPT": "2", "JETRUN_BATCH": "2"}
        done = self.run_child("handle", json.dumps(events), env)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(
            json.loads(done.stdout),
            {
                "results": [
                    {"id": "a", "ok": True, "emit": [{"type": "x.out", "data": {"n": 1, "attempt": 2}}]},
                    {"id": "b", "error": "bad input", "permanent": True},
                ]
            },
        )

    def test_worker_answering_functions_read_input_and_reply_result(self):
        requests = [
            {"id": 1, "input": {"event": {"type": "t", "data": {}}, "key": "k", "state": None}, "attempt": 1},
            {"id": 2, "input": {"event": {"type": "t", "data": {}}, "key": "k", "state": {"count": 1}}, "attempt": 1},
            {"id": 3, "input": {"event": {"type": "t", "data": {"delete": True}}, "key": "k", "state": None}, "attempt": 1},
        ]
        stdin = "".join(json.dumps(r) + "\n" for r in requests)
        done = self.run_child("project", stdin, {"JETRUN_FUNCTION": "f"})
        replies = [json.loads(line) for line in done.stdout.splitlines()]
        self.assertEqual(
            [r["result"] for r in replies],
            [{"state": {"key": "k", "count": 1}}, {"state": {"key": "k", "count": 2}}, {"delete": True}],
        )

    def test_by_hand_without_jetrun_it_handles_stdin_once(self):
        event = {"id": "e", "type": "x.in", "data": {"n": 9}}
        done = self.run_child("handle", json.dumps(event), {})
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["emit"][0]["data"], {"n": 9, "attempt": 1})


class Helpers(unittest.TestCase):
    def test_a_decorated_function_is_still_callable(self):
        @jetrun.handler
        def double(event):
            return [jetrun.emit("doubled", jetrun.data(event) * 2)]

        self.assertEqual(double({"data": 4}), [{"type": "doubled", "data": 8}])
        self.assertEqual(double.answer({"data": 4}), {"emit": [{"type": "doubled", "data": 8}]})

    def test_data_decodes_base64_and_knows_no_data(self):
        self.assertEqual(jetrun.data({"data": {"a": 1}}), {"a": 1})
        self.assertEqual(jetrun.data({"data_base64": "aGk="}), b"hi")
        self.assertIsNone(jetrun.data({}))

    def test_emit_names_a_subject_only_when_given(self):
        self.assertEqual(jetrun.emit("t", 1), {"type": "t", "data": 1})
        self.assertEqual(jetrun.emit("t", 1, "s.x"), {"type": "t", "data": 1, "subject": "s.x"})

    def test_a_delayed_emit_says_its_delay_or_time(self):
        self.assertEqual(
            jetrun.emit("t", 1, delay="10m"), {"type": "t", "data": 1, "delay": "10m"}
        )
        self.assertEqual(
            jetrun.emit("t", 1, delay=datetime.timedelta(seconds=90))["delay"], "90000ms"
        )
        at = datetime.datetime(2026, 12, 24, 18, 0, tzinfo=datetime.timezone.utc)
        self.assertEqual(jetrun.emit("t", 1, at=at)["at"], "2026-12-24T18:00:00+00:00")
        with self.assertRaises(TypeError):
            jetrun.emit("t", 1, delay="1m", at="2026-12-24T18:00:00Z")
        with self.assertRaises(TypeError):
            jetrun.emit("t", 1, at=datetime.datetime(2026, 12, 24, 18, 0))

    def test_a_malformed_emit_is_refused(self):
        @jetrun.handler
        def bad(event):
            return [event]

        for emitted in [{"data": 1}, {"type": ""}, {"type": "t", "extra": 1}, "t"]:
            with self.assertRaises(TypeError):
                bad.answer(emitted)

    def test_aggregate_state_folds_history_from_the_snapshot(self):
        add = lambda total, event: total + event["data"]
        history = [{"type": "added", "data": 2}, {"type": "added", "data": 3}]
        self.assertEqual(jetrun.Aggregate("a", 2, history).state(add, initial=0), 5)
        self.assertEqual(jetrun.Aggregate("a", 12, history, snapshot=10).state(add, initial=0), 15)
        self.assertEqual(jetrun.Aggregate("a", 12, history, snapshot=0).state(add, initial=100), 5)

    def test_a_command_handler_answers_a_decision(self):
        @jetrun.aggregate
        def decide(command, instance):
            return jetrun.Decision(append=[jetrun.emit("added", jetrun.data(command))], snapshot=0)

        document = {"command": {"data": 7}, "aggregate": {"id": "a", "version": 0, "history": [], "snapshot": None}}
        self.assertEqual(decide.answer(document), {"append": [{"type": "added", "data": 7}], "snapshot": 0})

        @jetrun.aggregate
        def loose(command, instance):
            return {"append": []}

        with self.assertRaises(TypeError):
            loose.answer(document)

    def test_a_query_answers_what_the_function_returns(self):
        @jetrun.query
        def get(request, key, state):
            return state or {"found": False, "key": key}

        self.assertEqual(get.answer({"request": {}, "key": "k", "state": None}), {"found": False, "key": "k"})


if __name__ == "__main__":
    unittest.main()
