"""What keeps a create cheap must not change what it does: the path
functions that stand in for os.path, the C writer of unindented configs, the
Go-key check's screens and the scan that spares it, and the bundle write
that is not fsynced. Each is checked against what it replaces. (Imports and timings: test_startup.py and
tests/benchmark.py.)"""

import json
import os
import posix
import posixpath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oci_interceptor as oi

HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

path_parts = st.sampled_from(["", ".", "..", "a", "b", "...", ".x", "x..", " ", "caf\u00e9", "\udcff"])
paths = st.lists(path_parts, max_size=7).map("/".join) | st.text(alphabet="/.ab", max_size=12)


@HYPOTHESIS
@given(paths)
def test_path_functions_are_os_path_s(path):
    assert oi.path_normpath(path) == posixpath.normpath(path)
    assert oi.path_abspath(path or ".") == posixpath.abspath(path or ".")
    assert oi.path_split(path) == posixpath.split(path)


@HYPOTHESIS
@given(paths, paths)
def test_path_join_is_os_path_join(directory, name):
    assert oi.path_join(directory, name) == posixpath.join(directory, name)


@HYPOTHESIS
@given(paths)
def test_normpath_without_the_native_one_is_posixpath_s(path):
    """Pythons before 3.11 have no posix._path_normpath: the fallback then
    does what posixpath's own Python code does."""
    native = getattr(posix, "_path_normpath", None)
    if native is not None:
        del posix._path_normpath
    try:
        assert oi.path_normpath(path) == posixpath.normpath(path)
    finally:
        if native is not None:
            posix._path_normpath = native


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=6)
    | st.sampled_from(["x\ud800y", "caf\u00e9", "\u2028", "\x00\x1f\"\\/"])
    | st.sampled_from(["1.50", "1E+400", "-0.0", "5e-324"]).map(oi.RawNumber),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)
layouts = st.sampled_from([oi.Layout(None, ",", ":"), oi.Layout(None, ", ", ": ", True), oi.Layout(None, ",", ":", True),
                           oi.Layout("  ", ",", ": ", True), oi.Layout("\t", ",", ": ")])


def python_writer(value, layout):
    """serialize_config as it was before the C writer: _encode_value alone."""
    encode, encode_ascii = oi._string_encoders()
    for encoder, encoding in ((encode, "utf-8"), (encode_ascii, "ascii")):
        out = []
        oi._encode_value(value, out, layout, 0, encoder)
        text = "".join(out) + ("\n" if layout.final_newline else "")
        try:
            return text.encode(encoding)
        except UnicodeEncodeError:
            continue


@HYPOTHESIS
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=5), layouts)
def test_the_c_writer_writes_what_the_python_writer_writes(spec, layout):
    assert oi.serialize_config(spec, layout) == python_writer(spec, layout)


def test_the_c_writer_does_write_plain_configs_and_leaves_the_rest():
    compact = oi.Layout(None, ",", ":")
    assert oi._encode_compact({"a": [1, None, "\u00e9"]}, compact, oi._string_encoders()[0]) == '{"a":[1,null,"\u00e9"]}'
    assert oi._encode_compact({"a": oi.RawNumber("1.5")}, compact, oi._string_encoders()[0]) is None
    assert oi._encode_compact({"a": 1}, oi.PRETTY, oi._string_encoders()[0]) is None
    with pytest.raises(oi.InterceptorError, match="cannot write nan as JSON"):
        oi.serialize_config({"a": float("nan")}, compact)
    with pytest.raises(oi.InterceptorError, match="cannot write a set as JSON"):
        oi.serialize_config({"a": {1}}, compact)


def reference_go_check(spec):
    """check_keys_as_go_reads_them as it was before its screens."""
    folded_fields = {oi._go_fold(name): name for name in oi.SPEC_FIELDS}

    def struct_problem(obj, where):
        seen = {}
        for key in obj:
            folded = oi._go_fold(key)
            if folded in seen:
                return ("%s%s and %s are one key to runc (Go's JSON matches keys ignoring case); "
                        "refusing the config" % (where + ": " if where else "", oi._ascii_key(seen[folded]),
                                                 oi._ascii_key(key)))
            seen[folded] = key
            field = folded_fields.get(folded)
            if field is not None and field != key:
                return ("%s%s: runc reads it as %s (Go's JSON matches keys ignoring case); refusing a key "
                        "not spelled as the runtime-spec field" % (where + ": " if where else "",
                                                                   oi._ascii_key(key), oi._ascii_key(field)))
        return None

    stack = [(spec, 1, "", "struct")]
    while stack:
        value, depth, where, kind = stack.pop()
        if depth > oi.MAX_CONFIG_DEPTH:
            top = where.partition(".")[0].partition("[")[0]
            return "nested deeper than %d levels (under %s); refusing it" % (oi.MAX_CONFIG_DEPTH, oi._json_text(top))
        if isinstance(value, list):
            for index, item in enumerate(value):
                if isinstance(item, (dict, list)):
                    stack.append((item, depth + 1, "%s[%d]" % (where, index), kind))
            continue
        if kind == "struct":
            problem = struct_problem(value, where)
            if problem:
                return problem
        for key, item in value.items():
            if not isinstance(item, (dict, list)):
                continue
            if kind == "struct":
                child = ("data" if key not in oi.SPEC_FIELDS else
                         ("map" if oi._MAP_FIELDS[key] else "data") if key in oi._MAP_FIELDS else "struct")
            else:
                child = "struct" if kind == "map" else "data"
            stack.append((item, depth + 1, (where + "." if where else "") + key, child))
    return None


