"""Devices (CDI): spec files (JSON and the YAML vendor tools write), the
"cdi-devices" action, requests by annotation and env variable, as data, as a
process, in real containers under runc and crun, and through the engines:
Docker 20.10 and containerd 1.6's CRI (which have no CDI), and Podman 4.3,
whose own CDI support writes the same edits as ours.

Spec directories are always temporary ones named by "cdi-spec-dirs"; the
host's /etc/cdi and /var/run/cdi are never written (Podman, which reads only
those, runs in a mount namespace of its own where they are the test's)."""

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import given, settings, strategies as st, HealthCheck

import oci_interceptor as oi
from conftest import SYSTEM_PYTHON, need, new_id, run
from test_readme import json_blocks_after

ZERO = "example.com/dev=zero"
SHARED_TEXT = "from the device's mount\n"
# What a container prints: 8 bytes of the device, its env, the mounted file.
PROBE = "head -c 8 /dev/example0 | od -An -tx1; env; cat /opt/example/file.txt"
ZEROS = " 00 00 00 00 00 00 00 00"


def write_json(path, data, mode=0o644):
    with open(str(path), "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(str(path), mode)
    return str(path)


def example_spec(share, marker):
    """The test's device: the host's /dev/zero at /dev/example0, with env
    (spec-wide and the device's own), a bind mount and a hook that marks a
    host file each time it runs."""
    return {
        "cdiVersion": "0.5.0",
        "kind": "example.com/dev",
        "containerEdits": {"env": ["EXAMPLE_SPEC=wide"]},
        "devices": [{
            "name": "zero",
            "containerEdits": {
                "deviceNodes": [{"path": "/dev/example0", "hostPath": "/dev/zero"}],
                "env": ["EXAMPLE_DEVICE=zero"],
                "mounts": [{"hostPath": share, "containerPath": "/opt/example",
                            "options": ["ro", "nosuid", "nodev", "bind"]}],
                "hooks": [{"hookName": "createRuntime", "path": "/bin/sh",
                           "args": ["sh", "-c", "echo ran >> " + shlex.quote(marker)]}]}}]}


# The same device as YAML laid out as nvidia-ctk writes its specs (keys
# sorted, lists at their key's indentation, only what needs it quoted).
EXAMPLE_YAML = """---
cdiVersion: 0.5.0
containerEdits:
  env:
  - EXAMPLE_SPEC=wide
devices:
- containerEdits:
    deviceNodes:
    - hostPath: /dev/zero
      path: /dev/example0
    env:
    - EXAMPLE_DEVICE=zero
    hooks:
    - args:
      - sh
      - -c
      - echo ran >> {marker}
      hookName: createRuntime
      path: /bin/sh
    mounts:
    - containerPath: /opt/example
      hostPath: {share}
      options:
      - ro
      - nosuid
      - nodev
      - bind
  name: zero
kind: example.com/dev
"""


def make_spec_dir(base, fmt="json"):
    """(spec dir, shared dir, hook marker) for the example device."""
    base = str(base)
    spec_dir, share = os.path.join(base, "cdi"), os.path.join(base, "share")
    marker = os.path.join(base, "hook-ran")
    for d in (spec_dir, share):
        os.makedirs(d)
    with open(os.path.join(share, "file.txt"), "w") as f:
        f.write(SHARED_TEXT)
    if fmt == "json":
        write_json(os.path.join(spec_dir, "example.json"), example_spec(share, marker))
    else:
        path = os.path.join(spec_dir, "example.yaml")
        with open(path, "w") as f:
            f.write(EXAMPLE_YAML.format(marker=marker, share=share))
        os.chmod(path, 0o644)
    return spec_dir, share, marker


def hook_runs(marker):
    if not os.path.exists(marker):
        return 0
    with open(marker) as f:
        return f.read().split().count("ran")


def context_for(*dirs):
    return oi.EditContext("c1", cdi_spec_dirs=[str(d) for d in dirs])


def inject(spec, names, context):
    rule = oi.Rule("r", None, {"cdi-devices": list(names)}, "test")
    return oi.apply_rules(spec, [rule], context)


def base_spec(uid=0, gid=0):
    return {"ociVersion": "1.0.2", "process": {"args": ["sh"], "env": ["PATH=/bin"], "user": {"uid": uid, "gid": gid}},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                       {"destination": "/opt/example/sub", "type": "tmpfs", "source": "tmpfs"}],
            "linux": {"resources": {"devices": [{"allow": False, "access": "rwm"}]}}}


# --- the YAML subset --------------------------------------------------------------------

def test_yaml_as_vendor_tools_write_it_reads_as_the_json_spec(tmp_path):
    spec_dir, share, marker = make_spec_dir(tmp_path / "j", "json")
    yaml_dir, _, _ = make_spec_dir(tmp_path / "y", "yaml")
    with open(os.path.join(spec_dir, "example.json")) as f:
        expected = json.load(f)
    with open(os.path.join(yaml_dir, "example.yaml")) as f:
        text = f.read().replace(str(tmp_path / "y"), str(tmp_path / "j"))
    assert oi.parse_yaml_subset(text) == expected


@pytest.mark.parametrize("text, value", [
    ("a: 1\nb: [x, 'y z', \"q\\u00e9\\t\"]\nc: {k: v, \"n\": null}\n",
     {"a": 1, "b": ["x", "y z", "q\u00e9\t"], "c": {"k": "v", "n": None}}),
    ("# comment\n---\nlist:\n  - a   # trailing\n  -   b\n  - - nested\n    - more\n...\n",
     {"list": ["a", "b", ["nested", "more"]]}),
    ("items:\n- name: x\n  deep:\n    k: v\n- name: w\nafter: true\n",
     {"items": [{"name": "x", "deep": {"k": "v"}}, {"name": "w"}], "after": True}),
    ("\"quoted key\": 'it''s'\nempty:\nnone: ~\nneg: -5\nzero: 0\nurl: http://x/y:z\n",
     {"quoted key": "it's", "empty": None, "none": None, "neg": -5, "zero": 0, "url": "http://x/y:z"}),
    ("long: a plain value\n  folded on two\n  lines\nnext: b#c\n", {"long": "a plain value folded on two lines",
                                                                     "next": "b#c"}),
    ("version: 0.5.0\nv: 1.0.0-rc1\nflags: [--x, -y]\n", {"version": "0.5.0", "v": "1.0.0-rc1",
                                                         "flags": ["--x", "-y"]}),
    ("- 1\n- [ ]\n- { }\n", [1, [], {}]),
])
def test_yaml_subset_reads(text, value):
    assert oi.parse_yaml_subset(text) == value


