"""--oi-register and --oi-unregister against files in temp directories (never
the host's engine configuration): what is written, kept, backed up, refused."""

import json
import os
import subprocess

import pytest

import oci_interceptor as oi
from conftest import run


@pytest.fixture
def program(tmp_path):
    """An executable program file, and a profile symlink to it."""
    path = tmp_path / "bin" / "oci-interceptor.pyz"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    (tmp_path / "bin" / "oci-interceptor-strict").symlink_to(path)
    return str(path)


def register(*args, argv0=None, cwd=None):
    opts, _ = oi.split_command_line(list(args))
    if cwd:
        old = os.getcwd()
        os.chdir(cwd)
    try:
        return oi.register(opts, argv0)
    finally:
        if cwd:
            os.chdir(old)


def backups(directory, name):
    return sorted(n for n in os.listdir(str(directory)) if n.startswith(name + ".bak-"))


def test_only_an_executable_file_is_registered(tmp_path, program):
    script = tmp_path / "oci_interceptor.py"
    script.write_text("")
    daemon_json = str(tmp_path / "daemon.json")
    for args in (["--oi-register", "docker", "--oi-daemon-json", daemon_json],
                 ["--oi-register", "podman"], ["--oi-register", "containerd"]):
        with pytest.raises(oi.UsageError, match=r"--oi-register: %s is not an executable file" % script):
            register(*args, argv0=str(script))
        with pytest.raises(oi.UsageError, match="is not an executable file"):
            register(*args + ["--oi-register-path", str(tmp_path / "missing")], argv0=program)
    assert not os.path.exists(daemon_json)
    # As a process: `python3 oci_interceptor.py --oi-register docker` refuses.
    result = run(["/usr/bin/python3", oi.__file__], ["--oi-register", "docker", "--oi-daemon-json", daemon_json])
    assert result.returncode == 2 and b"is not an executable file" in result.stderr
    assert not os.path.exists(daemon_json)


def test_the_runtime_name_is_the_program_name(tmp_path, program):
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text('{"runtimes": {"oci-interceptor": {"path": "%s"}}, "default-runtime": "oci-interceptor"}'
                           % program)
    strict = str(tmp_path / "bin" / "oci-interceptor-strict")
    out = register("--oi-register", "docker", "--oi-daemon-json", str(daemon_json), argv0=strict)
    assert "added runtime oci-interceptor-strict: %s" % strict in out
    data = json.loads(daemon_json.read_text())
    assert data["runtimes"] == {"oci-interceptor": {"path": program}, "oci-interceptor-strict": {"path": strict}}
    assert data["default-runtime"] == "oci-interceptor"           # untouched
    assert "already registered" in register("--oi-register", "docker", "--oi-daemon-json", str(daemon_json),
                                            argv0=program)
    assert oi._runtime_name("/usr/bin/oci-interceptor") == "oci-interceptor"
    assert oi._runtime_name("/x/oci-interceptor.pyz") == "oci-interceptor"
    assert "oci-interceptor-strict = [" in register("--oi-register", "podman", argv0=strict)
    assert "runtimes.oci-interceptor-strict]" in register("--oi-register", "containerd", argv0=strict)


