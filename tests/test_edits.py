"""Unit tests: each edit of the pipeline, on spec dicts."""

import copy

import pytest

import oci_interceptor as oi


def apply(spec, **actions):
    """Apply one always-matching rule with these actions (keys with _ for -)."""
    rule = oi.Rule("r", None, {k.replace("_", "-"): v for k, v in actions.items()}, "test")
    return oi.apply_rules(spec, [rule])


def docker_like_spec():
    return {
        "ociVersion": "1.0.2-dev",
        "process": {"args": ["sh"], "env": ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8"]},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/d/resolv.conf",
             "options": ["rbind", "rprivate"]},
            {"destination": "/etc/hostname", "type": "bind", "source": "/d/hostname",
             "options": ["rbind", "rw", "rprivate"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/d/hosts"},
            {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "rw"]},
        ],
    }


# --- read-only mounts ------------------------------------------------------------------

@pytest.mark.parametrize("before, after", [
    (["rbind", "rw"], ["rbind", "ro", "rro"]),
    ([], ["ro"]),
    (["rbind"], ["rbind", "ro", "rro"]),
    (["bind"], ["bind", "ro"]),                  # not recursive: no submount is carried
    (["ro"], ["ro"]),
    (["rw", "rbind", "rw"], ["ro", "rbind", "rro"]),
    (["ro", "rw"], ["ro"]),
    (["rbind", "rprivate", "nosuid", "rw"], ["rbind", "rprivate", "nosuid", "ro", "rro"]),
    # rrw would clear read-only on the whole tree after the ro remount.
    (["rbind", "rrw"], ["rbind", "ro", "rro"]),
    (["rbind", "rrw", "ro"], ["rbind", "ro", "rro"]),
    (["rbind", "rro", "rrw", "rw"], ["rbind", "rro", "ro"]),
    (["bind", "rrw"], ["bind", "ro"]),
    (["rbind", "ro", "rro"], ["rbind", "ro", "rro"]),
])
def test_make_readonly(before, after):
    assert oi.make_readonly(before) == after
    assert oi.make_readonly(after) == after                     # idempotent


@pytest.mark.parametrize("before, after", [
    (["rbind", "rw"], ["rbind", "ro"]),
    (["rbind", "rrw", "rprivate"], ["rbind", "rprivate", "ro"]),
    (["rbind", "rro"], ["rbind", "rro", "ro"]),                 # kept when the engine asked for it
])
def test_without_submounts_to_carry_no_rro_is_added(before, after):
    assert oi.make_readonly(before, submounts=False) == after