@pytest.mark.parametrize("text, message", [
    ("a: 1\n\tb: 2\n", "line 2: a tab in the indentation"),
    ("a: &x 1\nb: *x\n", "line 1: anchors, aliases and tags (&) are not supported"),
    ("a: !!str 1\n", "line 1: anchors, aliases and tags (!) are not supported"),
    ("a: |\n  text\n", "line 1: block scalars (| and >) are not supported"),
    ("a: 1\n---\nb: 2\n", "line 2: a second document"),
    ("a: 1\na: 2\n", "line 2: duplicate key a"),
    ("a: \"open\n", "line 1: a quoted string must end on its line"),
    ("a:\n  b: 1\n   c: 2\n", "line 3: unexpected indentation"),
    ("? a\n: b\n", "line 1: \"? \" keys are not supported"),
    ("a: b: c\n", "line 1: ': ' in a plain value: quote it"),
    ("a: [1, 2\n", "line 1: a [ list must end on its line"),
    ("%YAML 1.2\n---\na: 1\n", "line 1: a directive (%YAML) is not supported"),
    ("a: \"\\q\"\n", "line 1: an unknown escape \\q"),
    ("a:\n- x\n- y\nb\n", "line 4: expected KEY: VALUE"),
    ("", "no content"),
])
def test_yaml_subset_refuses_with_the_line(text, message):
    with pytest.raises(ValueError) as info:
        oi.parse_yaml_subset(text)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize("plain", ["yes", "No", "on", "OFF", "y", "0644", "0x1F", "1_000", "+5", "1.5", ".5",
                                   "1e3", "12:30", "2024-01-02", ".inf", "-.Inf", ".NaN", "<<"])
def test_plain_scalars_yaml_readers_disagree_on_must_be_quoted_where_read(tmp_path, plain):
    """YAML 1.1 (Go's yaml.v2, which the engines use) and YAML 1.2 read
    these differently: a field read from one is an error; quoted, it is a
    string; in a field this program ignores, it does no harm."""
    doc = ("cdiVersion: 0.6.0\nkind: a.com/b\nfuture: %s\ndevices:\n- name: d\n  containerEdits:\n"
           "    env: [X=1]\n    deviceNodes:\n    - path: %s\n" % (plain, "%s"))
    path = tmp_path / "s.yaml"
    path.write_text(doc % "'/dev/%s'" % plain.replace("'", "''"))
    assert oi.read_cdi_spec(str(path)).devices["d"].nodes[0]["path"] == "/dev/" + plain
    path.write_text(doc % plain)
    with pytest.raises(ValueError) as info:
        oi.read_cdi_spec(str(path))
    assert str(info.value) == ("devices[0].containerEdits.deviceNodes[0].path: line 9: the plain value %s is read "
                               "differently by YAML readers (a boolean, number or date to some): quote it"
                               % oi._quote_for_message(plain))


# Values as CDI specs hold them: objects of lists, strings, integers, booleans.
_chars = st.characters(min_codepoint=32, max_codepoint=0x2ff, blacklist_categories=("Cs", "Cc"))
_keys = st.text(_chars, min_size=1, max_size=12)
_scalars = (st.text(_chars, max_size=30)
            | st.integers(-2 ** 40, 2 ** 40) | st.booleans() | st.none())
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4),
                       max_leaves=20)
_STYLES = ({"default_flow_style": False}, {"default_flow_style": None}, {"default_flow_style": False, "indent": 4},
           {"default_flow_style": False, "explicit_start": True, "explicit_end": True},
           {"default_flow_style": True})
_DUMP = ("import json, sys, yaml\n"
         "docs, style = json.load(sys.stdin)\n"
         "print(json.dumps([yaml.safe_dump(d, width=100000, allow_unicode=style.pop('unicode', False), **style) "
         "for d in docs]))\n")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.dictionaries(_keys, _values, min_size=1, max_size=5), min_size=5, max_size=5),
       st.sampled_from(_STYLES), st.booleans())