def test_docker_policy_flags_become_runtime_args(tmp_path, program):
    daemon_json = str(tmp_path / "daemon.json")
    args = ["--oi-register", "docker", "--oi-daemon-json", daemon_json, "--oi-env", "TZ=UTC",
            "--oi-config", "policy.json", "--oi-readonly-networking-mounts", "--oi-systemd=auto",
            "--oi-runtime-path", "crun", "--oi-write-debug-output=false", "--oi-hooks-dir=hooks.d"]
    out = register(*args, argv0=program, cwd=str(tmp_path))
    words = ["--oi-readonly-networking-mounts", "--oi-env=TZ=UTC", "--oi-systemd=auto",
             "--oi-config=%s/policy.json" % tmp_path, "--oi-hooks-dir=%s/hooks.d" % tmp_path,
             "--oi-write-debug-output=false"]
    words.insert(0, "--oi-runtime-path=crun")
    with open(daemon_json) as f:
        entry = json.load(f)["runtimes"]["oci-interceptor"]
    assert entry == {"path": program, "runtimeArgs": words}
    assert "added runtime oci-interceptor: %s %s" % (program, " ".join(words)) in out
    assert "already registered" in register(*args, argv0=program, cwd=str(tmp_path))
    # Registered again without flags: the entry says what the command says.
    out = register("--oi-register", "docker", "--oi-daemon-json", daemon_json, argv0=program)
    assert "runtime oci-interceptor: runtimeArgs %s -> (none)" % " ".join(words) in out
    with open(daemon_json) as f:
        assert json.load(f)["runtimes"]["oci-interceptor"] == {"path": program}
    # Docker's generated script does not quote: such a value is refused.
    with pytest.raises(oi.UsageError, match=r"'--oi-env=GREETING=hello world': Docker runs runtimeArgs through "
                                            r"/bin/sh without quoting them"):
        register("--oi-register", "docker", "--oi-daemon-json", daemon_json, "--oi-env", "GREETING=hello world",
                 argv0=program)


def test_podman_takes_the_config_file_as_a_variable_and_refuses_other_flags(tmp_path, program):
    out = register("--oi-register", "podman", "--oi-config", "/etc/oci-interceptor/strict.json", argv0=program)
    assert ('conmon_env_vars = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", '
            '"OCI_INTERCEPTOR_CONFIG=/etc/oci-interceptor/strict.json"]') in out
    assert "# Policy comes from /etc/oci-interceptor/strict.json." in out
    with pytest.raises(oi.UsageError, match="--oi-env: Podman passes no flags of ours"):
        register("--oi-register", "podman", "--oi-env", "A=1", argv0=program)
    for flag in (["--oi-config", "/x.json"], ["--oi-readonly-networking-mounts"]):
        with pytest.raises(oi.UsageError, match="%s: containerd passes no flags of ours.*OCI_INTERCEPTOR_CONFIG on "
                                                "containerd.service" % flag[0]):
            register("--oi-register", "containerd", *flag, argv0=program)


@pytest.mark.parametrize("args", [
    ["--oi-register-name", "x", "state", "c"], ["--oi-register-default", "create", "c"],
    ["--oi-daemon-json", "/tmp/d.json", "--oi-check-config"], ["--oi-write"], ["--oi-register-path=/x", "list"],
    ["--oi-podman-conf-dir", "/x"], ["--oi-containerd-config", "/x.toml", "state", "c"]])
def test_register_only_flags_are_usage_errors_without_it(args):
    with pytest.raises(oi.UsageError, match="%s means something only with --oi-register" % args[0].split("=")[0]):
        oi.split_command_line(args)


def test_other_combinations_are_usage_errors(program):
    with pytest.raises(oi.UsageError, match="exclude each other"):
        oi.split_command_line(["--oi-register", "docker", "--oi-unregister", "docker"])
    with pytest.raises(oi.UsageError, match="--oi-dry-run does not apply to --oi-register"):
        oi.split_command_line(["--oi-register", "docker", "--oi-dry-run"])
    with pytest.raises(oi.UsageError, match="--oi-env: --oi-unregister takes no policy flags"):
        register("--oi-unregister", "docker", "--oi-env", "A=1", argv0=program)


def test_a_symlinked_daemon_json_stays_a_symlink(tmp_path, program):
    real = tmp_path / "etc-real" / "daemon.json"
    real.parent.mkdir()
    real.write_text('{\n  "log-level": "warn"\n}\n')
    link = tmp_path / "daemon.json"
    link.symlink_to(real)
    out = register("--oi-register", "docker", "--oi-daemon-json", str(link), argv0=program)
    assert os.path.islink(str(link)) and os.readlink(str(link)) == str(real)
    assert "%s is a symlink: its target %s was written, the link kept" % (link, real) in out
    assert json.loads(real.read_text()) == {"log-level": "warn", "runtimes": {"oci-interceptor": {"path": program}}}
    assert real.read_text().startswith('{\n  "log-level": "warn",\n')        # its layout kept
    (backup,) = backups(real.parent, "daemon.json")
    assert (real.parent / backup).read_text() == '{\n  "log-level": "warn"\n}\n'
    out = register("--oi-unregister", "docker", "--oi-daemon-json", str(link), argv0=program)
    assert os.path.islink(str(link)) and json.loads(real.read_text()) == {"log-level": "warn", "runtimes": {}}


