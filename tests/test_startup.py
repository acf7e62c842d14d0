"""How the program starts: the .pyz is reproducible and carries bytecode,
a call loads nothing it does not need -- neither modules nor the module's
on-demand blocks -- and every on-demand block still does what the source
does. (Timings live in tests/benchmark.py, not here.)"""

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import traceback
import zipfile

import pytest

import build_zipapp
import oci_interceptor as oi
from conftest import REPO, SYSTEM_PYTHON

# The interpreter as the preamble starts it.
PREAMBLE_PYTHON = [SYSTEM_PYTHON] + build_zipapp.PYTHON_FLAGS.split()

# Loads the module from the archive as the preamble does, then reports at
# the runtime's exec: the module's file, the modules it imported, and the
# on-demand blocks it loaded. (gc, which the loader imports to turn the
# collector off, is built into the interpreter: nothing is loaded.)
PROBE = r"""
import sys
import posix
before = set(sys.modules)
exec(sys.argv[2])
import gc
assert "gc" in sys.builtin_module_names and not gc.isenabled()
def fake_execv(path, argv):
    loaded = sorted(set(sys.modules) - before - {"oci_interceptor", "gc"})
    print(m.__file__)
    print(" ".join(loaded))
    print(" ".join(getattr(m, "_ON_DEMAND_LOADED", ["(no-blocks)"])))
    sys.exit(0)
posix.execv = fake_execv
m.main("oci-interceptor", sys.argv[3:])
"""


def probe(archive, *args, env=None, blocks=False):
    environ = dict(os.environ, OCI_INTERCEPTOR_CONFIG="")
    environ.update(env or {})
    out = subprocess.run(PREAMBLE_PYTHON + ["-c", PROBE, archive, build_zipapp.load_code(archive)]
                         + list(args), env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True)
    module_file, loaded, loaded_blocks = out.stdout.splitlines()
    if blocks:
        return module_file, set(loaded.split()), loaded_blocks.split()
    return module_file, set(loaded.split())


def test_passthrough_loads_no_json_re_or_os(pyz):
    module_file, loaded = probe(pyz, "--oi-runtime-path", "/bin/true", "--root", "/r", "state", "x")
    assert module_file.endswith(".pyz/oci_interceptor.pyc")       # bytecode, not compiled now
    assert not loaded & {"json", "re", "os", "argparse", "json.decoder", "fcntl"}, loaded


def test_create_loads_no_json_or_re(pyz, tmp_path):
    (tmp_path / "config.json").write_text('{"process": {"env": []}, "mounts": []}')
    _, loaded = probe(pyz, "--oi-runtime-path", "/bin/true", "--oi-env", "A=1", "--oi-readonly-networking-mounts",
                      "create", "--bundle", str(tmp_path), "x")
    assert not loaded & {"json", "re", "argparse"}, loaded
    assert (tmp_path / "config.json").read_text() == '{"process": {"env": ["A=1"]}, "mounts": []}'


def imported_by(*names):
    """The modules importing these imports, in the system Python."""
    code = "import sys;b=set(sys.modules);import %s;print(*sorted(set(sys.modules)-b))" % ",".join(names)
    return set(subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", code], stdout=subprocess.PIPE, check=True,
                              universal_newlines=True).stdout.split())


HOOK_FILE = ('{"hooks": {"prestart": [{"path": "/usr/local/bin/oci-hook", "args": ["oci-hook", "prestart"], '
             '"timeout": 10}], "poststop": [{"path": "/usr/local/bin/oci-hook"}]}}')


def test_a_plain_create_imports_only_the_json_scanner_and_loads_no_block(pyz, tmp_path):
    """The benchmark's creates: flags (read-only mounts, env, a hook file,
    as oci-add-hooks is called) and a policy file of rules without optional
    features. Nothing but _json is imported (not os: posix does), and no
    on-demand block is unmarshalled but, with the policy file, the code
    that reads its rules; a hook already there (an integer timeout to
    compare) imports no decimal either."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text(json.dumps({
        "process": {"args": ["sh"], "env": ["PATH=/bin"]}, "hostname": "h", "annotations": {"team": "blue"},
        "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/tmp", "options": ["rbind", "rw"]}]}))
    hooks = tmp_path / "hooks.json"
    hooks.write_text(HOOK_FILE)
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 1, "env": ["TZ=UTC"], "readonly-networking-mounts": True, "rules": [
        {"name": "blue", "when": {"annotations": {"^team$": "^blue$"}, "hasBindMounts": True},
         "env-force": ["HTTP_PROXY=http://proxy:3128"], "env-unset": ["X"], "annotations": {"a": "b"},
         "hooks": json.loads(HOOK_FILE)["hooks"]}]}))
    for path in (hooks, policy):
        path.chmod(0o644)
    for config, flags in (("", ["--oi-readonly-networking-mounts", "--oi-env", "TZ=UTC", "--oi-env-force",
                                "HTTP_PROXY=http://proxy:3128"]),
                          ("", ["--hook-config-path", str(hooks), "--runtime-path", "/bin/true"]),
                          ("", ["--hook-config-path", str(hooks), "--runtime-path", "/bin/true"]),   # hooks there
                          (str(policy), [])):
        _, loaded, blocks = probe(pyz, *(["--oi-runtime-path", "/bin/true"] + flags + [
            "create", "--bundle", str(bundle), "x"]), env={"OCI_INTERCEPTOR_CONFIG": config}, blocks=True)
        assert blocks == (["policy-file"] if config else []), (flags, blocks)    # the file's rules are read
        assert loaded <= (imported_by("re", "_json") if config else {"_json"}), (flags, loaded)   # rules' regexes
        assert not loaded & {"os", "posixpath", "stat", "errno", "decimal", "json", "fnmatch"}, (flags, loaded)
    spec = json.loads((bundle / "config.json").read_text())
    assert spec["process"]["env"] == ["PATH=/bin", "TZ=UTC", "HTTP_PROXY=http://proxy:3128"]
    assert [h["path"] for h in spec["hooks"]["prestart"]] == ["/usr/local/bin/oci-hook"]


SETTINGS_FILES = [
    {"version": 1, "rules": []},
    {"version": 1, "readonly-networking-mounts": True, "env": ["TZ=UTC", "A=1"],
     "env-force": ["HTTP_PROXY=http://proxy:3128"]},
    {"version": 1, "runtime-path": "bin/../crun", "hooks-dir": ["hooks.d", "/etc/x"], "audit-log": "syslog",
     "debug-output-dir": "./debug", "cdi-spec-dirs": ["cdi"], "hook-config-path": "h.json", "systemd": "auto"},
]


@pytest.mark.parametrize("data", SETTINGS_FILES)
def test_a_config_file_of_settings_alone_reads_as_one_with_rules_would(data):
    """_read_config_data reads a file of settings alone itself; the
    policy-file block's reader, which reads all others, reads it the same."""
    policy = oi.Policy()
    assert (oi._read_config_data(json.loads(json.dumps(data)), "/etc/oi/c.json", None, "oi", policy)
            == oi._read_policy_file_data(json.loads(json.dumps(data)), "/etc/oi/c.json", None, "oi", policy))


