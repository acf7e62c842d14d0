"""What a container's user could try through systemd mode and read-only
mounts, reproduced with real containers under runc and crun and looked at
from inside and from the host: a cgroupsPath out of the name=systemd
hierarchy or into a cgroup in use (cgroup v1), a bind of the host's cgroup
tree, a joined cgroup namespace or a host without nsdelegate (cgroup v2),
and read-only rules against rbind submounts and rrw. Each must be refused
with one line, or stay read-only; the shapes engines really write keep
working."""

import json
import os
import subprocess

import pytest

from conftest import need, new_id

CGROUP_ROOT = "/sys/fs/cgroup"
SYSTEMD_HIERARCHY = "/sys/fs/cgroup/systemd"
# Docker's default set: with CAP_DAC_OVERRIDE, root in the container may
# write where only the host's root may (a cgroup hierarchy's root is 0555).
DOCKER_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
               "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
               "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]


def through(pyz, runtime, args, oi_flags=(), wrapper=()):
    """Call the interceptor in place of the runtime (inside `wrapper`)."""
    argv = list(wrapper) + [pyz, "--oi-runtime-path", runtime.path] + list(oi_flags) + ["--root", runtime.root]
    return subprocess.run(argv + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)


def refusal(message):
    return ("oci-interceptor: rule (global): systemd: %s\n" % message).encode()