def test_docker_output_says_what_applies_the_change_and_names_a_replaced_default(tmp_path, program):
    daemon_json = tmp_path / "daemon.json"
    daemon_json.write_text(json.dumps({"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}},
                                       "default-runtime": "nvidia"}))
    out = register("--oi-register", "docker", "--oi-register-default", "--oi-daemon-json", str(daemon_json),
                   argv0=program)
    lines = out.splitlines()
    assert "  default-runtime: nvidia -> oci-interceptor" in lines
    assert ("    nvidia was the default runtime: it stays registered, but containers started without --runtime now "
            "run with oci-interceptor; to keep nvidia underneath, register again with "
            "--oi-runtime-path=nvidia-container-runtime") in lines
    assert ("Apply: systemctl reload docker (dockerd re-reads its runtimes on SIGHUP; running containers keep "
            "running)") in lines
    assert "restart" not in out and "--runtime oci-interceptor" not in out
    assert lines[-1] == "New containers run with oci-interceptor unless docker run --runtime names another."
    out = register("--oi-register", "docker", "--oi-register-name", "oi-other", "--oi-daemon-json",
                   str(daemon_json), argv0=program)
    assert out.splitlines()[-1] == "Then: docker run --runtime oi-other ...  (or register with --oi-register-default)"


def test_unregister_docker_is_idempotent_with_a_backup(tmp_path, program):
    daemon_json = tmp_path / "daemon.json"
    original = {"debug": True, "runtimes": {"other": {"path": "/usr/bin/other"}}}
    daemon_json.write_text(json.dumps(original, indent=4) + "\n")
    register("--oi-register", "docker", "--oi-register-default", "--oi-daemon-json", str(daemon_json), argv0=program)
    out = register("--oi-unregister", "docker", "--oi-daemon-json", str(daemon_json), argv0=program)
    assert "  removed runtime oci-interceptor\n  default-runtime: oci-interceptor -> runc\n" in out
    # "runc" named: dockerd 20.10 keeps, on SIGHUP, a default it is not given.
    assert daemon_json.read_text() == json.dumps(dict(original, **{"default-runtime": "runc"}), indent=4) + "\n"
    assert len(backups(tmp_path, "daemon.json")) == 2
    assert "is not registered; nothing changed" in register("--oi-unregister", "docker", "--oi-daemon-json",
                                                            str(daemon_json), argv0=program)
    assert len(backups(tmp_path, "daemon.json")) == 2


def test_podman_write_and_unregister(tmp_path, program):
    conf_dir = tmp_path / "containers.conf.d"
    args = ["--oi-register", "podman", "--oi-write", "--oi-register-default", "--oi-podman-conf-dir", str(conf_dir),
            "--oi-config", "/srv/policy.json"]
    out = register(*args, argv0=program)
    path = conf_dir / "oci-interceptor.conf"
    assert out.splitlines()[0] == "%s: created" % path
    assert "Podman reads it on its next command; nothing to restart." in out
    text = path.read_text()
    assert text == ('# Written by oci-interceptor --oi-register podman --oi-write;\n'
                    '# oci-interceptor --oi-unregister podman --oi-register-name oci-interceptor removes it.\n'
                    '[engine]\nruntime = "oci-interceptor"\n'
                    'conmon_env_vars = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", '
                    '"OCI_INTERCEPTOR_CONFIG=/srv/policy.json"]\n\n'
                    '[engine.runtimes]\noci-interceptor = ["%s"]\n' % program)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert "nothing changed" in register(*args, argv0=program)
    out = register(*args[:-2], argv0=program)                 # without --oi-config now
    assert "updated (backup: " in out and "conmon_env_vars" not in path.read_text()
    out = register("--oi-unregister", "podman", "--oi-podman-conf-dir", str(conf_dir), argv0=program)
    assert "%s: removed (backup: " % path in out
    assert not path.exists() and len(backups(conf_dir, "oci-interceptor.conf")) == 2
    assert "nothing changed" in register("--oi-unregister", "podman", "--oi-podman-conf-dir", str(conf_dir),
                                         argv0=program)


