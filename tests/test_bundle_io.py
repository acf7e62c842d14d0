"""Unit tests: reading, parsing, serializing and atomically writing config.json."""

import json
import os
import stat

import pytest

import oci_interceptor as oi

RUNC_SPEC_STYLE = (b'{\n\t"ociVersion": "1.0.2-dev",\n\t"process": {\n\t\t"terminal": true,\n'
                   b'\t\t"args": [\n\t\t\t"sh"\n\t\t],\n\t\t"env": []\n\t},\n\t"mounts": [],\n'
                   b'\t"linux": {\n\t\t"resources": {\n\t\t\t"memory": {\n\t\t\t\t"limit": 9223372036854775807\n'
                   b'\t\t\t}\n\t\t}\n\t}\n}')
GO_COMPACT_STYLE = (b'{"ociVersion":"1.0.2-dev","process":{"user":{"uid":0,"gid":0},"args":["sh"],'
                    b'"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"/r"},"hostname":"h",'
                    b'"annotations":{"z":"1","a":"2","m":"3"}}')
PYTHON_STYLE = json.dumps({"b": [1, {"c": None}], "a": "x"}, indent=4).encode() + b"\n"


@pytest.mark.parametrize("raw", [RUNC_SPEC_STYLE, GO_COMPACT_STYLE, PYTHON_STYLE,
                                 json.dumps({"a": [1, 2], "b": {}}).encode()])
def test_serialize_reproduces_the_original_layout(raw):
    spec = oi.parse_config(raw, "config.json")
    assert oi.serialize_config(spec, oi.Layout.of(raw)) == raw


def test_key_order_unknown_fields_big_numbers_and_non_ascii_are_kept():
    raw = ('{"zz":1,"aa":{"unknown":[true,false,null]},"big":123456789012345678901234567890,'
           '"neg":-9223372036854775808,"f":1.50,"e":1E+400,"tiny":5e-324,'
           '"text":"caf\u00e9 \u65e5\u672c \U0001F600","esc":"tab\\tquote\\"nl\\n"}').encode("utf-8")
    spec = oi.parse_config(raw, "c")
    assert list(spec) == ["zz", "aa", "big", "neg", "f", "e", "tiny", "text", "esc"]
    out = oi.serialize_config(spec, oi.Layout.of(raw))
    assert out == raw


def test_escaped_non_ascii_is_written_as_the_same_characters():
    raw = b'{"a":"caf\\u00e9"}'
    out = oi.serialize_config(oi.parse_config(raw, "c"), oi.Layout.of(raw))
    assert json.loads(out.decode("utf-8")) == {"a": "caf\u00e9"}


def test_lone_surrogate_survives_as_an_escape():
    raw = b'{"a":"x\\ud800y","b":"\xc3\xa9"}'
    out = oi.serialize_config(oi.parse_config(raw, "c"), oi.Layout.of(raw))
    assert json.loads(out.decode("ascii")) == {"a": "x\ud800y", "b": "\u00e9"}


@pytest.mark.parametrize("raw, message", [
    (b'{\n  "a": 1\n  "b": 2\n}', "cannot parse c.json: Expecting ',' delimiter: line 3 column 3"),
    (b'', "cannot parse c.json: Expecting value: line 1 column 1"),
    (b'{"a": 1, "a": 2}', "cannot parse c.json: duplicate key a"),
    (b'{"a": NaN}', "cannot parse c.json: NaN is not valid JSON"),
    (b'{"a": -Infinity}', "cannot parse c.json: -Infinity is not valid JSON"),
    (b'\xef\xbb\xbf{}', "cannot parse c.json: Unexpected UTF-8 BOM"),
    (b'{"a": "\xff"}', "cannot parse c.json: invalid UTF-8 at byte 7"),
    (b'[1, 2]', "c.json is not a JSON object"),
    (b'"text"', "c.json is not a JSON object"),
    (b'[' * 100000 + b']' * 100000, "cannot parse c.json: nested deeper than 256 levels; refusing it"),
])
def test_malformed_configs(raw, message):
    with pytest.raises(oi.InterceptorError) as info:
        oi.parse_config(raw, "c.json")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_write_atomically_keeps_mode_and_owner(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"{}")
    os.chmod(str(path), 0o640)
    st = os.stat(str(path))
    oi.write_atomically(str(path), b'{"a":1}', st)
    after = os.stat(str(path))
    assert path.read_bytes() == b'{"a":1}'
    assert stat.S_IMODE(after.st_mode) == 0o640
    assert (after.st_uid, after.st_gid) == (st.st_uid, st.st_gid)
    assert after.st_ino != st.st_ino                 # a new file renamed into place
    assert sorted(os.listdir(str(tmp_path))) == ["config.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_write_atomically_keeps_another_owner(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"{}")
    os.chown(str(path), 4321, 4322)
    oi.write_atomically(str(path), b"{ }", os.stat(str(path)))
    after = os.stat(str(path))
    assert (after.st_uid, after.st_gid) == (4321, 4322)


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"{}")
    dead = tmp_path / ".config.json.oi-tmp-999999999-abcd"
    alive = tmp_path / (".config.json.oi-tmp-%d-abcd" % os.getppid())
    other = tmp_path / ".other.json.oi-tmp-999999999-abcd"
    for p in (dead, alive, other):
        p.write_bytes(b"partial")
    oi.write_atomically(str(path), b"{}", os.stat(str(path)))
    names = sorted(os.listdir(str(tmp_path)))
    assert dead.name not in names
    assert alive.name in names and other.name in names


