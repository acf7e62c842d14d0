"""Lifecycle calls never depend on the policy, and each container keeps its
runtime: container records, the runtime-path rule action, and what a broken,
missing or untrusted policy does to the calls of running containers (runc
and crun here; Docker and Podman in test_engines_lifecycle.py)."""

import json
import os
import subprocess
import time

import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oci_interceptor as oi
from conftest import REPO, SYSTEM_PYTHON, new_id, run, run_at_once

TRAP_TERM = "trap 'exit 0' TERM; while true; do sleep 0.1; done"


# --- how calls name their container --------------------------------------------------------

@pytest.mark.parametrize("args, root, cid", [
    # What the engines really pass (shared runtime-command-lines.md).
    (["--root", "/x/moby", "--log", "/t/log.json", "--log-format", "json", "start", "ID"], "/x/moby", "ID"),
    (["--root", "/x/moby", "--log", "l", "--log-format", "json", "exec", "--process", "/tmp/p", "--detach",
      "--pid-file", "/t/e.pid", "ID"], "/x/moby", "ID"),
    (["--root", "/r", "ps", "--format", "json", "ID"], "/r", "ID"),
    (["--root", "/r", "kill", "ID", "15"], "/r", "ID"),
    (["--root", "/r", "kill", "--all", "ID", "9"], "/r", "ID"),
    (["--root", "/r", "delete", "--force", "ID"], "/r", "ID"),
    (["exec", "--pid-file", "/u/exec_pid", "--process", "/u/p", "--detach", "ID"], None, "ID"),
    (["delete", "--force", "ID"], None, "ID"),
    (["--root=/r", "exec", "-e", "A=1", "-u", "0", "--cwd", "/", "ID", "sh", "-c", "x"], "/r", "ID"),
    (["update", "--memory", "1g", "--pids-limit", "5", "ID"], None, "ID"),
    (["events", "--interval", "5s", "--stats", "ID"], None, "ID"),
    (["state", "--", "ID"], None, "ID"),
    (["list", "-q"], None, None),
    (["features"], None, None),
])
def test_the_container_of_a_lifecycle_call(args, root, cid):
    call = oi.parse_runtime_call(args)
    assert (call.root, call.container_id) == (root, cid)


# --- records ----------------------------------------------------------------------------

@pytest.fixture
def state(tmp_path, monkeypatch):
    directory = tmp_path / "state"
    monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(directory))
    return directory


def test_record_names_never_collide_and_stay_in_the_directory():
    names = {oi.record_name(root, cid) for root, cid in [
        ("/r", "a"), ("/r/a", ""), ("/r@a", ""), ("", "/r@a"), ("/r", "a@b"), ("/r%40a", ""), (None, "a"),
        ("/r", "../../etc/passwd"), ("/r", ".x"), ("/r", "\n")]}
    assert len(names) == 10
    assert all("/" not in n and not n.startswith(".") and "\n" not in n for n in names)
    long = oi.record_name("/" + "x" * 300, "id")
    assert long.startswith("sha256-") and len(long) < 100


def test_records_are_written_read_and_removed(state):
    oi.write_record("/r", "c", oi.ContainerRecord("/usr/bin/crun", systemd=True))
    path = state / "containers" / "%2Fr@c"
    assert oct(os.stat(str(path)).st_mode & 0o7777) == "0o600"
    assert oct(os.stat(str(state / "containers")).st_mode & 0o7777) == "0o700"
    record = oi.read_record("/r", "c")
    assert (record.runtime, record.systemd) == ("/usr/bin/crun", True)
    assert oi.read_record("/other", "c") is None
    oi.write_record("/r", "c", None)
    assert oi.read_record("/r", "c") is None and not path.exists()


def test_records_others_could_have_planted_are_ignored(state):
    oi.write_record("/r", "c", oi.ContainerRecord("/usr/bin/crun"))
    path = state / "containers" / "%2Fr@c"
    os.chmod(str(path), 0o644)
    assert oi.read_record("/r", "c") is None
    os.chmod(str(path), 0o600)
    os.chown(str(path), 1000, 1000)
    assert oi.read_record("/r", "c") is None
    os.chown(str(path), 0, 0)
    os.chmod(str(state / "containers"), 0o755)
    assert oi.read_record("/r", "c") is None
    os.chmod(str(state / "containers"), 0o700)
    path.write_text("garbage\n")
    assert oi.read_record("/r", "c") is None


