"""Shared fixtures: the built .pyz, a busybox bundle, real runtimes.

Real-runtime tests skip where runc or crun cannot run; with
OCI_INTERCEPTOR_REQUIRE_RUNTIMES=1 (set by .ci/run) a skip fails the run.
Every container a test starts lives under a private --root and is deleted
by id after the test, pass or fail.
"""

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import build_zipapp  # noqa: E402

# Never read the host's real /etc/oci-interceptor/config.json: the tests and
# every program they start see no default config unless a test names one.
os.environ["OCI_INTERCEPTOR_CONFIG"] = ""
# Nor write its passthrough records to the host's /run/oci-interceptor.
os.environ["OCI_INTERCEPTOR_STATE_DIR"] = tempfile.mkdtemp(prefix="oi-test-state-")

SYSTEM_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
REQUIRE_RUNTIMES = os.environ.get("OCI_INTERCEPTOR_REQUIRE_RUNTIMES") == "1"
_ids = itertools.count()


def need(condition, why):
    """Skip (or, where runtimes are required, fail) unless condition holds."""
    if condition:
        return
    if REQUIRE_RUNTIMES:
        pytest.fail("required for this run: " + why)
    pytest.skip(why)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if REQUIRE_RUNTIMES and skipped:
        terminalreporter.write_line(
            "FAILED: %d test(s) skipped while OCI_INTERCEPTOR_REQUIRE_RUNTIMES=1" % len(skipped),
            red=True)


