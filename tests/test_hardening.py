"""Nothing lost, nobody in: faults, load and hostile input.

The interceptor runs as root in the path of every container, fed by people
who control images, env vars, hostnames and annotations. These tests hold it
to its promises: it fails closed (one clear line, the runtime not run),
writes atomically (the complete old or the complete new config, never a
mix), and never writes through a symlink."""

import json
import os
import random
import signal
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oci_interceptor as oi
from conftest import need, new_id, run, run_at_once

# --- faults: SIGKILL mid-write, full and read-only filesystems ---------------------------------


def big_config(env_count=40000):
    return {"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": ["VAR_%d=%s" % (i, "v" * 20)
                                                                       for i in range(env_count)]},
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/h", "options": ["rbind", "rw"]}]}


def test_sigkill_at_any_moment_leaves_the_old_or_the_new_config(pyz, tmp_path):
    old = json.dumps(big_config()).encode()
    path = tmp_path / "config.json"
    args = [pyz, "--oi-runtime-path", "/bin/true", "--oi-readonly-networking-mounts", "--oi-env-force",
            "FORCED=yes", "create", "--bundle", str(tmp_path), "c"]
    env = dict(os.environ, OCI_INTERCEPTOR_CONFIG="")
    # How long one edit takes here, to spread the kills over all of it.
    path.write_bytes(old)
    began = time.time()
    subprocess.run(args, env=env, check=True)
    duration = time.time() - began
    new = path.read_bytes()
    assert new != old and json.loads(new.decode())["process"]["env"][-1] == "FORCED=yes"
    rng = random.Random(1234)
    outcomes = {"old": 0, "new": 0}
    for attempt in range(60):
        path.write_bytes(old)
        proc = subprocess.Popen(args, env=env)
        time.sleep(rng.uniform(0, duration * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = path.read_bytes()
        assert data in (old, new), "a partial config.json after a kill (attempt %d)" % attempt
        outcomes["old" if data == old else "new"] += 1
    assert outcomes["old"] and outcomes["new"], outcomes        # kills landed before and after the rename
    # Temp files of killed writers do not pile up: the next edit removes them.
    path.write_bytes(old)
    subprocess.run(args, env=env, check=True)
    assert sorted(os.listdir(str(tmp_path))) == ["config.json"]


@pytest.fixture
def small_tmpfs(tmp_path):
    """A tiny tmpfs of its own, unmounted after the test whatever happens."""
    need(os.geteuid() == 0, "mounting a tmpfs needs root")
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)])


def test_full_filesystem_refuses_the_container_and_keeps_the_config(pyz, fake, small_tmpfs, tmp_path):
    config = small_tmpfs / "config.json"
    raw = json.dumps({"process": {"args": ["sh"], "env": ["PAD=" + "x" * 20000]}}).encode()
    config.write_bytes(raw)
    filler = small_tmpfs / "filler"
    fd = os.open(str(filler), os.O_WRONLY | os.O_CREAT)   # fill the rest: no room for a second copy
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    log = tmp_path / "log.json"
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env-force", "NEW=1", "--log", str(log),
                         "--log-format", "json", "create", "--bundle", str(small_tmpfs), "c"], fake)
    assert result.returncode == 1
    assert result.stderr.decode() == "oci-interceptor: cannot write %s: No space left on device\n" % config
    assert json.loads(log.read_text())["msg"] == result.stderr.decode().strip()
    assert config.read_bytes() == raw
    assert sorted(os.listdir(str(small_tmpfs))) == ["config.json", "filler"]
    assert not fake.called()


def test_read_only_bundle_refuses_the_container_and_keeps_the_config(pyz, fake, small_tmpfs):
    config = small_tmpfs / "config.json"
    raw = b'{"process": {"args": ["sh"], "env": []}}'
    config.write_bytes(raw)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env-force", "NEW=1", "create", "--bundle",
                         str(small_tmpfs), "c"], fake)
    assert result.returncode == 1
    assert result.stderr.decode() == "oci-interceptor: cannot write %s: Read-only file system\n" % config
    assert config.read_bytes() == raw
    assert not fake.called()
    # Nothing to change: a read-only bundle is fine.
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "create", "--bundle", str(small_tmpfs), "c"], fake)
    assert result.returncode == 0


# --- load -------------------------------------------------------------------------------------