def remove_cgroups(relative, hierarchies=None):
    """rmdir `relative` and every cgroup below it in each hierarchy, deepest
    first; only ever given names the test made up."""
    assert relative.strip("/").startswith("oi-")
    if hierarchies is None:
        hierarchies = [os.path.join(CGROUP_ROOT, d) for d in os.listdir(CGROUP_ROOT)]
    for hierarchy in hierarchies:
        top = os.path.join(hierarchy, relative.strip("/"))
        if os.path.isdir(top):
            for directory, _, _ in sorted(os.walk(top), key=lambda entry: -len(entry[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass


def docker_bundle(bundle_factory, script, **kwargs):
    """A busybox bundle running `script` with Docker's default capabilities."""
    bundle = bundle_factory(["sh", "-c", script], **kwargs)
    spec = bundle.read()
    spec["process"]["capabilities"] = {k: list(DOCKER_CAPS) for k in ("bounding", "effective", "permitted")}
    bundle.write(spec)
    return bundle


def systemd_bundle(bundle_factory, script, cgroups_path):
    bundle = docker_bundle(bundle_factory, script)
    spec = bundle.read()
    spec["linux"]["cgroupsPath"] = cgroups_path
    bundle.write(spec)
    return bundle


def cgroup_mounts():
    """(mount point, fstype, super options) of each cgroup mount here."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            before, _, after = line.partition(" - ")
            point, fstype, options = before.split()[4], after.split()[0], after.split()[2].split(",")
            if fstype in ("cgroup", "cgroup2"):
                yield point, fstype, options


@pytest.fixture
def v1():
    need((SYSTEMD_HIERARCHY, "cgroup") in {m[:2] for m in cgroup_mounts() if "name=systemd" in m[2]},
         "no cgroup v1 name=systemd hierarchy at %s" % SYSTEMD_HIERARCHY)


# --- cgroup v1: the bind-mounted cgroup is the container's own, or nothing --------------------

def test_a_cgroups_path_out_of_the_hierarchy_is_refused(pyz, runtime, bundle_factory, tmp_path, v1):
    """The attack: enough '..' in linux.cgroupsPath (Docker's and Podman's
    --cgroup-parent put user text there) made the bind source any host
    directory, mounted read-write in the container."""
    target = tmp_path / "host-directory"
    target.mkdir()
    (target / "secret").write_text("host data\n")
    cgroups_path = "/.." * 8 + str(target)
    bundle = systemd_bundle(bundle_factory, "ls /sys/fs/cgroup/systemd; echo pwned > /sys/fs/cgroup/systemd/secret",
                            cgroups_path)
    before = bundle.raw()
    cid = new_id("oi-sec")
    log = tmp_path / "log.json"
    try:
        result = through(pyz, runtime, ["--log", str(log), "--log-format", "json", "run", "--bundle", bundle.path,
                                        cid], ["--oi-systemd", "always"])
        message = refusal("linux.cgroupsPath %s: the container's cgroup must lie inside /sys/fs/cgroup/systemd "
                          "(found '..')" % json.dumps(cgroups_path))
        assert (result.returncode, result.stdout, result.stderr) == (1, b"", message)
        assert json.loads(log.read_text().splitlines()[-1])["msg"] == message.decode().strip()
        assert runtime("state", cid).returncode != 0                    # no container
        assert bundle.raw() == before
        assert os.listdir(str(target)) == ["secret"] and (target / "secret").read_text() == "host data\n"
    finally:
        runtime("delete", "--force", cid)


def test_a_cgroup_in_use_is_refused(pyz, runtime, bundle_factory, v1):
    """A cgroupsPath naming a cgroup that holds processes (a service's, the
    engine's parent cgroup) would bind a cgroup shared with the host."""
    name = new_id("oi-sec-busy")
    cgroup = os.path.join(SYSTEMD_HIERARCHY, name)
    os.mkdir(cgroup)
    sleeper = subprocess.Popen(["sleep", "600"])
    cid = new_id("oi-sec")
    try:
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(sleeper.pid))
        bundle = systemd_bundle(bundle_factory, "mkdir /sys/fs/cgroup/systemd/probe && echo shared-writable",
                                "/" + name)
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], ["--oi-systemd", "always"])
        assert (result.returncode, result.stdout, result.stderr) == (1, b"", refusal(
            "linux.cgroupsPath \"/%s\": %s must be a new cgroup of the container's own (found 1 process(es) in it)"
            % (name, cgroup)))
        assert os.listdir(cgroup) and not os.path.exists(os.path.join(cgroup, "probe"))
        assert runtime("state", cid).returncode != 0
    finally:
        sleeper.kill()
        sleeper.wait()
        runtime("delete", "--force", cid)
        remove_cgroups(name)


@pytest.mark.parametrize("shape", ["/%s/docker/%s", "/%s/libpod_parent/libpod-%s", "/%s/kubepods/besteffort/pod9/%s"],
                         ids=["docker", "podman", "kubernetes"])
def test_the_cgroup_paths_engines_write_give_the_container_its_own_cgroup(pyz, runtime, bundle_factory, v1, shape):
    """cgroupfs paths as Docker, Podman and the CRI write them (under a
    made-up top cgroup, removed after): the bind is the cgroup the runtime
    put the container in (its pid 1 is listed there), writable, and the
    host's hierarchies stay read-only."""
    top, cid = new_id("oi-sec"), new_id("oi-sec-c")
    cgroups_path = shape % (top, cid)
    script = ("grep -qx 1 /sys/fs/cgroup/systemd/cgroup.procs && echo own-cgroup; "
              "mkdir /sys/fs/cgroup/systemd/probe && rmdir /sys/fs/cgroup/systemd/probe && echo own-writable; "
              "mkdir /sys/fs/cgroup/memory/probe 2>/dev/null || echo host-readonly")
    bundle = systemd_bundle(bundle_factory, script, cgroups_path)
    try:
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], ["--oi-systemd", "always"])
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().split() == ["own-cgroup", "own-writable", "host-readonly"]
        sources = {m["destination"]: m["source"] for m in bundle.read()["mounts"]}
        assert sources["/sys/fs/cgroup/systemd"] == SYSTEMD_HIERARCHY + cgroups_path
    finally:
        runtime("delete", "--force", cid)
        remove_cgroups(top)


# --- cgroup v2: writable only as a cgroup mount in a namespace of its own, with nsdelegate ------

@pytest.fixture
def v2(tmp_path):
    """How to run a command on cgroup v2: as it is on a v2 host; on a hybrid
    one in a mount namespace of its own where the unified hierarchy is all
    there is at /sys/fs/cgroup. The interceptor and the runtime it becomes
    both see a cgroup v2 host; the host's mounts do not change, and the
    cgroups made are the host's real ones in that hierarchy."""
    found = [(point, "nsdelegate" in options) for point, fstype, options in cgroup_mounts()
             if fstype == "cgroup2" and point in (CGROUP_ROOT, CGROUP_ROOT + "/unified")]
    need(found, "no cgroup2 hierarchy at /sys/fs/cgroup or /sys/fs/cgroup/unified")
    point, nsdelegate = found[-1]
    wrapper = ()
    if point != CGROUP_ROOT:
        aside = tmp_path / "unified"
        aside.mkdir()
        wrapper = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                   'mount --bind "$0" "$1" && umount -R "$2" && mount --move "$1" "$2" && shift 2 && exec "$@"',
                   point, str(aside), CGROUP_ROOT)
    return V2(point, nsdelegate, wrapper)


