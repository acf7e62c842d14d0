"""End to end through the real engines: Docker (registered both ways, and by
the register command), Podman, and rootless runc. The engines are configured
from the README's own snippets, so the docs cannot drift."""

import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import need, new_id
from test_readme import json_blocks_after

WRITE_NETWORK_FILES = ("for f in hosts hostname resolv.conf; do "
                       "if echo x >> /etc/$f; then echo \"$f writable\"; fi; done 2>&1; true")
TRAP_TERM = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
POLICY = {"version": 1, "readonly-networking-mounts": True,
          "env": ["DEFAULTED=interceptor"], "env-force": ["FORCED=interceptor"]}
README_PATH = "/usr/local/bin/oci-interceptor"


def _with_program(block, pyz):
    return json.loads(json.dumps(block).replace(README_PATH, pyz))


# --- Docker -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker(pyz, rootfs_tar, tmp_path_factory):
    """A private dockerd with the interceptor registered both ways, from the
    README: by path alone as the default runtime (policy from the config
    file), and with runtimeArgs ("oi-args"); plus two broken registrations."""
    need(shutil.which("dockerd") and shutil.which("docker"), "docker.io is not installed")
    import engines
    path_only, with_args = json_blocks_after("## Register it with Docker")[:2]
    config = _with_program(path_only, pyz)
    args_entry = _with_program(with_args, pyz)["runtimes"]["oci-interceptor"]
    debug_dir = str(tmp_path_factory.mktemp("docker-debug"))
    args_entry["runtimeArgs"] += ["--oi-env-force=FORCED=interceptor", "--oi-write-debug-output",
                                  "--oi-debug-output-dir=" + debug_dir]
    config["runtimes"]["oi-args"] = args_entry
    config["runtimes"]["oi-broken"] = {"path": pyz, "runtimeArgs": ["--oi-runtime-path=/nonexistent/runc"]}
    config["runtimes"]["oi-badenv"] = {"path": pyz, "runtimeArgs": ["--oi-env=NOEQUALS"]}
    daemon = engines.Docker(config, rootfs_tar)
    daemon.debug_dir = debug_dir
    daemon.write_policy(POLICY)
    try:
        yield daemon
    finally:
        daemon.stop()


def test_docker_networking_files_read_only_both_ways(docker):
    default = docker.run(docker.image, "sh", "-c", WRITE_NETWORK_FILES)          # default runtime: path only
    with_args = docker.run("--runtime", "oi-args", docker.image, "sh", "-c", WRITE_NETWORK_FILES)
    plain = docker.run("--runtime", "runc", docker.image, "sh", "-c", WRITE_NETWORK_FILES)
    for result in (default, with_args):
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        for name in ("hosts", "hostname", "resolv.conf"):
            assert "can't create /etc/%s: Read-only file system" % name in out
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.decode().split() == ["hosts", "writable", "hostname", "writable", "resolv.conf", "writable"]


def test_docker_env_defaults_lose_to_run_e_and_forced_values_win(docker):
    for runtime in ("oci-interceptor", "oi-args"):
        given = docker.run("--runtime", runtime, "-e", "DEFAULTED=mine", "-e", "FORCED=mine", "-e", "TZ=Europe/Oslo",
                           docker.image, "env").stdout.decode().splitlines()
        assert "FORCED=interceptor" in given and "FORCED=mine" not in given
        assert "TZ=Europe/Oslo" in given                        # runtimeArgs --oi-env=TZ=UTC loses
        plain = docker.run("--runtime", runtime, docker.image, "env").stdout.decode().splitlines()
        assert "FORCED=interceptor" in plain
    assert "DEFAULTED=mine" in docker.run("-e", "DEFAULTED=mine", docker.image, "env").stdout.decode().splitlines()
    assert "DEFAULTED=interceptor" in docker.run(docker.image, "env").stdout.decode().splitlines()
    assert "TZ=UTC" in docker.run("--runtime", "oi-args", docker.image, "env").stdout.decode().splitlines()


@pytest.mark.parametrize("code", [0, 3, 42])
def test_docker_exit_codes(docker, code):
    assert docker.run(docker.image, "sh", "-c", "exit %d" % code).returncode == code