def test_200_concurrent_creates_with_debug_output(pyz, tmp_path):
    debug = tmp_path / "debug"
    bundles = []
    for i in range(200):
        bundle = tmp_path / ("b%03d" % i)
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(
            {"hostname": "host-%03d" % i, "process": {"args": ["sh"], "env": ["ID=%d" % i]},
             "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rw"]}]}))
        bundles.append(bundle)
    env = dict(os.environ, OCI_INTERCEPTOR_CONFIG="")

    def create(i):
        subprocess.run([pyz, "--oi-runtime-path", "/bin/true", "--oi-write-debug-output", "--oi-debug-output-dir",
                        str(debug), "--oi-readonly-networking-mounts", "--oi-env-force", "BUNDLE=b%03d" % i,
                        "create", "--bundle", str(bundles[i]), "c%03d" % i], env=env, check=True, timeout=300)
    run_at_once(200, create)
    lines = (debug / "runtime_calls.log").read_text().splitlines()
    assert len(lines) == 200
    assert sorted(line.rsplit(" ", 1)[1] for line in lines) == ["c%03d" % i for i in range(200)]
    for line in lines:
        assert line.split(" ", 1)[1].startswith("/bin/true create --bundle ")
    for i, bundle in enumerate(bundles):
        spec = json.loads((bundle / "config.json").read_text())
        assert spec["process"]["env"] == ["ID=%d" % i, "BUNDLE=b%03d" % i]
        assert spec["mounts"][0]["options"] == ["ro"]
        assert sorted(os.listdir(str(bundle))) == ["config.json"]
        assert (debug / ("host-%03d_c%03d_modified.json" % (i, i))).exists()


@pytest.mark.parametrize("runtime", ["runc"], indirect=True)
def test_50_real_containers_concurrently(pyz, runtime, bundle_factory):
    bundles = [bundle_factory(["sh", "-c", "echo $WHO; echo x >> /etc/hosts; true"]) for _ in range(50)]
    ids = [new_id("oi-load") for _ in bundles]
    results = [None] * 50

    def start(i):
        results[i] = subprocess.run(
            [pyz, "--oi-runtime-path", runtime.path, "--oi-readonly-networking-mounts", "--oi-env-force",
             "WHO=container-%d" % i, "--root", runtime.root, "run", "--bundle", bundles[i].path, ids[i]],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    try:
        run_at_once(50, start)
    finally:
        for cid in ids:
            runtime("delete", "--force", cid)
    for i, result in enumerate(results):
        assert result.returncode == 0, result.stderr
        assert result.stdout.decode() == "container-%d\n" % i
        assert result.stderr.decode() == "sh: can't create /etc/hosts: Read-only file system\n"


# --- hostile input ------------------------------------------------------------------------------

HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
words = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
argv_items = st.one_of(
    words, st.sampled_from(["--oi-env", "--oi-env=A=1", "--oi-env-force", "--oi-runtime-path", "--oi-bogus",
                            "--oi-readonly-networking-mounts", "--oi-readonly-networking-mounts=maybe", "--root",
                            "--log", "--log-format", "create", "run", "restore", "state", "-b", "--bundle", "--",
                            "-", "--runtime-path", "--oi-systemd", "--oi-dry-run", "=", "--oi-help",
                            # spellings only some runtime accepts, or reads its own way
                            "-root", "--roo", "--r", "--log-f", "--lo", "--cgroup-m", "--c", "--program-name",
                            "--p", "--HANG=0", "--frob", "-x", "-v", "-V", "--debug=false", "-b/x", "-bx", "-b=/x",
                            "-bundle", "--bund", "--b", "-db/x", "-d", "-f", "-fy", "--config", "--conf", "--con",
                            "config.json", "--pid-file", "--keep", "/x", "id"]))


@HYPOTHESIS
@given(st.lists(argv_items, max_size=12))
def test_any_argv_splits_or_is_a_usage_error(argv):
    import runtime_models
    try:
        opts, runtime_args = oi.split_command_line(argv)
    except oi.UsageError as exc:
        assert "\n" not in str(exc)
        return
    # Forwarded arguments are a subsequence of argv, in order, and everything
    # from the subcommand on is forwarded untouched.
    it = iter(argv)
    assert all(any(a == b for b in it) for a in runtime_args)
    call = oi.parse_runtime_call(runtime_args)
    if call.command is not None:
        tail = runtime_args[runtime_args.index(call.command):]
        assert argv[len(argv) - len(tail):] == tail
    # A call runc or crun would create a container from is read as it reads
    # it, or refused with one line: never passed through, never the wrong config.
    if call.unreadable is not None:
        assert "\n" not in call.unreadable
        with pytest.raises(oi.InterceptorError):
            call.config_path
        return
    for model in (runtime_models.runc, runtime_models.crun):
        creates = model(runtime_args, os.getcwd())
        if creates is not None:
            assert call.edits_config and call.command == creates[0]
            assert call.config_path == os.path.normpath(creates[1])


json_leaves = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2 ** 70, max_value=2 ** 70),
                        st.text(max_size=20))
json_values = st.recursive(json_leaves, lambda children: st.one_of(
    st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)), max_leaves=20)
