"""systemd containers without --privileged: detection, every edit, both
cgroup versions and both cgroupsPath styles, and the kill translation; then
a real Debian systemd booted under runc and crun through the interceptor."""

import copy
import json
import os
import shutil
import subprocess
import time

import pytest

import oci_interceptor as oi
from conftest import need, new_id, run

DOCKER_ID = "4f1c0e9a7d2b3c5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6"
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def docker_spec(args=("/sbin/init",), env=("PATH=/usr/bin:/bin",), cgroups_path="/docker/" + DOCKER_ID,
                readonly=False):
    return {
        "process": {"args": list(args), "env": list(env),
                    "capabilities": {"bounding": list(DOCKER_CAPS), "effective": list(DOCKER_CAPS)}},
        "root": {"path": "/rootfs", "readonly": readonly},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["ro", "nosuid", "noexec", "nodev"]},
            {"destination": "/run/secrets", "type": "bind", "source": "/s", "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["rbind", "rw"]},
        ],
        "linux": {"cgroupsPath": cgroups_path, "namespaces": [{"type": "pid"}, {"type": "mount"}]},
    }


def edit(spec, mode="auto", version=1, cid=DOCKER_ID, hierarchy=oi.SYSTEMD_HIERARCHY, nsdelegate=True, own="/"):
    context = oi.EditContext(cid, cgroup_version=version, systemd_hierarchy=hierarchy, nsdelegate=nsdelegate,
                             own_systemd_cgroup=own)
    return oi.edit_systemd(spec, mode, context)


def refused(spec, message, **kwargs):
    """The edit refuses the container with exactly this one-line message."""
    with pytest.raises(oi.InterceptorError) as caught:
        edit(spec, "always", **kwargs)
    assert str(caught.value) == message


def destinations(spec):
    return [m["destination"] for m in spec["mounts"]]


# --- detection -------------------------------------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["/sbin/init"], True), (["/usr/sbin/init"], True), (["/usr/local/sbin/init"], True),
    (["/lib/systemd/systemd", "--log-level=debug"], True), (["systemd"], True),
    (["/bin/sh", "-c", "/sbin/init"], True), (["/bin/sh", "-c", "/usr/lib/systemd/systemd"], True),
    (["/bin/sh", "-c", "exec /sbin/init"], False), (["/bin/bash"], False), (["/sbin/initctl"], False),
    (["init"], False), (["/usr/bin/systemd-analyze"], False), ([], False),
])
def test_detection_follows_podman(args, expected):
    assert oi.is_systemd_command({"process": {"args": args}}) is expected


@pytest.mark.parametrize("env", [["oci-systemd-hook=disabled"], ["oci-systemd-hook=DISABLED"],
                                 ["OCI_INTERCEPTOR_SYSTEMD=off"], ["OCI_INTERCEPTOR_SYSTEMD=false"]])
def test_a_container_can_turn_it_off(env):
    spec = docker_spec(env=env)
    before = copy.deepcopy(spec)
    assert edit(spec, "always") == []
    assert spec == before


def test_auto_leaves_other_commands_alone_and_always_does_not():
    spec = docker_spec(args=["/usr/bin/app"])
    before = copy.deepcopy(spec)
    assert edit(spec, "auto") == [] and spec == before
    assert edit(spec, "off") == [] and spec == before
    assert edit(spec, "always")


# --- edits ------------------------------------------------------------------------------

