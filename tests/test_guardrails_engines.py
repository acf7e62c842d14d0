"""Guardrails through the real engines: Docker registered by path alone with
the policy in its config file (as the README says), Podman, and containerd
(`ctr run --runc-binary`; the CRI path is in test_kubernetes.py). The
"Docker socket" is a unix socket these tests bind in a directory of their
own, reached through a symlinked directory (the shape of /var/run ->
/run) and a symlink to it: the host's engines are never touched."""

import json
import os
import shutil
import socket
import tempfile

import pytest

from conftest import need, new_id
from test_readme import json_blocks_after

README_PATH = "/usr/local/bin/oci-interceptor"
STATUS = "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status"
LIMITS = ("cat /sys/fs/cgroup/pids/pids.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || "
          "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max")
RESTRICTED_DEFAULT = ["capabilities", "run-as-non-root", "privilege-escalation"]


class SocketTree(object):
    """DIR/run/docker.sock (bound by the test), DIR/var/run -> ../run,
    DIR/link.sock -> DIR/run/docker.sock."""

    def __init__(self):
        self.base = tempfile.mkdtemp(prefix="oi-sock-")
        os.chmod(self.base, 0o755)
        self.run_dir = os.path.join(self.base, "run")
        os.makedirs(self.run_dir)
        os.makedirs(os.path.join(self.base, "var"))
        self.socket_path = os.path.join(self.run_dir, "docker.sock")
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(self.socket_path)
        self.var_run = os.path.join(self.base, "var", "run")
        os.symlink("../run", self.var_run)
        self.named = os.path.join(self.var_run, "docker.sock")          # as a policy names it
        self.link = os.path.join(self.base, "link.sock")
        os.symlink(self.socket_path, self.link)

    def close(self):
        self.sock.close()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture(scope="module")
def sockets():
    tree = SocketTree()
    yield tree
    tree.close()


def refusing_policy(sockets, audit_log):
    return {"version": 1, "audit-log": audit_log, "rules": [
        {"name": "no-docker-socket", "when": {"hostPaths": [sockets.named]},
         "deny": "the Docker socket is not for containers"},
        {"name": "no-privileged", "when": {"privileged": True}, "deny": "no privileged containers here"},
        {"name": "no-sys-admin", "when": {"capabilities": ["sys_admin"]}, "deny": "CAP_SYS_ADMIN is not allowed"},
        {"name": "no-host-pid", "when": {"hostNamespaces": ["pid"]}, "deny": "the host's PIDs stay the host's"},
        {"name": "seccomp", "when": {"unconfined": ["seccomp"]}, "deny": "containers run under seccomp"}]}


def refused_cases(sockets):
    """(name, flags, the rule that refuses it)."""
    return [
        ("socket via the symlinked directory", ["-v", sockets.named + ":/s"], "no-docker-socket"),
        ("socket by its real path", ["-v", sockets.socket_path + ":/s"], "no-docker-socket"),
        ("the directory holding it", ["-v", sockets.run_dir + ":/h"], "no-docker-socket"),
        ("the symlinked directory", ["-v", sockets.var_run + ":/h"], "no-docker-socket"),
        ("a symlink to the socket", ["-v", sockets.link + ":/s"], "no-docker-socket"),
        ("the host's root", ["-v", "/:/host"], "no-docker-socket"),
        ("--privileged", ["--privileged"], "no-privileged"),
        ("--cap-add SYS_ADMIN", ["--cap-add", "SYS_ADMIN"], "no-sys-admin"),
        ("--pid host", ["--pid", "host"], "no-host-pid"),
        ("seccomp=unconfined", ["--security-opt", "seccomp=unconfined"], "seccomp"),
    ]


def message_of(policy, rule_name):
    return [r["deny"] for r in policy["rules"] if r["name"] == rule_name][0]