POLICY = oi.Rule("r", None, {"readonly-networking-mounts": True, "env": ["A=1"], "env-force": ["B=2"],
                             "env-unset": ["C"], "readonly-mounts": ["/data*"],
                             "add-mounts": [{"destination": "/x", "type": "tmpfs", "source": "tmpfs"}],
                             "annotations": {"k": "v"}, "hooks": {"prestart": [{"path": "/bin/true"}]}}, "test")


@HYPOTHESIS
@given(st.dictionaries(st.sampled_from(["process", "mounts", "hooks", "annotations", "linux", "root", "x"]),
                       json_values, max_size=6))
def test_any_config_is_edited_or_refused_with_one_line(spec):
    raw = json.dumps(spec).encode()
    try:
        parsed = oi.parse_config(raw, "config.json")
        changes = oi.apply_rules(parsed, [POLICY], oi.EditContext("c", cgroup_version=1))
    except oi.InterceptorError as exc:
        assert "\n" not in str(exc)
        return
    out = oi.serialize_config(parsed, oi.Layout.of(raw))
    again = oi.parse_config(out, "config.json")
    assert oi.json_equal(again, parsed)
    assert oi.apply_rules(again, [POLICY], oi.EditContext("c", cgroup_version=1)) == [], changes


env_entries = st.lists(st.one_of(
    st.builds("{}={}".format, st.sampled_from(["A", "B", "a"]), st.sampled_from(["", "1", "x=y", "evil"])),
    st.sampled_from(["A", "B", "a"])), max_size=8)


@HYPOTHESIS
@given(env_entries)
def test_env_edits_hold_whatever_entries_repeat(env):
    """What the process gets (runc and crun: entries apply in order, the
    last wins, a bare name unsets) is what the policy asked for."""
    def process_env(entries):
        values = {}
        for entry in entries:
            name, sep, value = entry.partition("=")
            if sep:
                values[name] = value
            else:
                values.pop(name, None)
        return values
    before = process_env(env)
    spec = {"process": {"env": list(env)}}
    oi.edit_env_force(spec, ["A=forced"])
    assert process_env(spec["process"]["env"])["A"] == "forced"
    assert [e.partition("=")[0] for e in spec["process"]["env"]].count("A") == 1
    assert process_env(spec["process"]["env"]).get("B") == before.get("B")
    spec = {"process": {"env": list(env)}}
    oi.edit_env_defaults(spec, ["A=default"])
    assert process_env(spec["process"]["env"])["A"] == before.get("A", "default")
    spec = {"process": {"env": list(env)}}
    oi.edit_env_unset(spec, ["A"])
    assert all(e.partition("=")[0] != "A" for e in spec["process"]["env"])
    assert oi.env_values(env) == before


folded_keys = st.sampled_from(["mounts", "Mounts", "mount\u017f", "MOUNTS", "process", "Process", "env", "ENV",
                               "\u212aernel", "kernel", "hooks", "x", "X", "annotations"])
config_objects = st.recursive(st.text(max_size=3), lambda children: st.dictionaries(folded_keys, children,
                                                                                   max_size=5), max_leaves=12)


@HYPOTHESIS
@given(st.dictionaries(folded_keys, config_objects, max_size=6))
def test_an_accepted_config_reads_the_same_to_go(spec):
    """A reference reader that, like Go's, matches keys to the spec's fields
    ignoring case (str.casefold folds the long s and the Kelvin sign too)
    finds every field under its exact name in any config we accept."""
    problem = oi.check_keys_as_go_reads_them(spec)
    if problem is not None:
        assert "\n" not in problem
        return
    fields = {name.casefold(): name for name in oi.SPEC_FIELDS}

    def walk(obj, is_struct):
        if not isinstance(obj, dict):
            return
        for key, value in obj.items():
            field = fields.get(key.casefold())
            if is_struct and field is not None:
                assert key == field, (key, field)
                assert [k for k in obj if k.casefold() == key.casefold()] == [key]
            walk(value, is_struct and field is not None and field != "annotations")
    walk(spec, True)


@HYPOTHESIS
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_fail_with_one_line(raw):
    try:
        spec = oi.parse_config(raw, "config.json")
    except oi.InterceptorError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    assert isinstance(spec, dict)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps({"process": v}).encode())),
       hostname=st.text(max_size=40))
def test_the_program_never_shows_a_traceback(pyz, fake, tmp_path_factory, content, hostname):
    bundle = tmp_path_factory.mktemp("hostile")
    (bundle / "config.json").write_bytes(content)
    debug = bundle / "debug"
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env-force", "A=1", "--oi-write-debug-output",
                         "--oi-debug-output-dir", str(debug), "--oi-readonly-networking-mounts",
                         "create", "--bundle", str(bundle), "c"], fake)
    err = result.stderr.decode(errors="replace")
    assert "Traceback" not in err
    if result.returncode != 0:
        assert result.returncode in (1, 2) and err.count("\n") == 1 and err.startswith("oci-interceptor: ")
        assert (bundle / "config.json").read_bytes() == content
    for name in os.listdir(str(debug)) if debug.exists() else []:
        assert "/" not in name and not name.startswith(".")


