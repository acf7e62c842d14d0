"""How the program starts: the .pyz is reproducible and carries bytecode,
and a passthrough call loads nothing it does not need. (Timings live in
tests/benchmark.py, not here.)"""

import json
import os
import shutil
import subprocess
import zipfile

import build_zipapp
from conftest import SYSTEM_PYTHON

PROBE = r"""
import sys
sys.path.insert(0, sys.argv[1])
import posix
before = set(sys.modules)
import oci_interceptor as m
def fake_execv(path, argv):
    loaded = sorted(set(sys.modules) - before - {"oci_interceptor"})
    print(m.__file__)
    print(" ".join(loaded))
    sys.exit(0)
posix.execv = fake_execv
m.main("oci-interceptor", sys.argv[2:])
"""


def probe(archive, *args, env=None):
    environ = dict(os.environ, OCI_INTERCEPTOR_CONFIG="")
    environ.update(env or {})
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", PROBE, archive] + list(args), env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True)
    module_file, loaded = out.stdout.splitlines()
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


def test_other_interpreters_fall_back_to_the_source(pyz, tmp_path):
    """A .pyc for another Python version (another magic number) is ignored
    and the source in the archive is compiled instead."""
    other = str(tmp_path / "other.pyz")
    with open(pyz, "rb") as f:
        data = bytearray(f.read())
    with zipfile.ZipFile(pyz) as archive:
        pyc = archive.read("oci_interceptor.pyc")
    offset = data.find(pyc)
    data[offset:offset + 2] = b"\x00\x00"         # no Python has magic 0
    with open(other, "wb") as f:
        f.write(data)
    os.chmod(other, 0o755)
    module_file, _ = probe(other, "--oi-runtime-path", "/bin/true", "state", "x")
    assert module_file.endswith(".pyz/oci_interceptor.py")
    result = subprocess.run([other, "--oi-version"], stdout=subprocess.PIPE, check=True)
    assert result.stdout.startswith(b"oci-interceptor ")


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
    and no module is imported beyond those of the same create without them."""
    cdi = tmp_path / "cdi"
    cdi.mkdir()
    (cdi / "broken.json").write_text("{")
    loaded, errors = {}, {}
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
        out = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", PROBE, pyz, "create", "--bundle", str(bundle), "x"],
                             env=dict(os.environ, OCI_INTERCEPTOR_CONFIG=str(config)), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, universal_newlines=True)
        loaded[name] = set(out.stdout.splitlines()[-1].split()) if out.stdout.strip() else None
        errors[name] = out.stderr
    assert loaded["with"] == loaded["without"] and errors["with"] == errors["without"] == ""
    # Asked for, the device is looked for: the broken file is read (and named), the device not found.
    assert "cdi spec %s: skipped" % (cdi / "broken.json") in errors["asking"]
    assert "CDI device example.com/dev=zero: not found" in errors["asking"]


GUARDRAIL_PROBE = PROBE.replace('    print(" ".join(loaded))\n',
                                '    print(" ".join(loaded))\n'
                                '    print(m._preset_table is None, m._capability_table is None)\n')
# A call that applies no rule still checks the rules' shape: capability
# names among them (41 of them, a set made once); the preset levels'
# tables are built only where a preset is evaluated.


def guardrail_probe(archive, config, *args):
    """(modules loaded, preset tables not built, capability table not built)"""
    environ = dict(os.environ, OCI_INTERCEPTOR_CONFIG=config)
    out = subprocess.run([SYSTEM_PYTHON, "-I", "-S", "-c", GUARDRAIL_PROBE, archive] + list(args), env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=True)
    _, loaded, untouched = out.stdout.splitlines()
    presets, capabilities = untouched.split()
    return set(loaded.split()), presets == "True", capabilities == "True"


def test_guardrails_cost_nothing_to_a_policy_without_them(pyz, tmp_path):
    """A create whose policy has no guardrail builds none of their tables;
    one with guardrails builds them and still imports neither json, re nor
    decimal (nor socket, which only syslog needs); a passthrough call
    under a guardrail policy builds nothing."""
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
    loaded, no_presets, no_capabilities = guardrail_probe(pyz, str(plain), *create)
    assert no_presets and no_capabilities and not loaded & {"json", "re", "socket", "decimal"}, loaded
    loaded, no_presets, no_capabilities = guardrail_probe(pyz, str(guarded), *create)
    assert not no_presets and not no_capabilities and not loaded & {"json", "re", "socket", "decimal"}, loaded
    assert json.loads((tmp_path / "config.json").read_text())["process"]["capabilities"] == {"bounding": []}
    loaded, no_presets, _ = guardrail_probe(pyz, str(guarded), "--oi-runtime-path", "/bin/true", "state", "x")
    assert no_presets and not loaded & {"json", "re", "os", "socket"}, loaded