def test_yaml_subset_reads_what_pyyaml_writes(docs, style, unicode):
    """The system's PyYAML (a YAML 1.1 writer, as Go's yaml.v2 is) writes
    documents in several layouts; each reads back as the same value."""
    style = dict(style, unicode=unicode)
    out = subprocess.run([SYSTEM_PYTHON, "-c", _DUMP], input=json.dumps([docs, style]).encode(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    need(out.returncode == 0 or b"No module named 'yaml'" not in out.stderr, "python3-yaml is not installed")
    assert out.returncode == 0, out.stderr
    for doc, text in zip(docs, json.loads(out.stdout)):
        assert plain(oi.parse_yaml_subset(text)) == doc, text


def plain(value):
    """A read value with each YamlAmbiguous as the string PyYAML meant (a
    YAML 1.1 writer leaves 1e3 or y unquoted; Go's YAML 1.1 reads 1e3 as a
    number, YAML 1.2 reads y as a string): where such a value is read as a
    spec field, it is refused until quoted."""
    if isinstance(value, oi.YamlAmbiguous):
        return value.text
    if isinstance(value, dict):
        return dict((k, plain(v)) for k, v in value.items())
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# --- spec files ------------------------------------------------------------------------

def spec_file(tmp_path, data, name="s.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else data)
    return str(path)


def minimal(**changes):
    data = {"cdiVersion": "0.3.0", "kind": "v.com/c", "devices": [{"name": "d", "containerEdits": {"env": ["A=1"]}}]}
    data.update(changes)
    return data


@pytest.mark.parametrize("version", ["0.3.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0", "1.9.3"])
def test_spec_versions_in_use_are_read(tmp_path, version):
    assert oi.read_cdi_spec(spec_file(tmp_path, minimal(cdiVersion=version))).version == version


def test_unknown_and_newer_fields_are_ignored(tmp_path):
    """hostPath (0.5.0) and additionalGids (0.7.0), which strict readers of
    older versions refuse, and fields newer than anything known."""
    data = minimal(cdiVersion="1.1.0", annotations={"a": "b"}, futureField={"x": [1]})
    data["devices"][0]["containerEdits"] = {
        "deviceNodes": [{"path": "/dev/x", "hostPath": "/dev/null", "futureKnob": True}],
        "additionalGids": [5, 0], "netDevices": [{"hostInterfaceName": "eth1", "name": "e"}],
        "intelRdt": {"closID": "x"}, "somethingNew": 1}
    spec = oi.read_cdi_spec(spec_file(tmp_path, data))
    edits = spec.devices["d"]
    assert edits.nodes[0]["hostPath"] == "/dev/null" and edits.gids == [5, 0]
    assert edits.not_applied == ["intelRdt", "netDevices"]


def test_a_yaml_file_may_hold_json_and_start_with_a_bom(tmp_path):
    path = spec_file(tmp_path, "\ufeff" + json.dumps(minimal(), indent=2), "s.yaml")
    assert oi.read_cdi_spec(path).devices["d"].env == ["A=1"]
    path = spec_file(tmp_path, "\ufeffcdiVersion: 0.3.0\nkind: v.com/c\ndevices: [{name: d, containerEdits: {env: [A=1]}}]\n",
                     "t.yaml")
    assert oi.read_cdi_spec(path).kind == "v.com/c"


def test_field_names_are_matched_as_go_matches_them(tmp_path):
    data = minimal()
    data["devices"][0]["containerEdits"] = {"Env": ["A=1"], "additionalGIDs": [7]}
    assert oi.read_cdi_spec(spec_file(tmp_path, data)).devices["d"].gids == [7]
    data["devices"][0]["containerEdits"]["env"] = ["B=2"]
    with pytest.raises(ValueError, match=r"devices\[0\].containerEdits.env: given twice"):
        oi.read_cdi_spec(spec_file(tmp_path, data))


@pytest.mark.parametrize("change, message", [
    ({"cdiVersion": "0.2.0"}, "cdiVersion: 0.2.0 is not read here (0.3.0 up to 1.x are)"),
    ({"cdiVersion": "2.0.0"}, "cdiVersion: 2.0.0 is not read here"),
    ({"cdiVersion": "0.6"}, "cdiVersion: expected a version such as \"0.6.0\", found \"0.6\""),
    ({"kind": "vendor"}, "kind: expected vendor.com/class, found \"vendor\""),
    ({"kind": "1v.com/c"}, "kind: vendor 1v.com must start with a letter"),
    ({"kind": "v.com/c/d"}, "kind: class c/d has the character /"),
    ({"devices": []}, "devices: expected a non-empty list of devices"),
    ({"devices": [{"name": "d"}]}, "devices[0].containerEdits: a device needs at least one edit"),
    ({"devices": [{"name": "-d", "containerEdits": {"env": ["A=1"]}}]},
     "devices[0].name: device name -d must start with a letter or digit"),
    ({"devices": [{"name": 0, "containerEdits": {"env": ["A=1"]}}]}, "devices[0].name: expected a string, found 0"),
    ({"devices": [{"name": "d", "containerEdits": {"env": ["=1"]}}]},
     "devices[0].containerEdits.env[0]: expected NAME=VALUE, found \"=1\""),
    ({"devices": [{"name": "d", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "type": "x"}]}}]},
     "devices[0].containerEdits.deviceNodes[0].type: expected b, c, u or p"),
    ({"devices": [{"name": "d", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rx"}]}}]},
     "devices[0].containerEdits.deviceNodes[0].permissions: expected some of r, w, m (or none)"),
    ({"devices": [{"name": "d", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "major": -1}]}}]},
     "devices[0].containerEdits.deviceNodes[0].major: expected a whole number"),
    ({"devices": [{"name": "d", "containerEdits": {"mounts": [{"hostPath": "/x"}]}}]},
     "devices[0].containerEdits.mounts[0]: a mount needs a hostPath and a containerPath"),
    ({"devices": [{"name": "d", "containerEdits": {"hooks": [{"hookName": "prestop", "path": "/x"}]}}]},
     "devices[0].containerEdits.hooks[0].hookName: expected one of prestart, createRuntime"),
    ({"devices": [{"name": "d", "containerEdits": {"env": ["A=1"]}}, {"name": "d", "containerEdits": {"env": ["A=1"]}}]},
     "devices[1].name: a device named d exists already"),
])
def test_invalid_specs_say_where_and_what(tmp_path, change, message):
    with pytest.raises(ValueError) as info:
        oi.read_cdi_spec(spec_file(tmp_path, minimal(**change)))
    assert str(info.value).startswith(message), str(info.value)


def test_cache_later_directory_wins_conflicts_and_skipped_files(tmp_path, capsys):
    first, second = tmp_path / "etc", tmp_path / "run"
    first.mkdir()
    second.mkdir()
    spec_file(first, minimal(), "a.json")
    spec_file(second, minimal(devices=[{"name": "d", "containerEdits": {"env": ["A=2"]}}]), "b.json")
    spec_file(first, minimal(kind="v.com/two"), "c.json")
    spec_file(first, minimal(kind="v.com/two"), "d.json")       # the same device twice in one directory
    (first / "e.yaml").write_text("cdiVersion: [\n")
    (first / "notes.txt").write_text("not a spec")
    (first / "sub.json").mkdir()                                # subdirectories are not read
    cache = oi.CdiCache([str(first), str(second), str(tmp_path / "missing")])
    assert cache.device("v.com/c=d")[1].env == ["A=2"]
    with pytest.raises(oi.InterceptorError) as info:
        cache.device("v.com/two=d")
    assert str(info.value) == ("CDI device v.com/two=d is defined by more than one spec file of a directory "
                               "(%s/c.json, %s/d.json): refusing to choose" % (first, first))
    assert cache.skipped == [(str(first / "e.yaml"), "line 1: a [ list must end on its line")]
    assert capsys.readouterr().err == ("oci-interceptor: warning: cdi spec %s/e.yaml: skipped, line 1: a [ list must "
                                       "end on its line\n" % first)
    with pytest.raises(oi.InterceptorError) as info:
        cache.device("v.com/c=nope")
    assert str(info.value) == ("CDI device v.com/c=nope: not found in the CDI spec dirs %s, %s, %s/missing; "
                               "skipped: %s/e.yaml" % (first, second, tmp_path, first))


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership check applies to root")
def test_root_skips_spec_files_and_dirs_others_can_write(tmp_path):
    """A spec's hooks run as root on the host: as root, a file or directory
    another user can write is skipped, as policy files are refused."""
    good, writable = tmp_path / "good", tmp_path / "writable"
    good.mkdir()
    writable.mkdir()
    spec_file(good, minimal(), "a.json")
    spec_file(good, minimal(kind="v.com/other"), "b.json")
    os.chmod(str(good / "b.json"), 0o666)
    spec_file(writable, minimal(kind="v.com/third"), "c.json")
    os.chmod(str(writable), 0o777)
    cache = oi.CdiCache([str(good), str(writable)], warn=False)
    assert sorted(cache.devices) == ["v.com/c=d"]
    assert [path for path, _ in cache.skipped] == [str(good / "b.json"), str(writable)]
    assert "writable by a non-root user" in cache.skipped[0][1]