def test_stale_records_are_removed_by_a_later_create(state, tmp_path):
    root = tmp_path / "runtime-root"
    (root / "alive").mkdir(parents=True)
    for cid in ("alive", "gone", "young"):
        oi.write_record(str(root), cid, oi.ContainerRecord("/usr/bin/crun"))
    old = time.time() - oi.RECORD_GRACE_SECONDS - 5
    for cid in ("alive", "gone"):
        os.utime(str(state / "containers" / oi.record_name(str(root), cid)), (old, old))
    oi.write_record(str(root), "new", oi.ContainerRecord("/usr/bin/crun"))
    left = sorted(os.listdir(str(state / "containers")))
    assert left == sorted(oi.record_name(str(root), c) for c in ("alive", "young", "new"))


KEEP_UNDER_ASCII = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
import oci_interceptor as oi
assert sys.getfilesystemencoding() == "ascii", sys.getfilesystemencoding()
root = os.fsdecode(sys.argv[2].encode() + b"/r\xc3\xa4\xff")
os.makedirs(root + "/alive")
oi.write_record(root, "alive", oi.ContainerRecord("/bin/true"))
old = time.time() - oi.RECORD_GRACE_SECONDS - 5
os.utime(oi._records_dir() + "/" + oi.record_name(root, "alive"), (old, old))
oi.write_record(root, "gone", oi.ContainerRecord("/bin/true"))
os.utime(oi._records_dir() + "/" + oi.record_name(root, "gone"), (old, old))
oi.write_record(root, "new", oi.ContainerRecord("/bin/true"))
print(" ".join(sorted(n.rpartition("@")[2] for n in os.listdir(oi._records_dir()))))
"""


def test_a_live_container_keeps_its_record_whatever_the_locale(state, tmp_path):
    """Under an ASCII locale (Python 3.6's C locale; 3.7+ with coercion and
    UTF-8 mode off) a --root of non-UTF-8 bytes decodes to surrogates,
    which the record name keeps as UTF-8: the check of a container's
    state still finds it, and only an lstat that says "no such file"
    removes a record."""
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0",
               OCI_INTERCEPTOR_STATE_DIR=str(state))
    out = subprocess.run([SYSTEM_PYTHON, "-c", KEEP_UNDER_ASCII, REPO, str(tmp_path)], env=env,
                         stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout
    assert out.split() == ["alive", "new"]


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(alphabet="%%aF0912zZ-.@ \u00e9\udcc3\U0001f600", max_size=12), st.text(max_size=6))
def test_record_names_read_back_as_urllib_reads_them(text, other):
    """_unescape (no urllib.parse import in a create) reads any text as
    urllib.parse.unquote does, and gives back what record_name escaped."""
    assert oi._unescape(text) == urllib.parse.unquote(text, errors="surrogateescape")
    root, _, escaped_id = oi.record_name(other, text).rpartition("@")
    if not oi.record_name(other, text).startswith("sha256-"):
        assert (oi._unescape(root), oi._unescape(escaped_id)) == (other, text)


def test_records_agree_only_when_every_container_uses_the_plain_runtime(state):
    assert oi.records_agree("/usr/sbin/runc")
    oi.write_record("/r", "a", oi.ContainerRecord("/usr/sbin/runc"))
    assert oi.records_agree("/usr/sbin/runc")
    oi.write_record("/r", "b", oi.ContainerRecord("/usr/sbin/runc", systemd=True))
    assert not oi.records_agree("/usr/sbin/runc")
    oi.write_record("/r", "b", None)
    oi.write_record("/r", "c", oi.ContainerRecord("/usr/bin/crun"))
    assert not oi.records_agree("/usr/sbin/runc") and not oi.records_agree("/usr/bin/crun") is True


def test_a_record_removes_only_the_passthrough_records_that_disagree_with_it(state):
    """A passthrough record sends every call naming a container to its
    runtime; it goes with its expires file once a container is recorded
    with another runtime or in systemd mode."""
    true = oi.find_runtime("true")
    state.mkdir(mode=0o700)
    for name, runtime in (("a", true), ("b", oi.find_runtime("false")), ("c", "true")):
        (state / ("passthrough-" + name)).write_text("oci-interceptor-passthrough 0\n/etc/x.json\n%s\n" % runtime)
        (state / ("expires-" + name)).write_text("")
    oi.write_record("/r", "x", oi.ContainerRecord(true))
    assert sorted(os.listdir(str(state))) == ["containers", "expires-a", "expires-c", "passthrough-a", "passthrough-c"]
    oi.write_record("/r", "x", oi.ContainerRecord(true, systemd=True))
    assert os.listdir(str(state)) == ["containers"]


# --- real runtimes ---------------------------------------------------------------------------

def write_policy(path, data):
    text = data if isinstance(data, str) else json.dumps(data)
    path.write_text(text)
    os.chmod(str(path), 0o644)


def through(pyz, runtime, policy_path, *args, env=None, **kwargs):
    """The interceptor in place of the runtime, as a path-only registration
    calls it: policy from the config file, --root and --log from the engine."""
    environ = dict(os.environ, OCI_INTERCEPTOR_CONFIG=str(policy_path), **(env or {}))
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("timeout", 60)
    return subprocess.run([pyz, "--root", runtime.root] + list(args), env=environ, **kwargs)


def state_file(root, cid):
    """Which runtime keeps the container's state: runc writes state.json,
    crun status."""
    for name, runtime in (("state.json", "runc"), ("status", "crun")):
        if os.path.exists(os.path.join(root, cid, name)):
            return runtime
    return None


def start_container(pyz, runtime, policy_path, bundle, log, env=None):
    cid = new_id("oi-life")
    # The container keeps its stdio: files, not pipes we would wait on.
    with open(str(log) + ".stderr", "w+b") as err:
        created = through(pyz, runtime, policy_path, "--log", str(log), "create", "--bundle", bundle.path, cid,
                          env=env, stdout=subprocess.DEVNULL, stderr=err)
        err.seek(0)
        assert created.returncode == 0, err.read()
    started = through(pyz, runtime, policy_path, "start", cid, env=env)
    assert started.returncode == 0, started.stderr
    return cid


BROKEN_POLICIES = {
    "trailing comma": '{"version": 1, "env": ["A=1"],}',
    "unknown key": '{"version": 1, "evn": ["A=1"]}',
    "not root's": None,
    "gone": None,
}


@pytest.mark.parametrize("breakage", sorted(BROKEN_POLICIES))
def test_a_broken_policy_strands_no_running_container(pyz, runtime, bundle_factory, tmp_path, breakage):
    policy = tmp_path / "policy.json"
    write_policy(policy, {"version": 1, "runtime-path": runtime.path, "readonly-networking-mounts": True,
                          "env-force": ["WHERE=policy"]})
    bundle = bundle_factory(["sh", "-c", TRAP_TERM])
    log = tmp_path / "log.json"
    cid = start_container(pyz, runtime, policy, bundle, log)
    try:
        if breakage == "not root's":
            os.chmod(str(policy), 0o666)
        elif breakage == "gone":
            os.unlink(str(policy))
        else:
            write_policy(policy, BROKEN_POLICIES[breakage])
        state = through(pyz, runtime, policy, "--log", str(log), "--log-format", "json", "state", cid)
        assert state.returncode == 0
        assert json.loads(state.stdout.decode())["status"] == "running"
        warning = state.stderr.decode()
        assert warning.startswith("oci-interceptor: warning: config ") and str(policy) in warning
        assert warning.endswith("; state goes to %s all the same\n" % runtime.path) and warning.count("\n") == 1
        logged = [json.loads(line) for line in log.read_text().splitlines()]
        assert logged[-1]["level"] == "warning" and logged[-1]["msg"] == warning.strip()
        executed = through(pyz, runtime, policy, "exec", cid, "sh", "-c", "echo $WHERE; echo x >> /etc/hosts")
        assert executed.returncode == 1                  # the shell's own status: the hosts file is read-only
        assert executed.stdout == b"policy\n"
        listed = through(pyz, runtime, policy, "list", "-q")
        assert cid in listed.stdout.decode().split()
        began = time.time()
        assert through(pyz, runtime, policy, "kill", cid, "TERM").returncode == 0
        while json.loads(runtime("state", cid).stdout.decode())["status"] != "stopped":
            assert time.time() - began < 10
            time.sleep(0.05)
        missing = through(pyz, runtime, policy, "state", "no-such-container")
        assert missing.returncode != 0 and b"warning" in missing.stderr      # the runtime's own status
        deleted = through(pyz, runtime, policy, "delete", cid)
        assert deleted.returncode == 0, deleted.stderr
        assert not os.path.exists(os.path.join(runtime.root, cid))
    finally:
        runtime("delete", "--force", cid)


def test_create_still_fails_closed_with_a_broken_policy(pyz, runtime, bundle_factory, tmp_path):
    policy = tmp_path / "policy.json"
    write_policy(policy, '{"version": 1,}')
    bundle = bundle_factory(["true"])
    cid = new_id()
    result = through(pyz, runtime, policy, "run", "--bundle", bundle.path, cid)
    runtime("delete", "--force", cid)
    assert result.returncode == 2
    assert result.stderr.decode().startswith("oci-interceptor: config %s: " % policy)
    assert cid not in runtime("list", "-q").stdout.decode()


@pytest.fixture
def routing_policy(tmp_path, runtime):
    """The policy runs everything under the other runtime, but containers
    with the env ROUTE=this under the runtime of the test."""
    other = "crun" if runtime.name == "runc" else "runc"
    policy = tmp_path / "policy.json"
    write_policy(policy, {"version": 1, "runtime-path": other, "rules": [
        {"name": "route", "when": {"env": {"ROUTE": "^this$"}}, "runtime-path": runtime.path}]})
    return policy, other


def test_a_rule_routes_containers_and_every_later_call_follows(pyz, runtime, bundle_factory, tmp_path,
                                                                routing_policy, monkeypatch):
    policy, other = routing_policy
    state = tmp_path / "state"
    env = {"OCI_INTERCEPTOR_STATE_DIR": str(state)}
    routed = bundle_factory(["sh", "-c", TRAP_TERM], env=["PATH=/bin", "ROUTE=this"])
    plain = bundle_factory(["sh", "-c", TRAP_TERM], env=["PATH=/bin"])
    log = tmp_path / "log"
    ids = []
    try:
        ids.append(start_container(pyz, runtime, policy, routed, log, env=env))
        ids.append(start_container(pyz, runtime, policy, plain, log, env=env))
        assert state_file(runtime.root, ids[0]) == runtime.name
        assert state_file(runtime.root, ids[1]) == other
        monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
        assert oi.read_record(runtime.root, ids[0]).runtime == runtime.path
        plain_record = oi.read_record(runtime.root, ids[1])
        if other == "runc":
            assert plain_record is None          # the command line's runtime too: nothing to record
        else:
            assert plain_record.runtime.endswith("/crun") and not plain_record.systemd
        # The policy breaks: each call still reaches the container's runtime.
        write_policy(policy, "{")
        for cid in ids:
            executed = through(pyz, runtime, policy, "exec", cid, "echo", "hi", env=env)
            assert executed.returncode == 0 and executed.stdout == b"hi\n", executed.stderr
            assert through(pyz, runtime, policy, "kill", cid, "KILL", env=env).returncode == 0
        for cid in ids:
            deadline = time.time() + 10
            while b'"stopped"' not in through(pyz, runtime, policy, "state", cid, env=env).stdout:
                assert time.time() < deadline
                time.sleep(0.05)
            deleted = through(pyz, runtime, policy, "delete", cid, env=env)
            assert deleted.returncode == 0, deleted.stderr
            assert oi.read_record(runtime.root, cid) is None
            assert state_file(runtime.root, cid) is None
    finally:
        for cid in ids:
            for name in ("runc", "crun"):
                subprocess.run([name, "--root", runtime.root, "delete", "--force", cid],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_record_naming_a_runtime_that_is_gone_falls_back(pyz, fake, tmp_path, monkeypatch):
    state = tmp_path / "state-dir"
    monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
    gone = tmp_path / "gone-runtime"
    oi.write_record("/r", "c", oi.ContainerRecord(str(gone)))
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--root", "/r", "state", "c"], fake,
                 env={"OCI_INTERCEPTOR_STATE_DIR": str(state)})
    assert result.returncode == 0 and fake.called()
    assert result.stderr.decode() == ("oci-interceptor: warning: container c was created by %s, which is no "
                                      "longer an executable file\n" % gone)


def test_a_recorded_runtime_wins_over_the_command_line(pyz, fake, tmp_path, monkeypatch):
    state = tmp_path / "state-dir"
    monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
    oi.write_record("/r", "c", oi.ContainerRecord(fake.runtime))
    env = {"OCI_INTERCEPTOR_STATE_DIR": str(state)}
    result = run([pyz], ["--oi-runtime-path", "/nonexistent/runc", "--root", "/r", "exec", "c", "true"], fake,
                 env=env)
    assert result.returncode == 0 and fake.args() == [b"--root", b"/r", b"exec", b"c", b"true"]
    assert result.stderr == b""
    # Another root, another container: the command line's runtime.
    other = run([pyz], ["--oi-runtime-path", "/nonexistent/runc", "--root", "/q", "exec", "c", "true"], fake,
                env=env)
    assert other.returncode == 1 and b"/nonexistent/runc does not exist" in other.stderr


def test_records_survive_50_containers_at_once(pyz, runtime, bundle_factory, tmp_path, routing_policy, monkeypatch):
    policy, _ = routing_policy
    state = tmp_path / "state"
    env = {"OCI_INTERCEPTOR_STATE_DIR": str(state)}
    bundles = [bundle_factory(["true"], env=["PATH=/bin", "ROUTE=this"]) for _ in range(50)]
    ids = [new_id("oi-many") for _ in bundles]
    results = [None] * 50

    def create(i):
        results[i] = through(pyz, runtime, policy, "create", "--bundle", bundles[i].path, ids[i], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    try:
        run_at_once(50, create)
        assert all(r.returncode == 0 for r in results)
        monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
        for cid in ids:
            assert oi.read_record(runtime.root, cid).runtime == runtime.path
            assert state_file(runtime.root, cid) == runtime.name
        write_policy(policy, "not json")
        deleted = [through(pyz, runtime, policy, "delete", "--force", cid, env=env) for cid in ids]
        assert all(d.returncode == 0 for d in deleted)
        assert os.listdir(str(state / "containers")) == []
    finally:
        for cid in ids:
            runtime("delete", "--force", cid)


# --- help reaches the runtime ------------------------------------------------------------------

@pytest.mark.parametrize("args", [["create", "--help"], ["run", "-h"], ["restore", "-h"], ["create", "--help=t"],
                                  ["run", "--usage"]])
def test_a_help_request_reaches_the_runtime(pyz, runtime, tmp_path, args):
    plain = subprocess.run([runtime.path] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    through_us = subprocess.run([pyz, "--oi-runtime-path", runtime.path, "--oi-env", "A=1"] + args,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(tmp_path))
    assert (through_us.returncode, through_us.stdout) == (plain.returncode, plain.stdout)
    import re
    stamp = re.compile(rb'time="[^"]*"')      # runc's error lines carry the second they were written
    assert stamp.sub(b"", through_us.stderr) == stamp.sub(b"", plain.stderr)
    assert os.listdir(str(tmp_path)) == []


def test_help_false_is_no_help_request():
    assert oi.parse_runtime_call(["create", "--help=false", "c"]).edits_config
    assert not oi.parse_runtime_call(["create", "--help", "c"]).edits_config
    assert oi.parse_runtime_call(["create", "--bundle", "--help", "c"]).edits_config


def test_a_rules_relative_runtime_path_is_relative_to_the_config_file(tmp_path):
    config = tmp_path / "etc" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"version": 1, "rules": [
        {"name": "a", "runtime-path": "../bin/crun"}, {"name": "b", "runtime-path": "crun"}]}))
    opts, _ = oi.split_command_line(["--oi-config", str(config), "create"])
    rules = oi.load_policy(opts, "x").rules
    assert [r.actions["runtime-path"] for r in rules] == [str(tmp_path / "bin" / "crun"), "crun"]


def test_kill_of_a_systemd_container_is_translated_while_the_policy_is_broken(pyz, fake, tmp_path, monkeypatch):
    state = tmp_path / "state-dir"
    monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
    oi.write_record("/r", "sd", oi.ContainerRecord(fake.runtime, systemd=True))
    oi.write_record("/r", "plain", oi.ContainerRecord(fake.runtime))
    policy = tmp_path / "policy.json"
    write_policy(policy, "{broken")
    env = {"OCI_INTERCEPTOR_STATE_DIR": str(state), "OCI_INTERCEPTOR_CONFIG": str(policy)}
    for cid, signal, sent in (("sd", "TERM", b"37"), ("sd", "KILL", b"KILL"), ("plain", "TERM", b"TERM")):
        result = run([pyz], ["--root", "/r", "kill", cid, signal], fake, env=env)
        assert result.returncode == 0 and b"warning" in result.stderr
        assert fake.args() == [b"--root", b"/r", b"kill", cid.encode(), sent]
    result = run([pyz], ["--root", "/r", "kill", "sd"], fake, env=env)        # runc's default signal
    assert fake.args() == [b"--root", b"/r", b"kill", b"sd", b"37"]


def test_a_policy_runtime_that_leads_nowhere_falls_back_to_the_command_line(pyz, fake, tmp_path):
    import shutil
    policy = tmp_path / "policy.json"
    write_policy(policy, {"version": 1, "runtime-path": "/nonexistent/crun"})
    env = {"OCI_INTERCEPTOR_CONFIG": str(policy), "PATH": os.path.dirname(shutil.which("runc")) + ":/usr/bin:/bin"}
    result = run([pyz], ["--root", str(tmp_path / "root"), "state", "no-such-container"], fake, env=env)
    assert result.returncode == 1            # runc's own: the container does not exist
    assert result.stderr.decode().startswith(
        "oci-interceptor: warning: runtime /nonexistent/crun does not exist; state goes to %s all the same\n"
        % shutil.which("runc"))
    created = run([pyz], ["create", "c"], fake, env=env)
    assert created.returncode == 1 and b"/nonexistent/crun does not exist" in created.stderr
