"""The program as a process: the .pyz and `python3 oci_interceptor.py`, with a
recording fake runtime. Exec, argument forwarding, errors, debug output."""

import json
import os
import stat
import subprocess

import pytest

import oci_interceptor as oi
from conftest import run, run_at_once


def write_config(directory, spec):
    path = os.path.join(str(directory), "config.json")
    with open(path, "w") as f:
        json.dump(spec, f, indent="\t")
    return path


def test_execs_the_runtime_in_its_own_process(entry, fake):
    proc = subprocess.Popen(entry + ["--oi-runtime-path", fake.runtime, "state", "x"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, FAKE_RUNTIME_OUT=fake.out))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert fake.pid() == proc.pid            # execv: the runtime has the wrapper's PID
    assert out == b"fake runtime stdout\n"   # stdout is the runtime's alone
    assert err == b""


def test_arguments_are_forwarded_byte_for_byte(entry, fake):
    odd = [b"--root", b"/run/x y", b"--log-format=json", b"exec", b"id", b"prog",
           b"--oi-env", b"A=1", b"caf\xc3\xa9", b"\xff\xfe not utf-8", b"", b"new\nline", b"'\"$(x)"]
    args = [os.fsdecode(a) for a in odd]
    result = run(entry, ["--oi-runtime-path=" + fake.runtime, "--oi-env", "B=2"] + args, fake)
    assert result.returncode == 0, result.stderr
    assert fake.args() == odd


def test_exit_status_is_the_runtimes(entry, fake):
    result = run(entry, ["--oi-runtime-path", fake.runtime, "kill", "x", "9"], fake,
                 env={"FAKE_RUNTIME_EXIT": "42"})
    assert result.returncode == 42


def test_runtime_starts_with_default_signal_dispositions(entry, fake):
    # Python ignores SIGPIPE and SIGXFSZ; the runtime must not inherit that.
    run(entry, ["--oi-runtime-path", fake.runtime, "list"], fake)
    with open(fake.out + ".sigign") as f:
        mask = int(f.read().split()[1], 16)
    direct = subprocess.run(["/bin/sh", "-c", "grep ^SigIgn: /proc/$$/status"],
                            stdout=subprocess.PIPE, universal_newlines=True).stdout
    assert mask == int(direct.split()[1], 16)
    assert not mask & (1 << (13 - 1))   # SIGPIPE
    assert not mask & (1 << (25 - 1))   # SIGXFSZ


def test_create_edits_then_execs(entry, fake, tmp_path):
    path = write_config(tmp_path, {"process": {"env": ["A=own"]}, "mounts": [
        {"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind", "rw"]}]})
    args = ["--oi-runtime-path", fake.runtime, "--oi-readonly-networking-mounts", "--oi-env", "A=default",
            "--oi-env-force", "B=forced", "create", "--bundle", str(tmp_path), "cid"]
    result = run(entry, args, fake)
    assert result.returncode == 0, result.stderr
    with open(path) as f:
        spec = json.load(f)
    assert spec["process"]["env"] == ["A=own", "B=forced"]
    assert spec["mounts"][0]["options"] == ["rbind", "ro"]
    assert fake.args() == [b"create", b"--bundle", os.fsencode(str(tmp_path)), b"cid"]


def test_other_subcommands_never_touch_the_bundle(entry, fake, tmp_path, monkeypatch):
    write_config(tmp_path, "not even an object")
    monkeypatch.chdir(str(tmp_path))
    for command in (["start", "cid"], ["delete", "--force", "cid"], ["state", "cid"], ["exec", "cid", "sh"]):
        result = run(entry, ["--oi-runtime-path", fake.runtime, "--oi-env-force", "A=1"] + command, fake)
        assert result.returncode == 0, result.stderr


def test_bad_config_is_one_line_on_stderr_and_in_the_json_log(entry, fake, tmp_path):
    raw = b'{\n  "process": {}\n  "mounts": []\n}\n'
    (tmp_path / "config.json").write_bytes(raw)
    log = tmp_path / "log.json"
    log.write_text('{"level":"info","msg":"earlier","time":"2026-01-01T00:00:00Z"}\n')
    args = ["--oi-runtime-path", fake.runtime, "--oi-env", "A=1", "--log", str(log),
            "--log-format", "json", "create", "--bundle", str(tmp_path), "cid"]
    result = run(entry, args, fake)
    assert result.returncode == 1
    expected = ("oci-interceptor: cannot parse %s/config.json: Expecting ',' delimiter: line 3 column 3"
                % tmp_path)
    assert result.stderr.decode() == expected + "\n"
    assert result.stdout == b""
    lines = log.read_text().splitlines()
    assert len(lines) == 2
    last = json.loads(lines[-1])
    assert sorted(last) == ["level", "msg", "time"]
    assert last["level"] == "error" and last["msg"] == expected
    assert (tmp_path / "config.json").read_bytes() == raw
    assert not fake.called()