# --- the edits -------------------------------------------------------------------------

def test_edits_as_the_reference_library_applies_them(tmp_path):
    spec_dir, share, marker = make_spec_dir(tmp_path)
    spec = base_spec(uid=1000, gid=1001)
    spec["process"]["env"].append("EXAMPLE_DEVICE=mine")
    changes = inject(spec, [ZERO], context_for(spec_dir))
    assert spec["linux"]["devices"] == [{"path": "/dev/example0", "type": "c", "major": 1, "minor": 5,
                                         "uid": 1000, "gid": 1001}]
    assert spec["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"},
                                                     {"allow": True, "type": "c", "major": 1, "minor": 5,
                                                      "access": "rwm"}]
    # env replaces the container's value (as the library does), spec-wide first
    assert spec["process"]["env"] == ["PATH=/bin", "EXAMPLE_DEVICE=zero", "EXAMPLE_SPEC=wide"]
    # the mount goes before the mount nested under it
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/opt/example", "/opt/example/sub"]
    assert spec["mounts"][1] == {"destination": "/opt/example", "source": share,
                                 "options": ["ro", "nosuid", "nodev", "bind"]}
    assert spec["hooks"] == {"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo ran >> " + marker]}]}
    assert changes == [
        "r: cdi example.com/dev (spec-wide): process.env: added EXAMPLE_SPEC",
        "r: cdi example.com/dev=zero: process.env[1]: replaced EXAMPLE_DEVICE",
        "r: cdi example.com/dev=zero: linux.devices: added /dev/example0 (c 1:5, host /dev/zero)",
        "r: cdi example.com/dev=zero: linux.resources.devices: allowed c 1:5 rwm",
        "r: cdi example.com/dev=zero: mounts[1] (/opt/example): added",
        "r: cdi example.com/dev=zero: hooks.createRuntime: added /bin/sh"]
    # Idempotent: the same call again changes nothing.
    before = copy.deepcopy(spec)
    assert inject(spec, [ZERO, ZERO], context_for(spec_dir)) == []
    assert spec == before


def test_device_numbers_permissions_gids_and_replacing(tmp_path):
    data = minimal(cdiVersion="0.7.0", containerEdits={"additionalGids": [44, 0]}, devices=[
        {"name": "given", "containerEdits": {"deviceNodes": [
            {"path": "/dev/blk", "type": "b", "major": 8, "minor": 1, "permissions": "r", "fileMode": 0o660,
             "uid": 5, "gid": 6}]}},
        {"name": "fifo", "containerEdits": {"deviceNodes": [{"path": "/dev/fifo", "type": "p"}]}},
        {"name": "none", "containerEdits": {"deviceNodes": [{"path": "/dev/null", "permissions": "none"}],
                                            "additionalGids": [44, 45]}},
        {"name": "mismatch", "containerEdits": {"deviceNodes": [{"path": "/dev/null", "type": "b"}]}},
        {"name": "missing", "containerEdits": {"deviceNodes": [{"path": "/dev/oi-test-no-such-device"}]}}])
    spec_file(tmp_path, data)
    spec = base_spec()
    spec["linux"]["devices"] = [{"path": "/dev//blk", "type": "c", "major": 1, "minor": 1}]
    context = context_for(tmp_path)
    changes = inject(spec, ["v.com/c=given", "v.com/c=fifo", "v.com/c=none"], context)
    assert spec["linux"]["devices"] == [
        {"path": "/dev/blk", "type": "b", "major": 8, "minor": 1, "fileMode": 0o660, "uid": 5, "gid": 6},
        {"path": "/dev/fifo", "type": "p", "major": 0, "minor": 0},
        {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}]
    assert spec["linux"]["resources"]["devices"][1:] == [
        {"allow": True, "type": "b", "major": 8, "minor": 1, "access": "r"},
        {"allow": True, "type": "c", "major": 1, "minor": 3}]
    assert spec["process"]["user"]["additionalGids"] == [44, 45]
    assert "hooks" not in spec                  # no empty object added where nothing goes
    assert "r: cdi v.com/c=given: linux.devices: replaced /dev/blk (b 8:1)" in changes
    assert context.cdi_resolved == [("v.com/c=given", str(tmp_path / "s.json")), ("v.com/c=fifo", str(tmp_path / "s.json")),
                                    ("v.com/c=none", str(tmp_path / "s.json"))]
    with pytest.raises(oi.InterceptorError) as info:
        inject(base_spec(), ["v.com/c=mismatch"], context)
    assert str(info.value) == ("rule r: cdi-devices: device /dev/null: the spec says type b, the host node /dev/null "
                               "is c")
    with pytest.raises(oi.InterceptorError) as info:
        inject(base_spec(), ["v.com/c=missing"], context)
    assert str(info.value) == ("rule r: cdi-devices: cannot stat the host device /dev/oi-test-no-such-device: "
                               "No such file or directory")


