"""Guardrails: conditions on what a container can reach of the host, the
preset levels, refusals, clamps, rule modes and the audit log. Unit tests
on spec dicts shaped like the configs Docker 20.10 and Podman 4.3 write,
the program as a process with a recording fake runtime, and real
containers under runc and crun (clamps seen from inside, 50 audited at
once). The real engines are in test_guardrails_engines.py."""

import copy
import json
import os
import socket
import stat
import subprocess
import time

import pytest

import oci_interceptor as oi
from conftest import new_id, run, run_at_once

CONTAINER_ID = "4ccf4fca8e03c5f593e82206874ec89926d10feba4f32bd26746c1f2e21329bc"
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
ALL_CAPS = sorted(oi.capability_names())


def docker_spec(**changes):
    """A config shaped like the one Docker 20.10 writes for `docker run`
    (captured from a private dockerd; its data root here /var/lib/docker;
    the AppArmor profile it writes on a host that runs AppArmor)."""
    data = "/var/lib/docker/containers/" + CONTAINER_ID
    spec = {
        "ociVersion": "1.0.2-dev",
        "process": {"user": {"uid": 0, "gid": 0, "additionalGids": [0]}, "args": ["sh"],
                    "env": ["PATH=/usr/bin:/bin"], "cwd": "/",
                    "capabilities": {key: list(DOCKER_CAPS) for key in ("bounding", "effective", "permitted")},
                    "apparmorProfile": "docker-default", "oomScoreAdj": 0},
        "root": {"path": "/var/lib/docker/vfs/dir/" + CONTAINER_ID},
        "hostname": CONTAINER_ID[:12],
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": data + "/resolv.conf",
             "options": ["rbind", "rprivate"]},
            {"destination": "/etc/hostname", "type": "bind", "source": data + "/hostname",
             "options": ["rbind", "rprivate"]},
            {"destination": "/etc/hosts", "type": "bind", "source": data + "/hosts", "options": ["rbind", "rprivate"]},
        ],
        "linux": {
            "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "net.ipv4.ping_group_range": "0 2147483647"},
            "resources": {"devices": [{"allow": False, "access": "rwm"},
                                      {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"}],
                          "memory": {"disableOOMKiller": False}, "cpu": {"shares": 0}, "blockIO": {"weight": 0}},
            "cgroupsPath": "/docker/" + CONTAINER_ID,
            "namespaces": [{"type": t} for t in ("mount", "network", "uts", "pid", "ipc")],
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X86_64"],
                        "syscalls": [{"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"}]},
            "maskedPaths": ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
                            "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    for change in changes.values():
        change(spec)
    return spec


def privileged(spec):
    """What Docker 20.10 changes for --privileged (Podman 4.3 the same, with
    the host's full capability set)."""
    spec["process"]["capabilities"] = {key: list(ALL_CAPS[:38]) for key in ("bounding", "effective", "permitted")}
    for key in ("seccomp", "maskedPaths", "readonlyPaths"):
        del spec["linux"][key]
    spec["linux"]["resources"]["devices"] = [{"allow": True, "access": "rwm"}]
    spec["linux"]["devices"] = [{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]


def add_caps(*names):
    def change(spec):
        for key in ("bounding", "effective", "permitted"):
            spec["process"]["capabilities"][key] += list(names)
    return change


def host_namespace(kind, path=None):
    def change(spec):
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != kind]
        if path is not None:
            spec["linux"]["namespaces"].append({"type": kind, "path": path})
    return change


def bind(source, destination="/h", options=("rbind", "rprivate")):
    def change(spec):
        spec["mounts"].append({"destination": destination, "type": "bind", "source": source,
                               "options": list(options)})
    return change


def context(bundle="/nonexistent-bundle", container_id=CONTAINER_ID, apparmor=False, selinux=False):
    """An EditContext whose host runs AppArmor or SELinux as told (None: as
    this host does)."""
    ctx = oi.EditContext(container_id)
    ctx.bundle = bundle
    state = oi.guardrail_state(ctx)
    if apparmor is not None:
        state._cache["apparmor"] = apparmor
    if selinux is not None:
        state._cache["selinux"] = selinux
    return ctx


def when(data):
    return oi.parse_condition(data, extended=True)


def matches(data, spec, ctx=None):
    return oi.condition_matches(when(data), spec, ctx or context())


def write_json(path, data):
    with open(str(path), "w") as f:
        json.dump(data, f)
    os.chmod(str(path), 0o644)
    return str(path)


def load(tmp_path, config, flags=()):
    opts, _ = oi.split_command_line(["--oi-config", write_json(tmp_path / "policy.json", config)] + list(flags)
                                    + ["create", "x"])
    return oi.load_policy(opts, "oci-interceptor")


# --- validation: one line naming the key path -------------------------------------------

@pytest.mark.parametrize("rule, message", [
    ({"when": {"hostPaths": "/var/run/docker.sock"}, "deny": "m"},
     "rules[0].when.hostPaths: expected a non-empty list of absolute host paths"),
    ({"when": {"hostPaths": ["var/run/docker.sock"]}, "deny": "m"},
     "rules[0].when.hostPaths[0]: expected an absolute path, found \"var/run/docker.sock\""),
    ({"when": {"capabilities": ["SYS_ADMN"]}, "deny": "m"},
     "rules[0].when.capabilities[0]: unknown capability \"SYS_ADMN\" (see capabilities(7))"),
    ({"when": {"hostNamespaces": ["net"]}, "deny": "m"},
     "rules[0].when.hostNamespaces[0]: expected one of pid, network, ipc, uts, user, cgroup, mount, found \"net\""),
    ({"when": {"unconfined": ["lsm"]}, "deny": "m"},
     "rules[0].when.unconfined[0]: expected one of seccomp, apparmor, selinux, systempaths, found \"lsm\""),
    ({"when": {"privileged": "yes"}, "deny": "m"}, "rules[0].when.privileged: expected true or false, found \"yes\""),
    ({"when": {"rootUser": 1}, "deny": "m"}, "rules[0].when.rootUser: expected true or false, found 1"),
    ({"when": {"not": {"hostPaths": ["x"]}}, "deny": "m"},
     "rules[0].when.not.hostPaths[0]: expected an absolute path, found \"x\""),
    ({"when": {"anyOf": [{"privileged": True}, {"capabilities": ["bogus"]}]}, "deny": "m"},
     "rules[0].when.anyOf[1].capabilities[0]: unknown capability \"bogus\""),
    ({"when": {"anyOf": []}, "deny": "m"}, "rules[0].when.anyOf: expected a non-empty list of condition objects"),
    ({"when": {"not": {}}, "deny": "m"}, "rules[0].when.not: at least one condition is needed"),
    ({"when": {"anyOf": [{"sometimes": True}]}, "deny": "m"}, "rules[0].when.anyOf[0].sometimes: unknown condition"),
    ({"deny": ""}, "rules[0].deny: expected the message to show (a non-empty string), found \"\""),
    ({"deny": "m", "mode": "dry"}, "rules[0].mode: expected one of enforce, warn, audit, found \"dry\""),
    ({"preset": "strict"}, "rules[0].preset: expected one of baseline, restricted, found \"strict\""),
    ({"preset": "baseline", "deny": "m"}, "rules[0]: a preset rule has no other action"),
    ({"capabilities": {"drop": ["KILL"], "allow": ["kill"]}},
     "rules[0].capabilities.allow: CAP_KILL both dropped and allowed"),
    ({"capabilities": {"add": ["KILL"]}}, "rules[0].capabilities.add: unknown key (allowed: allow, drop)"),
    ({"capabilities": {"allow": ["ALL"]}}, "rules[0].capabilities.allow[0]: unknown capability \"ALL\""),
    ({"capabilities": {}}, "rules[0].capabilities: expected {\"drop\": [CAP or \"ALL\", ...]"),
    ({"limits": {"memory": "lots"}}, "rules[0].limits.memory: expected bytes > 0, as a number or with a k, m or g"),
    ({"limits": {"pids": 0}}, "rules[0].limits.pids: expected a whole number > 0, found 0"),
    ({"limits": {"cpus": 0.001}}, "rules[0].limits.cpus: expected a number of CPUs, at least 0.01, found 0.001"),
    ({"limits": {"swap": 1}}, "rules[0].limits.swap: unknown key (allowed: cpus, memory, pids)"),
    ({"no-new-privileges": "yes"}, "rules[0].no-new-privileges: expected true or false"),
    ({"readonly-rootfs": 1}, "rules[0].readonly-rootfs: expected true or false"),
])
def test_a_bad_guardrail_is_one_line_naming_the_key(tmp_path, rule, message):
    with pytest.raises(oi.ConfigError) as info:
        load(tmp_path, {"version": 1, "rules": [rule]})
    assert str(info.value).startswith("config %s: %s" % (tmp_path / "policy.json", message)), str(info.value)
    assert "\n" not in str(info.value)


def test_audit_log_setting_and_flag(tmp_path):
    with pytest.raises(oi.ConfigError, match="audit-log: expected a non-empty string"):
        load(tmp_path, {"version": 1, "audit-log": ""})
    assert load(tmp_path, {"version": 1, "audit-log": "audit/log.jsonl"}).audit_log == str(tmp_path / "audit/log.jsonl")
    assert load(tmp_path, {"version": 1, "audit-log": "syslog"}).audit_log == "syslog"
    assert load(tmp_path, {"version": 1, "audit-log": "syslog"}, ["--oi-audit-log", "/a"]).audit_log == "/a"
    with pytest.raises(oi.UsageError, match="--oi-audit-log: the value is empty"):
        oi.split_command_line(["--oi-audit-log=", "create", "x"])


def test_hook_files_know_no_guardrail_condition():
    with pytest.raises(ValueError, match="unknown condition"):
        oi.parse_condition({"privileged": True}, extended=False)


def test_preset_rules_are_named_after_their_level(tmp_path):
    policy = load(tmp_path, {"version": 1, "rules": [{"preset": "baseline"}, {"preset": "restricted", "mode": "warn"},
                                                     {"name": "strict", "preset": "restricted"}]})
    assert [(r.name, r.mode) for r in policy.rules] == [("baseline", "enforce"), ("restricted", "warn"),
                                                         ("strict", "enforce")]
    with pytest.raises(oi.ConfigError, match=r"rules\[1\].name: a rule named baseline exists already"):
        load(tmp_path, {"version": 1, "rules": [{"preset": "baseline"}, {"preset": "baseline", "mode": "warn"}]})


# --- conditions -------------------------------------------------------------------------

@pytest.fixture
def socket_tree(tmp_path):
    """run/docker.sock (a listening unix socket, as the Docker socket is),
    var/run -> ../run (as /var/run -> /run on Debian), link.sock -> the
    socket, a hard link of it, and an unrelated directory."""
    for name in ("run", "var", "other", "links"):
        (tmp_path / name).mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "run" / "docker.sock"))
    (tmp_path / "var" / "run").symlink_to("../run")
    (tmp_path / "link.sock").symlink_to(tmp_path / "run" / "docker.sock")
    os.link(str(tmp_path / "run" / "docker.sock"), str(tmp_path / "links" / "hard.sock"))
    yield tmp_path
    sock.close()


