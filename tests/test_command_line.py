"""Unit tests: splitting our flags from the runtime's, and reading the runtime call.

The vectors are the argument lists Docker, containerd's CRI and Podman really
pass to a runtime, and command lines users write by hand.
"""

import os

import pytest

import oci_interceptor as oi

EXEC = "/run/docker/runtime-runc/moby"
TASK = "/run/containerd/io.containerd.runtime.v2.task/moby/abc"
DOCKER_GLOBALS = ["--root", EXEC, "--log", TASK + "/log.json", "--log-format", "json"]

DOCKER_CALLS = [
    DOCKER_GLOBALS + ["create", "--bundle", TASK, "--pid-file", TASK + "/init.pid", "abc"],
    DOCKER_GLOBALS + ["create", "--bundle", TASK, "--pid-file", TASK + "/init.pid",
                      "--console-socket", "/tmp/pty1/pty.sock", "abc"],
    DOCKER_GLOBALS + ["start", "abc"],
    DOCKER_GLOBALS + ["exec", "--process", "/tmp/runc-process1", "--detach",
                      "--pid-file", TASK + "/e1.pid", "abc"],
    DOCKER_GLOBALS + ["ps", "--format", "json", "abc"],
    DOCKER_GLOBALS + ["kill", "abc", "15"],
    DOCKER_GLOBALS + ["delete", "--force", "abc"],
]

PODMAN_CREATE = ["create", "--bundle", "/var/lib/containers/vfs-containers/abc/userdata",
                 "--pid-file", "/run/containers/vfs-containers/abc/userdata/pidfile", "abc"]

CRI_CREATE = ["--root", "/run/containerd/runc/k8s.io", "--log", "/run/k8s/abc/log.json",
              "--log-format", "json", "create", "--bundle", "/run/k8s/abc",
              "--pid-file", "/run/k8s/abc/init.pid", "abc"]


def split(args):
    return oi.split_command_line(args)


# --- our flags -------------------------------------------------------------

@pytest.mark.parametrize("call", DOCKER_CALLS + [PODMAN_CREATE, CRI_CREATE])
def test_engine_calls_are_forwarded_unchanged(call):
    opts, runtime_args = split(["--oi-readonly-networking-mounts", "--oi-env", "A=1"] + call)
    assert runtime_args == call
    assert opts.readonly_networking_mounts is True
    assert opts.env == ["A=1"]


def test_space_and_equals_forms_are_the_same():
    a, _ = split(["--oi-runtime-path", "crun", "--oi-env", "A=1", "--oi-env-force", "B=2", "state", "x"])
    b, _ = split(["--oi-runtime-path=crun", "--oi-env=A=1", "--oi-env-force=B=2", "state", "x"])
    for opts in (a, b):
        assert (opts.runtime_path, opts.env, opts.env_force) == ("crun", ["A=1"], ["B=2"])


def test_flags_mixed_with_runtime_globals():
    args = ["--root", "/r", "--oi-env", "A=1", "--log=/l.json", "--oi-readonly-networking-mounts",
            "--log-format", "json", "--debug", "create", "-b", "/b", "id"]
    opts, runtime_args = split(args)
    assert runtime_args == ["--root", "/r", "--log=/l.json", "--log-format", "json", "--debug",
                            "create", "-b", "/b", "id"]
    assert opts.env == ["A=1"] and opts.readonly_networking_mounts


def test_a_global_value_that_looks_like_a_word_is_not_the_subcommand():
    # --root's value must not end our flag parsing.
    opts, runtime_args = split(["--root", "state", "--oi-env", "A=1", "list"])
    assert runtime_args == ["--root", "state", "list"]
    assert opts.env == ["A=1"]


def test_go_single_dash_global_takes_a_value():
    opts, runtime_args = split(["-root", "/r", "--oi-env=A=1", "state", "x"])
    assert runtime_args == ["-root", "/r", "state", "x"]
    assert opts.env == ["A=1"]


def test_nothing_after_the_subcommand_is_taken():
    args = ["exec", "id", "prog", "--oi-env", "A=1", "--oi-help", "--runtime-path", "x"]
    opts, runtime_args = split(args)
    assert runtime_args == args
    assert opts.env == [] and opts.action is None and opts.runtime_path is None


def test_double_dash_ends_our_flags():
    opts, runtime_args = split(["--", "--oi-env", "A=1"])
    assert runtime_args == ["--", "--oi-env", "A=1"]
    assert opts.env == []


