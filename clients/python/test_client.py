"""Tests of the Python client (clients/python/epoch) against a real epochd.

Run: /usr/bin/python3 -m unittest -v clients/python/test_client.py
The binaries come from $EPOCH_BIN_DIR (default: ../../build/bin from this file). Each
test class starts its own epochd (as tests/harness.cc's Epochd::Launch does: a data
dir of its own, tokens.json holding the SHA-256 of generated tokens, --address-file,
cluster.basePort=0, --insecure-http, two small containers) and kills every process it
started (epochd's process group; the epoch-agents it detached and their steps) in its
class cleanup, then removes its temp dir.
"""

import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import epoch  # noqa: E402

BIN_DIR = os.environ.get("EPOCH_BIN_DIR") or os.path.normpath(
    os.path.join(HERE, "..", "..", "build", "bin"))


# ---- a real epochd -----------------------------------------------------------------


def new_token():
    """(token, id) in epochd's format (api/auth.cc GenerateToken):
    epoch_<8 hex id>_<64 hex>."""
    token_id = secrets.token_hex(4)
    return "epoch_%s_%s" % (token_id, secrets.token_hex(32)), token_id


def write_tokens(data_dir, entries):
    """tokens.json as api::SaveTokens writes it: {"tokens": [{id, sha256 (of the
    whole token, hex), user, tenant, role, created_at}]}, mode 0600."""
    os.makedirs(data_dir, exist_ok=True)
    tokens = []
    for token, user, tenant, role in entries:
        tokens.append({"id": token[6:14], "sha256": hashlib.sha256(token.encode()).hexdigest(),
                       "user": user, "tenant": tenant, "role": role, "created_at": ""})
    path = os.path.join(data_dir, "tokens.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"tokens": tokens}, f, indent=2)
    os.chmod(tmp, 0o600)
    os.rename(tmp, path)


def _descendants(pid):
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir("/proc/%d/task" % p)
        except OSError:
            continue
        for tid in tids:
            try:
                with open("/proc/%d/task/%s/children" % (p, tid)) as f:
                    kids = [int(x) for x in f.read().split()]
            except OSError:
                continue
            for k in kids:
                if k not in out:
                    out.append(k)
                    todo.append(k)
    return out


def _pids_naming(text):
    """Live processes whose command line names `text` (a unique temp dir)."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                cmd = f.read()
            with open("/proc/%s/stat" % name) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text.encode() in cmd and state not in ("Z", "X"):
            out.append(int(name))
    return out


def kill_started(data_dir, procs):
    """SIGKILLs what a test started: each epochd's process group, and every process
    naming the data dir (the epoch-agents epochd detached into sessions of their own)
    with its process group and descendants (the steps)."""
    own_group = os.getpgrp()
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            p.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = _pids_naming(data_dir)
        if not pids:
            return
        for pid in pids:
            for victim in _descendants(pid) + [pid]:
                try:
                    group = os.getpgid(victim)
                    if group != own_group:
                        os.killpg(group, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    os.kill(victim, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(0.05)


class Epochd:
    """One epochd on a data dir of its own (tests/harness.cc Epochd)."""

    DEFAULTS = ["sig.maxReplicas=2", "sig.minReplicas=2", "sig.cpu=2", "sig.memory=1Gi",
                "executor.leaseTime=2s", "executor.pollTimeout=500ms", "executor.killGrace=1s"]

    def __init__(self, root, extra=(), tls=False):
        self.root = root
        self.data_dir = os.path.join(root, "data")
        self.extra = list(extra)
        self.tls = tls
        self.procs = []
        self.proc = None
        self.url = None
        self.admin, _ = new_token()
        self.viewer, _ = new_token()
        self.operator, _ = new_token()
        write_tokens(self.data_dir, [(self.admin, "test", "default", "admin"),
                                     (self.viewer, "watcher", "default", "viewer"),
                                     (self.operator, "op", "default", "operator")])

    @property
    def log_path(self):
        return os.path.join(self.data_dir, "master.log")

    def log(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-6000:]
        except OSError:
            return "(no log)"

    def launch(self, port=0):
        epochd = os.path.join(BIN_DIR, "epochd")
        if not os.access(epochd, os.X_OK):
            raise RuntimeError("no epochd at %s (set EPOCH_BIN_DIR)" % epochd)
        address_file = os.path.join(self.data_dir, "master.address")
        if os.path.exists(address_file):
            os.remove(address_file)
        args = [epochd, "--data-dir", self.data_dir, "--set", "cluster.basePort=%d" % port,
                "--log-level", "debug", "--address-file", address_file,
                "--set", "master.name=master"]
        for s in self.DEFAULTS + self.extra:
            args += ["--set", s]
        if not self.tls:
            args.append("--insecure-http")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        finally:
            log.close()
        self.procs.append(self.proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with open(address_file) as f:
                    self.url = json.load(f)["address"]
                break
            except (OSError, ValueError, KeyError):
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        else:
            self.url = None
        if not self.url:
            raise RuntimeError("epochd did not bind; its log:\n" + self.log())
        c = self.client(token=None)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if c.ready().get("ready"):
                    return
            except epoch.EpochError:
                pass
            time.sleep(0.02)
        raise RuntimeError("epochd did not become ready; its log:\n" + self.log())

    @property
    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def ca_file(self):
        return os.path.join(self.data_dir, "tls", "cert.pem")

    def client(self, token="admin", **kw):
        token = {"admin": self.admin, "viewer": self.viewer,
                 "operator": self.operator}.get(token, token)
        if self.tls and "ca_file" not in kw and "insecure" not in kw:
            kw["ca_file"] = self.ca_file()
        return epoch.Client(self.url, token=token, timeout=10, **kw)

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop_all(self):
        kill_started(self.data_dir, self.procs)


class EpochdTestCase(unittest.TestCase):
    """Starts one epochd for the class; kills all it started and removes the temp
    dir when the class is done (also when setUpClass fails)."""

    EXTRA = ["executor.metricsInterval=200ms"]
    TLS = False

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="epoch-pyclient.")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.d = Epochd(cls.tmp, cls.EXTRA, tls=cls.TLS)
        cls.addClassCleanup(cls.d.stop_all)
        cls.d.launch()
        cls.c = cls.d.client()

    def tearDown(self):
        if hasattr(self, "_outcome") and self._outcome and not self._outcome.success:
            sys.stderr.write("\n--- epochd log (last part) ---\n%s\n" % self.d.log())

    def unique(self, prefix):
        return "%s-%s" % (prefix, secrets.token_hex(3))

    def register(self, name, command, **step):
        definition = {"name": name, "steps": [dict({"name": "s", "command": command}, **step)]}
        return self.c.register_workflow(definition)


def sh(script):
    return ["sh", "-c", script]


# ---- the calls ---------------------------------------------------------------------


class ClientTest(EpochdTestCase):

    def test_register_workflow_returns_name_version_digest(self):
        name = self.unique("wf")
        definition = {"name": name, "params": {"n": 1},
                      "steps": [{"name": "a", "command": sh("echo {{params.n}}")}]}
        first = self.c.register_workflow(definition)
        self.assertEqual(self.c.last_status, 201)
        self.assertEqual(first["name"], name)
        self.assertEqual(first["version"], 1)
        self.assertRegex(first["digest"], r"^[0-9a-f]{64}$")
        again = self.c.register_workflow(definition)
        self.assertEqual(self.c.last_status, 200)
        self.assertEqual(again, first)
        definition["params"]["n"] = 2
        second = self.c.register_workflow(definition)
        self.assertEqual(second["version"], 2)
        self.assertNotEqual(second["digest"], first["digest"])
        got = self.c.get_workflow(name, version=1)
        self.assertEqual(json.dumps(got).count('"n"') >= 1, True)
        self.assertIn(name, [w.get("name") for w in self.c.list_workflows()["items"]])
        with self.assertRaises(epoch.NotFoundError):
            self.c.get_workflow(name, version=9)

    def test_submit_with_the_same_idempotency_key_returns_the_same_run(self):
        name = self.unique("idem")
        self.register(name, sh("true"))
        key = self.unique("key")
        first = self.c.submit_run(name, params={}, labels={"team": "a"}, priority=5,
                                  idempotency_key=key)
        self.assertEqual(self.c.last_status, 201)
        second = self.c.submit_run(name, params={}, labels={"team": "a"}, priority=5,
                                   idempotency_key=key)
        self.assertEqual(self.c.last_status, 200)
        self.assertEqual(second["id"], first["id"])
        self.assertEqual(first["labels"], {"team": "a"})
        self.assertEqual(first["priority"], 5)
        self.assertEqual(first["workflow"], name)
        # The same key for another request is refused.
        with self.assertRaises(epoch.InvalidError) as cm:
            self.c.submit_run(name, labels={"team": "b"}, idempotency_key=key)
        self.assertEqual(cm.exception.status, 422)
        self.assertEqual(cm.exception.code, "idempotency_key_reused")
        # Without a key, two submits are two runs.
        a = self.c.submit_run(name)
        b = self.c.submit_run(name)
        self.assertNotEqual(a["id"], b["id"])
        for run in (first, a, b):
            self.assertEqual(self.c.wait_run(run["id"], timeout=30)["state"], "succeeded")

    def test_wait_returns_succeeded_and_logs_hold_the_output(self):
        name = self.unique("hi")
        self.register(name, sh("echo hi; echo second line; echo to-stderr >&2"))
        run = self.c.submit_run(name)
        self.assertIn(run["state"], ("queued", "running"))
        done = self.c.wait_run(run["id"], timeout=30)
        self.assertEqual(done["state"], "succeeded")
        self.assertEqual(done["id"], run["id"])
        attempt = done["steps"][0]["attempts"][0]
        self.assertEqual(attempt["exit_code"], 0)
        self.assertEqual(self.c.get_run(run["id"])["state"], "succeeded")
        text = self.c.logs(run["id"], "s")
        self.assertIn("hi\n", text)
        self.assertIn("second line\n", text)
        self.assertIn("to-stderr\n", text)
        self.assertEqual(self.c.logs(run["id"], "s", tail=1).splitlines()[-1:],
                         [text.splitlines()[-1]])
        self.assertEqual(self.c.logs(run["id"], "s", attempt=1), text)
        # A finished attempt's log followed: everything, then the end.
        self.assertEqual("".join(self.c.follow_logs(run["id"], "s")), text)
        history = self.c.run_history(run["id"])
        self.assertEqual(history["state"], "succeeded")
        types = [e["type"] for e in self.c.run_events(run["id"])["items"]]
        self.assertEqual(types[0], "RunSubmitted")
        self.assertEqual(types[-1], "RunSucceeded")

    def test_wait_times_out(self):
        name = self.unique("slow")
        self.register(name, sh("sleep 30"))
        run = self.c.submit_run(name)
        t0 = time.monotonic()
        with self.assertRaises(epoch.EpochTimeoutError) as cm:
            self.c.wait_run(run["id"], timeout=1.0)
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIsNotNone(cm.exception.run)
        self.assertIn(cm.exception.run["state"], ("queued", "running"))
        self.c.cancel_run(run["id"])
        self.assertEqual(self.c.wait_run(run["id"], timeout=30)["state"], "cancelled")

    def test_follow_logs_yields_lines_as_the_step_prints_them(self):
        name = self.unique("drip")
        self.register(name, sh("for i in 1 2 3 4 5 6; do echo line $i; sleep 0.4; done"))
        run = self.c.submit_run(name)
        seen = []
        with self.c.follow_logs(run["id"], "s") as f:
            for text in f:
                seen.append((time.monotonic(), text))
        joined = "".join(t for _, t in seen)
        self.assertEqual(joined, "".join("line %d\n" % i for i in range(1, 7)))
        first = next(t for t, text in seen if "line 1" in text)
        last = next(t for t, text in seen if "line 6" in text)
        # Yielded as printed (2 s apart from first to last), not all at the end.
        self.assertGreater(last - first, 1.0)
        self.assertEqual(f.reconnects, 0)
        self.assertEqual(self.c.wait_run(run["id"], timeout=30)["state"], "succeeded")

    def test_follow_metrics_yields_points_as_the_step_writes_them(self):
        name = self.unique("curve")
        self.register(name, sh(
            'for i in 1 2 3 4 5 6 7 8; do echo "{\\"step\\": $i, \\"loss\\": $((100 - i)), '
            '\\"lr\\": 0.5}" >> "$EPOCH_METRICS"; sleep 0.3; done'), kind="train")
        run = self.c.submit_run(name)
        seen = []
        for point in self.c.follow_metrics(run["id"], "s", name="loss"):
            seen.append((time.monotonic(), point))
        points = [p for _, p in seen]
        self.assertEqual([p["x"] for p in points], list(range(1, 9)))
        self.assertEqual([p["values"] for p in points], [{"loss": 100 - i} for i in range(1, 9)])
        self.assertEqual([p["index"] for p in points], list(range(8)))
        self.assertTrue(all(p["attempt"] == 1 and p["rank"] == 0 for p in points))
        # Streamed while the step ran (it writes for ~2.4 s), not all at its end.
        self.assertGreater(seen[-1][0] - seen[0][0], 1.0)
        positions = [p["position"] for p in points]
        self.assertEqual(positions, sorted(positions))
        # The same series read whole.
        m = self.c.metrics(run["id"], "s", name="loss")
        series = [s for s in m["series"] if s["name"] == "loss"]
        self.assertEqual(len(series), 1)
        self.assertEqual(series[0]["points"], [[i, 100 - i] for i in range(1, 9)])
        self.assertEqual(m["last"]["loss"], 92)
        all_series = self.c.metrics(run["id"], "s")
        self.assertEqual(sorted(s["name"] for s in all_series["series"]), ["loss", "lr"])
        # Resumed from a position: only what came after it.
        later = list(self.c.follow_metrics(run["id"], "s", after=positions[3]))
        self.assertTrue(later)
        self.assertTrue(all(p["position"] > positions[3] for p in later))

    def test_cancel_and_retry(self):
        name = self.unique("cancel")
        self.register(name, sh("sleep 30"))
        run = self.c.submit_run(name)
        deadline = time.monotonic() + 20
        while self.c.get_run(run["id"])["state"] != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        cancelled = self.c.cancel_run(run["id"])
        self.assertEqual(cancelled["id"], run["id"])
        self.assertEqual(self.c.last_status, 202)
        done = self.c.wait_run(run["id"], timeout=30)
        self.assertEqual(done["state"], "cancelled")

        # A step that fails its first attempt and succeeds when retried.
        name = self.unique("flaky")
        self.register(name, sh('if [ -e "$EPOCH_WORKSPACE/seen" ]; then echo ok; else '
                               'touch "$EPOCH_WORKSPACE/seen"; echo failing; exit 3; fi'))
        run = self.c.submit_run(name)
        failed = self.c.wait_run(run["id"], timeout=30)
        self.assertEqual(failed["state"], "failed")
        self.assertEqual(failed["steps"][0]["attempts"][-1]["exit_code"], 3)
        retried = self.c.retry_run(run["id"])
        self.assertEqual(retried["id"], run["id"])
        self.assertEqual(self.c.last_status, 202)
        done = self.c.wait_run(run["id"], timeout=30)
        self.assertEqual(done["state"], "succeeded")
        attempts = done["steps"][0]["attempts"]
        self.assertEqual([a["exit_code"] for a in attempts], [3, 0])
        self.assertIn("failing", self.c.logs(run["id"], "s", attempt=1))
        self.assertEqual(self.c.logs(run["id"], "s").strip(), "ok")
        with self.assertRaises(epoch.ConflictError) as cm:
            self.c.retry_run(run["id"])  # nothing left to retry
        self.assertEqual(cm.exception.status, 409)

    def test_list_runs_filters_and_pages(self):
        name = self.unique("many")
        self.register(name, sh("true"))
        batch = self.unique("batch")
        ids = [self.c.submit_run(name, labels={"batch": batch, "i": str(i)})["id"]
               for i in range(5)]
        page = self.c.list_runs(labels={"batch": batch}, limit=2)
        self.assertEqual(len(page["items"]), 2)
        self.assertIsInstance(page["next_cursor"], str)
        self.assertEqual(page["items"][0]["id"], ids[-1])  # newest first
        nxt = self.c.list_runs(labels={"batch": batch}, limit=2, cursor=page["next_cursor"])
        self.assertEqual([r["id"] for r in nxt["items"]], [ids[2], ids[1]])
        every = [r["id"] for r in self.c.iter_runs(labels={"batch": batch}, page_size=2)]
        self.assertEqual(every, list(reversed(ids)))
        self.assertEqual([r["id"] for r in self.c.iter_runs(labels=["batch=%s" % batch, "i=3"])],
                         [ids[3]])
        self.assertEqual(len(list(self.c.iter_runs(workflow=name, page_size=3))), 5)
        for i in ids:
            self.c.wait_run(i, timeout=30)
        ok = [r["id"] for r in self.c.iter_runs(state="succeeded", workflow=name)]
        self.assertEqual(sorted(ok), sorted(ids))
        self.assertEqual(list(self.c.iter_runs(state="failed", workflow=name)), [])
        with self.assertRaises(epoch.BadRequestError) as cm:
            self.c.list_runs(state="sleeping")
        self.assertEqual(cm.exception.code, "bad_parameter")

    def test_events_pages_filters_and_follows_a_run(self):
        name = self.unique("ev")
        self.register(name, sh("echo x"))
        run = self.c.submit_run(name)
        # A run's events followed until it ends: versions 1, 2, 3, ... with none missing.
        events = list(self.c.follow_run_events(run["id"]))
        self.assertEqual(events[0]["type"], "RunSubmitted")
        self.assertEqual(events[-1]["type"], "RunSucceeded")
        self.assertEqual([e["version"] for e in events], list(range(1, len(events) + 1)))
        self.assertEqual(events, self.c.run_events(run["id"])["items"])
        tail = self.c.run_events(run["id"], after=events[1]["position"])["items"]
        self.assertEqual(tail, events[2:])
        # The global log, paged: consecutive positions, each page's cursor its last one.
        page = self.c.events(limit=3)
        self.assertEqual([e["position"] for e in page["items"]], [1, 2, 3])
        self.assertEqual(page["next_cursor"], "3")
        everything = list(self.c.iter_events(page_size=7))
        positions = [e["position"] for e in everything]
        self.assertEqual(positions, list(range(1, len(positions) + 1)))
        for prev, e in zip(everything, everything[1:]):
            self.assertEqual(e["prev_hash"], prev["hash"])
        mine = list(self.c.iter_events(run=run["id"]))
        self.assertEqual(mine, events)
        submitted = list(self.c.iter_events(type=["RunSubmitted"], run=run["id"]))
        self.assertEqual([e["type"] for e in submitted], ["RunSubmitted"])
        by_me = list(self.c.iter_events(actor="test@default", type="RunSubmitted"))
        self.assertIn(run["id"], [e["data"]["run"] for e in by_me])
        # The global log followed from a position: the same events, live.
        with self.c.follow_events(after=positions[-6]) as f:
            got = [next(f) for _ in range(5)]
        self.assertEqual(got, everything[-5:])
        self.assertTrue(f.closed)

    def test_errors_carry_status_code_message_and_details(self):
        with self.assertRaises(epoch.NotFoundError) as cm:
            self.c.get_run("r-does-not-exist")
        e = cm.exception
        self.assertIsInstance(e, epoch.ClientError)
        self.assertIsInstance(e, epoch.EpochError)
        self.assertEqual((e.status, e.code), (404, "not_found"))
        self.assertEqual(e.message, "run 'r-does-not-exist' not found")
        self.assertEqual(e.details, [])
        with self.assertRaises(epoch.NotFoundError):
            self.c.logs("r-does-not-exist", "s")
        with self.assertRaises(epoch.NotFoundError):
            list(self.c.follow_run_events("r-does-not-exist"))

        # A malformed submit body: 400 naming the field.
        name = self.unique("err")
        self.register(name, sh("true"))
        with self.assertRaises(epoch.BadRequestError) as cm:
            self.c.submit_run(name, priority="high")
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "malformed"))
        self.assertTrue(cm.exception.message.startswith("priority:"), cm.exception.message)
        with self.assertRaises(epoch.BadRequestError) as cm:
            self.c.submit_run(name, labels={"a": 1})
        self.assertIn("labels.a", cm.exception.message)

        # A body that is not a JSON object: 400.
        with self.assertRaises(epoch.BadRequestError) as cm:
            self.c.register_workflow(["not", "an", "object"])
        self.assertEqual((cm.exception.status, cm.exception.code), (400, "malformed"))
        self.assertIn("JSON object", cm.exception.message)

        # An invalid definition: 422 with every problem and its JSON path in details.
        with self.assertRaises(epoch.InvalidError) as cm:
            self.c.register_workflow({"name": name + "-bad",
                                      "steps": [{"name": "a", "kind": "bake"},
                                                {"command": ["true"], "colour": "red"}]})
        e = cm.exception
        self.assertEqual((e.status, e.code), (422, "invalid"))
        joined = "\n".join(e.details)
        self.assertIn("steps[0].command: required", joined)
        self.assertIn("steps[0].kind", joined)
        self.assertIn("steps[1].name: required", joined)
        self.assertIn("steps[1].colour: unknown field", joined)
        with self.assertRaises(epoch.NotFoundError) as cm:
            self.c.submit_run(name + "-nope")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))
        self.assertIn("is not registered", cm.exception.message)
        # Parameters the workflow does not declare: 422.
        with self.assertRaises(epoch.InvalidError) as cm:
            self.c.submit_run(name, params={"undeclared": 1})
        self.assertEqual((cm.exception.status, cm.exception.code), (422, "invalid"))

        # A bad token: 401; no token: 401.
        for token in ("epoch_00000000_" + "0" * 64, None):
            with mock.patch.dict(os.environ, {"EPOCH_TOKEN": ""}):
                bad = epoch.Client(self.d.url, token=token)
            with self.assertRaises(epoch.AuthenticationError) as cm:
                bad.get_run("anything")
            self.assertEqual((cm.exception.status, cm.exception.code), (401, "unauthenticated"))
            self.assertIn("bearer", cm.exception.headers.get("www-authenticate", "").lower())

        # A viewer reads but may not cancel: 403.
        run = self.c.submit_run(name)
        viewer = self.d.client("viewer")
        self.assertEqual(viewer.get_run(run["id"])["id"], run["id"])
        with self.assertRaises(epoch.PermissionDeniedError) as cm:
            viewer.cancel_run(run["id"])
        self.assertEqual((cm.exception.status, cm.exception.code), (403, "permission_denied"))
        self.assertIn("viewer", cm.exception.message)
        # 403 comes before the lookup: the same for an id that does not exist.
        with self.assertRaises(epoch.PermissionDeniedError):
            viewer.cancel_run("r-does-not-exist")
        # An operator may.
        self.d.client("operator").cancel_run(run["id"])
        self.assertIn(self.c.wait_run(run["id"], timeout=30)["state"],
                      ("cancelled", "succeeded"))

        # Nobody listening: a connection error, not a hang.
        with self.assertRaises(epoch.EpochConnectionError) as cm:
            epoch.Client("http://127.0.0.1:1", token="x", timeout=2).get_run("r")
        self.assertIsNone(cm.exception.status)
        self.assertIn("127.0.0.1:1", str(cm.exception))

    def test_defaults_come_from_the_environment(self):
        env = {"EPOCH_SERVER": self.d.url, "EPOCH_TOKEN": self.d.viewer}
        with mock.patch.dict(os.environ, env):
            c = epoch.Client()
        self.assertEqual(c.servers, [self.d.url])
        self.assertEqual(c.cluster()["role"], "leader")
        with self.assertRaises(epoch.PermissionDeniedError):
            c.request("GET", "/metrics")  # admins and auditors only
        self.assertIn("epoch_", self.c.request("GET", "/metrics"))  # Prometheus text
        with self.assertRaises(epoch.PermissionDeniedError):
            c.cancel_run("r-x")
        with mock.patch.dict(os.environ, {"EPOCH_SERVER": ""}):
            os.environ.pop("EPOCH_SERVER")
            self.assertEqual(epoch.Client(token="t").servers, ["https://127.0.0.1:30745"])
        # A list of servers: a dead one is skipped.
        both = epoch.Client("http://127.0.0.1:1," + self.d.url, token=self.d.admin)
        self.assertEqual(both.health(), {"status": "ok"})
        self.assertEqual(both.url, self.d.url)


class RestartTest(EpochdTestCase):
    """The master killed with SIGKILL and restarted on the same data dir (and port)
    while followers of the global log, a step's log and its metrics are reading."""

    EXTRA = ["executor.metricsInterval=200ms", "executor.leaseTime=10s"]

    def consume(self, follow, until=None):
        """Reads `follow` on a thread of its own; returns (items, done, failures)."""
        items, done, failures = [], threading.Event(), []

        def run():
            try:
                for item in follow:
                    items.append((time.monotonic(), item))
                    if until is not None and until(item):
                        return
            except Exception as ex:  # noqa: BLE001 - reported by the test
                failures.append(ex)
            finally:
                done.set()

        threading.Thread(target=run, daemon=True).start()
        self.addCleanup(follow.close)
        return items, done, failures

    def test_follows_resume_after_a_master_kill(self):
        c = self.c
        name = self.unique("before")
        # A line and a metric point every 0.25 s for 3 s.
        self.register(name, sh(
            'for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo "line $i"; '
            'echo "{\\"loss\\": $i}" >> "$EPOCH_METRICS"; sleep 0.25; done'), kind="train")
        before = c.submit_run(name)
        events = c.follow_events(after=0, reconnect_timeout=30)
        logs = c.follow_logs(before["id"], "s", reconnect_timeout=30)
        metrics = c.follow_metrics(before["id"], "s", reconnect_timeout=30)
        got, events_done, events_failed = self.consume(
            events, until=lambda e: e["type"] == "WorkflowRegistered" and
            e["data"].get("name", "").startswith("after-restart"))
        lines, logs_done, logs_failed = self.consume(logs)
        points, metrics_done, metrics_failed = self.consume(metrics)
        deadline = time.monotonic() + 20
        while not (lines and points) and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertTrue(lines and points, "the step wrote nothing before the kill")
        seen_before_kill = len(got)
        self.assertGreater(seen_before_kill, 0)

        port = self.d.port
        killed_at = time.monotonic()
        self.d.kill9()
        time.sleep(0.3)
        self.d.launch(port=port)
        self.assertEqual(self.d.port, port)
        self.register(self.unique("after-restart"), sh("true"))
        for done in (events_done, logs_done, metrics_done):
            self.assertTrue(done.wait(30), "a follower did not finish after the restart")
        self.assertFalse(events_failed + logs_failed + metrics_failed,
                         events_failed + logs_failed + metrics_failed)

        # The global log: strictly increasing by 1 from the first position, none
        # missed, none twice, across the kill; the same events as the log paged.
        evs = [e for _, e in got]
        positions = [e["position"] for e in evs]
        self.assertGreater(len(evs), seen_before_kill)
        self.assertEqual(positions, list(range(1, len(positions) + 1)))
        self.assertGreaterEqual(events.reconnects, 1)
        self.assertEqual(events.last_id, positions[-1])
        self.assertIn("LeaderElected", [e["type"] for e in evs[seen_before_kill:]])
        listed = list(c.iter_events())[:len(evs)]
        self.assertEqual([(e["position"], e["hash"]) for e in listed],
                         [(e["position"], e["hash"]) for e in evs])

        # The step's log: every line once, in order, some of them after the kill.
        self.assertEqual("".join(t for _, t in lines),
                         "".join("line %d\n" % i for i in range(1, 13)))
        self.assertGreaterEqual(logs.reconnects, 1)
        self.assertGreater(lines[-1][0], killed_at)

        # The step's metrics: every point once, in order.
        pts = [p for _, p in points]
        self.assertEqual([p["index"] for p in pts], list(range(12)))
        self.assertEqual([p["values"] for p in pts], [{"loss": i} for i in range(1, 13)])
        self.assertGreaterEqual(metrics.reconnects, 1)

        # The run that was running when the master died finishes, and wait says so.
        done = c.wait_run(before["id"], timeout=40)
        self.assertEqual(done["state"], "succeeded")
        self.assertEqual(c.logs(before["id"], "s"), "".join(t for _, t in lines))


class TlsTest(EpochdTestCase):
    """epochd's default: HTTPS with the certificate it generates in its data dir."""

    EXTRA = ["sig.maxReplicas=0", "sig.minReplicas=0"]
    TLS = True

    def test_https_with_ca_file_insecure_and_data_dir(self):
        self.assertTrue(self.d.url.startswith("https://"), self.d.url)
        verified = self.d.client(ca_file=self.d.ca_file())
        self.assertEqual(verified.cluster()["role"], "leader")
        self.assertEqual(self.d.client(insecure=True).health(), {"status": "ok"})
        with mock.patch.dict(os.environ, {"EPOCH_DATA_DIR": self.d.data_dir}):
            from_env = epoch.Client(self.d.url, token=self.d.admin)
        self.assertEqual(from_env.ca_file, self.d.ca_file())
        self.assertEqual(from_env.health(), {"status": "ok"})
        with mock.patch.dict(os.environ, {"EPOCH_DATA_DIR": ""}):
            untrusted = epoch.Client(self.d.url, token=self.d.admin, timeout=5)
        with self.assertRaises(epoch.EpochConnectionError) as cm:
            untrusted.health()
        self.assertIn("certificate", str(cm.exception))
        # Errors over TLS carry their codes too.
        with self.assertRaises(epoch.NotFoundError):
            verified.get_run("r-none")


if __name__ == "__main__":
    unittest.main()