go_keys = st.sampled_from(["mounts", "Mounts", "mount\u017f", "options", "linux", "resources", "rdma", "hca",
                           "annotations", "process", "env", "\u212aernel", "kernel", "x", "X", "[0]", "a.b", "A.b",
                           "net.ipv4.ping_group_range", ""])
go_specs = st.recursive(st.text(max_size=2) | st.integers(),
                        lambda children: st.lists(children, max_size=3) | st.dictionaries(go_keys, children,
                                                                                          max_size=4),
                        max_leaves=25)


@HYPOTHESIS
@given(st.dictionaries(go_keys, go_specs, max_size=5))
def test_the_go_key_check_finds_what_it_found_before(spec):
    assert oi.check_keys_as_go_reads_them(spec) == reference_go_check(spec)


def test_the_go_key_check_words_deep_and_nested_problems_as_before():
    deep = {"linux": {"x": [1]}}
    node = deep["linux"]["x"]
    for _ in range(oi.MAX_CONFIG_DEPTH):
        node.append([])
        node = node[-1]
    nested = {"linux": {"resources": {"rdma": {"mlx": {"hcaHandles": 1, "HCAHandles": 2}}}},
              "mounts": [{"destination": "/x", "Options": []}]}
    for spec in (deep, nested, {"process": {"Env": []}}, {"annotations": {"Mounts": "x"}}):
        assert oi.check_keys_as_go_reads_them(spec) == reference_go_check(spec)
    assert oi.check_keys_as_go_reads_them(deep).startswith("nested deeper than 256 levels (under \"linux\")")


@HYPOTHESIS
@given(st.dictionaries(go_keys, go_specs, max_size=5))
def test_parse_config_refuses_what_the_full_check_refuses(spec):
    """parse_config runs the Go-key check only when its scan met an object
    whose keys alone break the rules, or the text has more brackets than
    MAX_CONFIG_DEPTH: the same configs are refused, with the same words."""
    raw = json.dumps(spec).encode()
    expected = reference_go_check(oi.parse_json(raw))
    if expected is None:
        assert oi.parse_config(raw, "c.json") == spec
    else:
        with pytest.raises(oi.InterceptorError) as info:
            oi.parse_config(raw, "c.json")
        assert str(info.value) == "c.json: " + expected


@pytest.mark.parametrize("depth", [oi.MAX_CONFIG_DEPTH - 2, oi.MAX_CONFIG_DEPTH - 1, oi.MAX_CONFIG_DEPTH + 5])
def test_parse_config_measures_nesting_as_before(depth):
    raw = b'{"linux": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    expected = reference_go_check(oi.parse_json(raw))
    assert (expected is None) == (depth + 2 <= oi.MAX_CONFIG_DEPTH)
    if expected is None:
        oi.parse_config(raw, "c.json")
    else:
        with pytest.raises(oi.InterceptorError, match="nested deeper than 256 levels"):
            oi.parse_config(raw, "c.json")


def test_no_two_runtime_spec_fields_fold_together():
    """The Go-key check passes an object of fields spelled as such without
    folding its keys: only sound while no two fields fold to one."""
    assert len({oi._go_fold(name) for name in oi.SPEC_FIELDS}) == len(oi.SPEC_FIELDS)
    assert all(oi._go_fold(name) == name.lower() for name in oi.SPEC_FIELDS)      # ASCII: folded by lower()
    # Letters and digits only: a key whose fold has anything else reads as no field.
    assert all(name.isalnum() and name.isascii() for name in oi.SPEC_FIELDS)


def test_integers_compare_without_decimal():
    assert oi.json_equal(10 ** 30, 10 ** 30) and not oi.json_equal(1, 2) and not oi.json_equal(1, True)
    assert oi.json_equal(1, oi.RawNumber("1.0")) and oi.json_equal(oi.RawNumber("1e0"), 1)


@pytest.fixture
def fsyncs(monkeypatch):
    """The descriptors fsynced, by what they are (file or directory)."""
    calls = []
    real = posix.fsync

    def fsync(fd):
        calls.append("directory" if os.path.isdir("/proc/self/fd/%d" % fd) else "file")
        return real(fd)
    monkeypatch.setattr(posix, "fsync", fsync)
    return calls


def test_the_bundle_config_is_replaced_atomically_without_fsync(tmp_path, fsyncs):
    (tmp_path / "config.json").write_text('{"process": {"env": []}}')
    call = oi.parse_runtime_call(["create", "--bundle", str(tmp_path), "x"])
    policy = oi.Policy()
    policy.runtime_path = "/bin/true"
    policy.rules.append(oi.Rule("r", None, {"env": ["A=1"]}, "test"))
    oi.edit_bundle(call, policy)
    assert json.loads((tmp_path / "config.json").read_text()) == {"process": {"env": ["A=1"]}}
    assert fsyncs == [] and os.listdir(str(tmp_path)) == ["config.json"]


def test_other_files_are_still_written_durably(tmp_path, fsyncs):
    oi.write_atomically(str(tmp_path / "record"), b"x\n", mode=0o600)
    assert fsyncs == ["file", "directory"]
    assert (tmp_path / "record").read_bytes() == b"x\n"