def test_tmpfs_mounts_env_mark_and_cgroup_v1():
    spec = docker_spec()
    changes = edit(spec)
    # /run goes before the nested /run/secrets (runtimes mount in order).
    assert destinations(spec) == ["/proc", "/sys", "/sys/fs/cgroup", "/sys/fs/cgroup/systemd", "/run",
                                  "/run/secrets", "/etc/hosts", "/run/lock", "/tmp", "/var/log/journal"]
    mounts = {m["destination"]: m for m in spec["mounts"]}
    for destination in ("/run", "/run/lock", "/tmp", "/var/log/journal"):
        assert mounts[destination]["type"] == "tmpfs"
    assert mounts["/sys/fs/cgroup/systemd"] == {
        "destination": "/sys/fs/cgroup/systemd", "type": "bind",
        "source": "/sys/fs/cgroup/systemd/docker/" + DOCKER_ID,
        "options": ["rbind", "rw", "nosuid", "noexec", "nodev"]}
    assert mounts["/sys/fs/cgroup"]["options"] == ["ro", "nosuid", "noexec", "nodev"]   # host tree stays ro
    assert "/var/lib/systemd" not in mounts
    env = spec["process"]["env"]
    assert "container=oci" in env and "container_uuid=" + DOCKER_ID[:32] in env
    assert {"type": "cgroup"} in spec["linux"]["namespaces"]
    assert spec["annotations"] == {"oci-interceptor.systemd": "true"}
    assert spec["process"]["capabilities"]["bounding"] == DOCKER_CAPS    # nothing added
    assert changes == [
        "linux.namespaces: added cgroup",
        "mounts[3] (/sys/fs/cgroup/systemd): own name=systemd cgroup /docker/%s, read-write" % DOCKER_ID,
        "mounts[4] (/run): added tmpfs", "mounts[7] (/run/lock): added tmpfs", "mounts[8] (/tmp): added tmpfs",
        "mounts[9] (/var/log/journal): added tmpfs", "process.env: added container",
        "process.env: added container_uuid", "annotations: set oci-interceptor.systemd"]
    assert edit(spec) == []                                                # idempotent


def test_existing_mounts_and_env_are_kept():
    spec = docker_spec(env=["container=docker", "container_uuid=abc"])
    spec["mounts"].append({"destination": "/tmp", "type": "bind", "source": "/srv/tmp"})
    spec["mounts"].append({"destination": "/sys/fs/cgroup/systemd", "type": "bind", "source": "/mine"})
    edit(spec)
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/tmp"] == ["/srv/tmp"]
    assert [m["source"] for m in spec["mounts"] if m["destination"] == "/sys/fs/cgroup/systemd"] == ["/mine"]
    assert spec["process"]["env"][-2:] == ["container=docker", "container_uuid=abc"]


def test_read_only_root_gets_var_lib_systemd():
    spec = docker_spec(readonly=True)
    edit(spec)
    assert "/var/lib/systemd" in destinations(spec)


def test_cgroup_mount_added_when_missing():
    spec = docker_spec()
    spec["mounts"] = [m for m in spec["mounts"] if m["destination"] != "/sys/fs/cgroup"]
    edit(spec)
    names = destinations(spec)
    assert names.index("/sys/fs/cgroup") + 1 == names.index("/sys/fs/cgroup/systemd")


@pytest.mark.parametrize("cgroups_path, cid, expected", [
    ("/docker/abc", "abc", "/docker/abc"),                                  # Docker, cgroupfs
    ("docker/abc", "abc", "/docker/abc"),
    ("/docker//abc/", "abc", "/docker/abc"),
    ("/libpod_parent/libpod-abc", "abc", "/libpod_parent/libpod-abc"),      # Podman, cgroupfs
    ("/kubepods/besteffort/pod1/abc", "abc", "/kubepods/besteffort/pod1/abc"),
    ("system.slice:docker:abc", "abc", "/system.slice/docker-abc.scope"),   # Docker, systemd
    ("machine-libpod_pod_1.slice:libpod:abc", "abc", "/machine.slice/machine-libpod_pod_1.slice/libpod-abc.scope"),
    ("machine.slice:libpod:abc", "abc", "/machine.slice/libpod-abc.scope"),  # Podman, systemd
    ("kubepods-besteffort-pod1.slice:cri-containerd:abc", "abc",             # containerd CRI, systemd
     "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"),
    (":runc:abc", "abc", "/runc-abc.scope"),
    (None, "abc", "/abc"),
    ("", "abc", "/abc"),
])
def test_cgroup_paths_of_both_styles(cgroups_path, cid, expected):
    assert oi.systemd_cgroup_path(cgroups_path, cid) == expected
    spec = docker_spec(cgroups_path=cgroups_path)
    edit(spec, cid=cid)
    assert {m["destination"]: m["source"] for m in spec["mounts"]}["/sys/fs/cgroup/systemd"] == \
        "/sys/fs/cgroup/systemd" + expected


# --- the container's own cgroup and no other (cgroup v1) ------------------------------------