def test_a_config_file_of_settings_alone_loads_no_block(pyz, tmp_path):
    """The packages' config file (no rule) and one of settings alone, as
    the benchmark's Docker policy is, are read without the policy-file
    block: rules and profiles need it, settings do not."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for data in SETTINGS_FILES[:2]:
        (bundle / "config.json").write_text('{"process": {"env": ["A=0"]}, "mounts": []}')
        policy = tmp_path / "policy.json"
        policy.write_text(json.dumps(data))
        policy.chmod(0o644)
        _, loaded, blocks = probe(pyz, "--oi-runtime-path", "/bin/true", "--oi-env", "B=2", "create", "--bundle",
                                  str(bundle), "x", env={"OCI_INTERCEPTOR_CONFIG": str(policy)}, blocks=True)
        assert blocks == [] and loaded <= {"_json"}, (data, blocks, loaded)
        assert json.loads((bundle / "config.json").read_text())["process"]["env"] == (
            ["A=0", "TZ=UTC", "B=2", "HTTP_PROXY=http://proxy:3128"] if "env" in data else ["A=0", "B=2"])


def bundle_and_policy(tmp_path, policy_text):
    """A bundle whose config has an empty env, and a root policy file."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"process": {"env": []}}')
    policy = tmp_path / "policy.json"
    policy.write_text(policy_text)
    policy.chmod(0o644)
    return bundle, policy


def test_a_create_that_records_its_runtime_imports_nothing_more(pyz, tmp_path):
    """A create whose runtime the container's later calls must know writes
    a record, drops the passthrough records that disagree and removes the
    records of containers gone: with posix alone, even when old records
    are there (containers outlive the grace time on every host; os and
    urllib.parse would cost more than the whole create)."""
    state = tmp_path / "state"
    records = state / "containers"
    records.mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    root = tmp_path / "root"
    (root / "alive \u00e9").mkdir(parents=True)
    old = 1000000000
    for cid in ("alive \u00e9", "gone \u00e9"):
        path = records / oi.record_name(str(root), cid)
        path.write_text(oi.ContainerRecord("/bin/false").encode().decode())
        path.chmod(0o600)
        os.utime(str(path), (old, old))
    (state / "passthrough-x").write_text("oci-interceptor-passthrough 0\n/etc/x.json\n/bin/false\n")
    (state / "expires-x").write_text("")
    bundle, policy = bundle_and_policy(tmp_path, '{"version": 1, "runtime-path": "/bin/true"}')
    _, loaded, blocks = probe(pyz, "--root", str(root), "create", "--bundle", str(bundle), "new",
                              env={"OCI_INTERCEPTOR_CONFIG": str(policy), "OCI_INTERCEPTOR_STATE_DIR": str(state)},
                              blocks=True)
    assert loaded <= {"_json"}, loaded
    assert "records-gc" in blocks, blocks
    assert sorted(os.listdir(str(records))) == sorted(oi.record_name(str(root), cid)
                                                       for cid in ("alive \u00e9", "new"))
    assert sorted(os.listdir(str(state))) == ["containers"]


