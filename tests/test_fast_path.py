"""The .pyz's shell fast path against the Python path: every call, run
through an archive with the fast path and one without, must have the same
outcome (exit status, stdout, stderr, the runtime's arguments), and the
calls that need no edit must really skip Python."""

import os
import shutil
import stat
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import build_zipapp
import oci_interceptor as oi
from conftest import SYSTEM_PYTHON

RECORDER = r"""#!/bin/sh
printf '%s\0' "$@" > "${FAKE_RUNTIME_OUT:?}"
echo "runtime stdout"
exit 7
"""


@pytest.fixture(scope="module")
def archives(tmp_path_factory, pyz):
    """fast: the shipped .pyz; slow: without the fast path; fast_only: the
    fast path in front of an interpreter that does not exist, so a call that
    works through it never started Python."""
    base = tmp_path_factory.mktemp("archives")
    slow = build_zipapp.build(str(base / "slow.pyz"), SYSTEM_PYTHON, fast=False)
    fast_only = build_zipapp.build(str(base / "fast-only.pyz"), "/nonexistent/python3")
    return {"fast": pyz, "slow": slow, "fast_only": fast_only}


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    """A directory for PATH with recording runtimes named runc and other-rt."""
    bindir = tmp_path_factory.mktemp("bin")
    for name in ("runc", "other-rt"):
        path = bindir / name
        path.write_text(RECORDER)
        path.chmod(0o755)
    (bindir / "not-executable").write_text(RECORDER)
    return str(bindir)


def outcome(archive, args, runtimes, tmp_path, config=""):
    record = tmp_path / "record"
    if record.exists():
        record.unlink()
    env = {"PATH": runtimes + ":/usr/bin:/bin", "FAKE_RUNTIME_OUT": str(record), "OCI_INTERCEPTOR_CONFIG": config,
           "OCI_INTERCEPTOR_STATE_DIR": str(tmp_path / "state"), "LC_ALL": "C.UTF-8"}
    result = subprocess.run([archive] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path), timeout=60)
    recorded = record.read_bytes().split(b"\0")[:-1] if record.exists() else None
    return result.returncode, result.stdout, result.stderr, recorded


VECTORS = [
    ["state", "x"],
    ["--oi-readonly-networking-mounts", "--oi-env", "A=1", "--oi-env-force=B=2", "--root", "/r", "--log",
     "/l.json", "--log-format", "json", "start", "id"],
    ["--oi-runtime-path", "other-rt", "delete", "--force", "id"],
    ["--runtime-path=other-rt", "--readonly-networking-mounts", "kill", "id", "15"],
    ["--oi-hook-config-path", "/nonexistent.json", "--oi-hooks-dir=/nowhere", "exec", "id", "sh", "--oi-env", "x"],
    ["-root", "/r", "--oi-env", "A=1", "-l", "/l", "ps", "--format", "json", "id"],
    ["---root", "--oi-env", "list"],                       # --oi-env is --root's value here
    ["--oi-readonly-networking-mounts=false", "--oi-readonly-networking-mounts=TRUE", "list"],
    ["--oi-readonly-networking-mounts=maybe", "list"],
    ["--oi-env", "NOEQUALS", "state", "x"],
    ["--oi-env", "=x", "state", "x"],
    ["--oi-env"],
    ["--oi-runtime-path="],
    ["--oi-runtime-path", "missing-rt", "state", "x"],
    ["--oi-runtime-path", "not-executable", "state", "x"],
    ["--oi-runtime-path", "/nonexistent/runc", "state", "x"],
    ["--oi-write-debug-output", "state", "x"],
    ["--oi-systemd", "auto", "kill", "x"],
    ["--oi-version"], ["--oi-help"], ["--oi-bogus", "state"], ["--version"], ["--help"], [],
    ["--", "state", "x"], ["-", "x"], ["--root"], ["--root=/r", "state", "x"],
    ["create", "--bundle", "/nonexistent", "x"], ["run", "x"], ["restore", "x"],
    ["--oi-env", "A=1", "create", "x"],
    ["state", "x", "--oi-env", "A=1", "--oi-runtime-path", "other-rt", "--"],
    ["spec", "--rootless"], ["features"],
    ["caf\u00e9", "new\nline", "tab\there", "'quote\"", "$(x)", "*", "?"],
]