@pytest.mark.parametrize("cgroups_path, cid, found", [
    ("/../../../../../../tmp/rt/escape", DOCKER_ID, "found '..'"),
    ("/docker/../../etc", DOCKER_ID, "found '..'"),
    ("docker/../../../x", DOCKER_ID, "found '..'"),
    ("/..", DOCKER_ID, "found '..'"),
    (None, "..", "found '..'"),
    ("/", DOCKER_ID, "found the hierarchy's root, which the host shares"),
    ("//./", DOCKER_ID, "found the hierarchy's root, which the host shares"),
    ("../../../tmp/x.slice:docker:abc", DOCKER_ID, "found '/' in a slice:prefix:name part"),
    ("system.slice:docker:../../../tmp", DOCKER_ID, "found '/' in a slice:prefix:name part"),
    ("system.slice:../..:abc", DOCKER_ID, "found '/' in a slice:prefix:name part"),
    ("/docker/a\u0000b", DOCKER_ID, "found a NUL character"),
])
def test_a_cgroups_path_that_leaves_the_hierarchy_is_refused(cgroups_path, cid, found):
    spec = docker_spec(cgroups_path=cgroups_path)
    before = copy.deepcopy(spec)
    shown = "(not set)" if cgroups_path is None else json.dumps(cgroups_path)
    refused(spec, "linux.cgroupsPath %s: the container's cgroup must lie inside /sys/fs/cgroup/systemd (%s)"
            % (shown, found), cid=cid)
    assert spec == before


def test_the_refusal_is_one_line_naming_the_rule_and_action():
    spec = docker_spec(cgroups_path="/../../../../../../tmp/rt/escape")
    rule = oi.Rule("(global)", None, {"systemd": "always"}, "test")
    with pytest.raises(oi.InterceptorError) as caught:
        oi.apply_rules(spec, [rule], oi.EditContext(DOCKER_ID, cgroup_version=1,
                                                    systemd_hierarchy=oi.SYSTEMD_HIERARCHY, own_systemd_cgroup="/"))
    assert str(caught.value) == (
        "rule (global): systemd: linux.cgroupsPath \"/../../../../../../tmp/rt/escape\": "
        "the container's cgroup must lie inside /sys/fs/cgroup/systemd (found '..')")


def test_a_control_character_in_the_path_stays_on_one_line():
    spec = docker_spec(cgroups_path="/docker/../x\ny")
    with pytest.raises(oi.InterceptorError) as caught:
        edit(spec)
    assert "\n" not in str(caught.value) and "found '..'" in str(caught.value)


def fake_cgroup(path, processes=()):
    path.mkdir(parents=True)
    (path / "cgroup.procs").write_text("".join("%d\n" % p for p in processes))
    return path


def test_a_symlink_in_the_hierarchy_is_refused(tmp_path):
    hierarchy = fake_cgroup(tmp_path / "systemd")
    fake_cgroup(tmp_path / "elsewhere")
    (hierarchy / "docker").symlink_to(tmp_path / "elsewhere")
    spec = docker_spec(cgroups_path="/docker/abc")
    refused(spec, "linux.cgroupsPath \"/docker/abc\": the container's cgroup must lie inside %s "
            "(found a symlink: %s/docker/abc is %s/elsewhere/abc)" % (hierarchy, hierarchy, tmp_path),
            hierarchy=str(hierarchy))


def test_a_symlinked_hierarchy_is_resolved_and_compared(tmp_path):
    real = fake_cgroup(tmp_path / "real")
    (tmp_path / "systemd").symlink_to(real)
    spec = docker_spec(cgroups_path="/docker/abc")
    edit(spec, hierarchy=str(tmp_path / "systemd"))
    assert spec["mounts"][3]["source"] == str(tmp_path / "systemd") + "/docker/abc"


@pytest.mark.parametrize("processes, child, found", [
    ((4242,), False, "found 1 process(es) in it"),
    ((1, 2, 3), False, "found 3 process(es) in it"),
    ((), True, "found child cgroups in it"),
])
def test_a_cgroup_someone_else_uses_is_refused(tmp_path, processes, child, found):
    hierarchy = fake_cgroup(tmp_path / "systemd")
    taken = fake_cgroup(hierarchy / "system.slice", processes)
    if child:
        fake_cgroup(taken / "sshd.service", (1,))
    spec = docker_spec(cgroups_path="/system.slice")
    refused(spec, "linux.cgroupsPath \"/system.slice\": %s/system.slice must be a new cgroup of the container's "
            "own (%s)" % (hierarchy, found), hierarchy=str(hierarchy))