def test_text_log_format(entry, fake, tmp_path):
    log = tmp_path / "log.txt"
    result = run(entry, ["--oi-runtime-path", "/nonexistent/runc", "--log", str(log), "create", "x"], fake)
    assert result.returncode == 1
    line = log.read_text()
    assert line.startswith('time="') and line.endswith(
        ' level=error msg="oci-interceptor: runtime /nonexistent/runc does not exist"\n')


def test_usage_error_is_reported_to_the_log_and_runs_nothing(entry, fake, tmp_path):
    log = tmp_path / "log.json"
    result = run(entry, ["--oi-runtime-path", fake.runtime, "--log", str(log), "--log-format", "json",
                         "--oi-env", "NOVALUE", "create", "x"], fake)
    assert result.returncode == 2
    assert result.stderr.decode() == "oci-interceptor: --oi-env NOVALUE: expected NAME=VALUE\n"
    assert json.loads(log.read_text())["msg"] == "oci-interceptor: --oi-env NOVALUE: expected NAME=VALUE"
    assert not fake.called()


def test_missing_bundle_is_an_error_not_a_traceback(entry, fake, tmp_path):
    result = run(entry, ["--oi-runtime-path", fake.runtime, "create", "-b", str(tmp_path / "none"), "x"], fake)
    assert result.returncode == 1
    assert result.stderr.decode() == "oci-interceptor: cannot read %s/none/config.json: No such file or directory\n" % tmp_path
    assert not fake.called()


def test_version_and_help(entry):
    result = run(entry, ["--oi-version"])
    assert result.stdout.decode() == "oci-interceptor %s\n" % oi.__version__
    result = run(entry, ["--oi-help"])
    assert result.returncode == 0
    for flag in oi.FLAGS:
        assert flag.name in result.stdout.decode()


def test_runtime_found_through_the_fallback_directories(entry, tmp_path):
    # A daemon's thin PATH: runc is still found in the sbin directories.
    result = run(entry, ["--version"], env={"PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert b"runc version" in result.stdout


def test_pyz_ignores_the_callers_python_environment(pyz, fake, tmp_path):
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "oci_interceptor.py").write_text("import sys; sys.stdout.write('hijacked'); sys.exit(9)\n")
    (evil / "startup.py").write_text("import sys; sys.stdout.write('startup ran')\n")
    env = {"PYTHONPATH": str(evil), "PYTHONSTARTUP": str(evil / "startup.py"), "PYTHONINSPECT": "1",
           "PYTHONHOME": str(evil)}
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "list"], fake, env=env, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"fake runtime stdout\n"


# --- debug output ----------------------------------------------------------------------

def test_debug_output_files(entry, fake, tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_config(bundle, {"hostname": "web-1", "process": {"env": []}})
    original = (bundle / "config.json").read_bytes()
    debug = tmp_path / "debug"
    args = ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir", str(debug),
            "--oi-env", "A=1", "create", "--bundle", str(bundle), "cid"]
    assert run(entry, args, fake).returncode == 0
    names = sorted(os.listdir(str(debug)))
    assert names == ["runtime_calls.log", "web-1_cid_modified.json", "web-1_cid_original.json",
                     "web-1_cid_parsed.json"]
    for name in names:
        assert stat.S_IMODE(os.stat(str(debug / name)).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(str(debug)).st_mode) == 0o700
    assert json.loads((debug / "web-1_cid_parsed.json").read_text())["process"]["env"] == []
    assert json.loads((debug / "web-1_cid_modified.json").read_text())["process"]["env"] == ["A=1"]
    assert (debug / "web-1_cid_original.json").read_bytes() == original
    log = (debug / "runtime_calls.log").read_text().splitlines()
    assert len(log) == 1
    assert log[0].endswith(" %s create --bundle %s cid" % (fake.runtime, bundle))

    # Unchanged config: no _modified file; every forwarded call is logged.
    os.unlink(str(debug / "web-1_cid_modified.json"))
    assert run(entry, args, fake).returncode == 0
    assert run(entry, args[:5] + ["state", "it's"], fake).returncode == 0
    assert "web-1_cid_modified.json" not in os.listdir(str(debug))
    log = (debug / "runtime_calls.log").read_text().splitlines()
    assert len(log) == 3 and log[2].endswith(" state 'it'\"'\"'s'")