# Command lines that may hide a create/run/restore from a reader that does not
# know every spelling runc and crun accept (see test_runtime_argv.py): the
# shell must leave each of them to Python.
HIDDEN_EDITS = [
    ["--", "run", "--bundle", "/b", "id"], ["--root", "/r", "--", "create", "id"],
    ["--log-f", "text", "run", "id"], ["--cgroup-m", "cgroupfs", "run", "id"], ["--c", "cgroupfs", "create", "id"],
    ["--roo", "/r", "create", "id"], ["--r", "/r", "run", "id"], ["--rootl", "/r", "restore", "id"],
    ["--lo", "/l", "create", "id"], ["--log-l", "debug", "run", "id"], ["--program-name", "x", "create", "id"],
    ["--p", "x", "run", "id"], ["--pro", "x", "create", "id"], ["--HANG=0", "create", "id"], ["--H", "run", "id"],
    ["--frob", "run", "id"], ["--frob", "x", "create", "id"], ["--frob=x", "run", "id"], ["-x", "create", "id"],
    ["-V", "create", "id"], ["-?", "run", "id"], ["-vd", "run", "id"], ["---root", "/r", "create", "id"],
    ["--d", "run", "id"], ["--s", "create", "id"], ["--u", "run", "id"], ["--root", "/r", "--frob", "state", "run"],
    ["run", "-b/other", "id"], ["run", "--bund", "/other", "id"], ["run", "-db/other", "id"],
    ["run", "-b=/other", "id"], ["run", "-bundle", "/other", "id"], ["create", "--conf", "c.json", "id"],
    ["create", "-fc.json", "id"], ["restore", "id", "--bundle=/other"], ["run", "-bx", "--"],
]


@pytest.mark.parametrize("args", VECTORS + HIDDEN_EDITS, ids=lambda a: " ".join(a)[:60] or "(none)")
def test_fast_and_python_paths_agree(archives, runtimes, tmp_path, args):
    assert outcome(archives["fast"], args, runtimes, tmp_path) == outcome(archives["slow"], args, runtimes, tmp_path)


@pytest.mark.parametrize("args", HIDDEN_EDITS, ids=lambda a: " ".join(a)[:60])
def test_a_call_python_would_edit_or_refuse_never_skips_it(archives, runtimes, tmp_path, args):
    assert oi.parse_runtime_call(oi.split_command_line(args)[1]).edits_config
    code, _, err, recorded = outcome(archives["fast_only"], args, runtimes, tmp_path)
    assert code == 127 and b"/nonexistent/python3" in err and recorded is None
    code, _, err, recorded = outcome(archives["slow"], args, runtimes, tmp_path)
    assert code == 1 and recorded is None                  # no config to edit here, or refused


# The calls of Docker, Podman and containerd's CRI that edit nothing
# (as captured from those engines): they keep skipping Python.
DOCKER = ["--root", "/run/docker/runtime-runc/moby", "--log", "/t/log.json", "--log-format", "json"]
ENGINE_PASSTHROUGH = [DOCKER + tail for tail in (
    ["start", "id"], ["exec", "--process", "/tmp/p", "--detach", "--pid-file", "/t/e.pid", "id"],
    ["ps", "--format", "json", "id"], ["pause", "id"], ["resume", "id"], ["kill", "id", "15"], ["kill", "id", "9"],
    ["delete", "id"], ["delete", "--force", "id"], ["kill", "--all", "id", "9"])] + [
    ["start", "id"], ["exec", "--pid-file", "/u/e/exec_pid", "--process", "/u/e/p", "--detach", "id"],
    ["kill", "id", "15"], ["delete", "--force", "id"]]


def test_calls_that_need_no_edit_skip_python(archives, runtimes, tmp_path):
    for args in [["state", "x"], VECTORS[1], VECTORS[2], VECTORS[3], VECTORS[4], ["--version"]] + ENGINE_PASSTHROUGH:
        code, out, err, recorded = outcome(archives["fast_only"], args, runtimes, tmp_path)
        assert (code, out, err) == (7, b"runtime stdout\n", b""), (args, err)
        assert recorded == [os.fsencode(a) for a in oi.split_command_line(args)[1]]