HOSTILE_CONFIGS = {
    "deep nesting": b"[" * 5000 + b"]" * 5000,
    "deep object": b'{"a":' * 3000 + b"1" + b"}" * 3000,
    "huge string": json.dumps({"process": {"args": ["sh"], "env": ["BIG=" + "x" * (8 << 20)]}}).encode(),
    "duplicate keys": b'{"process": {"env": []}, "process": {"env": ["X=1"]}}',
    "NaN": b'{"process": {"env": []}, "x": NaN}',
    "Infinity": b'{"x": Infinity}',
    "invalid UTF-8": b'{"process": {"env": ["A=\xc3\x28"]}}',
    "BOM": b'\xef\xbb\xbf{"process": {"env": []}}',
    "lone surrogate": b'{"process": {"env": ["A=\\ud800"]}}',
}


@pytest.mark.parametrize("name", sorted(HOSTILE_CONFIGS))
def test_named_hostile_configs(pyz, fake, tmp_path, name):
    content = HOSTILE_CONFIGS[name]
    (tmp_path / "config.json").write_bytes(content)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env-force", "A=1", "create", "--bundle",
                         str(tmp_path), "c"], fake)
    err = result.stderr.decode(errors="replace")
    assert "Traceback" not in err
    if name in ("huge string", "lone surrogate"):
        assert result.returncode == 0, err                     # valid JSON: edited
        spec = json.loads((tmp_path / "config.json").read_bytes().decode("utf-8"))
        assert spec["process"]["env"][-1] == "A=1"
    else:
        assert result.returncode == 1 and err.count("\n") == 1, err
        assert (tmp_path / "config.json").read_bytes() == content
        assert not fake.called()


def test_config_json_symlink_and_fifo_are_refused(pyz, fake, tmp_path):
    target = tmp_path / "elsewhere.json"
    target.write_text('{"process": {"env": []}}')
    bundle = tmp_path / "b"
    bundle.mkdir()
    (bundle / "config.json").symlink_to(target)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env", "A=1", "create", "-b", str(bundle), "c"], fake)
    assert result.returncode == 1 and b"it is a symlink; refusing to edit through it" in result.stderr
    assert target.read_text() == '{"process": {"env": []}}'
    fifo_bundle = tmp_path / "f"
    fifo_bundle.mkdir()
    os.mkfifo(str(fifo_bundle / "config.json"))
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env", "A=1", "create", "-b", str(fifo_bundle), "c"],
                 fake, timeout=30)
    assert result.returncode == 1 and b"not a regular file" in result.stderr


@pytest.mark.parametrize("name", ["with space", "new\nline", "tab\tand 'quote\"", "caf\u00e9 \u65e5\u672c"])
def test_bundle_paths_with_odd_characters(pyz, fake, tmp_path, name):
    bundle = tmp_path / name
    bundle.mkdir()
    (bundle / "config.json").write_text('{"process": {"env": []}}')
    debug = tmp_path / "debug"
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env", "A=1", "--oi-write-debug-output",
                         "--oi-debug-output-dir", str(debug), "create", "--bundle", str(bundle), "c"], fake)
    assert result.returncode == 0, result.stderr
    assert json.loads((bundle / "config.json").read_text())["process"]["env"] == ["A=1"]
    assert fake.args()[2] == os.fsencode(str(bundle))
    lines = (debug / "runtime_calls.log").read_bytes().splitlines()
    assert len(lines) == 1                                  # a newline in a path stays on one line


@pytest.mark.parametrize("runtime", ["runc"], indirect=True)
def test_real_container_from_a_bundle_path_with_spaces(pyz, runtime, rootfs, spec_template, tmp_path):
    from conftest import make_bundle
    directory = tmp_path / "my bundle (1)"
    directory.mkdir()
    bundle = make_bundle(directory, rootfs, spec_template, ["sh", "-c", "echo $A"])
    cid = new_id()
    try:
        result = subprocess.run([pyz, "--oi-runtime-path", runtime.path, "--oi-env", "A=spaced", "--root",
                                 runtime.root, "run", "--bundle", bundle.path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    finally:
        runtime("delete", "--force", cid)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"spaced\n"


def test_a_debug_file_precreated_by_someone_else_is_not_written_through(pyz, fake, tmp_path):
    debug = tmp_path / "debug"
    debug.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (debug / "runtime_calls.log").symlink_to(victim)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir",
                         str(debug), "state", "x"], fake)
    assert result.returncode == 0
    assert victim.read_text() == "precious"
    assert b"warning: no debug output" in result.stderr