def audit_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def controls(text, level):
    """The controls a preset message names: 'does not meet the LEVEL level:
    a (...); b (...)' -> ['a', 'b']."""
    found = text.split("does not meet the %s level: " % level, 1)[1]
    return [part.split(" (")[0] for part in found.split("; ")]


def status_of(output):
    return dict(line.split(":\t") for line in output.splitlines() if ":\t" in line)


def without(mask, *bits):
    return "%016x" % (int(mask, 16) & ~sum(1 << b for b in bits))


# --- Docker ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker(pyz, rootfs_tar, tmp_path_factory):
    """A private dockerd with the interceptor registered from the README's
    path-only daemon.json (the default runtime); the policy comes from the
    config file (policy_path), which each test writes."""
    need(shutil.which("dockerd") and shutil.which("docker"), "docker.io is not installed")
    import engines
    (path_only,) = json_blocks_after("## Register it with Docker")[:1]
    config = json.loads(json.dumps(path_only).replace(README_PATH, pyz))
    daemon = engines.Docker(config, rootfs_tar)
    daemon.audit_log = str(tmp_path_factory.mktemp("docker-audit") / "audit.log")
    try:
        yield daemon
    finally:
        daemon.docker("volume", "rm", "-f", "oi-guard-vol")
        daemon.stop()


def docker_run(docker, flags, args=("true",), cidfile=None):
    network = [] if "--network" in flags else ["--network", "none"]
    extra = ["--cidfile", cidfile] if cidfile else []
    return docker.docker("run", "--rm", *(network + extra + list(flags) + [docker.image] + list(args)))


def test_docker_refuses_with_the_admins_message(docker, sockets):
    policy = refusing_policy(sockets, docker.audit_log)
    docker.write_policy(policy)
    for name, flags, rule in refused_cases(sockets):
        result = docker_run(docker, flags, ["touch", "/tmp/ran"])
        err = result.stderr.decode()
        assert result.returncode != 0, name
        assert "oci-interceptor: denied by rule %s: %s" % (rule, message_of(policy, rule)) in err, (name, err)
        assert "unable to retrieve OCI runtime error" not in err
    assert not docker.docker("ps", "-aq").stdout.strip()          # nothing left behind
    denied = [line for line in audit_lines(docker.audit_log) if line["verdict"] == "denied"]
    assert [line["denied-by"] for line in denied[-len(refused_cases(sockets)):]] == [
        rule for _, _, rule in refused_cases(sockets)]


def test_docker_plain_run_still_runs_unchanged(docker, sockets, tmp_path):
    docker.write_policy(refusing_policy(sockets, docker.audit_log))
    probe = ["sh", "-c", STATUS + "; " + LIMITS]
    cidfile = str(tmp_path / "cid")
    through = docker_run(docker, [], probe, cidfile=cidfile)
    plain = docker_run(docker, ["--runtime", "runc"], probe)
    assert through.returncode == 0, through.stderr
    assert through.stdout == plain.stdout and through.stderr == plain.stderr == b""
    with open(cidfile) as f:
        cid = f.read().strip()
    (line,) = [line for line in audit_lines(docker.audit_log) if line["id"] == cid]
    assert (line["verdict"], line["changes"], line["rules"]) == ("allowed", [], [])
    # An ordinary bind mount (not of the socket) is not refused.
    other = tmp_path / "data"
    other.mkdir()
    assert docker_run(docker, ["-v", "%s:/data:ro" % other], ["true"]).returncode == 0


