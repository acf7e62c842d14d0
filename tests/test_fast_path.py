"""The .pyz's shell fast path against the Python path: every call, run
through an archive with the fast path and one without, must have the same
outcome (exit status, stdout, stderr, the runtime's arguments), and the
calls that need no edit must really skip Python."""

import os
import pathlib
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
    age(config)
    state = tmp_path / "state"
    return links, str(config), str(state)


def age(path, seconds=60):
    """Date a file back: no record is made from a file modified in the
    current second (a shell comparing whole seconds would miss an edit in
    it)."""
    then = time.time() - seconds
    os.utime(str(path), (then, then))


def uptime():
    with open("/proc/uptime") as f:
        return int(f.read().split(".")[0])


def window_end(state):
    """The second of /proc/uptime at which the record's trust window ends."""
    with open(os.path.join(state, "expires-oi")) as f:
        return int(f.read())


def end_window(state):
    """As if PASSTHROUGH_WINDOW seconds had gone by since Python's last check."""
    with open(os.path.join(state, "expires-oi"), "w") as f:
        f.write("%d\n" % uptime())


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


def _edit(path, index, text):
    with open(path) as f:
        lines = f.read().split("\n")
    lines[index] = text
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _rewrite(config, old, new):
    with open(config) as f:
        text = f.read()
    with open(config, "w") as f:
        f.write(text.replace(old, new))


# Seen by the shell at once: whatever changes the file's modification time
# (an edit, a rename over it) or the record's, or a new owner.
SEEN_AT_ONCE = {
    "touch": lambda config, state: os.utime(config),
    "rewrite-same-size": lambda config, state: _rewrite(config, "other-rt", "other-rx"),
    "replace-by-rename": lambda config, state: _replace(pathlib.Path(config), '{"version": 1}'),
    "chown": lambda config, state: os.chown(config, 1, -1),
    "directory-chown": lambda config, state: os.chown(os.path.dirname(config), 1, -1),
    "record-version": lambda config, state: _edit(os.path.join(state, "passthrough-oi"), 0,
                                                  "oci-interceptor-passthrough 0.0.1"),
    "record-other-config": lambda config, state: _edit(os.path.join(state, "passthrough-oi"), 1,
                                                       "/elsewhere/config.json"),
    "record-gone": lambda config, state: os.unlink(os.path.join(state, "passthrough-oi")),
    "expires-gone": lambda config, state: os.unlink(os.path.join(state, "expires-oi")),
    "expires-too-far-ahead": lambda config, state: _write(os.path.join(state, "expires-oi"),
                                                          "%d\n" % (uptime() + oi.PASSTHROUGH_WINDOW + 2)),
    "expires-symlink": lambda config, state: _symlink_to_copy(os.path.join(state, "expires-oi"), "99999999999\n"),
    "record-symlink": lambda config, state: _symlink_to_copy(os.path.join(state, "passthrough-oi")),
}


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def _symlink_to_copy(path, text=None):
    """Put in path's place a symlink to a root-owned copy (or file of text)."""
    info = os.stat(path)
    copy = path + ".copy"
    shutil.copy2(path, copy)
    if text is not None:
        with open(copy, "w") as f:
            f.write(text)
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns))
    os.unlink(path)
    os.symlink(copy, path)


def _rewrite_keeping_the_time(config, state, old="other-rt", new="runc"):
    info = os.stat(config)
    _rewrite(config, old, new)
    os.utime(config, ns=(info.st_atime_ns, info.st_mtime_ns))


