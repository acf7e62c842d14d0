"""Kubernetes: the interceptor as a RuntimeClass handler of containerd's CRI
plugin, driven by a real CRI client (gRPC, runtime.v1), as kubelet drives it.
No kubelet and no registry: images are imported, pods use host networking.
The handler snippet and the policy are the README's."""

import os
import shutil
import subprocess
import tempfile

import pytest

from conftest import need
from test_readme import json_blocks_after

BUSYBOX = "docker.io/library/oi-busybox:test"
PAUSE = "docker.io/library/oi-pause:test"


def cri_images(rootfs, prefix):
    """What a private containerd with its CRI plugin needs here (or the test
    is skipped, or fails where runtimes are required), then (a short new
    directory in /tmp, for its sockets; the busybox and pause image
    tarballs in it). The caller removes the directory."""
    need(shutil.which("containerd") and shutil.which("containerd-shim-runc-v2"), "containerd is not installed")
    try:
        import grpc_tools.protoc
    except ImportError:
        grpc_tools = None
    need(grpc_tools is not None, "grpcio and grpcio-tools are not installed")
    import images
    base = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    try:
        busybox = images.oci_image_tarball(rootfs, os.path.join(base, "busybox.tar"), BUSYBOX)
        pause = images.oci_image_tarball(rootfs, os.path.join(base, "pause.tar"), PAUSE,
                                         cmd=("sleep", "2147483647"))
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    return base, busybox, pause


@pytest.fixture(scope="session")
def cri(pyz, rootfs):
    import engines
    base, busybox, pause = cri_images(rootfs, "oi-cri-")
    snippet = subprocess.run([pyz, "--oi-register", "containerd"], stdout=subprocess.PIPE,
                             check=True).stdout.decode()
    daemon = engines.ContainerdCRI(base, snippet, [busybox, pause], PAUSE, pod_annotations=["example.com/*"])
    (policy,) = json_blocks_after("### Kubernetes")
    policy["rules"].append({
        "name": "broken-namespace",
        "when": {"annotations": {"^io\\.kubernetes\\.cri\\.sandbox-namespace$": "^broken$",
                                 "^io\\.kubernetes\\.cri\\.container-type$": "^container$"}},
        "json-patch": [{"op": "test", "path": "/process/user/uid", "value": 12345}]})
    daemon.write_policy(policy)
    try:
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pod(cri):
    """Run pods; every pod is stopped and removed after the test."""
    pods = []

    def run_pod(name, namespace, annotations=None, handler=None):
        config = cri.sandbox_config(name, namespace, annotations)
        pod_id = cri.run_pod(config, handler or cri.HANDLER)
        pods.append(pod_id)
        return pod_id, config
    yield run_pod
    for pod_id in pods:
        cri.remove_pod(pod_id)


# Read, never written: with host networking /etc/hosts comes from the node.
PROBE = "env > /marker/env; grep ' /etc/hosts ' /proc/self/mounts > /marker/hosts"


def run_probe(cri, pod_id, config, marker):
    os.makedirs(marker)
    container_id = cri.create_container(pod_id, config, "probe", BUSYBOX, ["sh", "-c", PROBE],
                                        envs=[("FROM_POD", "yes")], mounts=[("/marker", marker)])
    cri.cri.StartContainer(cri.pb.StartContainerRequest(container_id=container_id), timeout=60)
    status = cri.wait_exited(container_id)
    assert status.exit_code == 0, status.message
    with open(os.path.join(marker, "env")) as f:
        env = f.read().splitlines()
    with open(os.path.join(marker, "hosts")) as f:
        hosts = f.read()
    return container_id, env, hosts


def test_policy_by_namespace_and_pod_annotation_in_app_containers(cri, pod, tmp_path):
    pod_id, config = pod("web", "prod", {"example.com/team": "blue"})
    _, env, hosts = run_probe(cri, pod_id, config, str(tmp_path / "prod"))
    assert "FROM_POD=yes" in env and "FROM_POLICY=yes" in env
    # TEAM comes from a rule on a pod annotation, which reaches the
    # container's spec through the handler's pod_annotations.
    assert "NAMESPACE_POLICY=prod" in env and "TEAM=blue" in env
    assert hosts.split()[3].split(",")[0] == "ro", hosts

    other_id, other_config = pod("web", "dev")
    _, env, hosts = run_probe(cri, other_id, other_config, str(tmp_path / "dev"))
    assert "FROM_POLICY=yes" in env
    assert not any(line.startswith(("NAMESPACE_POLICY=", "TEAM=")) for line in env)
    assert hosts.split()[3].split(",")[0] == "ro", hosts

    # The same pod under the plain runc handler: no policy at all.
    plain_id, plain_config = pod("web", "prod", {"example.com/team": "blue"}, handler="runc")
    _, env, hosts = run_probe(cri, plain_id, plain_config, str(tmp_path / "plain"))
    assert not any(line.startswith(("FROM_POLICY=", "NAMESPACE_POLICY=", "TEAM=")) for line in env)
    assert hosts.split()[3].split(",")[0] == "rw", hosts