def test_a_directory_that_is_no_cgroup_is_refused(tmp_path):
    hierarchy = fake_cgroup(tmp_path / "systemd")
    (hierarchy / "docker").mkdir()
    (hierarchy / "docker" / "abc").mkdir()
    refused(docker_spec(cgroups_path="/docker/abc"), "linux.cgroupsPath \"/docker/abc\": %s/docker/abc must be "
            "a new cgroup of the container's own (found no cgroup: No such file or directory)" % hierarchy,
            hierarchy=str(hierarchy))


def test_a_new_cgroup_or_an_empty_leaf_is_the_containers_own(tmp_path):
    hierarchy = fake_cgroup(tmp_path / "systemd")
    fake_cgroup(hierarchy / "docker" / "busy", (7,))          # a sibling in use does not matter
    spec = docker_spec(cgroups_path="/docker/new")
    edit(spec, hierarchy=str(hierarchy))
    assert spec["mounts"][3]["source"] == str(hierarchy) + "/docker/new"
    fake_cgroup(hierarchy / "docker" / "leftover")
    spec = docker_spec(cgroups_path="/docker/leftover")
    edit(spec, hierarchy=str(hierarchy))
    assert spec["mounts"][3]["source"] == str(hierarchy) + "/docker/leftover"


def test_without_a_name_systemd_hierarchy_it_is_refused():
    refused(docker_spec(), "linux.cgroupsPath \"/docker/%s\": cgroup v1 without a name=systemd hierarchy: "
            "systemd can have no cgroup of its own" % DOCKER_ID, hierarchy="")


def test_a_relative_path_is_taken_only_where_runc_and_crun_agree():
    spec = docker_spec(cgroups_path="docker/abc")
    edit(spec, own="/")
    assert spec["mounts"][3]["source"] == "/sys/fs/cgroup/systemd/docker/abc"
    for cgroups_path, shown in (("docker/abc", '"docker/abc"'), (None, "(not set)")):
        refused(docker_spec(cgroups_path=cgroups_path),
                "linux.cgroupsPath %s: the container's cgroup must lie inside /sys/fs/cgroup/systemd (found a "
                "relative path, which runc puts under its own cgroup /system.slice/containerd.service and crun "
                "under the root: give an absolute one)" % shown, own="/system.slice/containerd.service")


def test_a_cgroups_path_that_is_not_a_string_is_refused():
    refused(docker_spec(cgroups_path=["/docker/abc"]), "linux.cgroupsPath is not a string")


def test_v1_with_a_bind_of_the_host_tree_or_a_joined_namespace_adds_only_its_own_cgroup():
    """A user's bind of the host's /sys/fs/cgroup stays as the engine wrote
    it; a joined cgroup namespace stays joined. Either way the one thing
    added writable is the container's own name=systemd cgroup."""
    spec = docker_spec()
    host_tree = {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup",
                 "options": ["rbind", "ro", "rprivate"]}
    spec["mounts"][2] = dict(host_tree)
    joined = {"type": "cgroup", "path": "/proc/1/ns/cgroup"}
    spec["linux"]["namespaces"].append(dict(joined))
    changes = edit(spec)
    assert spec["mounts"][2] == host_tree
    assert spec["mounts"][3]["source"] == "/sys/fs/cgroup/systemd/docker/" + DOCKER_ID
    assert [n for n in spec["linux"]["namespaces"] if n["type"] == "cgroup"] == [joined]
    writable = [m for m in spec["mounts"] if "rw" in (m.get("options") or []) and m["type"] != "tmpfs"]
    assert [m["destination"] for m in writable] == ["/sys/fs/cgroup/systemd", "/etc/hosts"]   # /etc/hosts: as given
    assert "linux.namespaces: added cgroup" not in changes


# --- cgroup v2: writable only in a namespace of its own, with nsdelegate -----------------------

def test_cgroup_v2_makes_the_namespaced_cgroup_mount_writable():
    spec = docker_spec()
    edit(spec, version=2)
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/sys/fs/cgroup"]["options"] == ["nosuid", "noexec", "nodev", "rw"]
    assert "/sys/fs/cgroup/systemd" not in mounts
    assert {"type": "cgroup"} in spec["linux"]["namespaces"]
    assert edit(spec, version=2) == []


@pytest.mark.parametrize("namespace", [None, {"type": "cgroup"}, {"type": "cgroup", "path": None}])
def test_cgroup_v2_own_namespace_given_or_added(namespace):
    spec = docker_spec()
    if namespace is not None:
        spec["linux"]["namespaces"].append(namespace)
    spec["mounts"][2]["type"] = "cgroup2"
    edit(spec, version=2)
    assert spec["mounts"][2]["options"][-1] == "rw"
    assert len([n for n in spec["linux"]["namespaces"] if n["type"] == "cgroup"]) == 1