def test_calls_that_may_edit_or_log_start_python(archives, runtimes, tmp_path):
    for args in (["create", "x"], ["--oi-write-debug-output", "state", "x"], ["--oi-systemd", "auto", "kill", "x"],
                 ["--oi-env", "NOEQUALS", "state", "x"], ["--oi-runtime-path", "missing-rt", "state", "x"]):
        code, _, err, recorded = outcome(archives["fast_only"], args, runtimes, tmp_path)
        assert code == 127 and b"/nonexistent/python3" in err and recorded is None, args


@pytest.mark.parametrize("config", ["exists", "absent", "absent-dir", "under-a-file", "symlink-loop"])
def test_config_file_presence(archives, runtimes, tmp_path, config):
    path = {"exists": tmp_path / "c.json", "absent": tmp_path / "none.json",
            "absent-dir": tmp_path / "no" / "such" / "c.json", "under-a-file": tmp_path / "file" / "c.json",
            "symlink-loop": tmp_path / "loop"}[config]
    (tmp_path / "file").write_text("")
    (tmp_path / "c.json").write_text('{"version": 1, "runtime-path": "other-rt"}')
    (tmp_path / "c.json").chmod(0o644)
    if not (tmp_path / "loop").is_symlink():
        (tmp_path / "loop").symlink_to(tmp_path / "loop")
    args = ["state", "x"]
    fast = outcome(archives["fast"], args, runtimes, tmp_path, config=str(path))
    assert fast == outcome(archives["slow"], args, runtimes, tmp_path, config=str(path))
    # A file named by OCI_INTERCEPTOR_CONFIG must exist: Python says what is wrong.
    assert outcome(archives["fast_only"], args, runtimes, tmp_path, config=str(path))[0] == 127


def test_only_the_built_in_default_config_may_be_absent(archives, runtimes, tmp_path):
    if os.path.lexists(oi.DEFAULT_CONFIG):
        pytest.skip("this host has %s" % oi.DEFAULT_CONFIG)   # tests never touch /etc
    env = {"PATH": runtimes + ":/usr/bin:/bin", "FAKE_RUNTIME_OUT": str(tmp_path / "record"),
           "OCI_INTERCEPTOR_STATE_DIR": str(tmp_path / "state")}
    for archive in ("fast_only", "slow"):
        result = subprocess.run([archives[archive], "state", "x"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, timeout=60)
        assert (result.returncode, result.stderr) == (7, b""), archive


def test_drop_in_name_always_starts_python(archives, runtimes, tmp_path):
    link = tmp_path / "oci-add-hooks"
    link.symlink_to(archives["fast_only"])
    assert outcome(str(link), ["state", "x"], runtimes, tmp_path)[0] == 127


TOKENS = st.sampled_from([
    "--oi-env", "--oi-env=A=1", "A=1", "=x", "", "--oi-env-force", "--oi-runtime-path", "--oi-runtime-path=other-rt",
    "other-rt", "missing-rt", "--runtime-path", "--readonly-networking-mounts", "--oi-readonly-networking-mounts",
    "--oi-readonly-networking-mounts=off", "--oi-hooks-dir", "--hook-config-path=/x", "--oi-write-debug-output",
    "--oi-bogus", "--root", "-root", "---log", "--log-format=json", "-l", "-r", "--debug", "--systemd-cgroup",
    "state", "start", "kill", "delete", "exec", "list", "create", "run", "-", "--", "--oi-", "-=", "--=",
    "--log-f", "--roo", "--r", "--lo", "--cgroup-m", "--HANG=0", "--p", "--frob", "-x", "-V", "--d", "-v", "-h",
    "--root=/r", "--debug=false", "-b", "-b/x", "--bund", "-db/x", "-b=/x", "-bundle", "--conf", "restore",
])
ARGV = st.lists(st.one_of(TOKENS, st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                                                  blacklist_characters="\0"), max_size=6)),
                max_size=8)


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(args=ARGV)
def test_any_argv_has_the_same_outcome_on_both_paths(archives, runtimes, tmp_path, args):
    assert outcome(archives["fast"], args, runtimes, tmp_path) == outcome(archives["slow"], args, runtimes, tmp_path)


# --- with a config file: the passthrough record ----------------------------------------------