@pytest.mark.parametrize("source, via_symlink, via_real_path", [
    ("run/docker.sock", True, True),
    ("run", True, True),                            # the directory above it
    ("var/run", True, True),                        # a symlink to that directory
    ("var/run/docker.sock", True, True),
    ("link.sock", True, True),                      # a symlink to the socket
    ("links/hard.sock", True, True),                # another name of the same file
    ("other/../run/./docker.sock", True, True),     # '..' resolved as the kernel will
    ("var", True, False),                           # above the path as named (its var/run leads elsewhere
                                                    # inside the container, but the name says var)
    (".", True, True),
    ("/", True, True),
    ("other", False, False),
    ("run/other.sock", False, False),
])
def test_host_paths_resolve_the_bind_source_on_the_host(socket_tree, source, via_symlink, via_real_path):
    """The rule names the socket through a symlinked directory (as
    /var/run/docker.sock is /run/docker.sock on Debian) or by its real path."""
    source = source if source.startswith("/") else str(socket_tree / source)
    for named, reaches in (("var/run/docker.sock", via_symlink), ("run/docker.sock", via_real_path)):
        spec = docker_spec(bind=bind(source))
        assert matches({"hostPaths": [str(socket_tree / named)]}, spec) is reaches, (source, named)


def test_host_paths_inside_a_named_directory_and_relative_sources(socket_tree):
    protected = {"hostPaths": [str(socket_tree / "var" / "run")]}
    assert matches(protected, docker_spec(bind=bind(str(socket_tree / "run" / "docker.sock"))))
    assert not matches(protected, docker_spec(bind=bind(str(socket_tree / "other"))))
    # A relative source is relative to the bundle, as runc and crun read it.
    relative = docker_spec(bind=bind("run"))
    assert matches({"hostPaths": [str(socket_tree / "run" / "docker.sock")]}, relative, context(str(socket_tree)))
    assert not matches({"hostPaths": [str(socket_tree / "run" / "docker.sock")]}, relative,
                       context(str(socket_tree / "other")))


def test_host_paths_see_another_mount_of_a_directory_by_its_identity(socket_tree):
    """A directory mounted elsewhere on the host (here run bound at alias):
    its names differ, its identity does not."""
    alias = socket_tree / "alias"
    alias.mkdir()
    subprocess.run(["mount", "--bind", str(socket_tree / "run"), str(alias)], check=True)
    try:
        for source in ("alias", "alias/docker.sock"):
            assert matches({"hostPaths": [str(socket_tree / "run" / "docker.sock")]},
                           docker_spec(b=bind(str(socket_tree / source)))), source
        assert matches({"hostPaths": [str(socket_tree / "run")]}, docker_spec(b=bind(str(alias / "docker.sock"))))
        assert not matches({"hostPaths": [str(socket_tree / "run" / "docker.sock")]},
                           docker_spec(b=bind(str(socket_tree / "other"))))
    finally:
        subprocess.run(["umount", str(alias)], check=True)


def test_host_paths_look_at_bind_mounts_only(socket_tree):
    target = {"hostPaths": [str(socket_tree / "run" / "docker.sock")]}
    tmpfs = docker_spec(m=lambda s: s["mounts"].append({"destination": "/t", "type": "tmpfs",
                                                         "source": str(socket_tree / "run")}))
    assert not matches(target, tmpfs)
    by_option = docker_spec(m=lambda s: s["mounts"].append({"destination": "/t", "type": "none",
                                                             "source": str(socket_tree / "run"), "options": ["bind"]}))
    assert matches(target, by_option)
    assert not matches(target, docker_spec())


