"""End to end: real containers through the .pyz, with runc and with crun, looked
at from inside."""

import json
import os
import signal
import subprocess
import time

import pytest

from conftest import new_id

WRITE_NETWORK_FILES = (
    "for f in hosts hostname resolv.conf; do "
    "if echo x >> /etc/$f; then echo \"$f writable\"; fi; done; true"
)


def through(pyz, runtime, *args, **kwargs):
    """Call the interceptor in place of the runtime, with the runtime's state root."""
    oi_flags = kwargs.pop("oi", [])
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    argv = [pyz, "--oi-runtime-path", runtime.path] + oi_flags + ["--root", runtime.root] + list(args)
    return subprocess.run(argv, **kwargs)


def run_container(pyz, runtime, bundle, oi=()):
    cid = new_id()
    try:
        return through(pyz, runtime, "run", "--bundle", bundle.path, cid, oi=list(oi))
    finally:
        runtime("delete", "--force", cid)


def test_networking_files_are_read_only_with_the_flag(pyz, runtime, bundle_factory):
    bundle = bundle_factory(["sh", "-c", WRITE_NETWORK_FILES])
    result = run_container(pyz, runtime, bundle, oi=["--oi-readonly-networking-mounts"])
    assert result.returncode == 0, result.stderr
    err = result.stderr.decode()
    for name in ("hosts", "hostname", "resolv.conf"):
        assert "can't create /etc/%s: Read-only file system" % name in err
    assert result.stdout == b""
    destinations = {m["destination"]: m.get("options") for m in bundle.read()["mounts"]}
    assert destinations["/etc/hosts"] == ["rbind", "rprivate", "ro"]