def test_an_allow_rule_is_added_again_after_a_deny_that_covers_it(tmp_path):
    spec_dir, _, _ = make_spec_dir(tmp_path)
    spec = base_spec()
    inject(spec, [ZERO], context_for(spec_dir))
    spec["linux"]["resources"]["devices"].append({"allow": False, "type": "c", "major": 1, "access": "rwm"})
    assert inject(spec, [ZERO], context_for(spec_dir)) == [
        "r: cdi example.com/dev=zero: linux.resources.devices: allowed c 1:5 rwm"]
    spec["linux"]["resources"]["devices"].append({"allow": False, "type": "b", "access": "rwm"})
    assert inject(spec, [ZERO], context_for(spec_dir)) == []


def test_the_rules_other_actions_see_the_devices_edits(tmp_path):
    """cdi-devices applies first in its rule: env-unset, readonly-mounts and
    json-patch of the same rule work on what it added."""
    spec_dir, _, _ = make_spec_dir(tmp_path)
    spec = base_spec()
    rule = oi.Rule("r", None, {"cdi-devices": [ZERO], "env-unset": ["EXAMPLE_SPEC"], "readonly-mounts": ["/opt/*"],
                               "json-patch": [{"op": "test", "path": "/linux/devices/0/path",
                                               "value": "/dev/example0"}]}, "test")
    oi.apply_rules(spec, [rule], context_for(spec_dir))
    assert "EXAMPLE_SPEC=wide" not in spec["process"]["env"]
    assert spec["mounts"][1]["options"] == ["ro", "nosuid", "nodev", "bind"]


def test_malformed_configs_are_refused_by_key_path(tmp_path):
    spec_dir, _, _ = make_spec_dir(tmp_path)
    for spec, message in (({"linux": []}, "linux is not an object"),
                          ({"linux": {"devices": {}}}, "linux.devices is not a list"),
                          ({"linux": {"resources": {"devices": 1}}}, "linux.resources.devices is not a list")):
        with pytest.raises(oi.InterceptorError, match="rule r: cdi-devices: " + message):
            inject(spec, [ZERO], context_for(spec_dir))


# --- requests --------------------------------------------------------------------------

def requests(spec, **settings):
    policy = oi.Policy()
    for key, value in settings.items():
        setattr(policy, key, value)
    return [(rule.name, rule.actions["cdi-devices"]) for rule in oi.cdi_request_rules(spec, policy)]


def test_requests_by_annotation_and_by_the_admins_env_variable():
    spec = {"process": {"env": ["WANT=a.com/b=c, a.com/b=d", "WANT=a.com/b=e,"]},
            "annotations": {"cdi.k8s.io/z": "a.com/b=1,a.com/b=2", "cdi.k8s.io/a": "x.org/y=z", "other": "v.com/c=d"}}
    assert requests(spec) == [("(cdi annotation cdi.k8s.io/a)", ["x.org/y=z"]),
                              ("(cdi annotation cdi.k8s.io/z)", ["a.com/b=1", "a.com/b=2"])]
    # The env variable only when the admin names one (an image's own env could ask).
    assert requests(spec, cdi_annotations=False) == []
    assert requests(spec, cdi_annotations=False, cdi_env="WANT") == [("(cdi env WANT)", ["a.com/b=e"])]
    # A CRI pod sandbox gets the pod's annotations too, but no devices.
    spec["annotations"]["io.kubernetes.cri.container-type"] = "sandbox"
    assert requests(spec, cdi_env="WANT") == []


@pytest.mark.parametrize("spec, message", [
    ({"annotations": {"cdi.k8s.io/x": "a.com/b=c,nvidia"}},
     "annotation cdi.k8s.io/x: nvidia is not a fully qualified CDI device name (vendor.com/class=name)"),
    ({"annotations": {"cdi.k8s.io/x": "a.com/b=c, a.com/b=d"}},
     "annotation cdi.k8s.io/x: ' a.com/b=d': vendor ' a.com' must start with a letter"),
    ({"annotations": {"cdi.k8s.io/x": 5}}, "annotation cdi.k8s.io/x: expected a string of CDI device names"),
    ({"process": {"env": ["WANT=all"]}}, "env WANT: all is not a fully qualified CDI device name"),
])
def test_a_bad_request_refuses_the_container(spec, message):
    with pytest.raises(oi.InterceptorError) as info:
        requests(spec, cdi_env="WANT")
    assert str(info.value) == message or str(info.value).startswith(message), str(info.value)


# --- policy ------------------------------------------------------------------------------

def test_settings_and_the_action_in_a_config_file(tmp_path):
    config = write_json(tmp_path / "config.json", {
        "version": 1, "cdi-spec-dirs": ["cdi", "/run/cdi"], "cdi-env": "CDI_DEVICES", "cdi-annotations": False,
        "rules": [{"name": "gpu", "cdi-devices": ["nvidia.com/gpu=0", "nvidia.com/gpu=all"]}],
        "profiles": {"p": {"cdi-spec-dirs": [], "cdi-env": ""}}})
    opts, _ = oi.split_command_line(["--oi-config", config, "create", "x"])
    policy = oi.load_policy(opts, "oci-interceptor")
    assert policy.cdi_spec_dirs == [str(tmp_path / "cdi"), "/run/cdi"]
    assert (policy.cdi_env, policy.cdi_annotations) == ("CDI_DEVICES", False)
    assert policy.rules[0].actions == {"cdi-devices": ["nvidia.com/gpu=0", "nvidia.com/gpu=all"]}
    profiled = oi.load_policy(oi.split_command_line(["--oi-config", config, "--oi-profile", "p", "create", "x"])[0],
                              "oci-interceptor")
    assert (profiled.cdi_spec_dirs, profiled.cdi_env) == ([], None)
    defaults = oi.load_policy(oi.split_command_line(["--oi-config=", "create", "x"])[0], "oci-interceptor")
    assert (defaults.cdi_spec_dirs, defaults.cdi_env, defaults.cdi_annotations) == (["/etc/cdi", "/var/run/cdi"],
                                                                                   None, True)