def test_capabilities_in_any_set_any_spelling():
    ambient_only = docker_spec(c=lambda s: s["process"]["capabilities"].update(ambient=["CAP_SYS_ADMIN"]))
    assert matches({"capabilities": ["sys_admin"]}, ambient_only)
    assert matches({"capabilities": ["CAP_SYS_ADMIN", "NET_ADMIN"]}, ambient_only)
    assert not matches({"capabilities": ["net_admin"]}, ambient_only)
    assert matches({"capabilities": ["Net_Raw"]}, docker_spec())
    no_caps = docker_spec(c=lambda s: s["process"].pop("capabilities"))
    assert not matches({"capabilities": ["CHOWN"]}, no_caps)         # runc and crun then grant none


def test_host_namespaces_by_absence_or_by_a_path_to_the_runtimes_own():
    assert not matches({"hostNamespaces": ["pid", "network", "ipc", "uts"]}, docker_spec())
    assert matches({"hostNamespaces": ["pid"]}, docker_spec(p=host_namespace("pid")))
    assert matches({"hostNamespaces": ["user"]}, docker_spec())          # Docker makes no user namespace
    assert matches({"hostNamespaces": ["cgroup"]}, docker_spec())
    # Docker's --network host: a path to the daemon's own network namespace.
    own = docker_spec(n=host_namespace("network", "/proc/%d/ns/net" % os.getpid()))
    assert matches({"hostNamespaces": ["network"]}, own)
    other = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        path = "/proc/%d/ns/net" % other.pid
        for _ in range(100):
            if os.readlink(path) != os.readlink("/proc/self/ns/net"):
                break
            import time
            time.sleep(0.05)
        joined = docker_spec(n=host_namespace("network", path))
        assert not matches({"hostNamespaces": ["network"]}, joined)      # another container's
    finally:
        other.kill()
        other.wait()
    # One that cannot be looked at: the host's, for all we know.
    assert matches({"hostNamespaces": ["network"]}, docker_spec(n=host_namespace("network", "/nonexistent")))


def test_privileged_is_what_privileged_writes():
    assert matches({"privileged": True}, docker_spec(p=privileged))
    assert matches({"privileged": False}, docker_spec())
    assert not matches({"privileged": True}, docker_spec(c=add_caps("CAP_SYS_ADMIN")))
    every_device = docker_spec(d=lambda s: s["linux"]["resources"].update(devices=[{"allow": True, "access": "rwm"}]))
    assert not matches({"privileged": True}, every_device)
    assert matches({"privileged": True}, docker_spec(c=add_caps("CAP_SYS_ADMIN"),
                                                      d=lambda s: s["linux"]["resources"]["devices"].append(
                                                          {"allow": True, "type": "a", "access": "rwm"})))
    limited = docker_spec(c=add_caps("CAP_SYS_ADMIN"), d=lambda s: s["linux"]["resources"]["devices"].append(
        {"allow": True, "type": "b", "access": "rwm"}))
    assert not matches({"privileged": True}, limited)


def test_root_user_unless_a_user_namespace_maps_it_away():
    assert matches({"rootUser": True}, docker_spec())
    assert matches({"rootUser": False}, docker_spec(u=lambda s: s["process"]["user"].update(uid=1000)))

    def userns(mapping, path=None):
        def change(spec):
            spec["linux"]["namespaces"].append({"type": "user", "path": path} if path else {"type": "user"})
            spec["linux"]["uidMappings"] = mapping
        return change
    assert not matches({"rootUser": True}, docker_spec(u=userns([{"containerID": 0, "hostID": 100000, "size": 65536}])))
    assert matches({"rootUser": True}, docker_spec(u=userns([{"containerID": 0, "hostID": 0, "size": 1}])))
    assert matches({"rootUser": True}, docker_spec(u=userns([], path="/proc/1/ns/user")))
    assert matches({"rootUser": True}, docker_spec(u=lambda s: s["process"].pop("user")))