def test_original_debug_file_is_the_raw_input(fake, tmp_path, pyz):
    raw = b'{"hostname":"h","process":{"env":["A=1"]}}'
    (tmp_path / "config.json").write_bytes(raw)
    debug = tmp_path / "debug"
    run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir",
                str(debug), "--oi-env-force", "A=2", "create", "-b", str(tmp_path), "c"], fake)
    assert (debug / "h_c_original.json").read_bytes() == raw
    assert (tmp_path / "config.json").read_bytes() == raw.replace(b"A=1", b"A=2")


@pytest.mark.parametrize("hostname, stem", [
    ("../../etc/x", "_._.._etc_x_cid"), ("a/b", "a_b_cid"), ("nul\0byte", "nul_byte_cid"),
    ("new\nline", "new_line_cid"), ("..", "_._cid"), (".hidden", "_hidden_cid"), ("", "cid"), (None, "cid"),
    ("x" * 300, "x" * 128 + "_cid"), ("caf\u00e9", "caf__cid"),
])
def test_debug_file_names_never_leave_the_directory(hostname, stem):
    assert oi.debug_file_stem(hostname, "cid") == stem


def test_two_containers_of_one_hostname_keep_their_own_debug_files(fake, tmp_path, pyz):
    debug = tmp_path / "debug"
    for cid, value in (("one", "1"), ("two", "2")):
        bundle = tmp_path / cid
        bundle.mkdir()
        write_config(bundle, {"hostname": "same", "process": {"env": ["N=" + value]}})
        args = ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir", str(debug),
                "--oi-env", "A=1", "create", "--bundle", str(bundle), cid]
        assert run([pyz], args, fake).returncode == 0
    for cid, value in (("one", "1"), ("two", "2")):
        assert json.loads((debug / ("same_%s_original.json" % cid)).read_text())["process"]["env"] == ["N=" + value]


def test_debug_files_are_never_written_through_symlinks(fake, tmp_path, pyz):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_config(bundle, {"hostname": "h", "process": {"env": []}})
    debug = tmp_path / "debug"
    debug.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (debug / "h_cid_original.json").symlink_to(victim)
    args = ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir", str(debug),
            "create", "--bundle", str(bundle), "cid"]
    assert run([pyz], args, fake).returncode == 0
    assert victim.read_text() == "precious"
    assert not (debug / "h_cid_original.json").is_symlink()
    # A debug directory that is a symlink is not used at all.
    linked = tmp_path / "linked"
    linked.symlink_to(debug)
    result = run([pyz], args[:3] + ["--oi-debug-output-dir", str(linked)] + args[5:], fake)
    assert result.returncode == 0
    assert b"warning: no debug output" in result.stderr


def test_runtime_calls_log_lines_never_interleave(fake, tmp_path, pyz):
    debug = tmp_path / "debug"
    long_arg = "x" * 5000
    def call(i):
        run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir",
                    str(debug), "state", "c%d" % i, long_arg], fake)
    run_at_once(24, call)
    lines = (debug / "runtime_calls.log").read_text().splitlines()
    assert len(lines) == 24
    assert sorted(line.split()[-2] for line in lines) == sorted("c%d" % i for i in range(24))
    assert all(line.endswith(long_arg) for line in lines)


def test_unwritable_debug_dir_warns_and_still_runs(fake, tmp_path, pyz):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output",
                         "--oi-debug-output-dir", str(blocker / "sub"), "state", "x"], fake)
    assert result.returncode == 0
    assert result.stderr.decode().startswith("oci-interceptor: warning: no debug output: ")
    assert result.stdout == b"fake runtime stdout\n"


@pytest.mark.parametrize("arg, quoted", [
    ("plain-arg/1.2", "plain-arg/1.2"), ("", "''"), ("a b", "'a b'"), ("it's", "'it'\"'\"'s'"),
    ("new\nline", "$'new\\x0aline'"), (os.fsdecode(b"\xff"), "$'\\xff'"), ("caf\u00e9", "'caf\u00e9'"),
])
def test_shell_quote(arg, quoted):
    assert oi.shell_quote(arg) == quoted