def test_values_may_contain_equals_signs_and_repeat_in_order():
    opts, _ = split(["--oi-env", "A=b=c", "--oi-env=B==", "--oi-env", "C=", "start", "x"])
    assert opts.env == ["A=b=c", "B==", "C="]


def test_legacy_spellings_are_aliases():
    opts, runtime_args = split(["--runtime-path=crun", "--readonly-networking-mounts", "start", "x"])
    assert opts.runtime_path == "crun" and opts.readonly_networking_mounts
    assert runtime_args == ["start", "x"]
    opts, _ = split(["--runtime-path", "/usr/bin/crun", "start", "x"])
    assert opts.runtime_path == "/usr/bin/crun"


def test_switch_accepts_explicit_true_and_false():
    opts, _ = split(["--oi-readonly-networking-mounts", "--oi-readonly-networking-mounts=false", "list"])
    assert opts.readonly_networking_mounts is False
    opts, _ = split(["--oi-write-debug-output=true", "list"])
    assert opts.write_debug_output is True


def test_help_and_version_belong_to_the_runtime_unless_prefixed():
    opts, runtime_args = split(["--help"])
    assert runtime_args == ["--help"] and opts.action is None
    opts, runtime_args = split(["--version"])
    assert runtime_args == ["--version"] and opts.action is None
    assert split(["--oi-help"])[0].action == "help"
    assert split(["--oi-version"])[0].action == "version"


def test_defaults():
    opts, runtime_args = split([])
    assert runtime_args == []
    policy = oi.load_policy(opts, "oci-interceptor")
    assert policy.runtime_path == "runc"
    assert policy.debug_output_dir == "/var/log/oci-interceptor"
    assert not policy.write_debug_output
    assert policy.rules == []


@pytest.mark.parametrize("args, message", [
    (["--oi-bogus", "create"], "unknown flag --oi-bogus"),
    (["--oi-env"], "--oi-env needs a value"),
    (["--oi-env", "NOEQUALS", "create"], "--oi-env NOEQUALS: expected NAME=VALUE"),
    (["--oi-env-force=", "create"], "expected NAME=VALUE"),
    (["--oi-env", "=value", "create"], "the variable name is empty"),
    (["--oi-runtime-path="], "--oi-runtime-path: the value is empty"),
    (["--oi-readonly-networking-mounts=maybe"], "takes no value, or =true / =false"),
    (["--oi-version=1"], "--oi-version takes no value"),
])
def test_bad_flags_are_usage_errors(args, message):
    with pytest.raises(oi.UsageError) as info:
        split(args)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_usage_error_keeps_the_runtime_arguments_for_reporting():
    with pytest.raises(oi.UsageError) as info:
        split(["--oi-bogus", "--log", "/l.json", "--log-format", "json", "create", "x"])
    assert info.value.runtime_args == ["--log", "/l.json", "--log-format", "json", "create", "x"]


def test_help_lists_every_flag():
    text = oi.help_text()
    for flag in oi.FLAGS:
        assert flag.name in text
        for alias in flag.aliases:
            assert alias in text


# --- the runtime call ----------------------------------------------------------

def test_docker_create():
    call = oi.parse_runtime_call(DOCKER_CALLS[1])
    assert call.command == "create" and call.edits_config
    assert call.bundle == TASK
    assert call.container_id == "abc"
    assert call.log_path == TASK + "/log.json" and call.log_format == "json"
    assert call.config_path == TASK + "/config.json"


@pytest.mark.parametrize("call", DOCKER_CALLS[2:])
def test_other_docker_calls_do_not_edit(call):
    parsed = oi.parse_runtime_call(call)
    assert not parsed.edits_config
    assert parsed.log_path == TASK + "/log.json"


def test_podman_create_has_no_globals():
    call = oi.parse_runtime_call(PODMAN_CREATE)
    assert call.edits_config and call.log_path is None and call.log_format == "text"
    assert call.bundle == "/var/lib/containers/vfs-containers/abc/userdata"
    assert call.container_id == "abc"


def test_cri_create():
    call = oi.parse_runtime_call(CRI_CREATE)
    assert call.bundle == "/run/k8s/abc" and call.container_id == "abc"