def test_unconfined_kinds():
    assert not matches({"unconfined": list(oi.UNCONFINED_KINDS)}, docker_spec(), context(apparmor=False, selinux=False))
    assert matches({"unconfined": ["seccomp"]}, docker_spec(s=lambda s: s["linux"].pop("seccomp")))
    allow_all = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_LOG"}]}
    assert matches({"unconfined": ["seccomp"]}, docker_spec(s=lambda s: s["linux"].update(seccomp=allow_all)))
    denylist = {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_ERRNO"}]}
    assert not matches({"unconfined": ["seccomp"]}, docker_spec(s=lambda s: s["linux"].update(seccomp=denylist)))
    assert matches({"unconfined": ["systempaths"]}, docker_spec(s=lambda s: s["linux"].pop("maskedPaths")))
    assert matches({"unconfined": ["systempaths"]}, docker_spec(s=lambda s: s["linux"]["readonlyPaths"].remove("/proc/sys")))
    # AppArmor and SELinux: only where the host runs them.
    no_profile = docker_spec(a=lambda s: s["process"].pop("apparmorProfile"))
    assert matches({"unconfined": ["apparmor"]}, no_profile, context(apparmor=True))
    assert not matches({"unconfined": ["apparmor"]}, no_profile, context(apparmor=False))
    confined = docker_spec(a=lambda s: s["process"].update(apparmorProfile="docker-default"))
    assert not matches({"unconfined": ["apparmor"]}, confined, context(apparmor=True))
    unconfined = docker_spec(a=lambda s: s["process"].update(apparmorProfile="unconfined"))
    assert matches({"unconfined": ["apparmor"]}, unconfined, context(apparmor=True))
    labelled = docker_spec(a=lambda s: s["process"].update(selinuxLabel="system_u:system_r:container_t:s0:c1,c2"))
    assert not matches({"unconfined": ["selinux"]}, labelled, context(selinux=True))
    spc = docker_spec(a=lambda s: s["process"].update(selinuxLabel="system_u:system_r:spc_t:s0"))
    assert matches({"unconfined": ["selinux"]}, spc, context(selinux=True))
    assert matches({"unconfined": ["selinux"]}, no_profile, context(selinux=True))
    assert not matches({"unconfined": ["selinux"]}, no_profile, context(selinux=False))
    # This host's own answer, as runc reads it.
    state = oi.GuardrailState()
    enabled = "/sys/module/apparmor/parameters/enabled"
    assert oi.host_runs_apparmor(state) is (os.path.isdir("/sys/kernel/security/apparmor") and os.path.exists(
        enabled) and open(enabled).read().startswith("Y"))
    assert oi.host_runs_selinux(state) is os.path.exists("/sys/fs/selinux/enforce")


def test_not_and_any_of_nest():
    pid_host = docker_spec(p=host_namespace("pid"))
    cond = {"anyOf": [{"privileged": True}, {"hostNamespaces": ["pid"], "not": {"capabilities": ["SYS_PTRACE"]}}]}
    assert matches(cond, pid_host)
    assert not matches(cond, docker_spec(p=host_namespace("pid"), c=add_caps("CAP_SYS_PTRACE")))
    assert matches(cond, docker_spec(p=privileged))
    assert not matches(cond, docker_spec())
    assert matches({"not": {"anyOf": [{"rootUser": False}, {"always": False}]}}, docker_spec())
    # With the other conditions: all must match.
    assert not matches({"commands": ["^/bin/app$"], "privileged": False}, docker_spec())


# --- presets ----------------------------------------------------------------------------

def findings(level, spec, ctx=None):
    """The controls of the level the config breaks (on a host without
    AppArmor and SELinux unless ctx says otherwise)."""
    return [f.split(" (")[0] for f in oi.preset_findings(level, spec, oi.guardrail_state(ctx or context()))]


RESTRICTED_DEFAULT = ["capabilities", "run-as-non-root", "privilege-escalation"]


@pytest.mark.parametrize("name, change, baseline, restricted", [
    ("docker run", None, [], RESTRICTED_DEFAULT),
    ("--privileged", privileged, ["privileged", "capabilities", "proc-mount", "seccomp"],
     ["privileged", "proc-mount", "capabilities", "seccomp", "run-as-non-root", "privilege-escalation"]),
    ("--cap-add SYS_ADMIN", add_caps("CAP_SYS_ADMIN"), ["capabilities"], RESTRICTED_DEFAULT),
    ("--cap-add NET_ADMIN", add_caps("CAP_NET_ADMIN"), ["capabilities"], RESTRICTED_DEFAULT),
    ("--pid host", host_namespace("pid"), ["host-namespaces"], ["host-namespaces"] + RESTRICTED_DEFAULT),
    ("--ipc host", host_namespace("ipc"), ["host-namespaces"], ["host-namespaces"] + RESTRICTED_DEFAULT),
    ("--uts host", host_namespace("uts"), ["host-namespaces"], ["host-namespaces"] + RESTRICTED_DEFAULT),
    ("--network host", host_namespace("network", "/proc/self/ns/net"), ["host-namespaces"],
     ["host-namespaces"] + RESTRICTED_DEFAULT),
    ("-v /srv:/srv", bind("/srv"), ["host-paths"], ["host-paths"] + RESTRICTED_DEFAULT),
    ("-v /etc/shadow:/etc/hosts", lambda s: s["mounts"][-1].update(source="/etc/shadow"), ["host-paths"],
     ["host-paths"] + RESTRICTED_DEFAULT),
    ("-v vol:/data", bind("/var/lib/docker/volumes/vol/_data", "/data"), [], RESTRICTED_DEFAULT),
    ("--security-opt seccomp=unconfined", lambda s: s["linux"].pop("seccomp"), ["seccomp"],
     ["capabilities", "seccomp", "run-as-non-root", "privilege-escalation"]),
    ("--security-opt systempaths=unconfined", lambda s: [s["linux"].pop(k) for k in ("maskedPaths", "readonlyPaths")],
     ["proc-mount"], ["proc-mount"] + RESTRICTED_DEFAULT),
    ("--sysctl kernel.msgmax=65536", lambda s: s["linux"]["sysctl"].update({"kernel.msgmax": "65536"}), ["sysctls"],
     ["sysctls"] + RESTRICTED_DEFAULT),
    ("--sysctl net.ipv4.tcp_syncookies=1", lambda s: s["linux"]["sysctl"].update({"net/ipv4/tcp_syncookies": "1"}),
     [], RESTRICTED_DEFAULT),
    ("--user 1000", lambda s: s["process"]["user"].update(uid=1000), [], ["capabilities", "privilege-escalation"]),
    ("--cap-drop ALL --cap-add NET_BIND_SERVICE --user 1000 --security-opt no-new-privileges",
     lambda s: (s["process"].update(noNewPrivileges=True, capabilities={
         k: ["CAP_NET_BIND_SERVICE"] for k in ("bounding", "effective", "permitted")}),
         s["process"]["user"].update(uid=1000)), [], []),
])
def test_preset_levels_on_docker_shaped_configs(name, change, baseline, restricted):
    spec = docker_spec(c=change) if change else docker_spec()
    assert findings("baseline", spec) == baseline, name
    assert findings("restricted", spec) == restricted, name


def test_what_is_not_a_host_path(tmp_path):
    """The engines' own files of this container (Docker, Podman, a CRI pod),
    named volumes and --init are not host paths; the same shapes with
    another id, a short id or a writable file are."""
    podman_id = "549e0cb4d4bf8a368706fbc0a5bc593a557ac8c0648f727318bd0bbb1fe4fb12"
    podman = docker_spec(m=lambda s: s.update(mounts=[
        {"destination": "/dev/shm", "type": "bind", "options": ["bind", "rprivate"],
         "source": "/var/lib/containers/storage/overlay-containers/%s/userdata/shm" % podman_id},
        {"destination": "/data", "type": "bind", "options": ["rw", "rbind"],
         "source": "/var/lib/containers/storage/volumes/namedvol/_data"}]))
    assert findings("baseline", podman, context(container_id=podman_id)) == []
    assert findings("baseline", podman, context(container_id="a" * 64)) == ["host-paths"]
    sandbox = "f" * 64
    cri = docker_spec(m=lambda s: s.update(annotations={"io.kubernetes.cri.sandbox-id": sandbox}, mounts=[
        {"destination": "/dev/shm", "type": "bind", "options": ["rbind", "ro"],
         "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/%s/shm" % sandbox}]))
    assert findings("baseline", cri, context(container_id="b" * 64)) == []
    short = docker_spec(m=lambda s: s["mounts"].append({"destination": "/x", "type": "bind", "source": "/etc/x/y"}))
    assert findings("baseline", short, context(container_id="etc")) == ["host-paths"]
    init = tmp_path / "docker-init"
    init.write_text("#!/bin/sh\n")
    init.chmod(0o755)
    with_init = docker_spec(i=bind(str(init), "/sbin/docker-init", ["bind", "ro"]))
    assert findings("baseline", with_init) == []
    init.chmod(0o644)
    assert findings("baseline", with_init) == ["host-paths"]
    init.chmod(0o755)
    assert findings("baseline", docker_spec(i=bind(str(init), "/sbin/docker-init", ["bind"]))) == ["host-paths"]


def test_presets_see_apparmor_and_selinux_only_where_the_host_runs_them():
    spec = docker_spec(a=lambda s: s["process"].pop("apparmorProfile"))
    assert findings("baseline", spec, context(apparmor=True)) == ["apparmor"]
    assert findings("baseline", spec, context(selinux=True)) == ["selinux"]
    assert findings("baseline", spec, context(apparmor=False, selinux=False)) == []


def test_a_preset_rule_matches_only_a_config_that_breaks_its_level(tmp_path):
    policy = load(tmp_path, {"version": 1, "rules": [{"preset": "baseline"}, {"preset": "restricted", "mode": "warn"}]})
    ctx = context()
    assert [r.name for r in oi.matching_rules(docker_spec(), policy, ctx)] == ["restricted"]
    spec = docker_spec(c=add_caps("CAP_SYS_ADMIN"))
    ctx = context()
    rules = oi.matching_rules(spec, policy, ctx)
    assert [r.name for r in rules] == ["baseline", "restricted"]
    with pytest.raises(oi.Denied) as info:
        oi.apply_rules(spec, rules, ctx)
    assert str(info.value) == "denied by rule baseline: does not meet the baseline level: capabilities (CAP_SYS_ADMIN)"


# --- clamps -----------------------------------------------------------------------------

def apply(spec, mode="enforce", **actions):
    rule = oi.Rule("r", None, {k.replace("_", "-"): v for k, v in actions.items()}, "test", mode)
    return oi.apply_rules(spec, [rule])


def validated(key, value):
    return [a for a in oi.ACTIONS if a.key == key][0].validate(value)


def test_capabilities_drop_and_allow_never_add():
    spec = docker_spec(c=add_caps("CAP_SYS_ADMIN"))
    spec["process"]["capabilities"]["ambient"] = ["cap_sys_admin"]
    changes = apply(spec, capabilities=validated("capabilities", {"drop": ["sys_admin", "CAP_NET_RAW"]}))
    assert changes == ["r: process.capabilities.%s: removed %s" % (key, removed) for key, removed in (
        ("bounding", "CAP_NET_RAW, CAP_SYS_ADMIN"), ("effective", "CAP_NET_RAW, CAP_SYS_ADMIN"),
        ("permitted", "CAP_NET_RAW, CAP_SYS_ADMIN"), ("ambient", "cap_sys_admin"))]
    assert spec["process"]["capabilities"]["ambient"] == []
    assert "CAP_NET_RAW" not in spec["process"]["capabilities"]["bounding"]
    assert apply(spec, capabilities=validated("capabilities", {"drop": ["sys_admin"]})) == []    # idempotent
    allow = validated("capabilities", {"drop": ["ALL"], "allow": ["NET_BIND_SERVICE", "SYS_TIME"]})
    apply(spec, capabilities=allow)
    assert spec["process"]["capabilities"] == {"bounding": ["CAP_NET_BIND_SERVICE"], "effective": [
        "CAP_NET_BIND_SERVICE"], "permitted": ["CAP_NET_BIND_SERVICE"], "ambient": []}       # SYS_TIME not added
    everything = docker_spec()
    apply(everything, capabilities=validated("capabilities", {"drop": ["all"]}))
    assert everything["process"]["capabilities"] == {"bounding": [], "effective": [], "permitted": []}
    only_allow = docker_spec()
    apply(only_allow, capabilities=validated("capabilities", {"allow": ["chown", "kill"]}))
    assert only_allow["process"]["capabilities"]["effective"] == ["CAP_CHOWN", "CAP_KILL"]
    none = {"process": {"args": ["sh"]}}
    assert apply(none, capabilities=validated("capabilities", {"drop": ["ALL"]})) == [] and none == {
        "process": {"args": ["sh"]}}
    with pytest.raises(oi.InterceptorError, match="rule r: capabilities: process.capabilities.effective is not a "
                                                   "list of strings"):
        apply({"process": {"capabilities": {"effective": "CAP_KILL"}}}, capabilities={"drop": ["ALL"]})


@pytest.mark.parametrize("text, number", [
    ("512m", 512 << 20), ("512M", 512 << 20), ("1g", 1 << 30), ("1.5g", 3 << 29), ("64k", 65536), ("1048576", 1048576),
    (1048576, 1048576), ("2t", 2 << 40), ("10b", 10), (" 8m ", 8 << 20),
    ("0", None), ("-1m", None), ("m", None), ("1.2.3m", None), ("lots", None), (True, None), (0, None), (1.5, None),
])
def test_parse_bytes(text, number):
    assert oi.parse_bytes(text) == number


def test_limits_are_ceilings():
    spec = docker_spec()
    changes = apply(spec, limits=validated("limits", {"pids": 100, "memory": "256m", "cpus": oi.RawNumber("0.5")}))
    assert changes == ["r: linux.resources.pids.limit: (none) -> 100",
                       "r: linux.resources.memory.limit: (none) -> 268435456",
                       "r: linux.resources.cpu: quota (none), period (none) -> quota 50000, period 100000"]
    resources = spec["linux"]["resources"]
    assert resources["pids"] == {"limit": 100}
    assert resources["memory"] == {"disableOOMKiller": False, "limit": 268435456}
    assert resources["cpu"] == {"shares": 0, "quota": 50000, "period": 100000}
    assert apply(spec, limits={"pids": 100, "memory": "256m", "cpus": oi.RawNumber("0.5")}) == []      # idempotent
    # docker run --pids-limit 5000 --memory 1g --cpus 1.5 (what Docker writes), and lower ones that stay.
    higher = docker_spec(l=lambda s: s["linux"]["resources"].update(
        pids={"limit": 5000}, memory={"limit": 1 << 30, "swap": 2 << 30}, cpu={"quota": 150000, "period": 100000}))
    apply(higher, limits={"pids": 100, "memory": "256m", "cpus": 1})
    assert (higher["linux"]["resources"]["pids"], higher["linux"]["resources"]["memory"],
            higher["linux"]["resources"]["cpu"]) == ({"limit": 100}, {"limit": 268435456, "swap": 2 << 30},
                                                     {"quota": 100000, "period": 100000})
    lower = docker_spec(l=lambda s: s["linux"]["resources"].update(
        pids={"limit": 10}, memory={"limit": 64 << 20}, cpu={"quota": 25000, "period": 50000}))
    before = copy.deepcopy(lower)
    assert apply(lower, limits={"pids": 100, "memory": "256m", "cpus": 1}) == [] and lower == before
    # Unlimited as engines write it (-1, 0), and a swap limit below the ceiling.
    unlimited = docker_spec(l=lambda s: s["linux"]["resources"].update(
        pids={"limit": -1}, memory={"limit": 0, "swap": 128 << 20}))
    apply(unlimited, limits={"pids": 100, "memory": "256m"})
    assert unlimited["linux"]["resources"]["pids"]["limit"] == 100
    assert unlimited["linux"]["resources"]["memory"]["limit"] == 128 << 20       # not above memory+swap
    # A period of its own is kept.
    period = docker_spec(l=lambda s: s["linux"]["resources"].update(cpu={"period": 200000}))
    apply(period, limits={"cpus": 2})
    assert period["linux"]["resources"]["cpu"] == {"period": 200000, "quota": 400000}
    # No linux at all: made; a linux that is not an object: the key path.
    bare = {"process": {"args": ["sh"]}}
    apply(bare, limits={"pids": 5})
    assert bare["linux"] == {"resources": {"pids": {"limit": 5}}}
    with pytest.raises(oi.InterceptorError, match="rule r: limits: linux.resources is not an object"):
        apply({"linux": {"resources": []}}, limits={"pids": 5})


def test_limits_clamp_the_unified_map_too():
    spec = docker_spec(u=lambda s: s["linux"]["resources"].update(unified={
        "pids.max": "max", "memory.max": "1073741824", "cpu.max": "max 100000", "io.weight": "100"}))
    apply(spec, limits={"pids": 100, "memory": "256m", "cpus": 1})
    assert spec["linux"]["resources"]["unified"] == {"pids.max": "100", "memory.max": "268435456",
                                                      "cpu.max": "100000 100000", "io.weight": "100"}
    lower = docker_spec(u=lambda s: s["linux"]["resources"].update(unified={
        "pids.max": "7", "memory.max": "1048576", "cpu.max": "10000 100000"}))
    apply(lower, limits={"pids": 100, "memory": "256m", "cpus": 1})
    assert lower["linux"]["resources"]["unified"] == {"pids.max": "7", "memory.max": "1048576",
                                                      "cpu.max": "10000 100000"}


def test_no_new_privileges_and_readonly_rootfs():
    spec = docker_spec()
    assert apply(spec, no_new_privileges=True, readonly_rootfs=True) == [
        "r: process.noNewPrivileges: set", "r: root.readonly: set"]
    assert spec["process"]["noNewPrivileges"] is True and spec["root"]["readonly"] is True
    assert apply(spec, no_new_privileges=True, readonly_rootfs=True) == []
    assert apply(docker_spec(), no_new_privileges=False, readonly_rootfs=False) == []


# --- refusals and modes -----------------------------------------------------------------

def test_deny_refuses_with_the_rule_name_and_stops_the_pipeline():
    rules = [oi.Rule("clamp", None, {"no-new-privileges": True}, "t"),
             oi.Rule("no-root", None, {"deny": "root containers are not allowed"}, "t"),
             oi.Rule("later", None, {"readonly-rootfs": True}, "t")]
    spec = docker_spec()
    with pytest.raises(oi.Denied) as info:
        oi.apply_rules(spec, rules)
    assert str(info.value) == "denied by rule no-root: root containers are not allowed"
    assert info.value.exit_code == 1 and info.value.rule == "no-root"
    assert "readonly" not in spec["root"]


def test_warn_and_audit_rules_change_nothing_and_say_what_they_would_do():
    spec = docker_spec()
    before = copy.deepcopy(spec)
    ctx = context()
    rules = [oi.Rule("would-clamp", None, {"no-new-privileges": True, "runtime-path": "crun"}, "t", "warn"),
             oi.Rule("would-deny", None, {"deny": "no"}, "t", "audit"),
             oi.Rule("would-fail", None, {"json-patch": [{"op": "test", "path": "/hostname", "value": "x"}]}, "t",
                     "warn"),
             oi.Rule("no-op", None, {"readonly-rootfs": False}, "t", "warn")]
    assert oi.apply_rules(spec, rules, ctx) == []
    assert spec == before and ctx.runtime_path is None
    assert [note.text() for note in oi.guardrail_state(ctx).notes] == [
        "rule would-clamp (warn): would change: process.noNewPrivileges: set",
        "rule would-deny (audit): would deny: no",
        "rule would-fail (warn): would deny: rule would-fail: json-patch: json-patch[0] (test /hostname): test failed"]


# --- as a process -----------------------------------------------------------------------

def bundle_with(directory, spec):
    directory.mkdir()
    write_json(directory / "config.json", spec)
    return str(directory)


def test_a_denied_container_fails_with_one_line_in_stderr_and_the_log(pyz, fake, tmp_path):
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "rules": [
        {"name": "no-host-pid", "when": {"hostNamespaces": ["pid"]}, "deny": "the host's PIDs stay the host's"}]})
    bundle = bundle_with(tmp_path / "b", docker_spec(p=host_namespace("pid")))
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    log = tmp_path / "log.json"
    result = run([pyz], ["--oi-config", config, "--log", str(log), "--log-format", "json", "create", "--bundle",
                         bundle, "c1"], fake)
    line = "oci-interceptor: denied by rule no-host-pid: the host's PIDs stay the host's"
    assert (result.returncode, result.stdout, result.stderr.decode()) == (1, b"", line + "\n")
    assert json.loads(log.read_text()) == {"level": "error", "msg": line, "time": json.loads(log.read_text())["time"]}
    assert not fake.called()
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw
    # The same container without --pid host runs, its config untouched.
    plain = bundle_with(tmp_path / "plain", docker_spec())
    raw = open(os.path.join(plain, "config.json"), "rb").read()
    result = run([pyz], ["--oi-config", config, "create", "--bundle", plain, "c2"], fake)
    assert (result.returncode, result.stderr) == (0, b"")
    assert fake.called() and open(os.path.join(plain, "config.json"), "rb").read() == raw