def test_the_bytecode_carries_the_on_demand_blocks_apart(pyz):
    """Each block the source marks is in the .pyc as marshalled code, and
    a passthrough call that reaches Python loads only the lifecycle block."""
    module_file, _, blocks = probe(pyz, "--oi-runtime-path", "/bin/true", "state", "x", blocks=True)
    assert module_file.endswith(".pyz/oci_interceptor.pyc") and blocks == ["lifecycle"]
    with open(oi.__file__.replace(".pyc", ".py")) as f:
        marked = set(name for name, _, _ in build_zipapp.on_demand_ranges(f.read().splitlines()))
    assert marked >= {"help", "hooks-dir", "json-patch", "systemd", "records-gc", "debug-output", "register",
                      "check-config", "dry-run", "record-delete", "guardrails", "cdi", "audit", "policy-file",
                      "mounts", "lifecycle", "go-keys"}
    listed = subprocess.run(PREAMBLE_PYTHON + ["-c", build_zipapp.load_code(pyz) + "\nprint(*sorted(m._ON_DEMAND))",
                             pyz], stdout=subprocess.PIPE, universal_newlines=True, check=True).stdout.split()
    assert set(listed) == marked


def test_build_is_reproducible(tmp_path):
    a = build_zipapp.build(str(tmp_path / "a.pyz"), SYSTEM_PYTHON)
    b = build_zipapp.build(str(tmp_path / "b.pyz"), SYSTEM_PYTHON)
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    with zipfile.ZipFile(a) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == sorted(i.filename for i in infos)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {i.external_attr >> 16 for i in infos} == {0o100644}
    assert os.stat(a).st_mode & 0o777 == 0o755


def altered_copy(pyz, path, alter):
    """An executable copy of the archive at path, its bytes changed by
    alter(data, where the .pyc starts in them, the .pyc)."""
    with open(pyz, "rb") as f:
        data = bytearray(f.read())
    with zipfile.ZipFile(pyz) as archive:
        pyc = archive.read("oci_interceptor.pyc")
    alter(data, data.find(pyc), pyc)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, 0o755)


def test_other_interpreters_fall_back_to_the_source(pyz, tmp_path):
    """A .pyc for another Python version (another magic number) is ignored
    and the source in the archive is compiled instead: all of it, so no
    block is on demand."""
    other = str(tmp_path / "other.pyz")

    def other_magic(data, start, pyc):
        data[start:start + 2] = b"\x00\x00"       # no Python has magic 0
    altered_copy(pyz, other, other_magic)
    module_file, _, blocks = probe(other, "--oi-runtime-path", "/bin/true", "state", "x", blocks=True)
    assert module_file.endswith(".pyz/oci_interceptor.py") and blocks == ["(no-blocks)"]
    result = subprocess.run([other, "--oi-version"], stdout=subprocess.PIPE, check=True)
    assert result.stdout.startswith(b"oci-interceptor ")