@pytest.mark.parametrize("config, message", [
    ({"rules": [{"cdi-devices": ["gpu0"]}]},
     "rules[0].cdi-devices[0]: gpu0 is not a fully qualified CDI device name (vendor.com/class=name)"),
    ({"rules": [{"cdi-devices": "a.com/b=c"}]}, "rules[0].cdi-devices: expected a list of strings"),
    ({"cdi-env": "A=B"}, "cdi-env: expected a variable name (or \"\" for none), found \"A=B\""),
    ({"cdi-spec-dirs": [""]}, "cdi-spec-dirs[0]: expected a non-empty path"),
    ({"cdi-annotations": "no"}, "cdi-annotations: expected true or false"),
])
def test_bad_cdi_settings_name_the_key(tmp_path, config, message):
    path = write_json(tmp_path / "config.json", dict(config, version=1))
    with pytest.raises(oi.ConfigError) as info:
        oi.load_policy(oi.split_command_line(["--oi-config", path, "create", "x"])[0], "oci-interceptor")
    assert str(info.value).startswith("config %s: %s" % (path, message)), str(info.value)


# --- as a process (a recording fake runtime) ---------------------------------------------

def bundle_with(directory, annotations=None, env=("PATH=/bin",)):
    directory.mkdir()
    spec = base_spec()
    spec["process"]["env"] = list(env)
    spec["hostname"] = "box"
    if annotations:
        spec["annotations"] = annotations
    write_json(directory / "config.json", spec)
    return str(directory)


def test_a_broken_spec_file_is_skipped_with_a_warning_and_other_devices_work(pyz, fake, tmp_path):
    spec_dir, _, _ = make_spec_dir(tmp_path, "yaml")
    broken = os.path.join(spec_dir, "broken.yaml")
    with open(broken, "w") as f:
        f.write("cdiVersion: 0.6.0\nkind: example.com/dev\ndevices:\n- name: other\n  containerEdits: {env: [B=1]}\n"
                "  name: again\n")
    os.chmod(broken, 0o644)
    config = write_json(tmp_path / "config.json", {"version": 1, "runtime-path": fake.runtime,
                                                    "cdi-spec-dirs": [spec_dir]})
    bundle = bundle_with(tmp_path / "b", {"cdi.k8s.io/test": ZERO})
    result = run([pyz], ["--oi-config", config, "create", "--bundle", bundle, "c"], fake)
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode() == ("oci-interceptor: warning: cdi spec %s: skipped, line 6: duplicate key name\n"
                                      % broken)
    with open(os.path.join(bundle, "config.json")) as f:
        assert json.load(f)["linux"]["devices"][0]["path"] == "/dev/example0"
    assert fake.called()


def test_a_missing_device_refuses_the_container_naming_it_and_the_dirs(pyz, fake, tmp_path):
    spec_dir, _, _ = make_spec_dir(tmp_path)
    config = write_json(tmp_path / "config.json", {
        "version": 1, "runtime-path": fake.runtime, "cdi-spec-dirs": [spec_dir, "/nonexistent/cdi"],
        "rules": [{"name": "gpu", "cdi-devices": [ZERO, "example.com/dev=one"]}]})
    bundle = bundle_with(tmp_path / "b")
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    log = tmp_path / "log.json"
    result = run([pyz], ["--oi-config", config, "--log", str(log), "--log-format", "json", "create", "--bundle",
                         bundle, "c"], fake)
    message = ("oci-interceptor: rule gpu: cdi-devices: CDI device example.com/dev=one: not found in the CDI spec "
               "dirs %s, /nonexistent/cdi" % spec_dir)
    assert (result.returncode, result.stderr.decode()) == (1, message + "\n")
    assert json.loads(log.read_text())["msg"] == message
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw
    assert not fake.called()


def test_dry_run_lists_the_devices_and_each_edit_and_check_config_the_files(pyz, fake, tmp_path):
    spec_dir, _, _ = make_spec_dir(tmp_path)
    write_json(os.path.join(spec_dir, "gpu.json"), minimal(cdiVersion="1.1.0", kind="v.com/gpu", devices=[
        {"name": "0", "containerEdits": {"env": ["G=0"], "netDevices": [{"hostInterfaceName": "a", "name": "b"}]}}]))
    with open(os.path.join(spec_dir, "bad.json"), "w") as f:
        f.write("{")
    config = write_json(tmp_path / "config.json", {
        "version": 1, "runtime-path": fake.runtime, "cdi-spec-dirs": [spec_dir], "cdi-env": "CDI",
        "rules": [{"name": "gpu", "cdi-devices": ["v.com/gpu=0", "v.com/gpu=1"], "when": {"hostname": "^gpu"}}]})
    bundle = bundle_with(tmp_path / "b", env=["PATH=/bin", "CDI=" + ZERO])
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    result = run([pyz], ["--oi-config", config, "--oi-dry-run", "create", "--bundle", bundle, "c"], fake)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    assert "rules matched: (cdi env CDI)" in out
    assert "cdi device: %s (%s/example.json)" % (ZERO, spec_dir) in out
    assert "cdi spec skipped: %s/bad.json: Expecting property name enclosed in double quotes: line 1 column 2" \
        % spec_dir in out
    assert "  (cdi env CDI): cdi example.com/dev=zero: linux.resources.devices: allowed c 1:5 rwm" in out
    assert "+      \"EXAMPLE_DEVICE=zero\"," in out or "+      \"EXAMPLE_DEVICE=zero\"" in out
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw and not fake.called()

    result = run([pyz], ["--oi-config", config, "--oi-check-config"])
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    assert "cdi spec dirs: %s" % spec_dir in out
    assert "cdi requests: rules (cdi-devices), annotations cdi.k8s.io/* (on), env variable CDI" in out
    assert out[out.index("cdi device: %s (%s/example.json)" % (ZERO, spec_dir)) + 1] == (
        "cdi device: v.com/gpu=0 (%s/gpu.json); not applied: netDevices" % spec_dir)
    assert "cdi spec skipped: %s/bad.json: Expecting property name enclosed in double quotes: line 1 column 2" \
        % spec_dir in out
    assert ("    not available now: CDI device v.com/gpu=1: not found in the CDI spec dirs %s; skipped: %s/bad.json"
            % (spec_dir, spec_dir)) in out


# --- real containers: runc and crun ------------------------------------------------------