def test_warn_mode_is_one_warning_in_stderr_and_the_log(pyz, fake, tmp_path):
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "rules": [
        {"preset": "baseline", "mode": "enforce"}, {"preset": "restricted", "mode": "warn"},
        {"name": "quiet", "mode": "audit", "deny": "never said"}]})
    bundle = bundle_with(tmp_path / "b", docker_spec())
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    log = tmp_path / "log.txt"
    result = run([pyz], ["--oi-config", config, "--log", str(log), "create", "--bundle", bundle, CONTAINER_ID], fake)
    warning = ("oci-interceptor: warning: rule restricted (warn): would deny: does not meet the restricted level: "
               "capabilities (%s); run-as-non-root (uid 0); privilege-escalation (no-new-privileges not set)"
               % ", ".join(sorted(c for c in DOCKER_CAPS if c != "CAP_NET_BIND_SERVICE")))
    assert (result.returncode, result.stderr.decode()) == (0, warning + "\n")
    assert log.read_text().count("\n") == 1 and "level=warning msg=%s" % json.dumps(warning) in log.read_text()
    assert fake.called() and open(os.path.join(bundle, "config.json"), "rb").read() == raw


def test_dry_run_shows_the_verdict(pyz, fake, tmp_path):
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "rules": [
        {"preset": "baseline"}, {"preset": "restricted", "mode": "warn"},
        {"name": "clamp", "capabilities": {"drop": ["NET_RAW"]}}]})
    bundle = bundle_with(tmp_path / "b", docker_spec(c=add_caps("CAP_SYS_ADMIN")))
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    result = run([pyz], ["--oi-config", config, "--oi-dry-run", "create", "--bundle", bundle, CONTAINER_ID], fake)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "rules matched: baseline, restricted (warn), clamp\n" in out
    assert ("verdict: would deny: denied by rule baseline: does not meet the baseline level: capabilities "
            "(CAP_SYS_ADMIN)\n") in out
    assert "would not exec the runtime" in out and "would exec" not in out
    plain = bundle_with(tmp_path / "plain", docker_spec())
    out = run([pyz], ["--oi-config", config, "--oi-dry-run", "create", "--bundle", plain, CONTAINER_ID],
              fake).stdout.decode()
    assert "rules matched: restricted (warn), clamp\n" in out
    assert "  clamp: process.capabilities.bounding: removed CAP_NET_RAW\n" in out
    assert "  rule restricted (warn): would deny: does not meet the restricted level: capabilities (" in out
    assert "verdict: would change the config\n" in out and "would exec: %s create" % fake.runtime in out
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw and not fake.called()