def test_failed_write_cleans_up_and_says_why(tmp_path):
    # A directory where the file should go makes the final rename fail, for
    # root too; the temp file must not be left behind.
    path = tmp_path / "config.json"
    path.mkdir()
    (path / "keep").write_bytes(b"x")
    with pytest.raises(oi.InterceptorError, match="cannot write .*config.json: Is a directory"):
        oi.write_atomically(str(path), b'{"a":1}', os.stat(str(tmp_path)))
    assert sorted(os.listdir(str(tmp_path))) == ["config.json"]
    assert os.listdir(str(path)) == ["keep"]


def test_read_refuses_symlinks_fifos_and_missing_files(tmp_path):
    target = tmp_path / "real.json"
    target.write_bytes(b"{}")
    link = tmp_path / "config.json"
    link.symlink_to(target)
    with pytest.raises(oi.InterceptorError, match="it is a symlink"):
        oi.read_config(str(link))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(str(fifo))
    with pytest.raises(oi.InterceptorError, match="not a regular file"):
        oi.read_config(str(fifo))
    with pytest.raises(oi.InterceptorError, match="No such file or directory"):
        oi.read_config(str(tmp_path / "missing.json"))
    with pytest.raises(oi.InterceptorError, match="not a regular file|Is a directory"):
        oi.read_config(str(tmp_path))


def make_call(bundle):
    return oi.parse_runtime_call(["create", "--bundle", str(bundle), "cid"])


def policy_of(*flags):
    opts, _ = oi.split_command_line(list(flags))
    return oi.load_policy(opts, "oci-interceptor")


def test_edit_bundle_writes_only_when_something_changed(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(GO_COMPACT_STYLE)
    before = os.stat(str(path))
    policy = policy_of("--oi-env", "PATH=/other")          # already set: no change
    assert oi.edit_bundle(make_call(tmp_path), policy)[0].changes == []
    after = os.stat(str(path))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    policy = policy_of("--oi-env", "PATH=/other", "--oi-env-force", "PATH=/other")
    assert oi.edit_bundle(make_call(tmp_path), policy)[0].changes == ["(global): process.env[0]: replaced PATH"]
    assert path.read_bytes() == GO_COMPACT_STYLE.replace(b"PATH=/bin", b"PATH=/other")
    # The same call again: same config, no write.
    written = os.stat(str(path))
    assert oi.edit_bundle(make_call(tmp_path), policy)[0].changes == []
    assert os.stat(str(path)).st_ino == written.st_ino


def test_edit_bundle_leaves_a_malformed_file_byte_identical(tmp_path):
    path = tmp_path / "config.json"
    raw = b'{"process": {"env": ["A=1"]}, "mounts": 7}'
    path.write_bytes(raw)
    with pytest.raises(oi.InterceptorError, match="mounts is not a list"):
        oi.edit_bundle(make_call(tmp_path), policy_of("--oi-readonly-networking-mounts"))
    assert path.read_bytes() == raw
    assert os.listdir(str(tmp_path)) == ["config.json"]