def test_a_block_that_cannot_load_is_one_line_and_changes_nothing(pyz, tmp_path):
    """An archive whose blocks are damaged (overwritten in place, say): a
    create that needs one fails closed with the one line of any internal
    error, on stderr and in the runtime's --log, and leaves the config as
    it was (error reporting itself is never in a block)."""
    broken = str(tmp_path / "broken.pyz")

    def damaged_blocks(data, start, pyc):
        core = int(re.search(rb"d=posix.pread\(f,(\d+),o\)", data).group(1))     # the part the preamble reads
        data[start + core:start + len(pyc)] = b"\xff" * (len(pyc) - core)
    altered_copy(pyz, broken, damaged_blocks)
    bundle, policy = bundle_and_policy(tmp_path, '{"version": 1, "rules": [{"name": "r", "env": ["A=1"]}]}')
    log = tmp_path / "log.json"
    result = subprocess.run([broken, "--oi-config", str(policy), "--oi-runtime-path", "/bin/true",
                             "--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle), "x"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert result.returncode == 1 and result.stdout == ""
    assert re.match(r"oci-interceptor: internal error: \w+: [^\n]+\n\Z", result.stderr), result.stderr
    assert json.loads(log.read_text())["msg"] == result.stderr.strip()
    assert (bundle / "config.json").read_text() == '{"process": {"env": []}}'


def test_blocks_load_through_zipimport_too(pyz, tmp_path):
    """Where the preamble cannot read the bytecode where the build put it
    (an archive rewritten by some tool), and through `python3 x.pyz`,
    zipimport loads the module; its blocks then come through zipimport."""
    moved = str(tmp_path / "moved.pyz")
    with open(pyz, "rb") as f:
        data = f.read()
    offset = re.search(rb"\no= *(\d+);", data).group(1)
    data = data.replace(b" " + offset + b";", b" " + str(int(offset) + 1).encode() + b";")
    with open(moved, "wb") as f:
        f.write(data)
    os.chmod(moved, 0o755)
    env = dict(os.environ, OCI_INTERCEPTOR_CONFIG="")
    for argv in ([moved, "--oi-help"], [SYSTEM_PYTHON, pyz, "--oi-help"]):
        out = subprocess.run(argv, stdout=subprocess.PIPE, env=env, check=True, universal_newlines=True).stdout
        assert out == oi.help_text()
    module_file, _, blocks = probe(moved, "--oi-runtime-path", "/bin/true", "state", "x", blocks=True)
    assert module_file.endswith(".pyz/oci_interceptor.pyc") and blocks == ["lifecycle"]


def test_version_is_defined_once():
    with open(os.path.join(build_zipapp.HERE, build_zipapp.MODULE)) as f:
        source = f.read()
    assert source.count("__version__ = ") == 1
    assert build_zipapp.module_version(source)


def test_passthrough_with_a_config_of_regex_rules_loads_no_re(pyz, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{"version": 1, "env": ["A=1"], "rules": [{"name": "r", "when": {"commands": ["^/sbin/init$"],'
                      ' "annotations": {"^team$": "^blue$"}}, "env-force": ["B=2"], "systemd": "auto"}]}')
    config.chmod(0o644)
    _, loaded = probe(pyz, "--oi-runtime-path", "/bin/true", "delete", "x", env={"OCI_INTERCEPTOR_CONFIG": str(config)})
    assert not loaded & {"json", "re", "fnmatch", "os"}, loaded
    # An editing call checks the regular expressions at once.
    config.write_text('{"version": 1, "rules": [{"when": {"commands": ["("]}, "env": ["A=1"]}]}')
    bad = subprocess.run([pyz, "--oi-runtime-path", "/bin/true", "create", "--bundle", str(tmp_path), "x"],
                         env=dict(os.environ, OCI_INTERCEPTOR_CONFIG=str(config)), stderr=subprocess.PIPE)
    assert bad.returncode == 2 and b"bad regex" in bad.stderr


def test_the_preamble_starts_python_isolated_without_site_in_utf8_mode(pyz):
    """Both of the preamble's execs of Python (a create's first line, and
    the end of the fast path) pass -I -S -X utf8: under a UTF-8 locale too
    (where Python would otherwise leave UTF-8 mode off) the interpreter
    runs isolated, without site, in UTF-8 mode."""
    with open(pyz, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", "replace")
    preamble = head[:head.index("\n# Never reached")]
    calls = re.findall(r"exec ('[^']*' -.*?\"\$0\" \"\$@\")", preamble, re.DOTALL)
    assert len(calls) == 2 and calls[0] == calls[1], calls
    words = shlex.split(calls[0])
    code = words.index("-c")
    assert words[:code] == PREAMBLE_PYTHON and words[code + 2:] == ["$0", "$@"]
    words[code + 1] = "import sys; f = sys.flags; print(f.isolated, f.no_site, f.utf8_mode)"
    env = dict(os.environ, LANG="C.UTF-8", LC_ALL="C.UTF-8", PYTHONUTF8="0")
    out = subprocess.run(words[:code + 2], env=env, stdout=subprocess.PIPE, universal_newlines=True, check=True)
    assert out.stdout.split() == ["1", "1", "1"]


def test_the_archive_is_valid_shell(pyz):
    """The preamble ends in a here-document opener, so the zip data after it
    is text to the shell: `sh -n` (and lintian) accept the whole file."""
    for shell in ("/bin/sh", "dash", "bash"):
        path = shutil.which(shell)
        if path:
            result = subprocess.run([path, "-n", pyz], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            assert result.returncode == 0, (shell, result.stderr)


def test_create_without_a_cdi_request_reads_no_spec_and_imports_nothing_more(pyz, tmp_path):
    """CDI settings cost nothing until a container asks for a device: the
    spec directory (whose broken file would be warned about) is not read,
    no module is imported beyond those of the same create without them,
    and the section's code (the cdi block) is not loaded."""
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "broken.json").write_text("{")
    loaded, errors, blocks = {}, {}, {}
    for name, cdi_settings in (("without", {}), ("with", {"cdi-spec-dirs": [str(cdi)], "cdi-env": "CDI_DEVICES"}),
                               ("asking", {"cdi-spec-dirs": [str(cdi)]})):
        config = tmp_path / (name + ".json")
        config.write_text(json.dumps(dict({"version": 1, "runtime-path": "/bin/true", "env": ["A=1"]}, **cdi_settings)))
        config.chmod(0o644)
        bundle = tmp_path / name
        bundle.mkdir()
        annotations = {"cdi.k8s.io/x": "example.com/dev=zero"} if name == "asking" else {"other": "x"}
        (bundle / "config.json").write_text(json.dumps({"process": {"env": ["CDI_DEVICES="]}, "mounts": [],
                                                        "annotations": annotations}))
        out = subprocess.run(PREAMBLE_PYTHON + ["-c", PROBE, pyz, build_zipapp.load_code(pyz), "create", "--bundle", str(bundle), "x"],
                             env=dict(os.environ, OCI_INTERCEPTOR_CONFIG=str(config)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True)
        loaded[name] = set(out.stdout.splitlines()[1].split()) if out.stdout.strip() else None
        blocks[name] = out.stdout.splitlines()[2].split() if out.stdout.strip() else None
        errors[name] = out.stderr
    assert loaded["with"] == loaded["without"] and errors["with"] == errors["without"] == ""
    assert blocks["with"] == blocks["without"] and "cdi" not in blocks["with"], blocks
    # Asked for, the device is looked for: the broken file is read (and named), the device not found.
    assert "cdi spec %s: skipped" % (cdi / "broken.json") in errors["asking"]
    assert "CDI device example.com/dev=zero: not found" in errors["asking"]


GUARDRAIL_PROBE = PROBE.replace('    print(" ".join(loaded))\n',
                                '    print(" ".join(loaded))\n'
                                '    print(getattr(m, "_preset_table", None) is None)\n')
# A call that applies no rule still checks the rules' shape (capability
# names among them: a policy with guardrails loads their block to read it);
# the preset levels' tables are built only where a preset is evaluated.


def guardrail_probe(archive, config, *args):
    """(modules loaded, preset tables not built, on-demand blocks loaded)"""
    environ = dict(os.environ, OCI_INTERCEPTOR_CONFIG=config)
    out = subprocess.run(PREAMBLE_PYTHON + ["-c", GUARDRAIL_PROBE, archive, build_zipapp.load_code(archive)]
                         + list(args), env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True)
    _, loaded, untouched, blocks = out.stdout.splitlines()
    return set(loaded.split()), untouched == "True", blocks.split()


def test_guardrails_cost_nothing_to_a_policy_without_them(pyz, tmp_path):
    """A create whose policy has no guardrail loads none of their code (the
    guardrails block) and imports nothing more; one with guardrails loads
    it and still imports neither json, re nor decimal (nor socket, which
    only syslog needs); a passthrough call under a guardrail policy reads
    the rules but builds no preset table."""
    (tmp_path / "config.json").write_text('{"process": {"env": [], "capabilities": {"bounding": ["CAP_KILL"]}}, '
                                          '"mounts": [{"destination": "/h", "type": "bind", "source": "/srv"}]}')
    plain = tmp_path / "plain.json"
    plain.write_text('{"version": 1, "env": ["A=1"], "rules": [{"name": "r", "when": {"hasBindMounts": true}, '
                     '"env-force": ["B=2"]}]}')
    guarded = tmp_path / "guarded.json"
    guarded.write_text(json.dumps({"version": 1, "rules": [
        {"preset": "baseline", "mode": "warn"}, {"preset": "restricted", "mode": "audit"},
        {"name": "sock", "when": {"anyOf": [{"hostPaths": ["/var/run/docker.sock"]}, {"privileged": True}]},
         "deny": "no"},
        {"name": "clamp", "when": {"capabilities": ["KILL"]}, "capabilities": {"drop": ["ALL"]},
         "limits": {"pids": 10, "memory": "1.5g", "cpus": 0.5}, "no-new-privileges": True}]}))
    for config in (plain, guarded):
        config.chmod(0o644)
    create = ["--oi-runtime-path", "/bin/true", "create", "--bundle", str(tmp_path), "x"]
    loaded, no_presets, blocks = guardrail_probe(pyz, str(plain), *create)
    assert no_presets and blocks == ["policy-file"], blocks
    assert not loaded & {"json", "re", "socket", "decimal", "os"}, loaded
    log = tmp_path / "log.json"
    loaded, no_presets, blocks = guardrail_probe(pyz, str(guarded), "--log", str(log), "--log-format", "json",
                                                 *create)
    assert not no_presets and blocks == ["policy-file", "guardrails"], blocks
    # Host paths looked up, and the baseline's warning logged, with posix, not os.
    assert loaded <= {"_json"}, loaded
    assert json.loads(log.read_text())["level"] == "warning"
    assert json.loads((tmp_path / "config.json").read_text())["process"]["capabilities"] == {"bounding": []}
    loaded, no_presets, blocks = guardrail_probe(pyz, str(guarded), "--oi-runtime-path", "/bin/true", "state", "x")
    assert no_presets and set(blocks) == {"lifecycle", "policy-file", "guardrails"}, blocks
    assert not loaded & {"json", "re", "os", "socket"}, loaded


# ---------------------------------------------------------------------------
# On-demand blocks: every one still does, through the .pyz, what the source
# does. Each call below runs twice on a directory set up afresh (same paths):
# once through the archive's bytecode, loaded as the preamble loads it, once
# through the source file; exit status, stdout, stderr, every file left in
# the directory (time stamps blanked) and the runtime's arguments must match,
# and through the archive the call must have loaded its block.

RUN_REPORTING_BLOCKS = r"""
import sys, posix
exec(posix.environ[b"OI_TEST_LOAD"].decode())
def note():
    with open(posix.environ[b"OI_TEST_BLOCKS"].decode(), "w") as f:
        f.write(" ".join(getattr(m, "_ON_DEMAND_LOADED", ["(source)"])))
real_execv = posix.execv
def execv(path, argv):
    note()
    real_execv(path, argv)
posix.execv = execv
try:
    status = m.main(sys.argv[2], sys.argv[3:])
finally:
    note()
sys.exit(status)
"""
FROM_SOURCE = "sys.path.insert(0, sys.argv[1]);import oci_interceptor as m"

RECORDER = """#!/bin/sh
printf '%s\\n' "$@" > "${FAKE_RUNTIME_OUT:?}"
"""
TIMES = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z|\.bak-\d{14}(\.\d+)?")


def write_record(state, root, container_id, runtime, systemd):
    directory = os.path.join(state, oi.RECORDS_SUBDIR)
    os.makedirs(directory, 0o700, exist_ok=True)
    os.chmod(state, 0o700)
    path = os.path.join(directory, oi.record_name(root, container_id))
    with open(path, "wb") as f:
        f.write(oi.ContainerRecord(runtime, systemd).encode())
    os.chmod(path, 0o600)


def setup_case(base):
    """The files every call below may use, under base."""
    for name in ("bundle", "hooks.d", "engines", "state"):
        os.makedirs(os.path.join(base, name))
    os.chmod(os.path.join(base, "state"), 0o700)
    runtime = os.path.join(base, "runtime")
    with open(runtime, "w") as f:
        f.write(RECORDER)
    os.chmod(runtime, 0o755)
    with open(os.path.join(base, "bundle", "config.json"), "w") as f:
        json.dump({"ociVersion": "1.0.2", "process": {"args": ["/sbin/init"], "env": ["PATH=/bin"]},
                   "hostname": "box", "root": {"path": "rootfs", "readonly": True},
                   "linux": {"namespaces": [{"type": "pid"}], "cgroupsPath": "/oi-test/box"},
                   "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]}, f)
    rules = [
        {"name": "patch", "when": {"commands": ["init$"]}, "json-patch": [
            {"op": "test", "path": "/hostname", "value": "box"}, {"op": "add", "path": "/process/env/-",
                                                                  "value": "PATCHED=1"},
            {"op": "move", "from": "/hostname", "path": "/domainname"}],
         "merge-patch": {"annotations": {"merged": "yes"}, "root": {"readonly": None}}},
        {"name": "hooked", "hooks": {"poststop": [{"path": runtime, "args": ["runtime", "poststop"]}]}},
        {"name": "missing hook", "when": {"hostname": "^nobody$"},
         "prepend-hooks": {"prestart": [{"path": "/nonexistent/hook"}]}}]
    with open(os.path.join(base, "policy.json"), "w") as f:
        json.dump({"version": 1, "runtime-path": runtime, "rules": rules}, f)
    with open(os.path.join(base, "failing.json"), "w") as f:
        json.dump({"version": 1, "rules": [{"json-patch": [{"op": "test", "path": "/hostname", "value": "x"}]}]}, f)
    with open(os.path.join(base, "elsewhere.json"), "w") as f:
        json.dump({"version": 1, "rules": [{"name": "elsewhere", "runtime-path": runtime}]}, f)
    with open(os.path.join(base, "hooks.d", "10-present.json"), "w") as f:
        json.dump({"version": "1.0.0", "hook": {"path": runtime}, "when": {"commands": ["init"]},
                   "stages": ["prestart", "poststop"]}, f)
    with open(os.path.join(base, "hooks.d", "20-gone.json"), "w") as f:
        json.dump({"version": "1.0.0", "hook": {"path": "/nonexistent/hook"}, "when": {"always": True},
                   "stages": ["prestart"]}, f)
    with open(os.path.join(base, "engines", "daemon.json"), "w") as f:
        f.write('{\n    "runtimes": {"old": {"path": "/usr/bin/old"}},\n    "default-runtime": "old"\n}\n')
    with open(os.path.join(base, "engines", "config.toml"), "w") as f:
        f.write('version = 2\n\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
                '  default_runtime_name = "runc"\n')
    guardrails = [
        {"preset": "baseline", "mode": "warn"}, {"name": "no-root", "when": {"rootUser": True}, "mode": "audit",
                                                  "deny": "runs as root"},
        {"name": "clamp", "when": {"anyOf": [{"capabilities": ["SYS_ADMIN"]}, {"hostPaths": ["/etc"]}]},
         "capabilities": {"drop": ["ALL"], "allow": ["CHOWN"]}, "limits": {"pids": 50, "memory": "64m"},
         "no-new-privileges": True, "readonly-rootfs": True},
        {"name": "no-host-net", "when": {"not": {"hostNamespaces": ["network"]}}, "annotations": {"net": "own"}}]
    with open(os.path.join(base, "guarded.json"), "w") as f:
        json.dump({"version": 1, "runtime-path": runtime, "rules": guardrails}, f)
    with open(os.path.join(base, "denying.json"), "w") as f:
        json.dump({"version": 1, "runtime-path": runtime, "audit-log": base + "/audit.log", "rules": [
            {"name": "sure", "when": {"privileged": False}, "env-force": ["SEEN=1"]},
            {"name": "never", "when": {"unconfined": ["seccomp"]}, "deny": "no seccomp profile"}]}, f)
    with open(os.path.join(base, "mounts.json"), "w") as f:
        json.dump({"version": 1, "runtime-path": runtime, "rules": [
            {"name": "mounts", "remove-mounts": ["/proc"], "readonly-mounts": ["/data*"],
             "add-mounts": [{"destination": "/data", "type": "bind", "source": base, "options": ["rbind"]}]}]}, f)
    os.makedirs(os.path.join(base, "bundle-go"))
    with open(os.path.join(base, "bundle-go", "config.json"), "w") as f:
        f.write('{"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "Hostname": "seen-by-runc-only"}')
    os.makedirs(os.path.join(base, "cdi"))
    with open(os.path.join(base, "cdi", "example.json"), "w") as f:
        json.dump({"cdiVersion": "0.5.0", "kind": "example.com/dev", "containerEdits": {"env": ["WIDE=1"]},
                   "devices": [{"name": "null", "containerEdits": {
                       "deviceNodes": [{"path": "/dev/example0", "hostPath": "/dev/null"}],
                       "mounts": [{"hostPath": base, "containerPath": "/opt/example", "options": ["ro", "bind"]}],
                       "hooks": [{"hookName": "createRuntime", "path": runtime, "args": ["runtime", "cdi"]}]}}]}, f)
    with open(os.path.join(base, "devices.json"), "w") as f:
        json.dump({"version": 1, "runtime-path": runtime, "cdi-spec-dirs": [base + "/cdi"], "cdi-env": "DEVICES",
                   "rules": [{"name": "dev", "when": {"commands": ["init$"]}, "cdi-devices": ["example.com/dev=null"]}]},
                  f)
    for name in ("policy.json", "failing.json", "elsewhere.json", "hooks.d/10-present.json", "hooks.d/20-gone.json",
                 "guarded.json", "denying.json", "devices.json", "cdi/example.json", "mounts.json"):
        os.chmod(os.path.join(base, name), 0o644)
    write_record(os.path.join(base, "state"), os.path.join(base, "root"), "sd", runtime, True)
    write_record(os.path.join(base, "state"), os.path.join(base, "root"), "gone", runtime, False)


def case_args(base):
    runtime, bundle, root = (os.path.join(base, name) for name in ("runtime", "bundle", "root"))
    create = ["--root", root, "create", "--bundle", bundle]
    return [
        (["help"], ["--oi-help"]),
        (["check-config"], ["--oi-config", base + "/policy.json", "--oi-check-config"]),
        (["check-config", "hooks-dir"], ["--oi-hooks-dir", base + "/hooks.d", "--oi-check-config"]),
        (["dry-run", "json-patch"], ["--oi-config", base + "/policy.json", "--oi-dry-run"] + create + ["c1"]),
        (["json-patch"], ["--oi-config", base + "/policy.json"] + create + ["c1"]),
        (["json-patch"], ["--oi-config", base + "/failing.json", "--oi-runtime-path", runtime] + create + ["c1"]),
        (["hooks-dir"], ["--oi-hooks-dir", base + "/hooks.d", "--oi-runtime-path", runtime] + create + ["c2"]),
        (["debug-output"], ["--oi-write-debug-output", "--oi-debug-output-dir", base + "/debug", "--oi-env", "A=1",
                            "--oi-runtime-path", runtime] + create + ["c3"]),
        (["systemd"], ["--oi-systemd", "always", "--oi-runtime-path", runtime] + create + ["sd2"]),
        (["systemd"], ["--oi-runtime-path", "/bin/false", "--root", root, "kill", "sd", "TERM"]),
        (["records-gc"], ["--oi-config", base + "/elsewhere.json"] + create + ["c4"]),
        (["mounts", "policy-file"], ["--oi-config", base + "/mounts.json"] + create + ["c8"]),
        (["lifecycle"], ["--oi-runtime-path", runtime, "--root", root, "state", "c9"]),
        (["lifecycle", "policy-file"], ["--oi-config", base + "/failing.json", "--oi-runtime-path", runtime,
                                        "--root", root, "kill", "c9", "KILL"]),
        (["go-keys"], ["--oi-runtime-path", runtime, "--root", root, "create", "--bundle", base + "/bundle-go", "c10"]),
        (["guardrails"], ["--oi-config", base + "/guarded.json"] + create + ["c5"]),
        (["guardrails", "audit"], ["--oi-config", base + "/denying.json"] + create + ["c6"]),
        (["cdi"], ["--oi-config", base + "/devices.json"] + create + ["c7"]),
        (["check-config", "cdi"], ["--oi-config", base + "/devices.json", "--oi-check-config"]),
        (["check-config", "guardrails"], ["--oi-config", base + "/guarded.json", "--oi-check-config"]),
        (["records-gc"], ["--oi-runtime-path", "/bin/false", "--root", root, "list"]),
        (["record-delete"], ["--oi-runtime-path", "/bin/false", "--root", root, "delete", "gone"]),
        (["register"], ["--oi-register", "docker", "--oi-daemon-json", base + "/engines/daemon.json",
                        "--oi-env=TZ=UTC", "--oi-register-default"]),
        (["register"], ["--oi-unregister", "docker", "--oi-register-name", "old", "--oi-daemon-json",
                        base + "/engines/daemon.json"]),
        (["register"], ["--oi-register", "podman", "--oi-write", "--oi-podman-conf-dir", base + "/engines/pod",
                        "--oi-config", base + "/policy.json"]),
        (["register"], ["--oi-register", "containerd", "--oi-write", "--oi-register-default",
                        "--oi-containerd-config", base + "/engines/config.toml"]),
        (["register"], ["--oi-register", "containerd", "--oi-register-name", "x y"]),
    ]


def run_case(load, where, argv0, args, base):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "OCI_INTERCEPTOR_CONFIG": "", "LC_ALL": "C.UTF-8", "OI_TEST_LOAD": load,
           "OCI_INTERCEPTOR_STATE_DIR": os.path.join(base, "state"), "FAKE_RUNTIME_OUT": os.path.join(base, "argv"),
           "OI_TEST_BLOCKS": os.path.join(base, "..", "blocks")}
    result = subprocess.run([SYSTEM_PYTHON, "-B", "-I", "-S", "-c", RUN_REPORTING_BLOCKS, where, argv0] + args,
                            env=env, cwd=base,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    files = {}
    for directory, _, names in os.walk(base):
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                content = f.read()
            files[TIMES.sub("TIME", os.path.relpath(path, base))] = (
                stat.S_IMODE(os.lstat(path).st_mode), TIMES.sub("TIME", content.decode("utf-8", "replace")))
    with open(os.path.join(base, "..", "blocks")) as f:
        blocks = f.read().split()
    return (result.returncode, TIMES.sub("TIME", result.stdout.decode()), TIMES.sub("TIME", result.stderr.decode()),
            files), blocks


@pytest.mark.parametrize("index", range(len(case_args("/x"))))
def test_each_on_demand_block_does_through_the_pyz_what_the_source_does(pyz, tmp_path, index):
    base = str(tmp_path / "case")
    expected, args = case_args(base)[index]
    outcomes = []
    for load, where in ((build_zipapp.load_code(pyz), pyz), (FROM_SOURCE, REPO)):
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        setup_case(base)
        outcomes.append(run_case(load, where, pyz, args, base))
    (archive, blocks), (source, source_blocks) = outcomes
    assert archive == source
    assert source_blocks == ["(source)"] and set(expected) <= set(blocks), blocks


def test_the_corpus_covers_every_block():
    covered = set(name for expected, _ in case_args("/x") for name in expected)
    with open(os.path.join(REPO, build_zipapp.MODULE)) as f:
        assert covered == set(name for name, _, _ in build_zipapp.on_demand_ranges(f.read().splitlines()))


# ---------------------------------------------------------------------------
# The build's on-demand mechanism, on a module of its own.

TOY = '''"""A module with one on-demand block."""
TABLE = []


def before(x):
    return x


# [on-demand: extra]
LIMIT = 3


class Helper(object):
    def times(self, x):
        return x * LIMIT


def feature(x):
    if x < 0:
        raise ValueError("negative")
    return Helper().times(x) + 1


def inside_only(x):
    return feature(x)
# [end on-demand: extra]


ACTIONS = (before, feature)


def use(x):
    return ACTIONS[1](x)
'''


def toy_module(source=TOY):
    code, blocks, marshalled = build_zipapp.compile_split(source, "toy.py")
    namespace = {"__name__": "toy", "_ON_DEMAND_SOURCE": marshalled}
    exec(code, namespace)
    return namespace, blocks


@pytest.mark.skipif(sys.version_info < (3, 8), reason="the build splits blocks off with Python 3.8+")
def test_a_stub_loads_its_block_on_first_use():
    toy, blocks = toy_module()
    assert set(blocks) == {"extra"} and toy["_ON_DEMAND_LOADED"] == []
    assert "LIMIT" not in toy and "Helper" not in toy and "inside_only" not in toy   # used only inside
    stub = toy["feature"]
    assert stub.__name__ == "feature" and toy["ACTIONS"][1] is stub
    assert toy["use"](2) == 7 and toy["_ON_DEMAND_LOADED"] == ["extra"]
    assert toy["feature"] is not stub and toy["feature"](2) == 7 == stub(2) and toy["inside_only"](0) == 1
    assert toy["Helper"].__module__ == "toy" and toy["feature"].__globals__ is toy
    assert toy["_ON_DEMAND_LOADED"] == ["extra"]          # loaded once
    with pytest.raises(ValueError) as info:
        toy["use"](-1)
    frame = traceback.extract_tb(info.tb)[-1]
    assert (frame.filename, frame.lineno, frame.name) == ("toy.py", TOY.splitlines().index(
        '        raise ValueError("negative")') + 1, "feature")
    source = {"__name__": "toy"}
    exec(compile(TOY, "toy.py", "exec"), source)
    assert source["use"](2) == 7 and "_ON_DEMAND_LOADED" not in source


def line_of(text, source=TOY):
    return source.splitlines().index(text) + 1


@pytest.mark.skipif(sys.version_info < (3, 8), reason="the build splits blocks off with Python 3.8+")
@pytest.mark.parametrize("change, message", [
    (("def use(x):\n", "def use(x):\n    print(LIMIT)\n"),
     "toy.py:%d: LIMIT, a class or constant of on-demand block extra (line %d), is used outside it"
     % (line_of("def use(x):") + 1, line_of("LIMIT = 3"))),
    (("ACTIONS = (before, feature)", "ACTIONS = (before, feature, Helper)"),
     "Helper, a class or constant of on-demand block extra"),
    (("LIMIT = 3\n", "LIMIT = 3\nTABLE.append(1)\n"),
     "toy.py:%d: an on-demand block holds only definitions (functions, classes, constants, imports), not a "
     "Expr statement" % (line_of("LIMIT = 3") + 1)),
    (("LIMIT = 3\n", "LIMIT = 3\nTABLE[0] = 1\n"), "binds only names: it must not change what is defined outside"),
    (("LIMIT = 3\n", "TABLE = 3\n"), "TABLE is bound outside block extra too"),
    (("    return x\n", "    return x\n# [on-demand: extra]\n"), "block extra begins inside block extra"),
    (("# [end on-demand: extra]\n", ""), "block extra has no end marker"),
    (("# [on-demand: extra]\n", ""), "end of block extra, which is not open here"),
    (("# [on-demand: extra]", "#  [on-demand: extra]"), "not an on-demand marker"),
    (("def inside_only(x):\n", "def inside_only(x):\n# [end on-demand: extra]\n# [on-demand: extra]\n"),
     "toy.py:%d: the on-demand marker lies inside the statement of line %d" % (
         line_of("def inside_only(x):") + 1, line_of("def inside_only(x):"))),
    (("def inside_only(x):\n    return feature(x)\n", "def inside_only(x):\n    return feature(x)\n"
                                                    "# [end on-demand: extra]\n# [on-demand: extra]\n"),
     "block extra is empty"),
])
def test_the_build_refuses_a_block_that_breaks_a_rule(change, message):
    old, new = change
    assert old in TOY
    with pytest.raises(SystemExit) as info:
        build_zipapp.compile_split(TOY.replace(old, new, 1), "toy.py")
    assert message in str(info.value)