# Seen when the trust window ends, by Python: what the shell could only see
# by running a process (modes, the directories above, an edit that kept
# the file's time). Until then it serves what the file said while trusted.
SEEN_AFTER_THE_WINDOW = {
    "chmod": lambda config, state: os.chmod(config, 0o664),
    "directory-above-writable": lambda config, state: os.chmod(os.path.dirname(os.path.dirname(config)), 0o777),
    "rewrite-keeping-the-time": _rewrite_keeping_the_time,
    "state-dir-mode": lambda config, state: os.chmod(state, 0o755),
}


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
@pytest.mark.parametrize("change", sorted(SEEN_AT_ONCE))
def test_any_change_the_shell_can_see_sends_the_call_to_python_at_once(named, runtimes, tmp_path, change):
    links, config, state = named
    call = ["state", "x"]
    run_named(links["slow"], call, runtimes, tmp_path, config, state)
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state)[0] == 7
    time.sleep(0.01)
    SEEN_AT_ONCE[change](config, state)
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state)[0] == 127
    # And both paths agree on what the changed configuration means.
    assert (run_named(links["fast"], call, runtimes, tmp_path, config, state)
            == run_named(links["slow"], call, runtimes, tmp_path, config, state))


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
@pytest.mark.parametrize("change", sorted(SEEN_AFTER_THE_WINDOW))
def test_other_changes_send_the_call_to_python_when_the_window_ends(named, runtimes, tmp_path, change):
    links, config, state = named
    call = ["state", "x"]
    first = run_named(links["slow"], call, runtimes, tmp_path, config, state)
    time.sleep(0.01)
    SEEN_AFTER_THE_WINDOW[change](config, state)
    # Until then, the shell serves what the file said when Python last trusted it.
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state) == first
    end_window(state)
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state)[0] == 127
    assert (run_named(links["fast"], call, runtimes, tmp_path, config, state)
            == run_named(links["slow"], call, runtimes, tmp_path, config, state))
    # Python opened no new window on a file, or a state directory, it does not trust.
    assert run_named(links["fast_only"], call, runtimes, tmp_path, config, state)[0] == (
        7 if change == "rewrite-keeping-the-time" else 127)


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_the_window_is_written_only_in_a_root_0700_state_directory_and_never_through_a_symlink(tmp_path, monkeypatch):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("OCI_INTERCEPTOR_STATE_DIR", str(state))
    victim = tmp_path / "victim"
    victim.write_text("1\n")
    (state / "expires-oi").symlink_to(victim)
    with pytest.raises(OSError):
        oi.open_passthrough_window(str(state / "expires-oi"), uptime())
    assert victim.read_text() == "1\n"
    (state / "expires-oi").unlink()
    state.chmod(0o755)
    oi.open_passthrough_window(str(state / "expires-oi"), uptime())
    assert not (state / "expires-oi").exists()
    state.chmod(0o700)
    oi.open_passthrough_window(str(state / "expires-oi"), 1234)
    assert window_end(str(state)) == 1234 + oi.PASSTHROUGH_WINDOW


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_a_write_beside_the_file_changes_nothing(named, runtimes, tmp_path):
    links, config, state = named
    first = run_named(links["slow"], ["state", "x"], runtimes, tmp_path, config, state)
    with open(os.path.join(os.path.dirname(config), "other"), "w") as f:
        f.write("x")
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state) == first


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_the_window_opens_again_at_each_check(named, runtimes, tmp_path):
    """Python opens the window PASSTHROUGH_WINDOW seconds long at each call
    it checks the file for, and so does a create made with that very file
    (it refuses a file it does not trust); a create with another file does
    not."""
    links, config, state = named
    before = uptime()
    first = run_named(links["slow"], ["state", "x"], runtimes, tmp_path, config, state)
    assert before + oi.PASSTHROUGH_WINDOW <= window_end(state) <= uptime() + oi.PASSTHROUGH_WINDOW
    end_window(state)
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state)[0] == 127
    assert run_named(links["slow"], ["state", "x"], runtimes, tmp_path, config, state) == first
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state) == first
    # A create with this file opens it too.
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"process": {"env": []}, "mounts": []}')
    end_window(state)
    create = ["create", "--bundle", str(bundle), "c"]
    assert run_named(links["slow"], create, runtimes, tmp_path, config, state)[0] == 7
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state) == first
    # A create with another file does not, nor one with this file changed in
    # a way the shell does not see: the same modification time, other contents.
    other = tmp_path / "etc" / "other.json"
    other.write_text(pathlib.Path(config).read_text())
    other.chmod(0o644)
    end_window(state)
    assert run_named(links["slow"], create, runtimes, tmp_path, str(other), state)[0] == 7
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state)[0] == 127
    _rewrite_keeping_the_time(config, state)
    assert run_named(links["slow"], create, runtimes, tmp_path, config, state)[0] == 7
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state)[0] == 127
    # Nor one with a symlink put in its place, to a file of the same time and contents.
    _rewrite_keeping_the_time(config, state, "runc", "other-rt")
    assert run_named(links["slow"], ["state", "x"], runtimes, tmp_path, config, state) == first
    shutil.copy2(config, str(tmp_path / "etc" / "copy.json"))
    (tmp_path / "etc" / "link.json").symlink_to("copy.json")
    os.rename(str(tmp_path / "etc" / "link.json"), config)
    end_window(state)
    assert run_named(links["slow"], create, runtimes, tmp_path, config, state)[0] == 7
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, config, state)[0] == 127


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
def test_a_config_through_a_symlinked_directory_is_followed_by_both(named, runtimes, tmp_path):
    """The shell's tests follow a symlinked directory as Python's trust
    check does: repointing it to another copy of the file sends the call to
    Python."""
    links, config, state = named
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        shutil.copy(config, str(tmp_path / name / "config.json"))
        os.chmod(str(tmp_path / name / "config.json"), 0o644)
        age(tmp_path / name / "config.json", 60 if name == "a" else 30)
    (tmp_path / "link").symlink_to("a")
    path = str(tmp_path / "link" / "config.json")
    first = run_named(links["slow"], ["state", "x"], runtimes, tmp_path, path, state)
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, path, state) == first
    (tmp_path / "link").unlink()
    (tmp_path / "link").symlink_to("b")
    assert run_named(links["fast_only"], ["state", "x"], runtimes, tmp_path, path, state)[0] == 127


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
    age(config)
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
    clocks = time.time(), oi._uptime()          # as lifecycle_call takes them, before the file is opened
    policy = oi.load_policy(opts, "oi", complete=False)
    monkeypatch.setattr(oi, "read_config", real_read)
    oi.remember_passthrough("oi", opts, oi.parse_runtime_call(runtime_args), policy, clocks)
    record = state / "passthrough-oi"
    return policy, (record.read_text().split("\n") if record.exists() else None)