def test_docker_clamps_seen_inside_the_container(docker):
    docker.write_policy({"version": 1, "rules": [
        {"name": "clamp", "capabilities": {"drop": ["NET_RAW", "MKNOD"]},
         "limits": {"pids": 100, "memory": "256m"}, "no-new-privileges": True}]})
    probe = ["sh", "-c", STATUS + "; " + LIMITS]
    plain = status_of(docker_run(docker, ["--runtime", "runc"], probe).stdout.decode())
    outputs = {}
    for name, flags in (("default", []), ("higher", ["--pids-limit", "5000", "--memory", "1g"]),
                        ("lower", ["--pids-limit", "10", "--memory", "64m"])):
        result = docker_run(docker, flags, probe)
        assert result.returncode == 0, result.stderr
        outputs[name] = result.stdout.decode()
    for name, (pids, memory) in (("default", ("100", 256 << 20)), ("higher", ("100", 256 << 20)),
                                 ("lower", ("10", 64 << 20))):
        lines = outputs[name].splitlines()
        status = status_of(outputs[name])
        assert status["CapEff"] == without(plain["CapEff"], 13, 27), name        # NET_RAW, MKNOD
        assert (plain["NoNewPrivs"], status["NoNewPrivs"]) == ("0", "1")
        assert lines[2:4] == [pids, str(memory)], (name, lines)


def test_docker_baseline_enforced_restricted_warned(docker, tmp_path):
    """The Kubernetes-style rollout on real Docker configs: which docker run
    flags the baseline level refuses (the controls named in docker run's
    output), and what the restricted level, in warn mode, says of the
    containers that run (from the audit log)."""
    docker.write_policy({"version": 1, "audit-log": docker.audit_log, "rules": [
        {"preset": "baseline", "mode": "enforce"}, {"preset": "restricted", "mode": "warn"}]})
    host_dir = tmp_path / "srv"
    host_dir.mkdir()
    table = [
        # docker run flags                              baseline refuses          restricted warns of
        ([], [], RESTRICTED_DEFAULT),
        (["--cap-add", "SYS_ADMIN"], ["capabilities"], None),
        (["--cap-add", "NET_ADMIN"], ["capabilities"], None),
        (["--privileged"], ["privileged", "capabilities", "proc-mount", "seccomp"], None),
        (["--pid", "host"], ["host-namespaces"], None),
        (["--ipc", "host"], ["host-namespaces", "host-paths"], None),      # and the host's /dev/shm
        (["--uts", "host"], ["host-namespaces"], None),
        (["--network", "host"], ["host-namespaces"], None),
        (["-v", "%s:/srv:ro" % host_dir], ["host-paths"], None),
        (["--security-opt", "seccomp=unconfined"], ["seccomp"], None),
        (["--security-opt", "systempaths=unconfined"], ["proc-mount"], None),
        (["--sysctl", "kernel.msgmax=65536"], ["sysctls"], None),
        (["--sysctl", "net.ipv4.tcp_syncookies=1"], [], RESTRICTED_DEFAULT),
        (["-v", "oi-guard-vol:/data"], [], RESTRICTED_DEFAULT),
        (["--tmpfs", "/scratch"], [], RESTRICTED_DEFAULT),
        (["--init"], [], RESTRICTED_DEFAULT),
        (["--read-only"], [], RESTRICTED_DEFAULT),
        (["--user", "1000"], [], ["capabilities", "privilege-escalation"]),
        (["--cap-drop", "ALL", "--cap-add", "NET_BIND_SERVICE", "--user", "1000",
          "--security-opt", "no-new-privileges"], [], []),
    ]
    for index, (flags, refused, warned) in enumerate(table):
        cidfile = str(tmp_path / ("cid%d" % index))
        result = docker_run(docker, flags, ["true"], cidfile=cidfile)
        err = result.stderr.decode()
        if refused:
            assert result.returncode != 0, flags
            assert "oci-interceptor: denied by rule baseline: does not meet the baseline level: " in err, (flags, err)
            assert controls(err.rsplit(": unknown", 1)[0], "baseline") == refused, (flags, err)
            continue
        assert result.returncode == 0, (flags, err)
        with open(cidfile) as f:
            cid = f.read().strip()
        (line,) = [line for line in audit_lines(docker.audit_log) if line["id"] == cid]
        assert line["verdict"] == "allowed", (flags, line)
        assert [r["name"] for r in line["rules"]] == (["restricted"] if warned else []), (flags, line)
        if warned:
            (rule,) = line["rules"]
            assert rule["mode"] == "warn" and controls(rule["would-deny"], "restricted") == warned, (flags, rule)