def test_cgroup_v2_cgroup_mount_added_writable_when_missing():
    spec = docker_spec()
    del spec["mounts"][2]
    edit(spec, version=2)
    assert [m for m in spec["mounts"] if m["destination"] == "/sys/fs/cgroup"] == [
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "rw"]}]


@pytest.mark.parametrize("mount", [
    # docker run -v /sys/fs/cgroup:/sys/fs/cgroup:ro
    {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]},
    {"destination": "/sys/fs/cgroup", "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]},
    # a cgroup type with a bind option is a bind (runtimes pass MS_BIND, the type is ignored)
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "/sys/fs/cgroup", "options": ["bind", "ro"]},
    {"destination": "/sys/fs/cgroup/", "type": "tmpfs", "source": "tmpfs", "options": ["ro"]},
])
@pytest.mark.parametrize("nsdelegate", [True, False])
def test_cgroup_v2_a_bind_at_sys_fs_cgroup_is_left_as_the_engine_wrote_it(mount, nsdelegate):
    spec = docker_spec()
    spec["mounts"][2] = copy.deepcopy(mount)
    spec["linux"]["namespaces"].append({"type": "cgroup", "path": "/proc/1/ns/cgroup"})
    edit(spec, version=2, nsdelegate=nsdelegate)
    assert spec["mounts"][2] == mount
    assert all("rw" not in (m.get("options") or []) for m in spec["mounts"] if m["destination"] != "/etc/hosts")


def test_cgroup_v2_the_last_mount_at_sys_fs_cgroup_is_the_one_on_top():
    spec = docker_spec()
    host_tree = {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup", "options": ["rbind"]}
    spec["mounts"].append(dict(host_tree))
    edit(spec, version=2)
    assert [m for m in spec["mounts"] if m["destination"] == "/sys/fs/cgroup"] == [
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["ro", "nosuid", "noexec", "nodev"]}, host_tree]


@pytest.mark.parametrize("path", ["/proc/1/ns/cgroup", "/run/netns/x", ""])
def test_cgroup_v2_a_joined_cgroup_namespace_is_refused(path):
    spec = docker_spec()
    spec["linux"]["namespaces"].append({"type": "cgroup", "path": path})
    before = copy.deepcopy(spec)
    refused(spec, "linux.namespaces[2]: joins the cgroup namespace %s; on cgroup v2 systemd needs a new one "
            "of its own" % json.dumps(path), version=2)
    assert spec == before


def test_cgroup_v2_without_nsdelegate_is_refused():
    """Without nsdelegate the kernel lets a process write the resource knobs
    of its cgroup namespace's root: the container's own limits."""
    spec = docker_spec()
    before = copy.deepcopy(spec)
    refused(spec, "cgroup2 at /sys/fs/cgroup is mounted without nsdelegate: in a writable /sys/fs/cgroup the "
            "container could change its own cgroup's limits", version=2, nsdelegate=False)
    assert spec == before


HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate"""
V2_MOUNTINFO = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 " \
               "rw,nsdelegate,memory_recursiveprot"


@pytest.mark.parametrize("lines, facts", [
    (HYBRID_MOUNTINFO, {"cgroup_version": 1, "nsdelegate": False, "systemd_hierarchy": "/sys/fs/cgroup/systemd"}),
    (V2_MOUNTINFO, {"cgroup_version": 2, "nsdelegate": True, "systemd_hierarchy": ""}),
    (V2_MOUNTINFO.replace("nsdelegate,", ""), {"cgroup_version": 2, "nsdelegate": False, "systemd_hierarchy": ""}),
    # The unified hierarchy bound over /sys/fs/cgroup in a mount namespace: the last line is on top.
    (HYBRID_MOUNTINFO + "\n99 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw",
     {"cgroup_version": 2, "nsdelegate": False, "systemd_hierarchy": "/sys/fs/cgroup/systemd"}),
    ("40 31 0:37 / /cg/sd rw - cgroup cgroup rw,name=systemd\n41 31 0:37 / /sys/fs/cgroup/systemd rw - cgroup "
     "cgroup rw,name=systemd\n42 31 0:37 / /other rw - cgroup cgroup rw,name=systemd",
     {"cgroup_version": 1, "nsdelegate": False, "systemd_hierarchy": "/sys/fs/cgroup/systemd"}),
    ("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\nbroken line\n",
     {"cgroup_version": 1, "nsdelegate": False, "systemd_hierarchy": ""}),
])
def test_host_cgroup_mounts(lines, facts):
    assert oi.host_cgroup_mounts(lines.splitlines()) == facts


def test_the_context_reads_the_host_once_and_given_facts_win():
    context = oi.EditContext("c", cgroup_version=2, nsdelegate=False)
    assert (context.cgroup_version, context.nsdelegate) == (2, False)
    assert context.systemd_hierarchy == oi.host_cgroup_mounts()["systemd_hierarchy"]
    assert context.own_systemd_cgroup == oi.own_systemd_cgroup()
    assert oi.EditContext().cgroup_version == oi.host_cgroup_version()


def test_container_uuid():
    assert oi._container_uuid(DOCKER_ID) == DOCKER_ID[:32]
    other = oi._container_uuid("my-box")
    assert len(other) == 32 and all(c in "0123456789abcdef" for c in other)
    assert other == oi._container_uuid("my-box") != oi._container_uuid("my-box2")


def test_systemd_setting_and_rule_action(tmp_path):
    opts, _ = oi.split_command_line(["--oi-systemd", "auto", "create", "x"])
    policy = oi.load_policy(opts, "oci-interceptor")
    assert policy.rules[0].actions == {"systemd": "auto"} and policy.uses_systemd
    with pytest.raises(oi.UsageError, match="expected one of off, auto, always"):
        oi.split_command_line(["--oi-systemd", "yes", "create", "x"])
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"version": 1, "rules": [
        {"name": "sd", "when": {"annotations": {"^systemd$": "^yes$"}}, "systemd": "always"}]}))
    path.chmod(0o644)
    opts, _ = oi.split_command_line(["--oi-config", str(path), "create", "x"])
    assert oi.load_policy(opts, "oci-interceptor").uses_systemd


# --- kill translation ---------------------------------------------------------------------

FAKE_WITH_STATE = r"""#!/bin/sh
out="${FAKE_RUNTIME_OUT:?}"
for a in "$@"; do [ "$a" = state ] && { printf '%s' "$FAKE_STATE"; exit 0; }; done
printf '%s\0' "$@" > "$out.args"
"""


@pytest.fixture
def state_fake(tmp_path, fake):
    path = tmp_path / "fake-with-state"
    path.write_text(FAKE_WITH_STATE)
    path.chmod(0o755)
    fake.runtime = str(path)
    return fake


def test_a_mount_point_named_in_bytes_that_are_not_utf8_refuses_nothing(pyz, fake, tmp_path):
    """/proc/self/mountinfo and /proc/self/cgroup are read as bytes decoded
    as paths are: a mount point someone named in bytes that are not UTF-8
    (or with a character str.splitlines would split at) neither refuses a
    systemd container nor hides the name=systemd hierarchy."""
    need(shutil.which("unshare"), "unshare is not installed")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps(docker_spec()))
    odd = os.fsencode(str(tmp_path)) + b"/m\xe9\xff\xc2\x85x"
    os.mkdir(odd)
    script = 'mount -t tmpfs tmpfs "$0" && exec "$@"'
    result = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, odd, pyz],
                 ["--oi-runtime-path", fake.runtime, "--oi-systemd", "always", "create", "--bundle", str(bundle),
                  DOCKER_ID], fake)
    assert result.returncode == 0, result.stderr
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["annotations"] == {oi.SYSTEMD_ANNOTATION: "true"}
    assert "/run" in destinations(spec)


@pytest.mark.parametrize("kill_args, expected", [
    (["kill", "c1", "TERM"], [b"kill", b"c1", b"37"]),
    (["kill", "c1", "SIGTERM"], [b"kill", b"c1", b"37"]),
    (["kill", "c1", "15"], [b"kill", b"c1", b"37"]),
    (["kill", "c1"], [b"kill", b"c1", b"37"]),
    (["kill", "--all", "c1", "term"], [b"kill", b"--all", b"c1", b"37"]),
    (["kill", "c1", "KILL"], [b"kill", b"c1", b"KILL"]),
    (["kill", "c1", "9"], [b"kill", b"c1", b"9"]),
    (["kill", "c1", "SIGINT"], [b"kill", b"c1", b"SIGINT"]),
])
def test_kill_term_of_a_systemd_container_becomes_sigrtmin_plus_3(pyz, state_fake, kill_args, expected):
    env = {"FAKE_STATE": json.dumps({"id": "c1", "status": "running",
                                     "annotations": {"oci-interceptor.systemd": "true"}})}
    result = run([pyz], ["--oi-runtime-path", state_fake.runtime, "--oi-systemd", "auto", "--root", "/r",
                         "--log", "/dev/null", "--log-format", "json"] + kill_args, state_fake, env=env)
    assert result.returncode == 0, result.stderr
    assert state_fake.args() == [b"--root", b"/r", b"--log", b"/dev/null", b"--log-format", b"json"] + expected


def test_kill_of_other_containers_or_without_systemd_mode_passes_through(pyz, state_fake, tmp_path):
    plain = {"FAKE_STATE": json.dumps({"id": "c1", "status": "running", "annotations": {}})}
    run([pyz], ["--oi-runtime-path", state_fake.runtime, "--oi-systemd", "auto", "kill", "c1", "TERM"],
        state_fake, env=plain)
    assert state_fake.args() == [b"kill", b"c1", b"TERM"]
    marked = {"FAKE_STATE": json.dumps({"annotations": {"oci-interceptor.systemd": "true"}})}
    run([pyz], ["--oi-runtime-path", state_fake.runtime, "kill", "c1", "TERM"], state_fake, env=marked)
    assert state_fake.args() == [b"kill", b"c1", b"TERM"]
    # No annotations in the state: the bundle's config.json says.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({"annotations": {"oci-interceptor.systemd": "true"}}))
    from_bundle = {"FAKE_STATE": json.dumps({"id": "c1", "bundle": str(bundle)})}
    run([pyz], ["--oi-runtime-path", state_fake.runtime, "--oi-systemd", "always", "kill", "c1", "TERM"],
        state_fake, env=from_bundle)
    assert state_fake.args() == [b"kill", b"c1", b"37"]
    broken = {"FAKE_STATE": "not json"}
    run([pyz], ["--oi-runtime-path", state_fake.runtime, "--oi-systemd", "auto", "kill", "c1", "TERM"],
        state_fake, env=broken)
    assert state_fake.args() == [b"kill", b"c1", b"TERM"]


# --- a real systemd -------------------------------------------------------------------------

SYSTEMD_ROOTFS = os.environ.get("OCI_INTERCEPTOR_SYSTEMD_ROOTFS",
                                "/var/cache/oci-interceptor-tests/bookworm-systemd")


@pytest.fixture(scope="session")
def systemd_rootfs():
    need(os.path.exists(os.path.join(SYSTEMD_ROOTFS, "lib/systemd/systemd")),
         "no Debian systemd root filesystem at %s (tests/prepare-host builds it)" % SYSTEMD_ROOTFS)
    return SYSTEMD_ROOTFS


def _status(runtime, cid):
    state = runtime("state", cid)
    return json.loads(state.stdout.decode())["status"] if state.returncode == 0 else None


@pytest.mark.parametrize("readonly", [True, False], ids=["read-only-root", "writable-root"])
def test_systemd_boots_to_running_and_halts_on_term(pyz, runtime, systemd_rootfs, spec_template, tmp_path,
                                                    readonly):
    root = systemd_rootfs
    if not readonly:
        # A writable root: the container's own copy, the cache stays pristine.
        root = str(tmp_path / "rootfs")
        subprocess.run(["cp", "-a", systemd_rootfs, root], check=True)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    spec = json.loads(json.dumps(spec_template))
    spec["process"].update(terminal=False, args=["/sbin/init"],
                           capabilities={k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")})
    spec["root"] = {"path": root, "readonly": readonly}
    cid = new_id("oi-systemd")
    spec["linux"]["cgroupsPath"] = "/" + cid
    spec["hostname"] = "systemd-test"
    (bundle / "config.json").write_text(json.dumps(spec))
    flags = ["--oi-runtime-path", runtime.path, "--oi-systemd", "auto", "--root", runtime.root]
    stdio = open(str(tmp_path / "console"), "wb")
    try:
        created = subprocess.run([pyz] + flags + ["create", "--bundle", str(bundle), cid],
                                 stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, timeout=60)
        assert created.returncode == 0, (tmp_path / "console").read_text()
        with open(str(bundle / "config.json")) as f:
            edited = json.load(f)
        assert edited["process"]["capabilities"]["bounding"] == DOCKER_CAPS
        assert subprocess.run([pyz] + flags + ["start", cid], timeout=60).returncode == 0
        deadline = time.time() + 60
        status = ""
        while time.time() < deadline:
            result = runtime("exec", cid, "systemctl", "is-system-running", stdin=subprocess.DEVNULL)
            status = result.stdout.decode().strip()
            if status in ("running", "degraded"):
                break
            time.sleep(0.5)
        failed = runtime("exec", cid, "systemctl", "--failed", "--no-legend", "--no-pager").stdout.decode()
        assert status == "running", "systemd is %r; failed units: %s" % (status, failed)
        # Writable where it must be: its own cgroup; never the host's tree.
        probe = runtime("exec", cid, "sh", "-c",
                        "mkdir /sys/fs/cgroup/systemd/probe && rmdir /sys/fs/cgroup/systemd/probe "
                        "&& echo own-writable; mkdir /sys/fs/cgroup/memory/probe 2>/dev/null || echo host-readonly")
        assert probe.stdout.decode().split() == ["own-writable", "host-readonly"]
        began = time.time()
        killed = subprocess.run([pyz] + flags + ["kill", cid, "TERM"], timeout=60)
        assert killed.returncode == 0
        while time.time() - began < 10 and _status(runtime, cid) != "stopped":
            time.sleep(0.1)
        assert _status(runtime, cid) == "stopped", "systemd did not halt within 10 s of kill TERM"
    finally:
        stdio.close()
        runtime("delete", "--force", cid)
        for leftover in [d for d in os.listdir("/sys/fs/cgroup") if os.path.isdir("/sys/fs/cgroup/" + d)]:
            path = os.path.join("/sys/fs/cgroup", leftover, cid)
            if os.path.isdir(path):
                for directory, _, _ in sorted(os.walk(path), key=lambda e: -len(e[0])):
                    os.rmdir(directory)
        if not readonly:
            shutil.rmtree(root, ignore_errors=True)


def test_systemd_through_docker(pyz, systemd_rootfs, tmp_path):
    """`docker run IMAGE /sbin/init` with the interceptor registered by path
    and `"systemd": "auto"` in its config file: systemd runs and `docker
    stop` halts it at once. Through plain runc on the same daemon, systemd
    cannot even start (no writable cgroup of its own) and exits."""
    need(shutil.which("dockerd"), "docker.io is not installed")
    import engines
    import images
    tar = images.rootfs_tarball(systemd_rootfs, str(tmp_path / "systemd-rootfs.tar"))
    docker = engines.Docker({"runtimes": {"oci-interceptor": {"path": pyz}}}, tar, image="oi-systemd:test")
    try:
        docker.write_policy({"version": 1, "systemd": "auto"})
        ids = {}
        for runtime in ("oci-interceptor", "runc"):
            started = docker.docker("run", "-d", "--network", "none", "--runtime", runtime, docker.image, "/sbin/init")
            assert started.returncode == 0, started.stderr
            ids[runtime] = started.stdout.decode().strip()
        status = ""
        deadline = time.time() + 60
        while time.time() < deadline:
            status = docker.docker("exec", ids["oci-interceptor"], "systemctl", "is-system-running").stdout.decode().strip()
            if status in ("running", "degraded"):
                break
            time.sleep(0.5)
        assert status == "running"
        began = time.time()
        assert docker.docker("stop", "-t", "20", ids["oci-interceptor"]).returncode == 0
        assert time.time() - began < 10
        assert docker.docker("inspect", "-f", "{{.State.ExitCode}}", ids["oci-interceptor"]).stdout.decode().strip() != "137"
        plain = ""
        while time.time() < deadline:
            plain = docker.docker("inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", ids["runc"]).stdout.decode()
            if not plain.startswith("running"):
                break
            time.sleep(0.5)
        assert plain.startswith("exited ") and plain.split()[1] != "0"
    finally:
        docker.stop()


def test_dry_run_shows_the_translated_kill(pyz, state_fake):
    env = {"FAKE_STATE": json.dumps({"annotations": {"oci-interceptor.systemd": "true"}})}
    result = run([pyz], ["--oi-runtime-path", state_fake.runtime, "--oi-systemd", "auto", "--oi-dry-run",
                         "kill", "c1", "TERM"], state_fake, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().endswith("would exec: %s kill c1 37\n" % state_fake.runtime)