def test_docker_stop_exec_and_debug_files(docker):
    started = docker.docker("run", "-d", "--network", "none", "--runtime", "oi-args", "--hostname", "named-host",
                            docker.image, "sh", "-c", TRAP_TERM)
    assert started.returncode == 0, started.stderr
    cid = started.stdout.decode().strip()
    try:
        executed = docker.docker("exec", cid, "sh", "-c", "cat /etc/hostname; echo x >> /etc/hosts")
        assert executed.stdout.decode() == "named-host\n"
        assert b"Read-only file system" in executed.stderr
        began = time.time()
        stopped = docker.docker("stop", "-t", "30", cid)
        assert stopped.returncode == 0, stopped.stderr
        assert time.time() - began < 10
        assert docker.docker("wait", cid).stdout.decode().strip() == "0"
    finally:
        docker.docker("rm", "-f", cid)
    names = os.listdir(docker.debug_dir)
    for suffix in ("_original.json", "_parsed.json", "_modified.json"):
        assert "named-host_%s%s" % (cid, suffix) in names
    with open(os.path.join(docker.debug_dir, "runtime_calls.log")) as f:
        calls = f.read()
    for command in (" create ", " start ", " exec ", " kill ", " delete "):
        assert command in calls


def test_docker_shows_our_message_when_policy_cannot_be_applied(docker):
    broken = docker.run("--runtime", "oi-broken", docker.image, "true")
    assert broken.returncode != 0
    assert "oci-interceptor: runtime /nonexistent/runc does not exist" in broken.stderr.decode()
    badenv = docker.run("--runtime", "oi-badenv", docker.image, "true")
    assert "oci-interceptor: --oi-env NOEQUALS: expected NAME=VALUE" in badenv.stderr.decode()
    docker.write_policy({"version": 1, "rules": [{"when": {"commands": ["("]}, "env": ["A=1"]}]})
    try:
        bad_file = docker.run(docker.image, "true")
    finally:
        docker.write_policy(POLICY)
    assert bad_file.returncode != 0
    assert ("oci-interceptor: config %s: rules[0].when.commands[0]: bad regex" % docker.policy_path
            in bad_file.stderr.decode())
    assert "unable to retrieve OCI runtime error" not in bad_file.stderr.decode()