# --- Podman ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def podman(pyz, rootfs_tar, tmp_path_factory):
    need(shutil.which("podman") and shutil.which("conmon"), "podman is not installed")
    import engines
    engine = engines.podman_registered(pyz, tmp_path_factory.mktemp("podman"), rootfs_tar)
    try:
        yield engine
    finally:
        engine.stop()


def test_podman_refuses_the_same_way(podman, sockets, tmp_path):
    policy = refusing_policy(sockets, str(tmp_path / "audit.log"))
    podman.write_policy(policy)
    for name, flags, rule in refused_cases(sockets):
        result = podman.run(*(flags + [podman.image, "true"]))
        err = result.stderr.decode()
        assert result.returncode != 0, name
        assert "oci-interceptor: denied by rule %s: %s" % (rule, message_of(policy, rule)) in err, (name, err)
    assert not podman.podman("ps", "-aq").stdout.strip()
    plain = podman.run(podman.image, "sh", "-c", STATUS)
    assert plain.returncode == 0, plain.stderr
    assert status_of(plain.stdout.decode())["NoNewPrivs"] == "0"
    verdicts = [line["verdict"] for line in audit_lines(str(tmp_path / "audit.log"))]
    assert verdicts == ["denied"] * len(refused_cases(sockets)) + ["allowed"]


def test_podman_clamps_and_warns(podman, tmp_path):
    podman.write_policy({"version": 1, "rules": [
        {"name": "clamp", "capabilities": {"drop": ["ALL"], "allow": ["CHOWN", "SETUID", "SETGID"]},
         "limits": {"pids": 64}, "no-new-privileges": True},
        {"preset": "restricted", "mode": "warn"}]})
    result = podman.run(podman.image, "sh", "-c", STATUS + "; " + LIMITS)
    assert result.returncode == 0, result.stderr
    status = status_of(result.stdout.decode())
    assert status["CapEff"] == "%016x" % ((1 << 0) | (1 << 6) | (1 << 7)) and status["NoNewPrivs"] == "1"
    assert result.stdout.decode().splitlines()[2] == "64"                # Podman's own 2048, lowered


# --- containerd (ctr run --runc-binary) -------------------------------------------------------

def test_ctr_refuses_the_same_way(pyz, containerd, sockets, tmp_path):
    policy = refusing_policy(sockets, str(tmp_path / "audit.log"))
    policy["rules"] = [r for r in policy["rules"] if r["name"] != "seccomp"]     # ctr runs without seccomp
    containerd.write_policy(policy)
    cases = [
        ("the directory holding the socket",
         ["--mount", "type=bind,src=%s,dst=/h,options=rbind:ro" % sockets.var_run], "no-docker-socket"),
        ("a symlink to the socket", ["--mount", "type=bind,src=%s,dst=/s,options=rbind" % sockets.link],
         "no-docker-socket"),
        ("--privileged", ["--privileged"], "no-privileged"),
        ("--cap-add", ["--cap-add", "CAP_SYS_ADMIN"], "no-sys-admin"),
        ("the host's PID namespace by path", ["--with-ns", "pid:/proc/%d/ns/pid" % os.getpid()], "no-host-pid"),
    ]
    for name, extra, rule in cases:
        result = containerd.run(pyz, new_id("oi-ctr"), ["true"], extra=extra)
        err = result.stderr.decode()
        assert result.returncode != 0, name
        assert "oci-interceptor: denied by rule %s: %s" % (rule, message_of(policy, rule)) in err, (name, err)
    plain = containerd.run(pyz, new_id("oi-ctr"), ["sh", "-c", STATUS])
    assert plain.returncode == 0, plain.stderr
    verdicts = [line["verdict"] for line in audit_lines(str(tmp_path / "audit.log"))]
    assert verdicts == ["denied"] * len(cases) + ["allowed"]
