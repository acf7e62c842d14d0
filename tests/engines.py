"""Private container engines for the end-to-end tests: containerd, Docker
and Podman, each with its own directories and sockets, stopped by pid, and
whatever they leave outside their directories removed again.

They never touch the host's own engine configuration: each gets its own
config file, and the interceptor's default config file is pointed elsewhere
through OCI_INTERCEPTOR_CONFIG (for Podman, through conmon_env_vars).
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

POLICY_ENV = "OCI_INTERCEPTOR_CONFIG"
STATE_ENV = "OCI_INTERCEPTOR_STATE_DIR"

# Paths engines create outside the directories they are given (containerd
# 1.6's shim sockets and CNI results, Docker's plugin dir, Podman's network
# and blob caches, the state roots runc and crun use when Podman names none)
# and the cgroup parents they make; removed after a test run if it made them.
HOST_PATHS = ("/run/containerd", "/run/docker", "/run/containers", "/etc/containers/networks",
              "/var/lib/containers", "/run/libpod", "/var/lib/cni", "/run/runc", "/run/crun")
CGROUP_PARENTS = ("docker", "libpod_parent", "default", "machine.slice")


class HostResidue(object):
    """Remembers which of HOST_PATHS and cgroup parents exist now; clean()
    removes the ones that appeared since."""

    def __init__(self, extra_cgroups=()):
        self.paths = [p for p in HOST_PATHS if not os.path.lexists(p)]
        self.cgroup_names = tuple(CGROUP_PARENTS) + tuple(extra_cgroups)
        self.cgroups = set(self._cgroup_dirs())

    def _cgroup_dirs(self):
        for name in self.cgroup_names:
            for path in glob.glob("/sys/fs/cgroup/*/" + name):
                yield path

    def clean(self):
        for path in self.paths:
            if os.path.lexists(path):
                shutil.rmtree(path, ignore_errors=True)
        for path in set(self._cgroup_dirs()) - self.cgroups:
            for directory, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass


def stop_process(process, timeout=30):
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def unmount_under(directory):
    """Unmount whatever an engine left mounted below directory (dockerd
    keeps the network namespaces of its sandboxes, netns/default among
    them after a --network host container, bind-mounted in its exec root)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    for point in sorted((p for p in points if p.startswith(directory.rstrip("/") + "/")), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_policy(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    os.chmod(path, 0o644)


class _ContainerdDaemon(object):
    """A private containerd: its own root, state and sockets, config.toml made
    of the common header and `body`, started with OCI_INTERCEPTOR_CONFIG
    pointing at policy_path (so every runtime binary its shims run reads that
    policy), images imported into `namespace`."""

    def _start(self, base, body, image_tars, namespace, extra_cgroups=(), before_start=None):
        self.base = str(base)
        self.socket = os.path.join(self.base, "containerd.sock")
        self.policy_path = os.path.join(self.base, "policy.json")
        self.residue = HostResidue(extra_cgroups=extra_cgroups)
        self.config_path = os.path.join(self.base, "config.toml")
        with open(self.config_path, "w") as f:
            f.write('version = 2\nroot = "%s/root"\nstate = "%s/state"\n'
                    '[grpc]\n  address = "%s"\n[ttrpc]\n  address = "%s.ttrpc"\n'
                    '[debug]\n  address = "%s/debug.sock"\n'
                    % (self.base, self.base, self.socket, self.socket, self.base))
            f.write(body)
        if before_start is not None:
            before_start(self.config_path)      # e.g. `--oi-register containerd --oi-write` edits it
        self.log = open(os.path.join(self.base, "containerd.log"), "wb")
        env = dict(os.environ)
        env[POLICY_ENV] = self.policy_path
        self.process = subprocess.Popen(["containerd", "--config", self.config_path], stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 30
            while self.ctr("version").returncode != 0:
                if time.time() > deadline or self.process.poll() is not None:
                    raise RuntimeError("containerd did not start")
                time.sleep(0.2)
            for tar in image_tars:
                imported = self.ctr("-n", namespace, "images", "import", "--snapshotter", "native", tar)
                if imported.returncode != 0:
                    raise RuntimeError("ctr images import failed: " + imported.stderr.decode())
        except BaseException:
            self.stop()        # whatever went wrong, the daemon is not left running
            raise

    def ctr(self, *args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("timeout", 120)
        return subprocess.run(["ctr", "-a", self.socket] + list(args), **kwargs)

    def write_policy(self, data):
        write_policy(self.policy_path, data)

    def stop(self):
        stop_process(self.process)
        self.log.close()
        self.residue.clean()


class Containerd(_ContainerdDaemon):
    """containerd without its CRI plugin, for `ctr run --runc-binary`."""

    def __init__(self, base, image_tar, image_name):
        self.image = image_name
        self.cgroup_prefix = "oi-ctr-%d" % os.getpid()
        self._start(base, 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n', [image_tar], "default",
                    extra_cgroups=(self.cgroup_prefix + "-*",))

    def run(self, runtime_binary, cid, args, extra=()):
        """`ctr run --rm` of the image through runtime_binary; nothing of it is
        left outside this containerd's directories."""
        fifo = os.path.join(self.base, "fifo")
        os.makedirs(fifo, exist_ok=True)
        try:
            return self.ctr("run", "--rm", "--snapshotter", "native", "--runc-binary", runtime_binary,
                            "--runc-root", os.path.join(self.base, "runc"), "--fifo-dir", fifo,
                            "--cgroup", "/%s-%s" % (self.cgroup_prefix, cid), *extra,
                            self.image, cid, *args, stdin=subprocess.DEVNULL)
        finally:
            self.ctr("tasks", "kill", "-s", "KILL", cid)
            self.ctr("containers", "delete", cid)


class Docker(object):
    """A private dockerd: vfs storage, no iptables, no bridge, its own data
    root, exec root, socket and daemon.json; started with
    OCI_INTERCEPTOR_CONFIG pointing at policy_path."""

    def __init__(self, daemon_config, image_tar=None, image="oi-busybox:test"):
        # A short base: containerd's sockets live under the exec root.
        self.base = tempfile.mkdtemp(prefix="oi-dkr-", dir="/tmp")
        self.socket = os.path.join(self.base, "docker.sock")
        self.daemon_json = os.path.join(self.base, "daemon.json")
        self.policy_path = os.path.join(self.base, "policy.json")
        self.image = image
        self.process = None
        self.residue = HostResidue()
        with open(self.daemon_json, "w") as f:
            json.dump(daemon_config, f, indent=2)
        self.env = dict(os.environ, DOCKER_HOST="unix://" + self.socket,
                        DOCKER_CONFIG=os.path.join(self.base, "cli"))
        try:
            self.start()
            if image_tar:
                imported = self.docker("import", image_tar, image)
                if imported.returncode != 0:
                    raise RuntimeError("docker import failed: " + imported.stderr.decode())
        except BaseException:
            self.stop()        # whatever went wrong, the daemon is not left running
            raise

    def start(self):
        env = dict(os.environ)
        env[POLICY_ENV] = self.policy_path
        self.log = open(os.path.join(self.base, "dockerd.log"), "ab")
        self.process = subprocess.Popen(
            ["dockerd", "--storage-driver", "vfs", "--iptables=false", "--ip-masq=false", "--bridge=none",
             "--data-root", os.path.join(self.base, "data"), "--exec-root", os.path.join(self.base, "exec"),
             "-H", "unix://" + self.socket, "--pidfile", os.path.join(self.base, "dockerd.pid"),
             "--config-file", self.daemon_json],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 60
        while self.docker("version", timeout=10).returncode != 0:
            if time.time() > deadline or self.process.poll() is not None:
                raise RuntimeError("dockerd did not start: " + self.log_text()[-2000:])
            time.sleep(0.3)

    def log_text(self):
        with open(os.path.join(self.base, "dockerd.log"), errors="replace") as f:
            return f.read()

    def docker(self, *args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(["docker"] + list(args), env=self.env, **kwargs)

    def run(self, *args, **kwargs):
        """docker run --rm --network none ... ARGS"""
        return self.docker("run", "--rm", "--network", "none", *args, **kwargs)

    def write_policy(self, data):
        write_policy(self.policy_path, data)

    def restart(self):
        stop_process(self.process)
        self.log.close()
        self.start()

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            listed = self.docker("ps", "-aq", timeout=30)
            ids = listed.stdout.decode().split()
            if ids:
                self.docker("rm", "-f", *ids)
        if self.process is not None:
            stop_process(self.process)
            self.log.close()
        unmount_under(self.base)
        self.residue.clean()
        shutil.rmtree(self.base, ignore_errors=True)


class Podman(object):
    """Podman with private storage, run root, tmp dir, network config dir and
    containers.conf (CONTAINERS_CONF), vfs and cgroupfs; conmon passes
    OCI_INTERCEPTOR_CONFIG to the runtime (conmon_env_vars)."""

    ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")

    def __init__(self, base, containers_conf_snippet, image_tar, image="oi-busybox:test", etc_containers=None,
                 etc_cdi=None):
        """etc_containers: instead of CONTAINERS_CONF (which makes Podman
        read no containers.conf.d), every podman command runs in a mount
        namespace of its own where this directory is /etc/containers, so
        Podman reads the drop-in files in its containers.conf.d.
        etc_cdi: every podman command runs in a mount namespace of its own
        where this directory is /etc/cdi and /var/run/cdi is empty (Podman
        4.3 reads CDI specs only there); where the host has no /etc/cdi, /etc
        is an overlay in that namespace, so nothing of the host changes."""
        self.base = str(base)
        self.policy_path = os.path.join(self.base, "policy.json")
        self.image = image
        self.residue = HostResidue()
        self.etc_containers = etc_containers
        self.etc_cdi = etc_cdi
        if etc_cdi is not None:
            for name in ("etc-upper", "etc-work"):
                os.makedirs(os.path.join(self.base, name), exist_ok=True)
        self.flags = ["--root", os.path.join(self.base, "root"), "--runroot", os.path.join(self.base, "runroot"),
                      "--tmpdir", os.path.join(self.base, "tmp"), "--storage-driver", "vfs",
                      "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                      "--network-config-dir", os.path.join(self.base, "networks")]
        if etc_containers is not None:
            self.env = dict(os.environ)
            self.env.pop("CONTAINERS_CONF", None)
            self._import(image_tar)
            return
        conf = os.path.join(self.base, "containers.conf")
        # The snippet `oci-interceptor --oi-register podman` prints, plus the
        # line that points the policy file away from the host's.
        snippet = containers_conf_snippet.replace(
            "[engine]\n", '[engine]\nconmon_env_vars = ["%s=%s", "%s=%s"]\n'
            % (POLICY_ENV, self.policy_path, STATE_ENV, os.environ.get(STATE_ENV, "")), 1)
        with open(conf, "w") as f:
            f.write(snippet)
        self.env = dict(os.environ, CONTAINERS_CONF=conf)
        self._import(image_tar)

    def _import(self, image_tar):
        imported = self.podman("import", image_tar, self.image)
        if imported.returncode != 0:
            self.stop()
            raise RuntimeError("podman import failed: " + imported.stderr.decode())

    def podman(self, *args, **kwargs):
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        kwargs.setdefault("timeout", 120)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        command = ["podman"] + self.flags + list(args)
        if self.etc_containers is not None:
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount --bind "$0" /etc/containers && exec "$@"', self.etc_containers] + command
        if self.etc_cdi is not None:
            script = ('set -e; if [ ! -d /etc/cdi ]; then '
                      'mount -t overlay overlay -o "lowerdir=/etc,upperdir=$1/etc-upper,workdir=$1/etc-work" /etc; '
                      'mkdir -p /etc/cdi; fi; mount --bind "$2" /etc/cdi; '
                      'if [ -d /run/cdi ]; then mount -t tmpfs tmpfs /run/cdi; fi; shift 2; exec "$@"')
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", self.base,
                       self.etc_cdi] + command
        return subprocess.run(command, env=self.env, **kwargs)

    def run(self, *args, **kwargs):
        """podman run --rm --network none (ulimits this machine needs) ARGS"""
        return self.podman("run", "--rm", "--network", "none", *(self.ULIMITS + args), **kwargs)

    def write_policy(self, data):
        write_policy(self.policy_path, data)

    def stop(self):
        self.podman("rm", "--all", "--force", "--time", "0", timeout=120)
        self.residue.clean()


def podman_registered(pyz, directory, image_tar):
    """A private Podman configured from the snippet `--oi-register podman
    --oi-register-default` prints (the program as its default runtime)."""
    snippet = subprocess.run([pyz, "--oi-register", "podman", "--oi-register-default"],
                             stdout=subprocess.PIPE, check=True).stdout.decode()
    return Podman(directory, snippet, image_tar)


CRI_PLUGIN = '[plugins."io.containerd.grpc.v1.cri"]'


class ContainerdCRI(_ContainerdDaemon):
    """containerd with its CRI plugin, the interceptor registered as a runtime
    handler from the snippet `--oi-register containerd` prints (plus a plain
    runc handler), and a minimal gRPC CRI client (stubs generated from
    tests/cri at start). Pods run with host networking (no CNI) and their
    cgroups under a parent of their own."""

    HANDLER = "oci-interceptor"

    def __init__(self, base, handler_snippet, images_to_import, sandbox_image, pod_annotations=(),
                 before_start=None):
        """handler_snippet None: config.toml gets no handler of ours, and
        before_start(config_path) may add one before containerd starts."""
        base = str(base)
        self.log_dir = os.path.join(base, "pods")
        self.cgroup_parent = "oi-cri-%d" % os.getpid()
        os.makedirs(self.log_dir, exist_ok=True)
        os.makedirs(os.path.join(base, "cni"), exist_ok=True)
        snippet = handler_snippet
        if snippet is None:
            snippet = '%s.containerd]\n' % CRI_PLUGIN[:-1]         # snapshotter added below
        snippet = snippet.replace(
            "%s.containerd]\n" % CRI_PLUGIN[:-1], '%s.containerd]\n  snapshotter = "native"\n' % CRI_PLUGIN[:-1], 1)
        snippet = snippet.replace(
            '  runtime_type = "io.containerd.runc.v2"\n',
            '  runtime_type = "io.containerd.runc.v2"\n  pod_annotations = %s\n' % json.dumps(list(pod_annotations)), 1)
        snippet = snippet.replace("    BinaryName = ", '    Root = "%s/runc"\n    BinaryName = ' % base, 1)
        # restrict_oom_score_adj: the sandbox asks for oom_score_adj -998,
        # which this host's root may not set.
        body = ('%s\n  sandbox_image = "%s"\n  disable_apparmor = true\n  restrict_oom_score_adj = true\n'
                '  [plugins."io.containerd.grpc.v1.cri".cni]\n    bin_dir = "%s/cni"\n    conf_dir = "%s/cni"\n'
                '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
                '    runtime_type = "io.containerd.runc.v2"\n'
                '    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
                '      Root = "%s/runc"\n'
                % (CRI_PLUGIN, sandbox_image, base, base, base)) + snippet
        self._start(base, body, images_to_import, "k8s.io", extra_cgroups=(self.cgroup_parent,),
                    before_start=before_start)
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise

    def _connect(self):
        import sys
        import grpc
        from grpc_tools import protoc
        out = os.path.join(self.base, "stubs")
        os.makedirs(out, exist_ok=True)
        here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri")
        if protoc.main(["protoc", "-I" + here, "--python_out=" + out, "--grpc_python_out=" + out,
                        os.path.join(here, "runtime_v1_subset.proto")]) != 0:
            raise RuntimeError("protoc failed")
        sys.path.insert(0, out)
        import runtime_v1_subset_pb2 as pb
        import runtime_v1_subset_pb2_grpc as pb_grpc
        self.pb = pb
        self.channel = grpc.insecure_channel("unix://" + self.socket)
        self.cri = pb_grpc.RuntimeServiceStub(self.channel)

    def sandbox_config(self, name, namespace="default", annotations=None):
        pb = self.pb
        uid = "%s-%s-%d" % (namespace, name, int(time.time() * 1000))
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace),
            log_directory=os.path.join(self.log_dir, uid), annotations=annotations or {},
            linux=pb.LinuxPodSandboxConfig(
                cgroup_parent="/" + self.cgroup_parent,
                security_context=pb.LinuxSandboxSecurityContext(
                    namespace_options=pb.NamespaceOption(network=pb.NODE))))

    def run_pod(self, config, handler=HANDLER):
        return self.cri.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config, runtime_handler=handler),
                                      timeout=60).pod_sandbox_id

    def create_container(self, pod_id, sandbox_config, name, image, command, envs=(), mounts=()):
        pb = self.pb
        config = pb.ContainerConfig(
            metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image), command=list(command),
            envs=[pb.KeyValue(key=k, value=v) for k, v in envs],
            mounts=[pb.Mount(container_path=c, host_path=h) for c, h in mounts], log_path=name + ".log",
            linux=pb.LinuxContainerConfig(security_context=pb.LinuxContainerSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.NODE, pid=pb.CONTAINER))))
        return self.cri.CreateContainer(pb.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=config, sandbox_config=sandbox_config), timeout=60).container_id

    def wait_exited(self, container_id, timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.cri.ContainerStatus(self.pb.ContainerStatusRequest(container_id=container_id),
                                              timeout=30).status
            if status.state == self.pb.CONTAINER_EXITED:
                return status
            time.sleep(0.1)
        raise RuntimeError("container %s did not exit" % container_id)

    def bundle_config(self, container_id):
        path = os.path.join(self.base, "state", "io.containerd.runtime.v2.task", "k8s.io", container_id,
                            "config.json")
        with open(path) as f:
            return json.load(f)

    def remove_pod(self, pod_id):
        pb = self.pb
        self.cri.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)
        self.cri.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=60)

    def stop(self):
        channel = getattr(self, "channel", None)
        if channel is not None:
            channel.close()
        _ContainerdDaemon.stop(self)