def test_containerd_write_appends_a_marked_block_and_unregister_restores_the_file(tmp_path, program):
    config = tmp_path / "config.toml"
    original = ('version = 2\n\n[plugins]\n  [plugins."io.containerd.grpc.v1.cri"]\n'
                '    [plugins."io.containerd.grpc.v1.cri".cni]\n      bin_dir = "/usr/lib/cni"\n'
                '    [plugins."io.containerd.grpc.v1.cri".containerd]\n      snapshotter = "native"\n'
                '      default_runtime_name = "crun"\n')
    config.write_text(original)
    args = ["--oi-register", "containerd", "--oi-write", "--oi-containerd-config", str(config)]
    out = register(*args + ["--oi-register-default"], argv0=program)
    assert "  default_runtime_name: crun -> oci-interceptor (pods without a RuntimeClass now run with " \
           "oci-interceptor)" in out.splitlines()
    text = config.read_text()
    assert ('      default_runtime_name = "oci-interceptor"  # oci-interceptor runtime oci-interceptor; before: '
            '      default_runtime_name = "crun"\n') in text
    assert text.endswith('\n\n# BEGIN oci-interceptor runtime oci-interceptor (oci-interceptor --oi-unregister '
                         'containerd removes this block)\n'
                         '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.oci-interceptor]\n'
                         '  runtime_type = "io.containerd.runc.v2"\n'
                         '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.oci-interceptor.options]\n'
                         '    BinaryName = "%s"\n# END oci-interceptor runtime oci-interceptor\n' % program)
    assert "nothing changed" in register(*args + ["--oi-register-default"], argv0=program)
    register("--oi-unregister", "containerd", "--oi-containerd-config", str(config), argv0=program)
    assert config.read_text() == original
    assert "nothing changed" in register("--oi-unregister", "containerd", "--oi-containerd-config", str(config),
                                         argv0=program)
    # Not the default: config.toml's own default stays.
    register(*args, argv0=program)
    assert 'default_runtime_name = "crun"\n' in config.read_text() and "before:" not in config.read_text()
    # A runtime of that name the admin wrote is never overwritten.
    config.write_text(original + '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.oci-interceptor]\n')
    with pytest.raises(oi.InterceptorError, match="has a runtime oci-interceptor of its own"):
        register(*args, argv0=program)
    config.write_text("version = 1\n")
    with pytest.raises(oi.InterceptorError, match="not a version 2 containerd configuration"):
        register(*args, argv0=program)


def test_containerd_reads_the_written_block(tmp_path, program):
    """containerd itself parses config.toml with the block (default runtime in
    a new table, and in the file's own table)."""
    for original in ('version = 2\n[plugins."io.containerd.grpc.v1.cri".cni]\n  bin_dir = "/usr/lib/cni"\n',
                     'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n  snapshotter = "native"\n'):
        config = tmp_path / "config.toml"
        config.write_text(original)
        register("--oi-register", "containerd", "--oi-write", "--oi-register-default", "--oi-containerd-config",
                 str(config), argv0=program)
        dumped = subprocess.run(["containerd", "--config", str(config), "config", "dump"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60)
        assert dumped.returncode == 0, dumped.stderr
        text = dumped.stdout.decode()
        assert 'default_runtime_name = "oci-interceptor"' in text and 'BinaryName = "%s"' % program in text
        assert ('bin_dir = "/usr/lib/cni"' in text) or ('snapshotter = "native"' in text)