def test_check_config_shows_modes_presets_and_the_audit_log(pyz, fake, tmp_path):
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "audit-log": "audit.log",
                                                   "rules": [
        {"preset": "baseline"}, {"preset": "restricted", "mode": "warn"},
        {"name": "no-sock", "when": {"anyOf": [{"hostPaths": ["/var/run/docker.sock"]}, {"privileged": True}]},
         "deny": "no", "mode": "audit"}]})
    result = run([pyz], ["--oi-config", config, "--oi-check-config"])
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "audit log: %s\n" % (tmp_path / "audit.log") in out
    assert ("  baseline (%s rules[0])\n    when: always\n    preset: \"baseline\"\n    controls: host-namespaces, "
            "privileged, capabilities, host-paths, proc-mount, apparmor, selinux, seccomp, sysctls\n    mode: enforce\n"
            % config) in out
    assert "    controls: host-namespaces, privileged, host-paths, proc-mount, apparmor, selinux, sysctls, " \
           "capabilities, seccomp, run-as-non-root, privilege-escalation\n    mode: warn\n" in out
    assert ("    when: {\"anyOf\": [{\"hostPaths\": [\"/var/run/docker.sock\"]}, {\"privileged\": true}]}\n"
            "    deny: \"no\"\n    mode: audit\n") in out
    write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "audit-log": "missing/audit.log"})
    result = run([pyz], ["--oi-config", config, "--oi-check-config"])
    assert result.returncode == 2
    assert result.stderr.decode() == ("oci-interceptor: configuration cannot work: audit log %s: directory %s does "
                                      "not exist\n" % (tmp_path / "missing/audit.log", tmp_path / "missing"))