def private_bundle(tmp_path, rootfs, template, args):
    """A bundle with a root filesystem of its own that has /opt/example (the
    shared one is read-only, so nothing can be created in it)."""
    import conftest
    root = str(tmp_path / "rootfs")
    shutil.copytree(rootfs, root, symlinks=True)
    os.makedirs(os.path.join(root, "opt", "example"))
    directory = tmp_path / "bundle"
    directory.mkdir()
    bundle = conftest.make_bundle(directory, root, template, args)
    return bundle


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_the_device_in_a_real_container(pyz, runtime, rootfs, spec_template, tmp_path, fmt):
    """runc's and crun's own spec denies every device but a few: the node is
    readable because its allow rule is there; the env, the mount and the
    hook are the spec's."""
    spec_dir, _, marker = make_spec_dir(tmp_path / "spec", fmt)
    config = write_json(tmp_path / "config.json", {"version": 1, "cdi-spec-dirs": [spec_dir],
                                                    "rules": [{"name": "zero", "cdi-devices": [ZERO]}]})
    bundle = private_bundle(tmp_path, rootfs, spec_template, ["sh", "-c", PROBE])
    cid = new_id()
    try:
        result = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path, "--root", runtime.root,
                                 "run", "--bundle", bundle.path, cid], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, timeout=60)
    finally:
        runtime("delete", "--force", cid)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode().splitlines()
    assert out[0] == ZEROS
    assert "EXAMPLE_DEVICE=zero" in out and "EXAMPLE_SPEC=wide" in out
    assert out[-1] == SHARED_TEXT.strip()
    assert hook_runs(marker) == 1


def unused_char_major():
    """A character device major no driver has registered here: opening such
    a node fails with ENXIO once the cgroup allows it, EPERM before."""
    with open("/proc/devices") as f:
        text = f.read().split("Block devices:")[0]
    used = {int(line.split()[0]) for line in text.splitlines()[1:] if line.strip()}
    free = [major for major in range(234, 240) if major not in used]
    need(free, "no unused character device major in 234-239")
    return free[0]


def test_the_allow_rule_is_what_opens_the_node(pyz, runtime, rootfs, spec_template, tmp_path):
    """The control: /dev/zero's numbers are allowed by every engine anyway,
    so a node of a major no engine allows (and no driver serves) shows the
    rule's effect. With the rule it reaches the kernel (ENXIO: no driver);
    with the rule removed again by a json-patch after cdi-devices in the
    same rule, the device cgroup refuses it (EPERM)."""
    major = unused_char_major()
    spec_dir = tmp_path / "cdi"
    spec_dir.mkdir()
    write_json(spec_dir / "free.json", {"cdiVersion": "0.3.0", "kind": "example.com/free", "devices": [
        {"name": "node", "containerEdits": {"deviceNodes": [
            {"path": "/dev/example-free", "type": "c", "major": major, "minor": 0}]}}]})
    allowed = len(spec_template["linux"]["resources"]["devices"])
    outputs = {}
    for name, patch in (("with", []), ("without", [{"op": "remove", "path": "/linux/resources/devices/%d" % allowed}])):
        rule = {"name": "free", "cdi-devices": ["example.com/free=node"]}
        if patch:
            rule["json-patch"] = [{"op": "test", "path": "/linux/resources/devices/%d/major" % allowed,
                                   "value": major}] + patch
        config = write_json(tmp_path / ("%s.json" % name), {"version": 1, "cdi-spec-dirs": [str(spec_dir)],
                                                             "rules": [rule]})
        bundle_dir = tmp_path / name
        bundle_dir.mkdir()
        import conftest
        bundle = conftest.make_bundle(bundle_dir, rootfs, spec_template,
                                      ["sh", "-c", "ls /dev/example-free && head -c 1 /dev/example-free"])
        cid = new_id()
        try:
            result = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path, "--root",
                                     runtime.root, "run", "--bundle", bundle.path, cid], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        finally:
            runtime("delete", "--force", cid)
        assert result.returncode == 1 and result.stdout == b"/dev/example-free\n", result
        outputs[name] = result.stderr.decode()
    assert "No such device or address" in outputs["with"], outputs
    assert "Operation not permitted" in outputs["without"], outputs


# --- Docker 20.10: registered by path, requests by rule and by env variable --------------

@pytest.fixture(scope="module")
def docker_cdi(pyz, rootfs_tar, tmp_path_factory):
    need(shutil.which("dockerd") and shutil.which("docker"), "docker.io is not installed")
    import engines
    from test_engines import _with_program
    path_only = json_blocks_after("## Register it with Docker")[0]
    daemon = engines.Docker(_with_program(path_only, pyz), rootfs_tar)
    try:
        yield daemon
    finally:
        daemon.stop()


def test_docker_gets_the_device_by_rule_and_by_env_variable(docker_cdi, tmp_path):
    """The README's Docker recipe, with the test's device and spec dir."""
    spec_dir, _, marker = make_spec_dir(tmp_path, "yaml")
    (policy,) = json_blocks_after("## Devices (CDI)")
    policy = json.loads(json.dumps(policy).replace("nvidia.com/gpu=all", ZERO))
    policy["cdi-spec-dirs"] = [spec_dir]
    docker_cdi.write_policy(policy)
    by_rule = docker_cdi.run("--hostname", "gpu-1", docker_cdi.image, "sh", "-c", PROBE)
    by_env = docker_cdi.run("-e", "CDI_DEVICES=" + ZERO, docker_cdi.image, "sh", "-c", PROBE)
    for result in (by_rule, by_env):
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode().splitlines()
        assert out[0] == ZEROS and out[-1] == SHARED_TEXT.strip()
        assert "EXAMPLE_DEVICE=zero" in out and "EXAMPLE_SPEC=wide" in out
    assert hook_runs(marker) == 2
    plain = docker_cdi.run(docker_cdi.image, "sh", "-c", "env; ls /dev/example0 /opt/example")
    assert plain.returncode != 0 and b"EXAMPLE_DEVICE" not in plain.stdout
    assert b"/dev/example0: No such file or directory" in plain.stderr
    missing = docker_cdi.run("-e", "CDI_DEVICES=example.com/dev=gone", docker_cdi.image, "true")
    assert missing.returncode != 0
    assert ("oci-interceptor: rule (cdi env CDI_DEVICES): cdi-devices: CDI device example.com/dev=gone: not found "
            "in the CDI spec dirs %s" % spec_dir) in missing.stderr.decode()
    assert hook_runs(marker) == 2