HOST_STATE_DIR = "/run/oci-interceptor"
_HOST_STATE_DIR_EXISTED = os.path.exists(HOST_STATE_DIR)


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if REQUIRE_RUNTIMES and reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = 1
    if not _HOST_STATE_DIR_EXISTED and os.path.exists(HOST_STATE_DIR):
        # Some program under test wrote a passthrough record to the host.
        if reporter is not None:
            reporter.write_line("FAILED: the tests wrote to the host's %s" % HOST_STATE_DIR, red=True)
        shutil.rmtree(HOST_STATE_DIR, ignore_errors=True)
        session.exitstatus = 1
    shutil.rmtree(os.environ["OCI_INTERCEPTOR_STATE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def pyz(tmp_path_factory):
    """The .pyz, built from this checkout, started by the system Python."""
    out = str(tmp_path_factory.mktemp("dist") / "oci-interceptor.pyz")
    return build_zipapp.build(out, SYSTEM_PYTHON)


def new_id(prefix="oi-test"):
    return "%s-%d-%d" % (prefix, os.getpid(), next(_ids))


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory):
    """A read-only busybox root filesystem with /etc files to mount over."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    need(os.path.exists(busybox), "busybox-static is not installed")
    root = tmp_path_factory.mktemp("rootfs")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir()
    shutil.copy2(busybox, str(root / "bin" / "busybox"))
    applets = subprocess.run([busybox, "--list"], stdout=subprocess.PIPE,
                             universal_newlines=True, check=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", str(root / "bin" / applet))
    for name in ("hosts", "hostname", "resolv.conf"):
        (root / "etc" / name).write_text("")
    return str(root)


class Runtime(object):
    """A real runtime with a private state directory."""

    def __init__(self, name, path, state_root):
        self.name = name
        self.path = path
        self.root = state_root

    def __call__(self, *args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("timeout", 60)
        return subprocess.run([self.path, "--root", self.root] + list(args), **kwargs)

    def cleanup(self):
        listed = self("list", "-q")
        for cid in listed.stdout.decode().split():
            self("delete", "--force", cid)


def _spec_template(tmp_path_factory):
    runc = shutil.which("runc")
    need(runc is not None, "runc is not installed")
    d = tmp_path_factory.mktemp("spec")
    subprocess.run([runc, "spec", "--bundle", str(d)], check=True)
    with open(str(d / "config.json")) as f:
        return json.load(f)


@pytest.fixture(scope="session")
def spec_template(tmp_path_factory):
    return _spec_template(tmp_path_factory)


@pytest.fixture(scope="session")
def runtime_roots(tmp_path_factory):
    return tmp_path_factory.mktemp("state")


@pytest.fixture(params=["runc", "crun"])
def runtime(request, runtime_roots, rootfs, spec_template, tmp_path_factory):
    """runc, then crun: each checked to really run a container here."""
    name = request.param
    path = shutil.which(name)
    need(path is not None, "%s is not installed" % name)
    state_root = str(runtime_roots / name)
    rt = Runtime(name, path, state_root)
    _check_runtime_works(rt, rootfs, spec_template, tmp_path_factory)
    yield rt
    rt.cleanup()


_working = {}


def _check_runtime_works(rt, rootfs, spec_template, tmp_path_factory):
    if rt.name not in _working:
        bundle = make_bundle(tmp_path_factory.mktemp("probe"), rootfs, spec_template, ["true"])
        cid = new_id("oi-probe")
        result = rt("run", "--bundle", bundle.path, cid, stdin=subprocess.DEVNULL)
        rt("delete", "--force", cid)
        _working[rt.name] = (result.returncode == 0, result.stderr.decode(errors="replace"))
    ok, err = _working[rt.name]
    need(ok, "%s cannot run a container here: %s" % (rt.name, err.strip()))


class Bundle(object):
    def __init__(self, path):
        self.path = path
        self.config_path = os.path.join(path, "config.json")

    def read(self):
        with open(self.config_path) as f:
            return json.load(f)

    def raw(self):
        with open(self.config_path, "rb") as f:
            return f.read()

    def write(self, spec):
        with open(self.config_path, "w") as f:
            json.dump(spec, f, indent="\t")


def run_at_once(count, call):
    """call(i) for every i in range(count), each in a thread of its own, all
    started before any is waited for."""
    import threading
    threads = [threading.Thread(target=call, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def make_bundle(directory, rootfs, template, args, env=None, network_files=True):
    """A bundle whose root is the shared read-only busybox rootfs, with host
    files of its own bind-mounted at /etc/hosts, /etc/hostname, /etc/resolv.conf
    (read-write, as Docker mounts them)."""
    directory = str(directory)
    spec = json.loads(json.dumps(template))
    spec["root"] = {"path": rootfs, "readonly": True}
    spec["process"]["terminal"] = False
    spec["process"]["args"] = list(args)
    spec["hostname"] = "oitest"
    if env is not None:
        spec["process"]["env"] = list(env)
    if network_files:
        for name in ("hosts", "hostname", "resolv.conf"):
            source = os.path.join(directory, "host-" + name)
            with open(source, "w") as f:
                f.write("# %s\n" % name)
            spec["mounts"].append({"destination": "/etc/" + name, "type": "bind",
                                   "source": source, "options": ["rbind", "rprivate", "rw"]})
    bundle = Bundle(directory)
    bundle.write(spec)
    return bundle


@pytest.fixture
def bundle_factory(tmp_path, rootfs, spec_template):
    counter = itertools.count()

    def factory(args, env=None, network_files=True):
        d = tmp_path / ("bundle%d" % next(counter))
        d.mkdir()
        return make_bundle(d, rootfs, spec_template, args, env, network_files)
    return factory


FAKE_RUNTIME = r"""#!/bin/sh
# Records how it was called: its pid, arguments (NUL-separated), ignored signals.
out="${FAKE_RUNTIME_OUT:?}"
echo $$ > "$out.pid"
printf '%s\0' "$@" > "$out.args"
grep '^SigIgn:' /proc/$$/status > "$out.sigign"
echo "fake runtime stdout"
exit "${FAKE_RUNTIME_EXIT:-0}"
"""


@pytest.fixture(params=["pyz", "script"])
def entry(request, pyz):
    """The two ways to start the program: they must behave the same."""
    if request.param == "pyz":
        return [pyz]
    return [SYSTEM_PYTHON, os.path.join(REPO, "oci_interceptor.py")]


@pytest.fixture
def fake(tmp_path):
    path = tmp_path / "fake-runtime"
    path.write_text(FAKE_RUNTIME)
    path.chmod(0o755)

    class Fake(object):
        runtime = str(path)
        out = str(tmp_path / "record")

        def args(self):
            with open(self.out + ".args", "rb") as f:
                data = f.read()
            return data.split(b"\0")[:-1]

        def called(self):
            return os.path.exists(self.out + ".args")

        def pid(self):
            with open(self.out + ".pid") as f:
                return int(f.read())

    return Fake()


def run(entry, args, fake=None, env=None, **kwargs):
    environ = dict(os.environ)
    if fake is not None:
        environ["FAKE_RUNTIME_OUT"] = fake.out
        # Records of the containers this test creates stay with this test.
        environ["OCI_INTERCEPTOR_STATE_DIR"] = fake.out + "-state"
    environ.update(env or {})
    kwargs.setdefault("timeout", 60)
    return subprocess.run(list(entry) + list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=environ, **kwargs)


@pytest.fixture(scope="session")
def containerd(tmp_path_factory, rootfs):
    need(shutil.which("containerd") and shutil.which("ctr"), "containerd is not installed")
    need(shutil.which("containerd-shim-runc-v2"), "containerd-shim-runc-v2 is not installed")
    import engines
    import images
    base = tmp_path_factory.mktemp("containerd")
    tar = images.oci_image_tarball(rootfs, str(base / "busybox-oci.tar"), "docker.io/library/oi-busybox:test")
    daemon = engines.Containerd(base, tar, "docker.io/library/oi-busybox:test")
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def rootfs_tar(rootfs, tmp_path_factory):
    import images
    return images.rootfs_tarball(rootfs, str(tmp_path_factory.mktemp("image") / "busybox-rootfs.tar"))
