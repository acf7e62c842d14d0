"""Lifecycle calls through real engines: a broken, missing or untrusted
policy strands no running container (exec, stop within its timeout, rm
leaving no task, shim or runtime state behind), and a rule's runtime-path
routes containers under Docker and Podman, every later call following."""

import json
import os
import subprocess
import time

import pytest

import oci_interceptor as oi
from test_engines import POLICY, TRAP_TERM, docker, podman  # noqa: F401 (fixtures)
from test_lifecycle import state_file as state_of

# The container's own process got the policy's env (an exec's env is the engine's).
POLICY_APPLIED = "grep -q FORCED=interceptor /proc/1/environ && echo interceptor"
ROUTING = dict(POLICY, rules=[{"name": "to-crun", "when": {"env": {"ROUTE": "^crun$"}}, "runtime-path": "crun"}])


def shim_running(cid):
    listed = subprocess.run(["pgrep", "-f", "containerd-shim.* -id %s" % cid], stdout=subprocess.PIPE)
    return bool(listed.stdout.strip())


def docker_root(docker):
    return os.path.join(docker.base, "exec", "runtime-runc", "moby")


def start_docker(docker, *args):
    started = docker.docker("run", "-d", "--network", "none", *args, docker.image, "sh", "-c", TRAP_TERM)
    assert started.returncode == 0, started.stderr
    return started.stdout.decode().strip()


def break_policy(path, how):
    if how == "trailing comma":
        with open(path, "w") as f:
            f.write('{"version": 1, "env": ["A=1"],}')
    elif how == "not root's":
        os.chmod(path, 0o666)
    elif how == "gone":
        os.unlink(path)
    elif how == "unknown key":
        with open(path, "w") as f:
            f.write('{"version": 1, "evn": ["A=1"]}')


def start_routed_on_docker(docker, ids):
    """Under ROUTING: start a container its env routes to crun and one left
    on runc, their ids appended to ids (the caller removes them); returns
    Docker's runtime root, where each one's state lies as its runtime keeps
    it."""
    ids.append(start_docker(docker, "-e", "ROUTE=crun"))
    ids.append(start_docker(docker))
    root = docker_root(docker)
    assert [state_of(root, cid) for cid in ids] == ["crun", "runc"]
    return root


def stop_within(engine_call, name, timeout):
    began = time.time()
    stopped = engine_call("stop", "-t", str(timeout), name)
    assert stopped.returncode == 0, stopped.stderr
    return time.time() - began


@pytest.mark.parametrize("how", ["trailing comma", "not root's", "gone", "unknown key"])
def test_docker_containers_outlive_a_broken_policy(docker, how):
    docker.write_policy(ROUTING)
    ids = []
    try:
        root = start_routed_on_docker(docker, ids)
        break_policy(docker.policy_path, how)
        for cid in ids:
            executed = docker.docker("exec", cid, "sh", "-c", POLICY_APPLIED)
            assert executed.returncode == 0, executed.stderr
            assert executed.stdout == b"interceptor\n"
            assert stop_within(docker.docker, cid, 3) < 8          # no 10 s wait for a kill that failed
            assert docker.docker("wait", cid).stdout.decode().strip() == "0"
            removed = docker.docker("rm", cid)
            assert removed.returncode == 0, removed.stderr
            assert not os.path.exists(os.path.join(root, cid))
            assert not shim_running(cid)
            assert oi.read_record(root, cid) is None
        assert docker.docker("ps", "-aq").stdout.strip() == b""
        # A new container is refused while the policy is broken (fail closed).
        refused = docker.run(docker.image, "true")
        assert refused.returncode != 0 and b"oci-interceptor: " in refused.stderr
    finally:
        if ids:
            docker.docker("rm", "-f", *ids)
        docker.write_policy(POLICY)


def test_docker_routes_by_rule_and_every_call_follows(docker):
    docker.write_policy(ROUTING)
    ids = []
    try:
        root = start_routed_on_docker(docker, ids)
        assert oi.read_record(root, ids[0]).runtime.endswith("/crun")
        assert oi.read_record(root, ids[1]) is None           # the command line's runtime: no record
        for cid in ids:
            assert docker.docker("exec", cid, "echo", "hi").stdout == b"hi\n"
            restarted = docker.docker("restart", "-t", "3", cid)
            assert restarted.returncode == 0, restarted.stderr
        assert [state_of(root, cid) for cid in ids] == ["crun", "runc"]
        for cid in ids:
            assert json.loads(docker.docker("inspect", cid).stdout.decode())[0]["State"]["Running"]
            assert stop_within(docker.docker, cid, 3) < 8
            assert docker.docker("rm", cid).returncode == 0
            assert not os.path.exists(os.path.join(root, cid)) and not shim_running(cid)
    finally:
        if ids:
            docker.docker("rm", "-f", *ids)
        docker.write_policy(POLICY)


@pytest.fixture
def podman_runtime(podman, pyz, tmp_path):
    """Podman passes conmon_env_vars to create (through conmon) but calls
    start, exec, kill and delete itself with a bare environment: a wrapper
    gives every call the test's policy file and state directory, as the
    built-in defaults would on a real host."""
    wrapper = tmp_path / "oi-podman-runtime"
    wrapper.write_text("#!/bin/sh\nOCI_INTERCEPTOR_CONFIG=%s OCI_INTERCEPTOR_STATE_DIR=%s exec %s \"$@\"\n"
                       % (podman.policy_path, os.environ["OCI_INTERCEPTOR_STATE_DIR"], pyz))
    wrapper.chmod(0o755)
    return str(wrapper)


def start_podman(podman, runtime, *args):
    started = podman.podman("--runtime", runtime, "run", "-d", "--network", "none", *(podman.ULIMITS + args),
                            podman.image, "sh", "-c", TRAP_TERM)
    assert started.returncode == 0, started.stderr
    return started.stdout.decode().strip()


# Podman passes the runtime no --root: runc and crun keep state in their defaults.
PODMAN_ROOTS = {"runc": "/run/runc", "crun": "/run/crun"}


@pytest.mark.parametrize("how", [None, "trailing comma", "not root's"])
def test_podman_routes_by_rule_and_outlives_a_broken_policy(podman, podman_runtime, how):
    podman.write_policy(ROUTING)
    ids = []

    def call(*args):
        return podman.podman("--runtime", podman_runtime, *args)
    try:
        ids = [start_podman(podman, podman_runtime, "-e", "ROUTE=crun"), start_podman(podman, podman_runtime)]
        assert state_of(PODMAN_ROOTS["crun"], ids[0]) == "crun"
        assert state_of(PODMAN_ROOTS["runc"], ids[1]) == "runc"
        if how is not None:
            break_policy(podman.policy_path, how)
        for cid in ids:
            executed = call("exec", cid, "sh", "-c", POLICY_APPLIED)
            assert executed.returncode == 0, executed.stderr
            assert executed.stdout == b"interceptor\n"
            assert stop_within(call, cid, 3) < 8
            removed = call("rm", cid)
            assert removed.returncode == 0, removed.stderr
        assert not os.path.exists(os.path.join(PODMAN_ROOTS["crun"], ids[0]))
        assert not os.path.exists(os.path.join(PODMAN_ROOTS["runc"], ids[1]))
        assert oi.read_record(None, ids[0]) is None
    finally:
        if ids:
            call("rm", "-f", "--time", "0", *ids)
        podman.write_policy(POLICY)