class V2(object):
    def __init__(self, host_path, nsdelegate, wrapper):
        self.host_path = host_path      # where the host sees the cgroup2 hierarchy
        self.nsdelegate = nsdelegate
        self.wrapper = wrapper


def v2_bundle(bundle_factory, script):
    bundle = docker_bundle(bundle_factory, script)
    spec = bundle.read()
    # Device rules make crun raise RLIMIT_MEMLOCK for its eBPF filter, which
    # needs CAP_SYS_RESOURCE; they play no part in what is tested here.
    spec["linux"].pop("resources", None)
    cgroups_path = "/" + new_id("oi-sec-v2")
    spec["linux"]["cgroupsPath"] = cgroups_path
    bundle.write(spec)
    return bundle, cgroups_path


def test_v2_a_read_only_bind_of_the_host_cgroup_tree_stays_read_only(pyz, runtime, bundle_factory, v2):
    """The attack: `-v /sys/fs/cgroup:/sys/fs/cgroup:ro`, the usual
    systemd-in-Docker recipe, was switched to rw; the container then wrote
    the host's cgroups."""
    probe = new_id("oi-sec-probe")
    bundle, cgroups_path = v2_bundle(bundle_factory, "mkdir /sys/fs/cgroup/%s && echo host-writable; echo done"
                                     % probe)
    spec = bundle.read()
    host_tree = {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup",
                 "options": ["rbind", "ro", "nosuid", "noexec", "nodev"]}
    index = [m["destination"] for m in spec["mounts"]].index("/sys/fs/cgroup")
    spec["mounts"][index] = dict(host_tree)
    bundle.write(spec)
    cid = new_id("oi-sec")
    try:
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], ["--oi-systemd", "always"], v2.wrapper)
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().split() == ["done"]
        assert not os.path.exists(os.path.join(v2.host_path, probe))
        assert bundle.read()["mounts"][index] == host_tree
    finally:
        runtime("delete", "--force", cid)
        remove_cgroups(probe, [v2.host_path])
        remove_cgroups(cgroups_path, [v2.host_path])


def test_v2_a_joined_cgroup_namespace_is_refused(pyz, runtime, bundle_factory, v2):
    """The attack: a cgroup namespace entry with a path (Podman
    --cgroupns=ns:...) was taken for the container's own; the mount was made
    rw in the host's namespace and the container created a host cgroup."""
    probe = new_id("oi-sec-probe")
    bundle, cgroups_path = v2_bundle(bundle_factory, "mkdir /sys/fs/cgroup/%s && echo host-writable" % probe)
    spec = bundle.read()
    joined = "/proc/%d/ns/cgroup" % os.getpid()            # the host's cgroup namespace
    spec["linux"]["namespaces"].append({"type": "cgroup", "path": joined})
    bundle.write(spec)
    before = bundle.raw()
    cid = new_id("oi-sec")
    try:
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], ["--oi-systemd", "always"], v2.wrapper)
        assert (result.returncode, result.stdout, result.stderr) == (1, b"", refusal(
            "linux.namespaces[%d]: joins the cgroup namespace \"%s\"; on cgroup v2 systemd needs a new one of its own"
            % (len(spec["linux"]["namespaces"]) - 1, joined)))
        assert not os.path.exists(os.path.join(v2.host_path, probe))
        assert runtime("state", cid).returncode != 0
        assert bundle.raw() == before
    finally:
        runtime("delete", "--force", cid)
        remove_cgroups(probe, [v2.host_path])
        remove_cgroups(cgroups_path, [v2.host_path])