def test_the_sandbox_is_left_alone_unless_a_rule_selects_it(cri, pod):
    pod_id, _ = pod("quiet", "prod", {"example.com/team": "blue"})
    sandbox = cri.bundle_config(pod_id)
    assert sandbox["annotations"]["io.kubernetes.cri.container-type"] == "sandbox"
    assert sandbox["annotations"]["example.com/seen-by"] == "oci-interceptor"     # mark-sandboxes
    assert not any(e.startswith(("FROM_POLICY=", "NAMESPACE_POLICY=", "TEAM=")) for e in sandbox["process"]["env"])
    for mount in sandbox["mounts"]:
        if mount["destination"] in ("/etc/hosts", "/etc/hostname"):
            assert "ro" not in mount.get("options", [])


def test_exec_sync_works(cri, pod):
    pod_id, config = pod("shell", "dev")
    container_id = cri.create_container(pod_id, config, "sleeper", BUSYBOX, ["sleep", "300"])
    pb = cri.pb
    cri.cri.StartContainer(pb.StartContainerRequest(container_id=container_id), timeout=60)
    result = cri.cri.ExecSync(pb.ExecSyncRequest(container_id=container_id, cmd=["sh", "-c", "echo hi; exit 3"],
                                                 timeout=30), timeout=60)
    assert (result.stdout, result.exit_code) == (b"hi\n", 3)
    cri.cri.StopContainer(pb.StopContainerRequest(container_id=container_id, timeout=0), timeout=60)
    cri.cri.RemoveContainer(pb.RemoveContainerRequest(container_id=container_id), timeout=60)


def test_a_policy_error_fails_create_container_with_our_message(cri, pod):
    import grpc
    pod_id, config = pod("bad", "broken")
    with pytest.raises(grpc.RpcError) as info:
        container_id = cri.create_container(pod_id, config, "refused", BUSYBOX, ["true"])
        cri.cri.StartContainer(cri.pb.StartContainerRequest(container_id=container_id), timeout=60)
    details = info.value.details()
    assert ("oci-interceptor: rule broken-namespace: json-patch: json-patch[0] (test /process/user/uid): "
            "test failed" in details), details
    assert "unable to retrieve OCI runtime error" not in details


def test_the_handler_is_our_binary(cri, pyz):
    with open(cri.config_path) as f:
        config = f.read()
    assert 'BinaryName = "%s"' % pyz in config
    with open(os.path.join(cri.base, "containerd.log")) as f:
        log = f.read()
    assert pyz in log                     # the CRI plugin logs the handler's options


def test_a_guardrail_refusal_fails_the_container_with_the_admins_message(cri, pod, tmp_path):
    """A pod that mounts the directory holding a (test-made) Docker socket
    is refused with the rule's message, which the CRI call returns (as
    kubelet shows it in the pod's events); the pod's other containers run."""
    import grpc
    sockdir = tmp_path / "run"
    sockdir.mkdir()
    (sockdir / "docker.sock").write_text("")
    with open(cri.policy_path, "rb") as f:
        saved = f.read()
    cri.write_policy({"version": 1, "rules": [
        {"name": "no-docker-socket", "when": {"hostPaths": [str(sockdir / "docker.sock")]},
         "deny": "the Docker socket is not for pods"},
        {"name": "restricted", "preset": "restricted", "mode": "warn"}]})
    try:
        pod_id, config = pod("guarded", "dev")
        with pytest.raises(grpc.RpcError) as info:
            container_id = cri.create_container(pod_id, config, "refused", BUSYBOX, ["true"],
                                                mounts=[("/h", str(sockdir))])
            cri.cri.StartContainer(cri.pb.StartContainerRequest(container_id=container_id), timeout=60)
        details = info.value.details()
        assert "oci-interceptor: denied by rule no-docker-socket: the Docker socket is not for pods" in details, details
        allowed = cri.create_container(pod_id, config, "allowed", BUSYBOX, ["true"])
        cri.cri.StartContainer(cri.pb.StartContainerRequest(container_id=allowed), timeout=60)
        assert cri.wait_exited(allowed).exit_code == 0
    finally:
        with open(cri.policy_path, "wb") as f:
            f.write(saved)