def _wait_for(predicate, timeout=20):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_register_docker_against_a_real_daemon(pyz, rootfs_tar, tmp_path):
    """--oi-register docker on a symlinked daemon.json, applied by SIGHUP (the
    reload `systemctl reload docker` sends) while a container keeps running;
    policy flags registered as runtimeArgs; --oi-unregister undoes both."""
    need(shutil.which("dockerd"), "docker.io is not installed")
    import engines
    daemon = engines.Docker({"log-level": "warn", "runtimes": {"other": {"path": "/usr/bin/true"}}}, rootfs_tar)
    try:
        daemon.write_policy(POLICY)
        real = os.path.join(daemon.base, "etc", "daemon.json")
        os.makedirs(os.path.dirname(real))
        shutil.move(daemon.daemon_json, real)
        os.symlink(real, daemon.daemon_json)
        running = daemon.docker("run", "-d", "--network", "none", "--runtime", "runc", daemon.image, "sleep", "600")
        assert running.returncode == 0, running.stderr
        cid = running.stdout.decode().strip()

        def info():
            return json.loads(daemon.docker("info", "--format", "{{json .}}").stdout.decode())

        register = [pyz, "--oi-register", "docker", "--oi-register-default", "--oi-daemon-json", daemon.daemon_json]
        first = subprocess.run(register, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert first.returncode == 0, first.stderr
        out = first.stdout.decode()
        assert "added runtime oci-interceptor: %s" % pyz in out
        assert "default-runtime: (runc) -> oci-interceptor" in out
        assert "systemctl reload docker" in out and "restart" not in out
        assert "its target %s was written, the link kept" % real in out
        assert os.readlink(daemon.daemon_json) == real
        backups = [n for n in os.listdir(os.path.dirname(real)) if n.startswith("daemon.json.bak-")]
        assert len(backups) == 1
        with open(real) as f:
            registered = json.load(f)
        assert registered["log-level"] == "warn" and registered["runtimes"]["other"] == {"path": "/usr/bin/true"}
        again = subprocess.run(register, stdout=subprocess.PIPE)
        assert b"already registered; nothing changed" in again.stdout
        # A second runtime whose policy comes from flags: one runtimeArgs word each.
        flag_policy = str(tmp_path / "flag-policy.json")
        engines.write_policy(flag_policy, {"version": 1, "env-force": ["FROM_FLAG_CONFIG=yes"]})
        with_flags = subprocess.run([pyz, "--oi-register", "docker", "--oi-register-name", "oi-flags",
                                     "--oi-daemon-json", daemon.daemon_json, "--oi-config", flag_policy,
                                     "--oi-env-force", "FORCED=flag"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert with_flags.returncode == 0, with_flags.stderr
        with open(real) as f:
            assert json.load(f)["runtimes"]["oi-flags"] == {
                "path": pyz, "runtimeArgs": ["--oi-env-force=FORCED=flag", "--oi-config=" + flag_policy]}

        os.kill(daemon.process.pid, signal.SIGHUP)            # systemctl reload docker
        assert _wait_for(lambda: info().get("DefaultRuntime") == "oci-interceptor"), info()
        assert {"oci-interceptor", "oi-flags"} <= set(info()["Runtimes"])
        state = daemon.docker("inspect", "--format", "{{.State.Running}}", cid).stdout.decode().strip()
        assert state == "true"                                # the reload stopped nothing
        result = daemon.run(daemon.image, "sh", "-c", "env; " + WRITE_NETWORK_FILES)
        assert result.returncode == 0, result.stderr
        assert "FORCED=interceptor" in result.stdout.decode().splitlines()
        assert "can't create /etc/hosts: Read-only file system" in result.stdout.decode()
        flagged = daemon.run("--runtime", "oi-flags", daemon.image, "env").stdout.decode().splitlines()
        assert "FORCED=flag" in flagged and "FROM_FLAG_CONFIG=yes" in flagged
        assert "DEFAULTED=interceptor" not in flagged         # --oi-config replaced the daemon's file

        for name in ("oci-interceptor", "oi-flags"):
            removed = subprocess.run([pyz, "--oi-unregister", "docker", "--oi-register-name", name,
                                      "--oi-daemon-json", daemon.daemon_json], stdout=subprocess.PIPE)
            assert b"removed runtime " + name.encode() in removed.stdout
        assert os.readlink(daemon.daemon_json) == real
        with open(real) as f:
            assert json.load(f) == {"log-level": "warn", "runtimes": {"other": {"path": "/usr/bin/true"}},
                                    "default-runtime": "runc"}
        os.kill(daemon.process.pid, signal.SIGHUP)
        assert _wait_for(lambda: set(info().get("Runtimes") or ["oci-interceptor"]) == {"runc", "other"}), \
            daemon.log_text()[-3000:]
        assert info()["DefaultRuntime"] == "runc"
        plain = daemon.run(daemon.image, "env").stdout.decode().splitlines()
        assert "FORCED=interceptor" not in plain
        daemon.docker("rm", "-f", cid)
    finally:
        daemon.stop()


# --- Podman -----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def podman(pyz, rootfs_tar, tmp_path_factory):
    need(shutil.which("podman") and shutil.which("conmon"), "podman is not installed")
    import engines
    engine = engines.podman_registered(pyz, tmp_path_factory.mktemp("podman"), rootfs_tar)
    engine.write_policy(POLICY)
    try:
        yield engine
    finally:
        engine.stop()


def test_podman_policy_from_the_config_file(podman):
    result = podman.run("-e", "DEFAULTED=mine", "-e", "FORCED=mine", podman.image, "sh", "-c",
                        "env; " + WRITE_NETWORK_FILES)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "DEFAULTED=mine" in out.splitlines() and "FORCED=interceptor" in out.splitlines()
    assert "can't create /etc/hosts: Read-only file system" in out
    assert "can't create /etc/hostname: Read-only file system" in out
    plain = podman.run("--runtime", "runc", podman.image, "sh", "-c", WRITE_NETWORK_FILES)
    assert "hosts writable" in plain.stdout.decode()


def test_podman_runtime_flags_and_exit_codes(podman, pyz):
    result = podman.podman("--runtime", pyz, "--runtime-flag", "oi-env-force=VIA_FLAG=yes",
                           "run", "--rm", "--network", "none", *podman.ULIMITS, podman.image, "env")
    assert "VIA_FLAG=yes" in result.stdout.decode().splitlines()
    for code in (0, 5):
        assert podman.run(podman.image, "sh", "-c", "exit %d" % code).returncode == code


def test_podman_stop(podman):
    name = new_id("oi-podman")
    started = podman.podman("run", "-d", "--name", name, "--network", "none", *podman.ULIMITS,
                            podman.image, "sh", "-c", TRAP_TERM)
    assert started.returncode == 0, started.stderr
    try:
        began = time.time()
        stopped = podman.podman("stop", "-t", "30", name)
        assert stopped.returncode == 0, stopped.stderr
        assert time.time() - began < 10
    finally:
        podman.podman("rm", "-f", name)


# --- rootless runc ----------------------------------------------------------------------

ROOTLESS_UID = 43210


def test_rootless_runc(pyz, rootfs):
    """An unprivileged user (a uid with no passwd entry: nothing of the
    host's user database changes) runs runc rootless through the
    interceptor, with its edits applied."""
    need(shutil.which("runc"), "runc is not installed")
    need(os.path.exists("/proc/sys/kernel/unprivileged_userns_clone") is False or
         open("/proc/sys/kernel/unprivileged_userns_clone").read().strip() == "1",
         "unprivileged user namespaces are disabled")
    with pytest.raises(KeyError):
        pwd.getpwuid(ROOTLESS_UID)
    base = tempfile.mkdtemp(prefix="oi-rootless-")
    try:
        os.chmod(base, 0o755)
        program = os.path.join(base, "oci-interceptor.pyz")
        shutil.copy2(pyz, program)
        os.chmod(program, 0o755)
        shutil.copytree(rootfs, os.path.join(base, "rootfs"), symlinks=True)
        os.chmod(os.path.join(base, "rootfs"), 0o755)     # runc starts init in the rootfs
        bundle = os.path.join(base, "bundle")
        state = os.path.join(base, "state")
        for d in (bundle, state):
            os.mkdir(d)
            os.chown(d, ROOTLESS_UID, ROOTLESS_UID)
        for name in ("hosts", "resolv.conf"):
            path = os.path.join(bundle, name)
            with open(path, "w") as f:
                f.write("# %s\n" % name)
            os.chown(path, ROOTLESS_UID, ROOTLESS_UID)

        def as_user(argv, **kwargs):
            def drop():
                os.setgroups([])
                os.setgid(ROOTLESS_UID)
                os.setuid(ROOTLESS_UID)
            # stdio the user owns: runc cannot fchown root's pipes.
            out = tempfile.NamedTemporaryFile(dir=base, delete=False)
            os.chown(out.name, ROOTLESS_UID, ROOTLESS_UID)
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": base, "OCI_INTERCEPTOR_CONFIG": ""}
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  preexec_fn=drop, env=env, cwd=bundle, timeout=60, **kwargs)
            out.seek(0)
            text = out.read().decode(errors="replace")
            out.close()
            return proc.returncode, text

        code, text = as_user(["runc", "spec", "--rootless"])
        assert code == 0, text
        config_path = os.path.join(bundle, "config.json")
        with open(config_path) as f:
            spec = json.load(f)
        spec["root"] = {"path": os.path.join(base, "rootfs"), "readonly": True}
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["sh", "-c", "env; echo x >> /etc/hosts; echo x >> /etc/resolv.conf; true"]
        for name in ("hosts", "resolv.conf"):
            spec["mounts"].append({"destination": "/etc/" + name, "type": "bind",
                                   "source": os.path.join(bundle, name), "options": ["rbind", "rw"]})
        with open(config_path, "w") as f:
            json.dump(spec, f, indent="\t")
        os.chown(config_path, ROOTLESS_UID, ROOTLESS_UID)
        cid = new_id("oi-rootless")
        code, text = as_user([program, "--oi-readonly-networking-mounts", "--oi-env-force", "WHO=rootless",
                              "--oi-write-debug-output", "--root", state, "run", "--bundle", bundle, cid])
        as_user(["runc", "--root", state, "delete", "--force", cid])
        assert code == 0, text
        lines = text.splitlines()
        assert "WHO=rootless" in lines
        assert "sh: can't create /etc/hosts: Read-only file system" in lines
        assert "sh: can't create /etc/resolv.conf: Read-only file system" in lines
        # The default debug directory is not writable for this user: a clear
        # warning, the container still ran, no traceback.
        assert lines[0].startswith("oci-interceptor: warning: no debug output: /var/log/oci-interceptor: ")
        assert "Traceback" not in text
        assert os.stat(config_path).st_uid == ROOTLESS_UID
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_containerd_reads_the_printed_runtime_handler(pyz, tmp_path):
    """The snippet `--oi-register containerd` prints is valid containerd
    configuration naming our binary (the CRI plugin is exercised through
    ctr's --runc-binary in test_policy_runs)."""
    need(shutil.which("containerd"), "containerd is not installed")
    snippet = subprocess.run([pyz, "--oi-register", "containerd", "--oi-register-default"],
                             stdout=subprocess.PIPE, check=True).stdout.decode()
    config = tmp_path / "config.toml"
    config.write_text('version = 2\nroot = "%s/root"\nstate = "%s/state"\n%s' % (tmp_path, tmp_path, snippet))
    dumped = subprocess.run(["containerd", "--config", str(config), "config", "dump"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert dumped.returncode == 0, dumped.stderr
    text = dumped.stdout.decode()
    assert 'default_runtime_name = "oci-interceptor"' in text
    assert 'BinaryName = "%s"' % pyz in text


# --- files written by --oi-register ... --oi-write, read by the real engines ------------

def test_podman_reads_the_drop_in_written_by_register(pyz, rootfs_tar, tmp_path):
    """The containers.conf.d file `--oi-register podman --oi-write` writes
    (default runtime, --oi-config as conmon_env_vars) makes Podman run
    containers through the program with that policy; --oi-unregister
    removes it. Podman reads containers.conf.d only without CONTAINERS_CONF,
    so it runs with a private /etc/containers in a mount namespace of its own."""
    need(shutil.which("podman") and shutil.which("conmon") and shutil.which("unshare"), "podman is not installed")
    import engines
    etc = tmp_path / "etc-containers"
    etc.mkdir()
    (etc / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')   # image trust
    debug_dir = tmp_path / "debug"
    policy = str(tmp_path / "policy.json")
    # Debug output on: no passthrough record, whose directory conmon's
    # environment (only what the drop-in lists) could not name.
    engines.write_policy(policy, dict(POLICY, **{"write-debug-output": True, "debug-output-dir": str(debug_dir)}))
    written = subprocess.run([pyz, "--oi-register", "podman", "--oi-write", "--oi-register-default",
                              "--oi-podman-conf-dir", str(etc / "containers.conf.d"), "--oi-config", policy],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert written.returncode == 0, written.stderr
    assert "%s/containers.conf.d/oci-interceptor.conf: created" % etc in written.stdout.decode()
    short = tempfile.mkdtemp(prefix="oi-pdw-", dir="/tmp")     # Podman's runroot: 50 characters at most
    try:
        engine = engines.Podman(short, None, rootfs_tar, etc_containers=str(etc))
    except BaseException:
        shutil.rmtree(short, ignore_errors=True)
        raise
    try:
        result = engine.run("-e", "DEFAULTED=mine", engine.image, "sh", "-c", "env; " + WRITE_NETWORK_FILES)
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        assert "FORCED=interceptor" in out.splitlines() and "DEFAULTED=mine" in out.splitlines()
        assert "can't create /etc/hosts: Read-only file system" in out
        with open(str(debug_dir / "runtime_calls.log")) as f:
            assert " create " in f.read()
        removed = subprocess.run([pyz, "--oi-unregister", "podman", "--oi-podman-conf-dir",
                                  str(etc / "containers.conf.d")], stdout=subprocess.PIPE)
        assert b"removed runtime oci-interceptor" in removed.stdout
        plain = engine.run(engine.image, "sh", "-c", "env; " + WRITE_NETWORK_FILES)
        assert plain.returncode == 0, plain.stderr
        assert "FORCED=interceptor" not in plain.stdout.decode() and "hosts writable" in plain.stdout.decode()
    finally:
        engine.stop()
        shutil.rmtree(short, ignore_errors=True)


def test_containerd_cri_runs_pods_through_the_block_written_by_register(pyz, rootfs, tmp_path):
    """`--oi-register containerd --oi-write --oi-register-default` appends its
    handler to a config.toml that configures the CRI plugin itself (as
    Debian's does); containerd starts with it and runs a pod's containers
    through the program, with the policy; the file's own settings stay."""
    import engines
    from test_kubernetes import PAUSE, cri_images, run_probe
    base, busybox, pause = cri_images(rootfs, "oi-crw-")
    try:

        def register(config_path):
            written = subprocess.run([pyz, "--oi-register", "containerd", "--oi-write", "--oi-register-default",
                                      "--oi-containerd-config", config_path], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
            assert written.returncode == 0, written.stderr
            assert "default_runtime_name: (runc) -> oci-interceptor" in written.stdout.decode()

        try:
            daemon = engines.ContainerdCRI(base, None, [busybox, pause], PAUSE, before_start=register)
        except RuntimeError:
            with open(os.path.join(base, "containerd.log"), errors="replace") as f:
                raise RuntimeError(f.read()[-2000:])
        try:
            daemon.write_policy(POLICY)
            config = daemon.sandbox_config("written", "default")
            pod_id = daemon.run_pod(config, handler="")               # the default runtime
            try:
                _, env, hosts = run_probe(daemon, pod_id, config, os.path.join(base, "marker"))
            finally:
                daemon.remove_pod(pod_id)
            assert "FORCED=interceptor" in env and "FROM_POD=yes" in env
            assert " ro," in hosts or " ro " in hosts
            with open(daemon.config_path) as f:
                text = f.read()
            assert 'sandbox_image = "%s"' % PAUSE in text and "# BEGIN oci-interceptor runtime" in text
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