def _replace(config, text, mtime=None):
    new = config.parent / "config.json.new"
    new.write_text(text)
    new.chmod(0o644)
    if mtime is not None:
        os.utime(str(new), (mtime, mtime))
    os.rename(str(new), str(config))


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_the_record_carries_the_time_of_the_file_read_and_opens_a_window(tmp_path, monkeypatch):
    before = uptime()
    policy, record = _policy_and_record(tmp_path, monkeypatch)
    config = tmp_path / "etc" / "config.json"
    state = tmp_path / "state"
    assert policy.runtime_path == "runtime-a"
    info = os.lstat(str(config))
    assert record == ["oci-interceptor-passthrough " + oi.__version__, str(config), "runtime-a", "%d:%d:%d:%d:%d:0:0:100644" % (
        info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns), ""]
    record_info = os.stat(str(state / "passthrough-oi"))
    assert record_info.st_mtime_ns == policy.config_stat.st_mtime_ns == info.st_mtime_ns
    assert (stat.S_IMODE(record_info.st_mode), record_info.st_uid) == (0o600, 0)
    expires = os.stat(str(state / "expires-oi"))
    assert before + oi.PASSTHROUGH_WINDOW <= window_end(str(state)) <= uptime() + oi.PASSTHROUGH_WINDOW
    assert (stat.S_IMODE(expires.st_mode), expires.st_uid) == (0o600, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_no_record_of_a_file_modified_in_the_current_second(tmp_path, monkeypatch):
    # A shell that compares whole seconds (bash before 5) would not see an
    # edit later in that second.
    def fresh(moment, config):
        if moment == "before":
            os.utime(str(config))
    policy, record = _policy_and_record(tmp_path, monkeypatch, fresh)
    assert policy.runtime_path == "runtime-a" and record is None


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_a_record_that_is_not_as_written_is_written_again(tmp_path, monkeypatch):
    """Python checks the record too: a record whose mode was changed, or
    that holds other lines, is replaced."""
    policy, lines = _policy_and_record(tmp_path, monkeypatch)
    record = tmp_path / "state" / "passthrough-oi"
    opts, runtime_args = oi.split_command_line(["state", "x"])
    for spoil in (lambda: record.chmod(0o644), lambda: record.write_text("\n".join(lines[:2] + ["runtime-b"] + lines[3:]))):
        spoil()
        os.utime(str(record), ns=(policy.config_stat.st_mtime_ns, policy.config_stat.st_mtime_ns))
        oi.remember_passthrough("oi", opts, oi.parse_runtime_call(runtime_args), policy, (time.time() - 5, uptime()))
        assert stat.S_IMODE(os.stat(str(record)).st_mode) == 0o600 and record.read_text().split("\n") == lines


@pytest.mark.skipif(os.geteuid() != 0, reason="passthrough records are kept for root only")
def test_a_create_renews_the_window_only_for_the_record_its_policy_would_write(tmp_path, monkeypatch):
    """The same file, by its identity, and the same record: a record that
    says something else of it (made, on a file system of whole-second
    times, from contents rewritten in the second it was read) is not
    renewed."""
    policy, lines = _policy_and_record(tmp_path, monkeypatch)
    record, expires = tmp_path / "state" / "passthrough-oi", tmp_path / "state" / "expires-oi"
    mtime = policy.config_stat.st_mtime_ns
    for runtime, renewed in (("runtime-b", False), ("runtime-a", True)):
        record.write_text("\n".join(lines[:2] + [runtime] + lines[3:]))
        os.utime(str(record), ns=(mtime, mtime))
        expires.write_text("0\n")
        oi.refresh_passthrough_window("oi", policy)
        assert (int(expires.read_text()) > uptime()) == renewed, runtime


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