def test_networking_files_stay_writable_without_the_flag(pyz, runtime, bundle_factory):
    bundle = bundle_factory(["sh", "-c", WRITE_NETWORK_FILES])
    before = bundle.raw()
    result = run_container(pyz, runtime, bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().split("\n")[:3] == ["hosts writable", "hostname writable",
                                                      "resolv.conf writable"]
    assert bundle.raw() == before
    with open(os.path.join(bundle.path, "host-hosts")) as f:
        assert f.read() == "# hosts\nx\n"


def test_env_default_loses_and_forced_value_wins(pyz, runtime, bundle_factory):
    bundle = bundle_factory(["env"], env=["PATH=/bin", "OWN=container", "OVER=container"])
    result = run_container(pyz, runtime, bundle, oi=[
        "--oi-env", "OWN=default", "--oi-env=NEW=default", "--oi-env-force", "OVER=forced",
        "--oi-env-force=EQ=a=b=c"])
    assert result.returncode == 0, result.stderr
    env = result.stdout.decode().splitlines()
    assert "OWN=container" in env
    assert "NEW=default" in env
    assert "OVER=forced" in env and "OVER=container" not in env
    assert "EQ=a=b=c" in env


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_codes_propagate(pyz, runtime, bundle_factory, code):
    bundle = bundle_factory(["sh", "-c", "exit %d" % code])
    assert run_container(pyz, runtime, bundle).returncode == code


def _wait_for(predicate, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _container_running(runtime, cid):
    state = runtime("state", cid)
    return state.returncode == 0 and json.loads(state.stdout.decode()).get("status") == "running"


TRAP_TERM = ["sh", "-c", "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done"]


def _start_foreground(pyz, runtime, bundle, cid):
    proc = subprocess.Popen([pyz, "--oi-runtime-path", runtime.path, "--root", runtime.root,
                             "run", "--bundle", bundle.path, cid],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc


def test_runtime_runs_in_the_wrappers_process_and_signals_reach_it(pyz, runtime, bundle_factory):
    bundle = bundle_factory(TRAP_TERM)
    cid = new_id()
    proc = _start_foreground(pyz, runtime, bundle, cid)
    try:
        assert _wait_for(lambda: _container_running(runtime, cid))
        # The wrapper's PID is now the runtime itself (crun may re-execute
        # itself from a sealed copy, so its command line is what is compared).
        with open("/proc/%d/cmdline" % proc.pid, "rb") as f:
            cmdline = f.read().split(b"\0")
        assert cmdline[:3] == [os.fsencode(runtime.path), b"--root", os.fsencode(runtime.root)]
        assert "python" not in os.path.realpath("/proc/%d/exe" % proc.pid)
        assert proc.stdout.readline() == b"ready\n"
        # runc and crun forward a signal sent to them to the container.
        os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 7, err
        assert out == b"got TERM\n"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        runtime("delete", "--force", cid)


def test_kill_through_the_interceptor_stops_the_container(pyz, runtime, bundle_factory):
    bundle = bundle_factory(TRAP_TERM)
    cid = new_id()
    proc = _start_foreground(pyz, runtime, bundle, cid)
    try:
        assert _wait_for(lambda: _container_running(runtime, cid))
        killed = through(pyz, runtime, "kill", cid, "TERM")
        assert killed.returncode == 0, killed.stderr
        proc.communicate(timeout=30)
        assert proc.returncode == 7
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        runtime("delete", "--force", cid)


def test_state_list_and_exec_of_a_detached_container(pyz, runtime, bundle_factory, tmp_path):
    bundle = bundle_factory(["sleep", "300"])
    cid = new_id()
    stdio = open(str(tmp_path / "stdio"), "wb")
    try:
        created = through(pyz, runtime, "create", "--bundle", bundle.path, cid,
                          oi=["--oi-env-force", "MARK=1"], stdout=stdio, stderr=stdio)
        assert created.returncode == 0, (tmp_path / "stdio").read_text()
        for args in (["state", cid], ["list"], ["list", "--format", "json"], ["list", "-q"]):
            direct = runtime(*args)
            wrapped = through(pyz, runtime, *args)
            assert wrapped.returncode == direct.returncode == 0
            assert wrapped.stdout == direct.stdout
            assert wrapped.stderr == direct.stderr
        assert json.loads(runtime("state", cid).stdout.decode())["status"] == "created"
        started = through(pyz, runtime, "start", cid)
        assert started.returncode == 0, started.stderr
        assert _wait_for(lambda: _container_running(runtime, cid))
        # Everything after the subcommand reaches the container, --oi-* included.
        executed = through(pyz, runtime, "exec", cid, "sh", "-c", 'echo "$MARK" "$@"', "sh",
                           "--oi-env", "X=1", "--oi-help")
        assert executed.returncode == 0, executed.stderr
        assert executed.stdout == b"1 --oi-env X=1 --oi-help\n"
        killed = through(pyz, runtime, "kill", cid, "KILL")
        assert killed.returncode == 0, killed.stderr
        assert _wait_for(lambda: json.loads(runtime("state", cid).stdout.decode())["status"] == "stopped")
        deleted = through(pyz, runtime, "delete", cid)
        assert deleted.returncode == 0, deleted.stderr
        assert runtime("state", cid).returncode != 0
    finally:
        stdio.close()
        runtime("delete", "--force", cid)


def test_malformed_config_refuses_the_container(pyz, runtime, bundle_factory, tmp_path):
    bundle = bundle_factory(["true"])
    raw = bundle.raw()[:-10]          # cut short
    with open(bundle.config_path, "wb") as f:
        f.write(raw)
    log = tmp_path / "log.json"
    cid = new_id()
    try:
        result = through(pyz, runtime, "--log", str(log), "--log-format", "json", "create",
                         "--bundle", bundle.path, cid, oi=["--oi-readonly-networking-mounts"])
        assert result.returncode == 1
        message = result.stderr.decode()
        assert message.startswith("oci-interceptor: cannot parse %s: " % bundle.config_path)
        assert message.count("\n") == 1
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["level"] == "error" and last["msg"] == message.strip()
        assert bundle.raw() == raw
        assert runtime("state", cid).returncode != 0      # no container was created
    finally:
        runtime("delete", "--force", cid)


@pytest.mark.parametrize("runtime", ["crun"], indirect=True)
def test_crun_config_flag_is_edited(pyz, runtime, bundle_factory):
    bundle = bundle_factory(["env"], env=["PATH=/bin"])
    other = os.path.join(bundle.path, "other.json")
    os.rename(bundle.config_path, other)
    cid = new_id()
    try:
        result = through(pyz, runtime, "run", "--bundle", bundle.path, "--config", other, cid,
                         oi=["--oi-env-force", "FROM=other"])
        assert result.returncode == 0, result.stderr
        assert "FROM=other" in result.stdout.decode().splitlines()
        assert not os.path.exists(bundle.config_path)
    finally:
        runtime("delete", "--force", cid)