def test_v2_the_own_namespace_is_writable_only_with_nsdelegate(pyz, runtime, bundle_factory, v2):
    """In a cgroup namespace of its own the container sees only its own
    cgroup; but only nsdelegate keeps the knobs of that namespace's root --
    the container's own limits -- read-only. Without it the interceptor
    refuses; the same container run straight by the runtime shows why."""
    script = ("mkdir /sys/fs/cgroup/child && rmdir /sys/fs/cgroup/child && echo own-writable; "
              "echo 2 > /sys/fs/cgroup/cgroup.max.depth && echo own-knob-written; echo done")
    bundle, cgroups_path = v2_bundle(bundle_factory, script)
    cid = new_id("oi-sec")
    try:
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], ["--oi-systemd", "always"], v2.wrapper)
        if v2.nsdelegate:
            assert result.returncode == 0, result.stderr
            assert result.stdout.decode().split() == ["own-writable", "done"]
            return
        assert (result.returncode, result.stdout, result.stderr) == (1, b"", refusal(
            "cgroup2 at /sys/fs/cgroup is mounted without nsdelegate: in a writable /sys/fs/cgroup the container "
            "could change its own cgroup's limits"))
        assert runtime("state", cid).returncode != 0
        # What the refusal prevents: the config the edit would have written, run as is.
        spec = bundle.read()
        spec["linux"]["namespaces"].append({"type": "cgroup"})
        for mount in spec["mounts"]:
            if mount["destination"] == "/sys/fs/cgroup":
                mount["options"] = [o for o in mount.get("options", []) if o != "ro"] + ["rw"]
        bundle.write(spec)
        direct = subprocess.run(list(v2.wrapper) + [runtime.path, "--root", runtime.root, "run", "--bundle",
                                                    bundle.path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert direct.stdout.decode().split() == ["own-writable", "own-knob-written", "done"], direct.stderr
    finally:
        runtime("delete", "--force", cid)
        remove_cgroups(cgroups_path, [v2.host_path])


# --- read-only mounts: the mount and every mount below it ------------------------------------

@pytest.fixture
def directory_with_submount(tmp_path):
    """A host directory with a tmpfs mounted below it, unmounted after."""
    top = tmp_path / "data"
    (top / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "oi-test", str(top / "sub")], check=True)
    try:
        yield top
    finally:
        subprocess.run(["umount", str(top / "sub")], check=True)


def readonly_policy(tmp_path, destination):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"version": 1, "rules": [{"name": "ro", "readonly-mounts": [destination]}]}))
    path.chmod(0o644)
    return ["--oi-config", str(path)]


@pytest.mark.parametrize("options, expected", [
    (["rbind", "rw"], ["rbind", "ro", "rro"]),
    (["rbind", "rrw"], ["rbind", "ro", "rro"]),                    # runc: all writable; crun: the submount
    (["rbind", "rrw", "rprivate", "rw"], ["rbind", "rprivate", "ro", "rro"]),
])
def test_a_read_only_rule_holds_below_a_recursive_bind(pyz, runtime, bundle_factory, directory_with_submount,
                                                       tmp_path, options, expected):
    script = ("grep -q ' /data/sub ' /proc/self/mountinfo && echo submount-there; "
              "touch /data/top && echo top-writable; touch /data/sub/below && echo submount-writable; echo done")
    bundle = docker_bundle(bundle_factory, script)
    spec = bundle.read()
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": str(directory_with_submount),
                           "options": list(options)})
    bundle.write(spec)
    cid = new_id("oi-sec")
    try:
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], readonly_policy(tmp_path, "/data"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().split() == ["submount-there", "done"], result.stderr
        assert result.stderr.decode().count("Read-only file system") == 2
        assert bundle.read()["mounts"][-1]["options"] == expected
        assert os.listdir(str(directory_with_submount)) == ["sub"]
        assert os.listdir(str(directory_with_submount / "sub")) == []
    finally:
        runtime("delete", "--force", cid)


def test_a_read_only_rule_on_a_file_bind_drops_rrw(pyz, runtime, bundle_factory, tmp_path):
    """A file has nothing below it: ro without rro, and rrw must go (runc
    cleared read-only after the ro remount)."""
    host_file = tmp_path / "hosts"
    host_file.write_text("host\n")
    bundle = docker_bundle(bundle_factory, "echo x >> /etc/hosts && echo file-writable; echo done", network_files=False)
    spec = bundle.read()
    spec["mounts"].append({"destination": "/etc/hosts", "type": "bind", "source": str(host_file),
                           "options": ["rbind", "rrw"]})
    bundle.write(spec)
    cid = new_id("oi-sec")
    try:
        result = through(pyz, runtime, ["run", "--bundle", bundle.path, cid], readonly_policy(tmp_path, "/etc/hosts"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode().split() == ["done"]
        assert bundle.read()["mounts"][-1]["options"] == ["rbind", "ro"]
        assert host_file.read_text() == "host\n"
    finally:
        runtime("delete", "--force", cid)