def test_rro_where_the_source_may_carry_submounts(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link-to-file").symlink_to(tmp_path / "file")
    (tmp_path / "link-to-dir").symlink_to(tmp_path / "dir")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    sources = {"/file": str(tmp_path / "file"), "/dir": str(tmp_path / "dir"),
               "/link-to-file": str(tmp_path / "link-to-file"), "/link-to-dir": str(tmp_path / "link-to-dir"),
               "/missing": str(tmp_path / "missing"), "/under-a-file": str(tmp_path / "file" / "x"),
               "/loop": str(tmp_path / "loop"), "/relative": "dir", "/nul": str(tmp_path) + "/\0x", "/none": None}
    spec = {"mounts": [{"destination": d, "type": "bind", "source": s, "options": ["rbind", "rw"]}
                       for d, s in sources.items()]}
    oi.edit_readonly_mounts(spec, ["/*"])
    with_rro = {m["destination"] for m in spec["mounts"] if m["options"] == ["rbind", "ro", "rro"]}
    without = {m["destination"] for m in spec["mounts"] if m["options"] == ["rbind", "ro"]}
    assert with_rro == {"/dir", "/link-to-dir", "/loop", "/relative", "/nul", "/none"}
    assert without == {"/file", "/link-to-file", "/missing", "/under-a-file"}


def test_readonly_networking_mounts(tmp_path):
    spec = docker_like_spec()
    for mount in spec["mounts"][1:4]:            # the engine's files, as Docker writes them
        mount["source"] = str(tmp_path / mount["source"].rpartition("/")[2])
        open(mount["source"], "w").close()
    changes = oi.edit_readonly_networking_mounts(spec, True)
    mounts = {m["destination"]: m for m in spec["mounts"]}
    assert mounts["/etc/resolv.conf"]["options"] == ["rbind", "rprivate", "ro"]
    assert mounts["/etc/hostname"]["options"] == ["rbind", "ro", "rprivate"]
    assert mounts["/etc/hosts"]["options"] == ["ro"]          # missing list created
    assert mounts["/data"]["options"] == ["rbind", "rw"]      # other mounts untouched
    assert mounts["/proc"]["options"] == ["nosuid", "noexec", "nodev"]
    assert len(changes) == 3
    assert "mounts[3] (/etc/hosts): options (none) -> ['ro']" in changes
    # Idempotent: a second run changes nothing.
    assert oi.edit_readonly_networking_mounts(spec, True) == []


def test_readonly_networking_mount_of_a_directory_is_read_only_below_too(tmp_path):
    spec = docker_like_spec()
    spec["mounts"][1]["source"] = str(tmp_path)
    oi.edit_readonly_networking_mounts(spec, True)
    assert spec["mounts"][1]["options"] == ["rbind", "rprivate", "ro", "rro"]


def test_readonly_mounts_rule_drops_rrw_and_adds_rro(tmp_path):
    spec = docker_like_spec()
    spec["mounts"][4]["source"] = str(tmp_path)
    spec["mounts"][4]["options"] = ["rbind", "rrw", "rprivate"]
    changes = apply(spec, readonly_mounts=["/data"])
    assert spec["mounts"][4]["options"] == ["rbind", "rprivate", "ro", "rro"]
    assert changes == ["r: mounts[4] (/data): options ['rbind', 'rrw', 'rprivate'] -> "
                       "['rbind', 'rprivate', 'ro', 'rro']"]
    assert apply(spec, readonly_mounts=["/data"]) == []


def test_readonly_networking_mounts_off_changes_nothing():
    spec = docker_like_spec()
    before = copy.deepcopy(spec)
    assert oi.edit_readonly_networking_mounts(spec, False) == []
    assert spec == before


def test_readonly_matches_unclean_destinations_and_null_options():
    spec = {"mounts": [{"destination": "/etc//hosts/", "options": None}, {"destination": "etc/hostname"}]}
    oi.edit_readonly_networking_mounts(spec, True)
    assert spec["mounts"][0]["options"] == ["ro"]
    assert spec["mounts"][1]["options"] == ["ro"]


def test_readonly_without_mounts():
    assert oi.edit_readonly_networking_mounts({}, True) == []


@pytest.mark.parametrize("spec, message", [
    ({"mounts": {}}, "mounts is not a list"),
    ({"mounts": ["x"]}, r"mounts\[0\] is not an object"),
    ({"mounts": [{"destination": "/etc/hosts", "options": "ro"}]}, r"mounts\[0\].options is not a list"),
    ({"mounts": [{"destination": "/etc/hosts", "options": [1]}]}, "not a list of strings"),
])
def test_readonly_on_malformed_mounts(spec, message):
    with pytest.raises(oi.InterceptorError, match=message):
        oi.edit_readonly_networking_mounts(spec, True)


# --- environment -------------------------------------------------------------------

def env_of(spec):
    return spec["process"]["env"]


def test_env_default_is_added_when_missing_and_loses_to_the_containers_value():
    spec = docker_like_spec()
    changes = oi.edit_env_defaults(spec, ["LANG=en_US.UTF-8", "TZ=UTC"])
    assert env_of(spec) == ["PATH=/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", "TZ=UTC"]
    assert changes == ["process.env: added TZ"]


def test_env_force_replaces_in_place_and_adds():
    spec = docker_like_spec()
    changes = oi.edit_env_force(spec, ["HOME=/home/x", "NEW=a=b"])
    assert env_of(spec) == ["PATH=/usr/bin:/bin", "HOME=/home/x", "LANG=C.UTF-8", "NEW=a=b"]
    assert changes == ["process.env[1]: replaced HOME", "process.env: added NEW"]


def test_defaults_are_applied_before_forced_values():
    spec = docker_like_spec()
    apply(spec, env=["X=default"], env_force=["X=forced"])
    assert env_of(spec).count("X=forced") == 1
    assert not any(e.startswith("X=default") for e in env_of(spec))


def test_env_force_leaves_exactly_one_entry_of_the_name():
    # runc and crun give the process the last of repeated entries: every
    # other entry of the name must go, or a later one would win.
    spec = {"process": {"env": ["A=1", "B=2", "A=3", "A", "A=4"]}}
    changes = oi.edit_env_force(spec, ["A=9"])
    assert env_of(spec) == ["A=9", "B=2"]
    assert changes == ["process.env[0]: replaced A (and 3 more entries of it removed)"]
    assert oi.edit_env_force(spec, ["A=9"]) == []


def test_env_force_replaces_a_bare_name_and_what_follows_it():
    spec = {"process": {"env": ["HTTP_PROXY", "HTTP_PROXY=evil"]}}
    oi.edit_env_force(spec, ["HTTP_PROXY=http://proxy:3128"])
    assert env_of(spec) == ["HTTP_PROXY=http://proxy:3128"]


def test_env_values_are_read_as_the_runtimes_read_them():
    # Last entry wins; a bare name unsets (crun's putenv; runc refuses it).
    assert oi.env_values(["A=1", "A=2"]) == {"A": "2"}
    assert oi.env_values(["A=1", "A"]) == {}
    assert oi.env_values(["A", "A=1"]) == {"A": "1"}
    assert oi.env_values(["A=x=y", 3, "B="]) == {"A": "x=y", "B": ""}


def test_env_default_looks_at_the_last_entry():
    spec = {"process": {"env": ["A=1", "A"]}}        # A ends up unset
    assert oi.edit_env_defaults(spec, ["A=d"]) == ["process.env: added A"]
    assert env_of(spec) == ["A=1", "A", "A=d"]
    spec = {"process": {"env": ["A", "A=1"]}}        # A ends up set
    assert oi.edit_env_defaults(spec, ["A=d"]) == []


def test_env_unset_removes_every_entry_of_the_name():
    spec = {"process": {"env": ["A=1", "B=2", "A", "A=3"]}}
    oi.edit_env_unset(spec, ["A"])
    assert env_of(spec) == ["B=2"]


def test_env_condition_reads_the_last_entry():
    cond = oi.parse_condition({"env": {"MODE": "^ci$"}}, extended=True)
    assert oi.condition_matches(cond, {"process": {"env": ["MODE=prod", "MODE=ci"]}})
    assert not oi.condition_matches(cond, {"process": {"env": ["MODE=ci", "MODE=prod"]}})
    assert not oi.condition_matches(cond, {"process": {"env": ["MODE=ci", "MODE"]}})


def test_systemd_opt_out_reads_the_last_entry():
    on = {"process": {"env": ["OCI_INTERCEPTOR_SYSTEMD=off", "OCI_INTERCEPTOR_SYSTEMD=on"]}}
    off = {"process": {"env": ["OCI_INTERCEPTOR_SYSTEMD=on", "OCI_INTERCEPTOR_SYSTEMD=off"]}}
    assert not oi.systemd_disabled_by_container(on)
    assert oi.systemd_disabled_by_container(off)


def test_empty_value_is_a_value():
    spec = {"process": {"env": ["A=1"]}}
    oi.edit_env_force(spec, ["A="])
    assert env_of(spec) == ["A="]


def test_repeated_flags():
    spec = {"process": {"env": []}}
    oi.edit_env_defaults(spec, ["A=1", "A=2"])
    oi.edit_env_force(spec, ["B=1", "B=2"])
    assert env_of(spec) == ["A=1", "B=2"]


def test_env_list_is_created_when_missing():
    spec = {"process": {"args": ["sh"]}}
    oi.edit_env_defaults(spec, ["A=1"])
    assert spec["process"] == {"args": ["sh"], "env": ["A=1"]}


def test_no_process_means_no_environment_to_set():
    spec = {"ociVersion": "1.0.2"}
    assert apply(spec, env_force=["A=1"]) == []
    assert spec == {"ociVersion": "1.0.2"}


def test_env_is_idempotent():
    actions = dict(env=["A=1", "LANG=x"], env_force=["HOME=/h", "B=2"])
    spec = docker_like_spec()
    assert apply(spec, **actions)
    once = copy.deepcopy(spec)
    assert apply(spec, **actions) == []
    assert spec == once


@pytest.mark.parametrize("spec, message", [
    ({"process": []}, "process is not an object"),
    ({"process": {"env": "A=1"}}, "process.env is not a list"),
    ({"process": {"env": ["B=1", 5]}}, r"process.env\[1\] is not a string"),
])
def test_env_on_malformed_process(spec, message):
    with pytest.raises(oi.InterceptorError, match=message):
        oi.edit_env_defaults(spec, ["A=1"])


# --- the pipeline ---------------------------------------------------------------------

def test_pipeline_reports_every_change_and_no_flags_change_nothing():
    spec = docker_like_spec()
    before = copy.deepcopy(spec)
    assert oi.apply_rules(spec, []) == []
    assert spec == before
    changes = apply(spec, readonly_networking_mounts=True, env=["A=1"], env_force=["HOME=/"])
    assert len(changes) == 5
    assert all(change.startswith("r: ") for change in changes)


def test_pipeline_refuses_a_non_object():
    with pytest.raises(oi.InterceptorError, match="not a JSON object"):
        oi.apply_rules([], [])


def test_every_edit_is_in_the_pipeline():
    edits = [getattr(oi, name) for name in dir(oi) if name.startswith("edit_") and name != "edit_bundle"]
    assert set(edits) == {action.edit for action in oi.ACTIONS}