@pytest.mark.parametrize("args, bundle", [
    (["create", "-b", "/b", "id"], "/b"),
    (["create", "-b/b", "id"], "/b"),                      # crun: a value attached to -b
    (["create", "--bundle=/b", "id"], "/b"),
    (["create", "--bund", "/b", "id"], "/b"),              # crun: an abbreviation
    (["create", "id", "--bundle", "/b"], "/b"),            # runc reorders flags after the id
    (["create", "--bundle", "/a", "-b", "/b", "id"], "/b"),  # last wins
    (["run", "-d", "--bundle", "/b", "id"], "/b"),
    (["restore", "--image-path", "/img", "-b", "/b", "id"], "/b"),
    (["--root=/r", "--log=/l", "create", "--pid-file", "-b", "id"], None),  # value, not a flag
])
def test_bundle_spellings(args, bundle):
    call = oi.parse_runtime_call(args)
    assert call.unreadable is None
    assert call.bundle == bundle
    assert call.container_id == "id"


def test_bundle_defaults_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    call = oi.parse_runtime_call(["create", "id"])
    assert call.config_path == os.path.join(str(tmp_path), "config.json")


def test_relative_bundle_is_resolved_against_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(str(tmp_path))
    call = oi.parse_runtime_call(["create", "-b", "sub", "id"])
    assert call.config_path == os.path.join(str(tmp_path), "sub", "config.json")


@pytest.mark.parametrize("flag", [["-f", "other.json"], ["--config", "other.json"], ["--config=other.json"]])
def test_crun_config_file_is_relative_to_the_current_directory(tmp_path, monkeypatch, flag):
    # crun 1.8 opens --config as given, relative to its working directory.
    monkeypatch.chdir(str(tmp_path))
    call = oi.parse_runtime_call(["create", "--bundle", "/elsewhere"] + flag + ["id"])
    assert call.config_path == os.path.join(str(tmp_path), "other.json")


def test_globals_with_equals_and_go_forms():
    call = oi.parse_runtime_call(["-log", "/l", "-log-format=json", "--debug", "--rootless=true", "create", "x"])
    assert call.log_path == "/l" and call.log_format == "json" and call.command == "create"


def test_what_the_fast_path_reads_python_reads_with_certainty_the_same_way():
    import build_zipapp
    takes_value, alone = build_zipapp.global_option_patterns(oi)
    assert "--root" in takes_value and "-root" in takes_value and "--debug" in alone and "--root=*" in alone
    for pattern in takes_value + alone:
        spelled = pattern.replace("=*", "=x")
        (name, value), problem = oi.read_global_option(spelled)
        assert problem is None, spelled
        assert (value is oi._NEXT) == (pattern in takes_value), spelled
        assert oi.split_command_line([spelled, "v", "state"])[1] == [spelled, "v", "state"]


def test_crun_global_abbreviations_and_double_dash():
    call = oi.parse_runtime_call(["--log-f", "json", "--lo", "x", "--", "state", "id"])
    assert (call.command, call.log_format, call.log_path, call.unreadable) == ("state", "json", None, None)
    opts, runtime_args = oi.split_command_line(["--log-f", "json", "--oi-env", "A=1", "create", "id"])
    assert runtime_args == ["--log-f", "json", "create", "id"] and opts.env == ["A=1"]


def test_log_options_after_an_unreadable_one_are_not_trusted():
    call = oi.parse_runtime_call(["--log", "/l1", "--frob", "--log", "/l2", "create", "id"])
    assert call.log_path == "/l1" and call.unreadable == "unknown global option --frob before create"


def test_no_subcommand():
    call = oi.parse_runtime_call(["--version"])
    assert call.command is None and not call.edits_config


def test_state_passes_through():
    call = oi.parse_runtime_call(["--root", "/r", "state", "create"])
    assert call.command == "state" and not call.edits_config


# --- finding the runtime -------------------------------------------------------

def test_bare_name_is_found_on_path(tmp_path, monkeypatch):
    exe = tmp_path / "myruntime"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert oi.find_runtime("myruntime") == str(exe)


def test_bare_name_falls_back_to_the_sbin_directories(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert oi.find_runtime("sh") in ("/usr/bin/sh", "/bin/sh")


def test_missing_or_not_executable_runtime(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(oi.InterceptorError, match="runtime no-such-runtime not found on PATH"):
        oi.find_runtime("no-such-runtime")
    with pytest.raises(oi.InterceptorError, match="does not exist"):
        oi.find_runtime("/nonexistent/runc")
    plain = tmp_path / "plain"
    plain.write_text("")
    with pytest.raises(oi.InterceptorError, match="is not an executable file"):
        oi.find_runtime(str(plain))