@pytest.fixture
def named(archives, tmp_path):
    """The three archives under one program name ("oi"), so that they share
    passthrough records; a config file, and a state directory of their own."""
    links = {}
    for kind, archive in archives.items():
        directory = tmp_path / kind
        directory.mkdir()
        (directory / "oi").symlink_to(archive)
        links[kind] = str(directory / "oi")
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.json"
    config.write_text('{"version": 1, "runtime-path": "other-rt", "readonly-networking-mounts": true}')
    config.chmod(0o644)
    state = tmp_path / "state"
    return links, str(config), str(state)


def run_named(link, args, runtimes, tmp_path, config, state):
    record = tmp_path / "record"
    if record.exists():
        record.unlink()
    env = {"PATH": runtimes + ":/usr/bin:/bin", "FAKE_RUNTIME_OUT": str(record), "OCI_INTERCEPTOR_CONFIG": config,
           "OCI_INTERCEPTOR_STATE_DIR": state, "LC_ALL": "C.UTF-8"}
    result = subprocess.run([link] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=str(tmp_path), timeout=60)
    recorded = record.read_bytes().split(b"\0")[:-1] if record.exists() else None
    return result.returncode, result.stdout, result.stderr, recorded


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_a_call_through_python_lets_later_calls_skip_it_while_the_config_is_unchanged(named, runtimes, tmp_path):
    links, config, state = named
    call = ["--root", "/r", "state", "x"]
    first = run_named(links["slow"], call, runtimes, tmp_path, config, state)
    assert first[0] == 7 and first[3] == [b"--root", b"/r", b"state", b"x"]      # via other-rt
    record = os.path.join(state, "passthrough-oi")
    assert oct(os.stat(record).st_mode & 0o777) == "0o600" and oct(os.stat(state).st_mode & 0o777) == "0o700"
    # Now the shell alone runs the call, with the same outcome.
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state) == first
    assert run_named(links["fast"], call, runtimes, tmp_path, config, state) == first
    # Flags that only matter to create (the policy words of Docker's runtimeArgs) change nothing:
    # the shell serves the call too, and drops them as Python does.
    flagged = ["--oi-env=A=1", "--oi-readonly-networking-mounts", "--root", "/r", "--hook-config-path", "/h",
               "state", "x"]
    assert run_named(links["fast_only"], flagged, runtimes, tmp_path, config, state) == first
    # Calls that edit, or name a runtime by a flag, still need Python.
    for args in (["create", "x"], ["--oi-runtime-path", "runc", "state", "x"], ["--runtime-path=runc", "state", "x"],
                 ["--oi-env", "A=1", "--oi-runtime-path", "other-rt", "state", "x"]):
        assert run_named(links["fast_only"], args, runtimes, tmp_path, config, state)[0] == 127, args


def _changes(config, state):
    record = os.path.join(state, "passthrough-oi")

    def touch():
        os.utime(config)

    def rewrite_same_size():
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text.replace("other-rt", "other-rx"))

    def chmod():
        os.chmod(config, 0o664)

    def replace_by_rename():
        with open(config + ".new", "w") as f:
            f.write('{"version": 1}')
        os.chmod(config + ".new", 0o644)
        os.rename(config + ".new", config)

    def sibling_written():
        with open(os.path.join(os.path.dirname(config), "other"), "w") as f:
            f.write("x")

    def record_mode():
        os.chmod(record, 0o644)

    def state_mode():
        os.chmod(state, 0o755)

    def record_line(index, text):
        with open(record) as f:
            lines = f.read().split("\n")
        lines[index] = text
        with open(record, "w") as f:
            f.write("\n".join(lines))

    def record_version():
        record_line(0, "oci-interceptor-passthrough 0.0.1")

    def record_other_config():
        record_line(1, "/elsewhere/config.json")

    def directory_above_writable():
        # Python no longer trusts the file: it warns and runs the command line's runtime.
        os.chmod(os.path.dirname(os.path.dirname(config)), 0o777)
    return [touch, rewrite_same_size, chmod, replace_by_rename, sibling_written, record_mode, state_mode,
            record_version, record_other_config, directory_above_writable]


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
@pytest.mark.parametrize("change", range(10), ids=["touch", "rewrite-same-size", "chmod", "replace-by-rename",
                                                    "sibling-written", "record-mode", "state-dir-mode",
                                                    "record-version", "record-other-config",
                                                    "directory-above-writable"])