def test_help_lists_the_guardrails(pyz):
    out = run([pyz], ["--oi-help"]).stdout.decode()
    for key in ("hostPaths", "capabilities", "hostNamespaces", "privileged", "rootUser", "unconfined", "not", "anyOf",
                "deny", "preset", "limits", "no-new-privileges", "readonly-rootfs", "--oi-audit-log"):
        assert "\"%s\"" % key in out or key in out, key
    presets = out[out.index("guardrail presets"):]
    for name, controls in oi.preset_levels():
        assert "  \"%s\"\n" % name in presets
        for control in controls:
            assert "        %s: " % control.name in presets


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_lifecycle_calls_under_a_guardrail_policy_keep_the_fast_path(pyz, fake, tmp_path):
    """start, state, delete... never depend on the guardrails: they go to the
    runtime, audit nothing, and are recorded for the shell fast path."""
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "audit-log": "audit.log",
                                                   "rules": [{"preset": "baseline"},
                                                             {"name": "x", "when": {"privileged": True}, "deny": "no"}]})
    os.utime(config, (time.time() - 60,) * 2)       # none is made from a file modified this second
    state = tmp_path / "state"
    result = run([pyz], ["--root", "/r", "state", "c"], fake,
                 env={"OCI_INTERCEPTOR_CONFIG": config, "OCI_INTERCEPTOR_STATE_DIR": str(state)})
    assert (result.returncode, result.stderr) == (0, b"")
    assert fake.args() == [b"--root", b"/r", b"state", b"c"]
    assert os.path.exists(str(state / ("passthrough-" + os.path.basename(pyz))))
    assert not (tmp_path / "audit.log").exists()


# --- the audit log ----------------------------------------------------------------------

def audit_lines(path):
    with open(str(path)) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_audit_log_one_line_per_create_with_its_verdict(pyz, fake, tmp_path):
    audit = tmp_path / "audit.log"
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "audit-log": "audit.log",
                                                   "rules": [
        {"name": "no-host-pid", "when": {"hostNamespaces": ["pid"]}, "deny": "no host PIDs"},
        {"name": "clamp", "when": {"capabilities": ["NET_RAW"]}, "capabilities": {"drop": ["NET_RAW"]}},
        {"preset": "restricted", "mode": "audit"}]})
    bundles = {"denied": docker_spec(p=host_namespace("pid")), "changed": docker_spec(),
               "allowed": docker_spec(c=lambda s: s["process"].update(capabilities={}))}
    for name, spec in bundles.items():
        result = run([pyz], ["--oi-config", config, "--root", "/r", "create", "--bundle",
                             bundle_with(tmp_path / name, spec), name], fake)
        assert result.returncode == (1 if name == "denied" else 0), result.stderr
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{")
    assert run([pyz], ["--oi-config", config, "create", "--bundle", str(broken), "broken"], fake).returncode == 1
    assert stat.S_IMODE(os.stat(str(audit)).st_mode) == 0o600
    lines = audit_lines(audit)
    assert [(line["id"], line["verdict"]) for line in lines] == [
        ("denied", "denied"), ("changed", "changed"), ("allowed", "allowed"), ("broken", "error")]
    denied, changed, allowed, broken = lines
    assert denied["message"] == "denied by rule no-host-pid: no host PIDs" and denied["denied-by"] == "no-host-pid"
    assert denied["changes"] == [] and denied["root"] == "/r" and denied["command"] == "create"
    assert denied["bundle"] == str(tmp_path / "denied")
    assert [r["name"] for r in denied["rules"]] == ["no-host-pid", "clamp", "restricted"]
    assert changed["rules"][0] == {"name": "clamp", "mode": "enforce"}
    assert changed["rules"][1]["mode"] == "audit" and changed["rules"][1]["would-deny"].startswith(
        "does not meet the restricted level: ")
    assert "run-as-non-root (uid 0)" in changed["rules"][1]["would-deny"]
    assert changed["changes"] == ["clamp: process.capabilities.%s: removed CAP_NET_RAW" % k
                                  for k in ("bounding", "effective", "permitted")]
    assert "message" not in changed and changed["time"].endswith("Z")
    assert allowed["changes"] == [] and [r["name"] for r in allowed["rules"]] == ["restricted"]
    assert broken["message"].startswith("cannot parse %s/config.json" % (tmp_path / "broken"))


def test_an_audit_log_that_cannot_be_written_is_a_warning(pyz, fake, tmp_path):
    target = tmp_path / "target"
    target.write_text("")
    (tmp_path / "audit.log").symlink_to(target)         # never written through
    for name, audit_log in (("missing", str(tmp_path / "missing" / "audit.log")), ("link", str(tmp_path / "audit.log"))):
        config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime,
                                                       "audit-log": audit_log,
                                                       "rules": [{"name": "nnp", "no-new-privileges": True}]})
        bundle = bundle_with(tmp_path / ("bundle-" + name), docker_spec())
        result = run([pyz], ["--oi-config", config, "create", "--bundle", bundle, "c"], fake)
        assert result.returncode == 0 and fake.called()
        assert result.stderr.decode().startswith("oci-interceptor: warning: audit log %s: " % audit_log)
        with open(os.path.join(bundle, "config.json")) as f:
            assert json.load(f)["process"]["noNewPrivileges"] is True
    assert target.read_text() == ""


def test_syslog_gets_one_datagram_tagged_oci_interceptor(tmp_path, monkeypatch):
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(5)
    monkeypatch.setattr(oi, "SYSLOG_SOCKET", path)
    policy = oi.Policy()
    policy.audit_log = "syslog"
    call = oi.parse_runtime_call(["--root", "/r", "create", "--bundle", str(tmp_path), "c1"])
    try:
        oi.audit_call(policy, call, error=oi.Denied("no", "rule-x"))
        message = server.recv(65536)
    finally:
        server.close()
    head, _, body = message.partition(b": ")
    assert head == b"<28>oci-interceptor[%d]" % os.getpid()          # daemon.warning
    record = json.loads(body.decode())
    assert (record["id"], record["verdict"], record["message"]) == ("c1", "denied", "denied by rule rule-x: no")


def test_syslog_from_the_program_through_dev_log(pyz, fake, tmp_path):
    """The program as the engines run it sends to /dev/log: here a private
    /dev (in a mount namespace of its own) whose log is the test's socket."""
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(30)
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime, "audit-log": "syslog",
                                                   "rules": [{"name": "nnp", "no-new-privileges": True}]})
    bundle = bundle_with(tmp_path / "b", docker_spec())
    (tmp_path / "hostdev").mkdir()
    script = ('mount --bind /dev "$0/hostdev" && mount -t tmpfs tmpfs /dev && '
              'for n in null zero urandom; do touch /dev/$n && mount --bind "$0/hostdev/$n" /dev/$n; done && '
              'ln -s "$0/log.sock" /dev/log && exec "$@"')
    try:
        result = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(tmp_path), pyz],
                     ["--oi-config", config, "create", "--bundle", bundle, "c9"], fake)
        assert result.returncode == 0, result.stderr
        message = server.recv(65536)
    finally:
        server.close()
    assert message.startswith(b"<30>oci-interceptor[")                # daemon.info
    record = json.loads(message.partition(b"]: ")[2].decode())
    assert (record["id"], record["verdict"]) == ("c9", "changed")
    assert record["changes"] == ["nnp: process.noNewPrivileges: set"]


def test_200_concurrent_audited_creates_write_intact_lines(pyz, fake, tmp_path):
    config = write_json(tmp_path / "policy.json", {"version": 1, "runtime-path": fake.runtime,
                                                   "audit-log": str(tmp_path / "audit.log"), "rules": [
        {"name": "no-host-pid", "when": {"hostNamespaces": ["pid"]}, "deny": "x" * 5000}]})     # > PIPE_BUF
    specs = [docker_spec(p=host_namespace("pid")) if i % 2 else docker_spec() for i in range(200)]
    bundles = [bundle_with(tmp_path / ("b%03d" % i), spec) for i, spec in enumerate(specs)]
    procs = [subprocess.Popen([pyz, "--oi-config", config, "create", "--bundle", b, "c%03d" % i],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env=dict(os.environ, FAKE_RUNTIME_OUT=str(tmp_path / ("out%03d" % i))))
             for i, b in enumerate(bundles)]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [1 if i % 2 else 0 for i in range(200)]
    lines = audit_lines(tmp_path / "audit.log")
    assert sorted(line["id"] for line in lines) == ["c%03d" % i for i in range(200)]
    for line in lines:
        assert line["verdict"] == ("denied" if int(line["id"][1:]) % 2 else "allowed")