# --- containerd 1.6 CRI: the request by pod annotation ------------------------------------

def test_kubernetes_pod_annotation_through_containerd_cri(pyz, rootfs, tmp_path):
    import engines
    from test_kubernetes import BUSYBOX, PAUSE, cri_images
    base, busybox, pause = cri_images(rootfs, "oi-cdi-")
    try:
        snippet = subprocess.run([pyz, "--oi-register", "containerd"], stdout=subprocess.PIPE,
                                 check=True).stdout.decode()
        readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
        assert 'pod_annotations = ["cdi.k8s.io/*"]' in readme[readme.index("### With Kubernetes (containerd 1.6)"):]
        daemon = engines.ContainerdCRI(base, snippet, [busybox, pause], PAUSE, pod_annotations=["cdi.k8s.io/*"])
        try:
            spec_dir, _, marker = make_spec_dir(os.path.join(base, "t"))
            daemon.write_policy({"version": 1, "cdi-spec-dirs": [spec_dir]})
            config = daemon.sandbox_config("gpu", "default", {"cdi.k8s.io/example": ZERO})
            pod_id = daemon.run_pod(config)
            try:
                out_dir = os.path.join(base, "out")
                os.makedirs(out_dir)
                container_id = daemon.create_container(
                    pod_id, config, "probe", BUSYBOX, ["sh", "-c", "(%s) > /out/probe" % PROBE],
                    mounts=[("/out", out_dir)])
                daemon.cri.StartContainer(daemon.pb.StartContainerRequest(container_id=container_id), timeout=60)
                status = daemon.wait_exited(container_id)
                assert status.exit_code == 0, status.message
                with open(os.path.join(out_dir, "probe")) as f:
                    out = f.read().splitlines()
                assert out[0] == ZEROS and out[-1] == SHARED_TEXT.strip()
                assert "EXAMPLE_DEVICE=zero" in out and "EXAMPLE_SPEC=wide" in out
                assert hook_runs(marker) == 1                           # the app container's, not the sandbox's
                sandbox = daemon.bundle_config(pod_id)
                assert sandbox["annotations"]["cdi.k8s.io/example"] == ZERO
                assert "devices" not in sandbox["linux"] or not any(
                    d["path"] == "/dev/example0" for d in sandbox["linux"]["devices"])
            finally:
                daemon.remove_pod(pod_id)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# --- side by side with Podman 4.3's own CDI ---------------------------------------------

RECORDER = """#!/bin/sh
# Keeps a copy of the config.json of each create, then runs runc.
prev=""
for a; do
    if [ "$prev" = "--bundle" ]; then cp "$a/config.json" %s; fi
    prev=$a
done
exec %s "$@"
"""


def test_podman_native_cdi_and_ours_write_the_same_edits(pyz, rootfs_tar):
    """The same YAML spec and request through Podman's own CDI (`--device
    example.com/dev=zero`) and through our rule: the devices, cgroup rules,
    env, mounts and hooks of both config.json files (kept by a recording
    runtime) are the same. Deliberate differences: Podman's CDI library
    re-sorts all mounts by depth while we add the device's mount where
    add-mounts would (so mounts are compared as sets); Podman's env order
    is its own (random) one, with CDI's entries last in both."""
    need(shutil.which("podman") and shutil.which("conmon") and shutil.which("unshare"), "podman is not installed")
    import engines
    runc = shutil.which("runc")
    base = tempfile.mkdtemp(prefix="oi-pcdi-", dir="/tmp")     # Podman's runroot: 50 characters at most
    try:
        spec_dir, _, marker = make_spec_dir(os.path.join(base, "t"), "yaml")
        recorded = os.path.join(base, "recorded.json")
        recorder = os.path.join(base, "recorder")
        with open(recorder, "w") as f:
            f.write(RECORDER % (shlex.quote(recorded), shlex.quote(runc)))
        os.chmod(recorder, 0o755)
        snippet = subprocess.run([pyz, "--oi-register", "podman"], stdout=subprocess.PIPE,
                                 check=True).stdout.decode()
        engine = engines.Podman(base, snippet, rootfs_tar, etc_cdi=spec_dir)
        try:
            engine.write_policy({"version": 1, "runtime-path": recorder, "cdi-spec-dirs": [spec_dir],
                                 "rules": [{"name": "example", "cdi-devices": [ZERO]}]})
            configs, outputs = [], []
            for runtime, extra in ((recorder, ["--device", ZERO]), (pyz, [])):
                result = engine.podman("--runtime", runtime, "run", "--rm", "--network", "none", *engine.ULIMITS,
                                       "--user", "1000:1001", *extra, engine.image, "sh", "-c", PROBE)
                assert result.returncode == 0, result.stderr
                outputs.append(sorted(line for line in result.stdout.decode().splitlines()
                                      if not line.startswith("HOSTNAME=")))
                with open(recorded) as f:
                    configs.append(json.load(f))
                os.unlink(recorded)
            hooks_ran = hook_runs(marker)
        finally:
            engine.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    native, ours = configs
    # What the containers saw: the same, the device's zeros among it; the hook ran for each.
    assert outputs[0] == outputs[1] and ZEROS in outputs[0] and hooks_ran == 2
    assert native["linux"]["devices"] == ours["linux"]["devices"] == [
        {"path": "/dev/example0", "type": "c", "major": 1, "minor": 5, "uid": 1000, "gid": 1001}]
    assert native["linux"]["resources"]["devices"] == ours["linux"]["resources"]["devices"]
    assert native["hooks"] == ours["hooks"]

    def env(config):
        return [e for e in config["process"]["env"] if not e.startswith("HOSTNAME=")]
    assert sorted(env(native)) == sorted(env(ours))
    assert env(native)[-2:] == env(ours)[-2:] == ["EXAMPLE_SPEC=wide", "EXAMPLE_DEVICE=zero"]

    def mounts(config):
        text = re.sub(r"[0-9a-f]{64}", "ID", json.dumps(config["mounts"]))
        return sorted(json.loads(text), key=lambda m: m["destination"])
    assert mounts(native) == mounts(ours)
    destinations = [m["destination"] for m in ours["mounts"]]
    assert all(not d.startswith(e + "/") for i, d in enumerate(destinations) for e in destinations[i + 1:])