def test_any_change_sends_the_call_to_python_again(named, runtimes, tmp_path, change):
    links, config, state = named
    call = ["state", "x"]
    run_named(links["slow"], call, runtimes, tmp_path, config, state)
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state)[0] == 7
    time.sleep(0.01)
    _changes(config, state)[change]()
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state)[0] == 127
    # And both paths agree on what the changed configuration means.
    assert (run_named(links["fast"], call, runtimes, tmp_path, config, state)
            == run_named(links["slow"], call, runtimes, tmp_path, config, state))


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
@pytest.mark.parametrize("config_text", [
    '{"version": 1, "write-debug-output": true, "debug-output-dir": "DEBUG"}',
    '{"version": 1, "systemd": "auto"}',
    '{"version": 1, "rules": [{"when": {"commands": ["init"]}, "systemd": "always"}]}',
])
def test_no_record_when_calls_that_edit_nothing_still_need_python(named, runtimes, tmp_path, config_text):
    links, config, state = named
    with open(config, "w") as f:
        f.write(config_text.replace("DEBUG", str(tmp_path / "debug")))
    for args in (["state", "x"], ["kill", "x", "TERM"]):
        run_named(links["slow"], args, runtimes, tmp_path, config, state)
    assert not os.path.exists(os.path.join(state, "passthrough-oi"))
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state)[0] == 127


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_no_record_for_a_symlinked_config_or_with_flags(named, runtimes, tmp_path):
    links, config, state = named
    for flags in (["--oi-runtime-path", "other-rt"], ["--oi-env", "A=1", "--runtime-path=other-rt"],
                  ["--oi-write-debug-output=false"], ["--oi-systemd", "off"]):
        run_named(links["slow"], flags + ["state", "x"], runtimes, tmp_path, config, state)
        assert not os.path.exists(os.path.join(state, "passthrough-oi")), flags
    link = tmp_path / "link.json"
    link.symlink_to(config)
    run_named(links["slow"], ["state", "x"], runtimes, tmp_path, str(link), state)
    assert not os.path.exists(os.path.join(state, "passthrough-oi"))


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_no_record_through_a_symlinked_directory_or_for_a_config_too_deep(named, runtimes, tmp_path):
    """Python's trust check follows a symlink on the way to the config file,
    where the preamble's stat would not; and the preamble stats each
    directory above on every call."""
    links, config, state = named
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    shutil.copy(config, str(real / "sub" / "config.json"))
    (tmp_path / "link").symlink_to(real)
    # A directory of N components has N directories above it.
    levels = oi.PASSTHROUGH_MAX_ABOVE + 1 - (len(tmp_path.parts) - 1)
    deep = tmp_path / "/".join("d" for _ in range(levels))
    deep.mkdir(parents=True)
    shutil.copy(config, str(deep / "config.json"))
    for path in (tmp_path / "link" / "sub" / "config.json", deep / "config.json"):
        os.chmod(str(path), 0o644)
        first = run_named(links["slow"], ["state", "x"], runtimes, tmp_path, str(path), state)
        assert first[0] == 7 and not os.path.exists(os.path.join(state, "passthrough-oi")), path
        assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, str(path), state)[0] == 127
    # One level less deep (PASSTHROUGH_MAX_ABOVE above): recorded, and served by the shell.
    shallow = deep.parent / "config.json"
    shutil.copy(config, str(shallow))
    os.chmod(str(shallow), 0o644)
    run_named(links["slow"], ["state", "x"], runtimes, tmp_path, str(shallow), state)
    assert os.path.exists(os.path.join(state, "passthrough-oi"))
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, str(shallow), state)[0] == 7


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_flags_that_only_matter_to_create_leave_the_record_valid(named, runtimes, tmp_path):
    links, config, state = named
    run_named(links["slow"], ["--oi-env", "A=1", "--oi-audit-log=/a", "state", "x"], runtimes, tmp_path, config, state)
    assert os.path.exists(os.path.join(state, "passthrough-oi"))
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state)[0] == 7


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(args=ARGV)
def test_with_a_record_any_argv_has_the_same_outcome_on_both_paths(named, runtimes, tmp_path, args):
    links, config, state = named
    run_named(links["slow"], ["state", "x"], runtimes, tmp_path, config, state)       # the record
    assert os.path.exists(os.path.join(state, "passthrough-oi"))
    assert (run_named(links["fast"], args, runtimes, tmp_path, config, state)
            == run_named(links["slow"], args, runtimes, tmp_path, config, state))