# --- real containers --------------------------------------------------------------------

CLAMP = {"name": "clamp", "capabilities": {"drop": ["NET_RAW", "MKNOD"]},
         "limits": {"pids": 42, "memory": "64m", "cpus": 0.5}, "no-new-privileges": True, "readonly-rootfs": True}
PROBE = ("grep -E '^(CapEff|CapBnd|NoNewPrivs):' /proc/self/status; cat /sys/fs/cgroup/pids/pids.max "
         "/sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || "
         "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; "
         "grep -E '^[^ ]+ / ' /proc/self/mounts | cut -d' ' -f4 | cut -d, -f1")


def cap_mask(names):
    order = oi._CAPABILITY_NAMES.split()
    return "%016x" % sum(1 << order.index(n[4:]) for n in names)


def run_container(pyz, runtime, bundle, config, *extra):
    cid = new_id("oi-guard")
    try:
        return subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path, "--root", runtime.root]
                              + list(extra) + ["run", "--bundle", bundle.path, cid], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120)
    finally:
        runtime("delete", "--force", cid)


def test_clamps_seen_from_inside_the_container(pyz, runtime, bundle_factory, tmp_path):
    config = write_json(tmp_path / "policy.json", {"version": 1, "rules": [CLAMP]})
    bundle = bundle_factory(["sh", "-c", PROBE])
    spec = bundle.read()
    spec["root"]["readonly"] = False            # (the rootfs is shared: the probe writes nothing)
    spec["process"]["capabilities"] = {k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")}
    spec["linux"]["resources"].update(pids={"limit": 5000}, memory={"limit": 1 << 30})
    bundle.write(spec)
    result = run_container(pyz, runtime, bundle, config)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    clamped = cap_mask([c for c in DOCKER_CAPS if c not in ("CAP_NET_RAW", "CAP_MKNOD")])
    assert out[:3] == ["CapEff:\t" + clamped, "CapBnd:\t" + clamped, "NoNewPrivs:\t1"]
    assert out[3:6] in (["42", str(64 << 20), "50000"], ["42", str(64 << 20), "50000 100000"]), out
    assert out[6] == "ro"                                               # the root filesystem
    # A lower limit stays: --pids-limit 10 ends at 10.
    spec["linux"]["resources"]["pids"] = {"limit": 10}
    bundle.write(spec)
    result = run_container(pyz, runtime, bundle, config)
    assert result.stdout.decode().splitlines()[3] == "10"


def test_a_denied_container_never_starts(pyz, runtime, bundle_factory, tmp_path):
    sockdir = tmp_path / "sockdir"
    sockdir.mkdir()
    (sockdir / "docker.sock").write_text("")
    config = write_json(tmp_path / "policy.json", {"version": 1, "rules": [
        {"name": "no-docker-socket", "when": {"hostPaths": [str(sockdir / "docker.sock")]},
         "deny": "the Docker socket stays on the host"}]})
    marker = tmp_path / "ran"
    bundle = bundle_factory(["sh", "-c", "touch /h/ran"])
    spec = bundle.read()
    spec["mounts"].append({"destination": "/h", "type": "bind", "source": str(tmp_path), "options": ["rbind"]})
    bundle.write(spec)
    log = tmp_path / "log.json"
    cid = new_id("oi-guard")
    try:
        result = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path, "--root", runtime.root,
                                 "--log", str(log), "--log-format", "json", "run", "--bundle", bundle.path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert runtime("state", cid).returncode != 0
    finally:
        runtime("delete", "--force", cid)
    assert result.returncode == 1
    line = "oci-interceptor: denied by rule no-docker-socket: the Docker socket stays on the host"
    assert result.stderr.decode() == line + "\n"
    assert json.loads(log.read_text())["msg"] == line
    assert not marker.exists()


@pytest.mark.parametrize("runtime", ["runc"], indirect=True)
def test_50_real_containers_audited_at_once(pyz, runtime, bundle_factory, tmp_path):
    """One intact line each, with its verdict: every third container asks
    for the host's PID namespace (denied), every third is clamped, the
    rest allowed."""
    audit = tmp_path / "audit.log"
    config = write_json(tmp_path / "policy.json", {"version": 1, "audit-log": str(audit), "rules": [
        {"name": "no-host-pid", "when": {"hostNamespaces": ["pid"]}, "deny": "the host's PIDs stay the host's"},
        {"name": "clamp", "when": {"env": {"CLAMP": "yes"}}, "limits": {"pids": 64}}]})
    bundles, ids = [], []
    for i in range(50):
        bundle = bundle_factory(["sh", "-c", "cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || "
                                             "cat /sys/fs/cgroup/pids.max"],
                                env=["PATH=/bin", "CLAMP=%s" % ("yes" if i % 3 == 1 else "no")])
        if i % 3 == 0:
            spec = bundle.read()
            spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"]
            bundle.write(spec)
        bundles.append(bundle)
        ids.append(new_id("oi-audit"))
    results = [None] * 50

    def start(i):
        results[i] = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path, "--root",
                                     runtime.root, "run", "--bundle", bundles[i].path, ids[i]],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    timeout=300)
    try:
        run_at_once(50, start)
    finally:
        for cid in ids:
            runtime("delete", "--force", cid)
    expected = {ids[i]: ("denied", "changed", "allowed")[i % 3] for i in range(50)}
    for i, result in enumerate(results):
        verdict = expected[ids[i]]
        assert result.returncode == (1 if verdict == "denied" else 0), result.stderr
        if verdict == "changed":
            assert result.stdout.decode() == "64\n"
    with open(str(audit), "rb") as f:
        raw = f.read()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 50
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert {line["id"]: line["verdict"] for line in lines} == expected
    for line in lines:
        if line["verdict"] == "denied":
            assert line["message"] == "denied by rule no-host-pid: the host's PIDs stay the host's"
        assert line["root"] == runtime.root and line["command"] == "run"


def test_the_readme_example_does_what_the_readme_says(tmp_path):
    from test_readme import json_blocks_after
    (example,) = json_blocks_after("## Guardrails")
    policy = load(tmp_path, example)
    assert [(r.name, r.mode) for r in policy.rules] == [
        ("no-docker-socket", "enforce"), ("baseline", "enforce"), ("restricted", "warn"), ("clamp", "enforce")]
    assert policy.audit_log == "/var/log/oci-interceptor/audit.log"
    for source in ("/var/run", "/", "/run/docker.sock"):
        spec = docker_spec(b=bind(source))
        ctx = context()
        with pytest.raises(oi.Denied) as info:
            oi.apply_rules(spec, oi.matching_rules(spec, policy, ctx), ctx)
        assert str(info.value) == ("denied by rule no-docker-socket: the Docker socket gives root on the host: ask "
                                   "for a build service instead")
    spec = docker_spec(l=lambda s: s["linux"]["resources"].update(pids={"limit": 5000}))
    ctx = context()
    oi.apply_rules(spec, oi.matching_rules(spec, policy, ctx), ctx)
    assert spec["linux"]["resources"]["pids"] == {"limit": 1024}
    assert "CAP_NET_RAW" not in spec["process"]["capabilities"]["effective"]
    assert [n.rule.name for n in oi.guardrail_state(ctx).notes] == ["restricted"]