# --- the record describes the file the policy was read from ----------------------------------------

def _policy_and_record(tmp_path, monkeypatch, during_read=None):
    """Load the policy of a config file in-process (during_read(when) runs
    just before and just after the file is read) and let
    remember_passthrough record it; return (policy, the record or None)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.json"
    config.write_text('{"version": 1, "runtime-path": "runtime-a"}')
    config.chmod(0o644)
    state = tmp_path / "state"
    monkeypatch.setenv("OCI_INTERCEPTOR_CONFIG", str(config))
    monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
    real_read = oi.read_config

    def read_config(path, follow_symlinks=False):
        if path == str(config) and during_read:
            during_read("before", config)
        result = real_read(path, follow_symlinks)
        if path == str(config) and during_read:
            during_read("after", config)
        return result
    monkeypatch.setattr(oi, "read_config", read_config)
    opts, runtime_args = oi.split_command_line(["state", "x"])
    policy = oi.load_policy(opts, "oi", complete=False)
    monkeypatch.setattr(oi, "read_config", real_read)
    oi.remember_passthrough("oi", opts, oi.parse_runtime_call(runtime_args), policy)
    record = state / "passthrough-oi"
    return policy, (record.read_text().split("\n") if record.exists() else None)


def _signature(path):
    return oi._stat_signature(os.lstat(str(path)))


def _replace(config, text, mtime=None):
    new = config.parent / "config.json.new"
    new.write_text(text)
    new.chmod(0o644)
    if mtime is not None:
        os.utime(str(new), (mtime, mtime))
    os.rename(str(new), str(config))


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_the_record_carries_the_stat_of_the_descriptor_read_and_of_the_directory_before(tmp_path, monkeypatch):
    policy, record = _policy_and_record(tmp_path, monkeypatch)
    config = tmp_path / "etc" / "config.json"
    assert policy.runtime_path == "runtime-a"
    assert record[1:5] == [str(config), _signature(config), _signature(config.parent), "runtime-a"]
    above = []
    directory = str(config.parent)
    while directory != "/":
        directory = os.path.dirname(directory)
        info = os.lstat(directory)
        above.append(" %d:%d:%o" % (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)))
    assert record[5] == "".join(above) and record[6:] == [""]
    assert oi._stat_signature(policy.config_stat) == _signature(config)


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
@pytest.mark.parametrize("when", ["before", "after"])
def test_no_record_when_the_file_is_renamed_over_while_it_is_read(tmp_path, monkeypatch, when):
    # The decision of one file must never be recorded with another's identity.
    def swap(moment, config):
        if moment == when:
            _replace(config, '{"version": 1, "runtime-path": "runtime-b"}')
    policy, record = _policy_and_record(tmp_path, monkeypatch, swap)
    assert policy.runtime_path == ("runtime-b" if when == "before" else "runtime-a")
    assert record is None


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_no_record_when_the_file_changes_in_place_after_it_was_read(tmp_path, monkeypatch):
    # The same inode and size, the directory untouched: only the file's
    # times tell; the record would pair them with the old contents.
    def rewrite(moment, config):
        if moment == "after":
            with open(str(config), "r+") as f:
                f.write('{"version": 1, "runtime-path": "runtime-b"}')
            os.utime(str(config), (1000000000, 1000000000))
    policy, record = _policy_and_record(tmp_path, monkeypatch, rewrite)
    assert policy.runtime_path == "runtime-a" and record is None


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_no_record_when_the_directory_changed_while_the_file_was_read(tmp_path, monkeypatch):
    def sibling(moment, config):
        if moment == "before":
            (config.parent / "other").write_text("x")
    policy, record = _policy_and_record(tmp_path, monkeypatch, sibling)
    assert policy.runtime_path == "runtime-a" and record is None
