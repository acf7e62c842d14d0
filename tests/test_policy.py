"""Unit tests: config files, profiles, rules, conditions, actions, hook files."""

import json
import os

import pytest

import oci_interceptor as oi


def write(path, data):
    path = str(path)
    with open(path, "w") as f:
        f.write(data if isinstance(data, str) else json.dumps(data))
    os.chmod(path, 0o644)
    return path


def policy(tmp_path, config=None, flags=(), argv0="oci-interceptor", name="config.json", complete=True):
    args = list(flags)
    if config is not None:
        args = ["--oi-config", write(tmp_path / name, config)] + args
    opts, _ = oi.split_command_line(args + ["create", "x"])
    return oi.load_policy(opts, argv0, complete=complete)


def config_error(tmp_path, config, **kwargs):
    with pytest.raises(oi.ConfigError) as info:
        policy(tmp_path, config, **kwargs)
    return str(info.value)


# --- config file and precedence -------------------------------------------------------

def test_settings_from_the_file(tmp_path):
    p = policy(tmp_path, {"version": 1, "runtime-path": "crun", "readonly-networking-mounts": True,
                          "env": ["A=1"], "env-force": ["B=2"], "write-debug-output": True,
                          "debug-output-dir": "/d"})
    assert (p.runtime_path, p.write_debug_output, p.debug_output_dir) == ("crun", True, "/d")
    assert [r.name for r in p.rules] == ["(global)"]
    assert p.rules[0].actions == {"env": ["A=1"], "env-force": ["B=2"], "readonly-networking-mounts": True}


def test_flags_override_values_and_add_to_lists(tmp_path):
    p = policy(tmp_path, {"version": 1, "runtime-path": "crun", "env": ["A=1"],
                          "readonly-networking-mounts": True},
               flags=["--oi-runtime-path", "runc", "--oi-env", "B=2", "--oi-readonly-networking-mounts=false"])
    assert p.runtime_path == "runc"
    assert p.rules[0].actions == {"env": ["A=1", "B=2"]}


def test_profile_chosen_by_program_name(tmp_path):
    config = {"version": 1, "env": ["BASE=1"], "rules": [{"name": "base", "env": ["R=1"]}],
              "profiles": {"oci-strict": {"readonly-networking-mounts": True, "env": ["P=1"],
                                          "rules": [{"name": "strict", "env-force": ["S=1"]}]},
                           "oci-other": {"runtime-path": "crun"}}}
    p = policy(tmp_path, config, argv0="/usr/local/bin/oci-strict")
    assert p.profile == "oci-strict"
    assert p.rules[0].actions == {"env": ["BASE=1", "P=1"], "readonly-networking-mounts": True}
    assert [r.name for r in p.rules] == ["(global)", "base", "strict"]
    assert p.runtime_path == "runc"
    p = policy(tmp_path, config, argv0="/usr/local/bin/oci-interceptor")
    assert p.profile is None and [r.name for r in p.rules] == ["(global)", "base"]
    p = policy(tmp_path, config, flags=["--oi-profile", "oci-other"])
    assert p.profile == "oci-other" and p.runtime_path == "crun"


def test_unknown_profile_and_profile_without_file(tmp_path):
    assert "profiles: no profile named nope" in config_error(
        tmp_path, {"version": 1}, flags=["--oi-profile", "nope"])
    opts, _ = oi.split_command_line(["--oi-profile", "x", "create", "c"])
    with pytest.raises(oi.ConfigError, match="there is no config file"):
        oi.load_policy(opts, "oci-interceptor")


def test_default_config_file(tmp_path, monkeypatch):
    path = write(tmp_path / "default.json", {"version": 1, "runtime-path": "crun"})
    monkeypatch.setenv("OCI_INTERCEPTOR_CONFIG", path)
    opts, _ = oi.split_command_line(["state", "x"])
    assert oi.load_policy(opts, "oci-interceptor").runtime_path == "crun"
    # An empty variable or --oi-config= means no config file.
    monkeypatch.setenv("OCI_INTERCEPTOR_CONFIG", "")
    p = oi.load_policy(opts, "oci-interceptor")
    assert (p.config_path, p.config_sought, p.rules) == (None, (None, "$OCI_INTERCEPTOR_CONFIG"), [])
    monkeypatch.setenv("OCI_INTERCEPTOR_CONFIG", path)
    p = oi.load_policy(oi.split_command_line(["--oi-config=", "create", "x"])[0], "oci-interceptor")
    assert (p.config_path, p.config_sought, p.runtime_path) == (None, (None, "--oi-config"), "runc")


def test_a_config_file_named_explicitly_must_exist(tmp_path, monkeypatch):
    """A typo in OCI_INTERCEPTOR_CONFIG or --oi-config is an error, not "no policy"."""
    typo = str(tmp_path / "confg.json")
    monkeypatch.setenv("OCI_INTERCEPTOR_CONFIG", typo)
    for args in (["create", "x"], ["--oi-check-config"], ["state", "x"]):
        with pytest.raises(oi.ConfigError) as info:
            oi.load_policy(oi.split_command_line(args)[0], "oci-interceptor")
        assert str(info.value) == ("config %s: No such file or directory (named by $OCI_INTERCEPTOR_CONFIG)"
                                   % typo)
    monkeypatch.delenv("OCI_INTERCEPTOR_CONFIG")
    with pytest.raises(oi.ConfigError) as info:
        oi.load_policy(oi.split_command_line(["--oi-config", typo, "create", "x"])[0], "oci-interceptor")
    assert str(info.value) == "config %s: No such file or directory (named by --oi-config)" % typo
    with pytest.raises(oi.ConfigError) as info:
        oi.load_policy(oi.split_command_line(["--oi-config=", "--oi-profile=ci", "create", "x"])[0], "oci-interceptor")
    assert str(info.value) == "--oi-profile ci: there is no config file (--oi-config is empty)"
    # Only the built-in default may be absent.
    monkeypatch.setattr(oi, "DEFAULT_CONFIG", typo)
    p = oi.load_policy(oi.split_command_line(["create", "x"])[0], "oci-interceptor")
    assert (p.config_path, p.config_sought) == (None, (typo, False))
    with pytest.raises(oi.ConfigError, match=r"there is no config file \(.*confg.json does not exist\)"):
        oi.load_policy(oi.split_command_line(["--oi-profile", "ci", "create", "x"])[0], "oci-interceptor")


@pytest.mark.parametrize("config, message", [
    ("{", "config.json: Expecting property name enclosed in double quotes: line 1 column 2"),
    ([], "config.json: expected a JSON object"),
    ("null", "config.json: expected a JSON object"),      # null is no "no config file"
    ({}, "config.json: version: expected 1, found null"),
    ({"version": 2}, "version: expected 1, found 2"),
    ({"version": True}, "version: expected 1, found true"),
    ({"version": True, "rules": [{"env": ["A=1"]}]}, "version: expected 1, found true"),
    ({"version": 1.0}, "version: expected 1, found 1.0"),
    ({"version": 1, "runtime_path": "x"}, "config.json: runtime_path: unknown key (allowed: "),
    ({"version": 1, "env": ["A"]}, "env[0]: expected NAME=VALUE, found \"A\""),
    ({"version": 1, "readonly-networking-mounts": "yes"}, "readonly-networking-mounts: expected true or false"),
    ({"version": 1, "rules": {}}, "rules: expected a list of rules"),
    ({"version": 1, "rules": [{"name": "x"}]}, "rules[0]: the rule has no action"),
    ({"version": 1, "rules": [{"env": ["A=1"], "envv": []}]}, "rules[0].envv: unknown key"),
    ({"version": 1, "rules": [{"env": ["A=1"]}, {"env-force": ["A=1"]},
                              {"when": {"commands": ["("]}, "env": ["A=1"]}]},
     "rules[2].when.commands[0]: bad regex \"(\": missing ), unterminated subpattern at position 0"),
    ({"version": 1, "rules": [{"when": {"annotations": {"a": "[x"}}, "env": ["A=1"]}]},
     "rules[0].when.annotations.a: bad regex \"[x\""),
    ({"version": 1, "rules": [{"when": {"sometimes": True}, "env": ["A=1"]}]},
     "rules[0].when.sometimes: unknown condition"),
    ({"version": 1, "rules": [{"when": {}, "env": ["A=1"]}]}, "rules[0].when: at least one condition"),
    ({"version": 1, "rules": [{"name": "a", "env": ["A=1"]}, {"name": "a", "env": ["A=1"]}]},
     "rules[1].name: a rule named a exists already"),
    ({"version": 1, "rules": [{"hooks": {"prestart": [{"path": "relative"}]}}]},
     "rules[0].hooks.prestart[0].path: expected an absolute path, found \"relative\""),
    ({"version": 1, "rules": [{"hooks": {"prestrat": []}}]}, "rules[0].hooks.prestrat: unknown hook stage"),
    ({"version": 1, "rules": [{"hooks": {"poststop": [{"path": "/x", "timeout": 0}]}}]},
     "rules[0].hooks.poststop[0].timeout: expected a whole number of seconds > 0"),
    ({"version": 1, "rules": [{"add-mounts": [{"destination": "tmp"}]}]},
     "rules[0].add-mounts[0].destination: expected an absolute path"),
    ({"version": 1, "rules": [{"add-mounts": [{"destination": "/t", "typ": "tmpfs"}]}]},
     "rules[0].add-mounts[0].typ: unknown key (allowed: destination, gidMappings, options, source, type, "
     "uidMappings)"),
    ({"version": 1, "rules": [{"add-mounts": [{"destination": "/t", "uidMappings": [{"containerID": 0,
                                                                                      "hostId": 1, "size": 1}]}]}]},
     "rules[0].add-mounts[0].uidMappings[0].hostId: unknown key (allowed: containerID, hostID, size)"),
    ({"version": 1, "rules": [{"add-mounts": [{"destination": "/t", "gidMappings": [{"containerID": 0,
                                                                                      "hostID": -1, "size": 1}]}]}]},
     "rules[0].add-mounts[0].gidMappings[0].hostID: expected a whole number from 0 to 4294967295, found -1"),
    ({"version": 1, "rules": [{"hooks": {"prestart": [{"path": "/x", "arg": ["x"]}]}}]},
     "rules[0].hooks.prestart[0].arg: unknown key (allowed: args, env, path, timeout)"),
    ({"version": 1, "rules": [{"prepend-hooks": {"poststop": [{"path": "/x", "timeout": 1, "Env": []}]}}]},
     "rules[0].prepend-hooks.poststop[0].Env: unknown key"),
    ({"version": 1, "rules": [{"json-patch": [{"op": "jump", "path": "/a"}]}]},
     "rules[0].json-patch[0].op: expected add, remove, replace, move, copy or test"),
    ({"version": 1, "rules": [{"json-patch": [{"op": "add", "path": "a", "value": 1}]}]},
     "rules[0].json-patch[0].path: a JSON pointer starts with '/'"),
    ({"version": 1, "rules": [{"json-patch": [{"op": "replace", "path": "/a"}]}]},
     "rules[0].json-patch[0]: replace needs a value"),
    ({"version": 1, "rules": [{"merge-patch": [1]}]}, "rules[0].merge-patch: expected a JSON merge patch"),
    ({"version": 1, "rules": [{"env-unset": ["A=1"]}]}, "rules[0].env-unset[0]: expected a variable name"),
    ({"version": 1, "profiles": {"p": {"version": 1}}}, "profiles.p.version: unknown key"),
    ({"version": 1, "profiles": {"p": {"rules": [{"when": {"hostname": "("}, "env": ["A=1"]}]}}},
     "profiles.p.rules[0].when.hostname: bad regex"),
])
def test_bad_config_files_name_the_file_the_key_and_the_problem(tmp_path, config, message):
    error = config_error(tmp_path, config)
    assert error.startswith("config %s: " % (tmp_path / "config.json"))
    assert message in error
    assert "\n" not in error


@pytest.mark.skipif(os.geteuid() != 0, reason="the ownership check applies to root")
def test_root_refuses_policy_files_others_can_write(tmp_path):
    path = write(tmp_path / "config.json", {"version": 1})
    os.chmod(path, 0o666)
    with pytest.raises(oi.ConfigError, match=r"refusing it, it is writable by a non-root user \(owner uid 0, mode 0666\)"):
        oi.load_policy(oi.split_command_line(["--oi-config", path, "list"])[0], "x")
    os.chmod(path, 0o644)
    os.chown(path, 1000, 0)
    with pytest.raises(oi.ConfigError, match=r"owner uid 1000"):
        oi.load_policy(oi.split_command_line(["--oi-config", path, "list"])[0], "x")
    os.chown(path, 0, 0)
    os.chmod(str(tmp_path), 0o777)
    try:
        with pytest.raises(oi.ConfigError, match=r"its directory .* is writable by a non-root user"):
            oi.load_policy(oi.split_command_line(["--oi-config", path, "list"])[0], "x")
    finally:
        os.chmod(str(tmp_path), 0o700)
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    os.chmod(str(hooks), 0o757)
    with pytest.raises(oi.ConfigError, match=r"hooks dir .*hooks.d: refusing it"):
        policy(tmp_path, flags=["--oi-hooks-dir", str(hooks)])


# --- conditions --------------------------------------------------------------------------

def spec_with(args=("/bin/app",), annotations=None, mounts=(), hostname="web-1", env=("A=1",)):
    spec = {"process": {"args": list(args), "env": list(env)}, "hostname": hostname, "mounts": list(mounts)}
    if annotations is not None:
        spec["annotations"] = annotations
    return spec


def matches(when, spec, extended=True):
    return oi.condition_matches(oi.parse_condition(when, extended), spec)


def test_always():
    assert matches({"always": True}, spec_with())
    assert not matches({"always": False}, spec_with())


def test_annotations_every_pair_must_match_some_annotation():
    spec = spec_with(annotations={"io.kubernetes.cri.sandbox-namespace": "prod", "team": "blue"})
    assert matches({"annotations": {r"sandbox-namespace$": "^prod$"}}, spec)
    assert matches({"annotations": {r"sandbox-namespace$": "^prod$", "^team$": "blue"}}, spec)
    assert not matches({"annotations": {r"sandbox-namespace$": "^prod$", "^team$": "red"}}, spec)
    assert not matches({"annotations": {"^missing$": ".*"}}, spec)
    assert not matches({"annotations": {".*": ".*"}}, spec_with())


def test_commands_any_regex_on_args0():
    assert matches({"commands": ["^/bin/app$"]}, spec_with())
    assert matches({"commands": ["nomatch", "app"]}, spec_with())
    assert not matches({"commands": ["^app$"]}, spec_with())
    # args[0] exactly, as Podman and CRI-O match hooks: a shell wrapper is the command.
    assert not matches({"commands": ["^/sbin/init$"]}, spec_with(args=["/bin/sh", "-c", "/sbin/init --log"]))
    assert matches({"commands": ["^/bin/sh$"]}, spec_with(args=["/bin/sh", "-c", "/sbin/init --log"]))
    assert not matches({"commands": [".*"]}, {"hostname": "x"})


def test_has_bind_mounts():
    engine = [{"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind"]},
              {"destination": "/dev/shm", "type": "bind", "source": "/y"}]
    user = engine + [{"destination": "/data", "type": "none", "source": "/srv", "options": ["rbind", "rw"]}]
    assert not matches({"hasBindMounts": True}, spec_with(mounts=engine))
    assert matches({"hasBindMounts": True}, spec_with(mounts=user))
    assert not matches({"hasBindMounts": False}, spec_with(mounts=engine))   # as OCI hooks 1.0.0


def test_all_given_conditions_must_match():
    spec = spec_with(annotations={"a": "1"})
    assert matches({"always": True, "commands": ["app"], "annotations": {"a": "1"}}, spec)
    assert not matches({"always": True, "commands": ["other"]}, spec)


def test_extended_conditions():
    spec = spec_with(env=["MODE=debug", "MODE=other", "X="])
    assert matches({"hostname": "^web-[0-9]+$"}, spec)
    assert not matches({"hostname": "^db"}, spec)
    assert matches({"env": {"MODE": "^other$", "X": "^$"}}, spec)
    assert not matches({"env": {"MODE": "^debug$"}}, spec)      # the last entry counts, as in runc and crun
    assert not matches({"env": {"MISSING": ""}}, spec)
    with pytest.raises(ValueError, match="unknown condition"):
        oi.parse_condition({"hostname": "x"}, extended=False)


def test_rules_see_the_config_as_the_engine_wrote_it(tmp_path):
    p = policy(tmp_path, {"version": 1, "rules": [
        {"name": "first", "env-force": ["MODE=changed"]},
        {"name": "second", "when": {"env": {"MODE": "^orig$"}}, "env-force": ["SEEN=1"]}]})
    spec = spec_with(env=["MODE=orig"])
    rules = oi.matching_rules(spec, p)
    oi.apply_rules(spec, rules)
    assert spec["process"]["env"] == ["MODE=changed", "SEEN=1"]


# --- actions --------------------------------------------------------------------------------

def mounts_of(*destinations):
    return [{"destination": d, "type": "bind", "source": "/src" + d, "options": ["rbind", "rw"]}
            for d in destinations]


def test_env_unset():
    spec = spec_with(env=["A=1", "B=2", "A=3"])
    assert oi.edit_env_unset(spec, ["A", "C"]) == ["process.env[0]: removed A", "process.env[2]: removed A"]
    assert spec["process"]["env"] == ["B=2"]
    assert oi.edit_env_unset({"hostname": "x"}, ["A"]) == []


def test_readonly_mounts_by_glob():
    spec = {"mounts": mounts_of("/data", "/data/sub", "/etc/ssl", "/other")}
    changes = oi.edit_readonly_mounts(spec, ["/data*", "/etc/*"])
    assert len(changes) == 3
    assert [m["options"] for m in spec["mounts"]] == [["rbind", "ro"]] * 3 + [["rbind", "rw"]]
    assert oi.edit_readonly_mounts(spec, ["/data*", "/etc/*"]) == []


def test_remove_mounts_by_glob():
    spec = {"mounts": mounts_of("/a", "/run/secrets", "/run/secrets/x", "/b")}
    assert oi.edit_remove_mounts(spec, ["/run/secrets*"]) == [
        "mounts[1] (/run/secrets): removed", "mounts[2] (/run/secrets/x): removed"]
    assert [m["destination"] for m in spec["mounts"]] == ["/a", "/b"]


def test_add_mounts_replaces_in_place_keeps_parents_first_and_is_idempotent():
    spec = {"mounts": mounts_of("/proc", "/etc/hosts", "/run/secrets", "/data")}
    tmpfs = {"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]}
    hosts = {"destination": "/etc/hosts", "type": "bind", "source": "/mine", "options": ["rbind", "ro"]}
    extra = {"destination": "/extra", "type": "tmpfs", "source": "tmpfs"}
    changes = oi.edit_add_mounts(spec, [tmpfs, hosts, extra])
    assert [m["destination"] for m in spec["mounts"]] == ["/proc", "/etc/hosts", "/run", "/run/secrets",
                                                          "/data", "/extra"]
    assert spec["mounts"][1]["source"] == "/mine"
    assert changes == ["mounts[2] (/run): added", "mounts[1] (/etc/hosts): replaced", "mounts[5] (/extra): added"]
    assert oi.edit_add_mounts(spec, [tmpfs, hosts, extra]) == []
    # The config holds its own copy: later edits never reach the rule's data.
    spec["mounts"][2]["options"].append("ro")
    assert tmpfs["options"] == ["nosuid"]
    assert oi.edit_add_mounts({}, [extra]) == ["mounts[0] (/extra): added"]


def test_hooks_append_prepend_and_never_duplicate():
    engine_hook = {"path": "/usr/bin/engine-hook"}
    spec = {"hooks": {"prestart": [engine_hook]}}
    mine = {"path": "/usr/bin/mine", "args": ["mine", "x"], "timeout": 5}
    first = {"path": "/usr/bin/first"}
    assert oi.edit_hooks(spec, {"prestart": [mine], "poststop": [mine]}) == [
        "hooks.prestart: added /usr/bin/mine", "hooks.poststop: added /usr/bin/mine"]
    assert oi.edit_prepend_hooks(spec, {"prestart": [first, engine_hook]}) == [
        "hooks.prestart: prepended /usr/bin/first"]
    assert spec["hooks"]["prestart"] == [first, engine_hook, mine]
    assert oi.edit_hooks(spec, {"prestart": [mine]}) == []
    assert oi.edit_prepend_hooks(spec, {"prestart": [first]}) == []
    all_stages = {stage: [mine] for stage in oi.HOOK_STAGES}
    spec = {}
    assert len(oi.edit_hooks(spec, all_stages)) == 6
    assert list(spec["hooks"]) == list(oi.HOOK_STAGES)


def test_annotations():
    spec = {"annotations": {"keep": "1", "drop": "2"}}
    assert oi.edit_annotations(spec, {"new": "x", "drop": None, "keep": "1"}) == [
        "annotations: set new", "annotations: removed drop"]
    assert spec["annotations"] == {"keep": "1", "new": "x"}
    assert oi.edit_annotations({}, {"gone": None}) == []


# RFC 7386, Appendix A (the cases whose target and patch are objects).
@pytest.mark.parametrize("target, patch, result", [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_rfc7386_vectors(target, patch, result):
    oi.edit_merge_patch(target, patch)
    assert target == result
    assert oi.edit_merge_patch(target, patch) == []      # idempotent


# RFC 6902, Appendix A.
@pytest.mark.parametrize("doc, patch, result", [
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}], {"baz": "qux", "foo": "bar"}),
    ({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}], {"foo": ["bar", "qux", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}], {"foo": "bar"}),
    ({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}], {"foo": ["bar", "baz"]}),
    ({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}], {"baz": "boo", "foo": "bar"}),
    ({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
     [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
     {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
    ({"foo": ["all", "grass", "cows", "eat"]}, [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
     {"foo": ["all", "cows", "eat", "grass"]}),
    ({"baz": "qux", "foo": ["a", 2, "c"]},
     [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}],
     {"baz": "qux", "foo": ["a", 2, "c"]}),
    ({"foo": "bar"}, [{"op": "add", "path": "/child", "value": {"grandchild": {}}}],
     {"foo": "bar", "child": {"grandchild": {}}}),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}], {"foo": "bar", "baz": "qux"}),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": 10}], {"/": 9, "~1": 10}),
    ({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}], {"foo": ["bar", ["abc", "def"]]}),
    ({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}], {"a": {"b": 1}, "c": {"b": 1}}),
])
def test_json_patch_rfc6902_vectors(doc, patch, result):
    oi._valid_json_patch(patch)
    oi.edit_json_patch(doc, patch)
    assert doc == result


@pytest.mark.parametrize("doc, patch, message", [
    ({"baz": "qux"}, [{"op": "test", "path": "/baz", "value": "bar"}], "(test /baz): test failed"),
    ({"foo": "bar"}, [{"op": "add", "path": "/baz/bat", "value": "qux"}], "(add /baz/bat): no member \"baz\""),
    ({"/": 9, "~1": 10}, [{"op": "test", "path": "/~01", "value": "10"}], "test failed"),
    ({"a": [1]}, [{"op": "remove", "path": "/a/01"}], "\"01\" is not an array index"),
    ({"a": [1]}, [{"op": "replace", "path": "/a/1", "value": 2}], "array index 1 is out of range"),
    ({"a": True}, [{"op": "test", "path": "/a", "value": 1}], "test failed"),
])
def test_json_patch_errors_change_nothing(doc, patch, message):
    before = json.loads(json.dumps(doc))
    with pytest.raises(oi.InterceptorError) as info:
        oi.edit_json_patch(doc, [{"op": "add", "path": "/first", "value": 1}] + patch)
    assert message in str(info.value)
    assert doc == before


def test_json_equal():
    assert oi.json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert oi.json_equal(oi.RawNumber("1.50"), 1.5)
    assert not oi.json_equal(True, 1) and not oi.json_equal(0, False) and not oi.json_equal(None, 0)
    assert oi.json_equal({"a": 1, "b": 2}, {"b": 2, "a": 1})
    assert not oi.json_equal([1, 2], [2, 1])
    assert not oi.json_equal("1", 1)


def test_actions_apply_in_pipeline_order_and_errors_name_the_rule():
    # env, then env-unset, then json-patch, whatever order the rule lists them in.
    rule = oi.Rule("mine", None, {"json-patch": [{"op": "test", "path": "/process/env/0", "value": "B=new"}],
                                  "env-unset": ["A"], "env": ["B=new"]}, "test")
    spec = spec_with(env=["A=old"])
    changes = oi.apply_rules(spec, [rule])
    assert spec["process"]["env"] == ["B=new"]
    assert changes == ["mine: process.env: added B", "mine: process.env[0]: removed A"]
    bad = oi.Rule("broken", None, {"json-patch": [{"op": "remove", "path": "/nope"}]}, "test")
    with pytest.raises(oi.InterceptorError, match=r"rule broken: json-patch: json-patch\[0\] \(remove /nope\)"):
        oi.apply_rules(spec_with(), [bad])


# --- hook files ---------------------------------------------------------------------------

HOOK = {"path": "/usr/bin/hook", "args": ["hook", "prestart"], "env": ["X=1"], "timeout": 10}


def test_oci_add_hooks_file(tmp_path):
    path = write(tmp_path / "hooks.json", {"hooks": {"prestart": [HOOK], "poststop": [HOOK]},
                                           "extra": "ignored, as oci-add-hooks does"})
    p = policy(tmp_path, flags=["--oi-hook-config-path", path])
    assert [r.name for r in p.rules] == ["hook-config-path %s" % path]
    assert p.rules[0].actions == {"prepend-hooks": {"prestart": [HOOK], "poststop": [HOOK]}}
    assert policy(tmp_path, flags=["--oi-hook-config-path", path], complete=False).rules == []


@pytest.mark.parametrize("content, message", [
    ("[]", "expected {\"hooks\": {STAGE: [HOOK, ...]}}"),
    ({"hooks": {"prestart": [{"args": []}]}}, "hooks.prestart[0].path: expected an absolute path, found null"),
    ({"hooks": {"pre-start": []}}, "hooks.pre-start: unknown hook stage"),
    ("{\"hooks\": ", "Expecting value: line 1 column 11"),
])
def test_bad_oci_add_hooks_files(tmp_path, content, message):
    path = write(tmp_path / "hooks.json", content)
    with pytest.raises(oi.ConfigError) as info:
        policy(tmp_path, flags=["--oi-hook-config-path", path])
    assert str(info.value).startswith("hook config file %s: " % path)
    assert message in str(info.value)


def hook_file(when, stages=("prestart",), path="/bin/true"):
    return {"version": "1.0.0", "hook": {"path": path}, "when": when, "stages": list(stages)}


def test_hooks_dirs_order_masking_and_conditions(tmp_path):
    first, second = tmp_path / "usr", tmp_path / "etc"
    first.mkdir()
    second.mkdir()
    programs = tmp_path / "bin"
    programs.mkdir()
    for name in ("a", "b", "c", "b-masked"):
        write(programs / name, "#!/bin/sh\n")
    write(first / "10-b.json", hook_file({"always": True}, path=str(programs / "b-masked")))
    write(second / "10-b.json", hook_file({"always": True}, ["prestart", "poststop"], path=str(programs / "b")))
    write(first / "01-A.json", hook_file({"commands": ["^/sbin/init$"]}, path=str(programs / "a")))
    write(first / "05-c.json", hook_file({"annotations": {"^gpu$": "yes"}}, ["createRuntime"], path=str(programs / "c")))
    write(first / "README", "not a hook file")
    p = policy(tmp_path, flags=["--oi-hooks-dir", str(first), "--oi-hooks-dir", str(second)])
    assert [r.name for r in p.rules] == ["hooks.d 01-A.json", "hooks.d 05-c.json", "hooks.d 10-b.json"]
    spec = spec_with(args=["/sbin/init"], annotations={"gpu": "no"})
    rules = oi.matching_rules(spec, p)
    oi.apply_rules(spec, rules)
    a, b = {"path": str(programs / "a")}, {"path": str(programs / "b")}
    assert spec["hooks"] == {"prestart": [a, b], "poststop": [b]}


@pytest.mark.parametrize("content, message", [
    ({"version": "0.1.0", "hook": "/x", "stages": ["prestart"]}, "version: expected \"1.0.0\""),
    ({"version": "1.0.0", "hook": {"path": "/x"}, "stages": ["prestart"]}, "when: required"),
    (hook_file({"hostname": "x"}), "when.hostname: unknown condition"),
    (hook_file({"commands": ["("]}), "when.commands[0]: bad regex"),
    (hook_file({"always": True}, stages=[]), "stages: expected a non-empty list"),
    (hook_file({"always": True}, stages=["prestrat"]), "stages[0]: unknown hook stage \"prestrat\""),
    (dict(hook_file({"always": True}), extra=1), "extra: unknown key"),
])
def test_bad_hook_files(tmp_path, content, message):
    d = tmp_path / "hooks.d"
    d.mkdir()
    path = write(d / "x.json", content)
    with pytest.raises(oi.ConfigError) as info:
        policy(tmp_path, flags=["--oi-hooks-dir", str(d)])
    assert str(info.value).startswith("hook file %s: " % path)
    assert message in str(info.value)


def test_hook_files_whose_program_does_not_exist_are_skipped_with_a_warning(tmp_path, capsys):
    """As Podman does: a package removed its hook program but left its JSON."""
    d = tmp_path / "hooks.d"
    d.mkdir()
    write(d / "01-gone.json", hook_file({"always": True}, path=str(tmp_path / "removed-hook")))
    write(d / "02-here.json", hook_file({"always": True}, path="/bin/true"))
    p = policy(tmp_path, flags=["--oi-hooks-dir", str(d)])
    assert [r.name for r in p.rules] == ["hooks.d 02-here.json"]
    assert p.files == [str(d / "02-here.json")] and p.hooks_dirs == [str(d)]
    assert capsys.readouterr().err == ("oci-interceptor: warning: hook file %s: skipped, its hook.path %s does "
                                       "not exist\n" % (d / "01-gone.json", tmp_path / "removed-hook"))
    # A broken file is still an error, and a call that applies no rule reads none.
    write(d / "03-bad.json", dict(hook_file({"always": True}), extra=1))
    with pytest.raises(oi.ConfigError, match="03-bad.json: extra: unknown key"):
        policy(tmp_path, flags=["--oi-hooks-dir", str(d)])
    assert policy(tmp_path, flags=["--oi-hooks-dir", str(d)], complete=False).rules == []


def test_missing_hooks_dir(tmp_path):
    with pytest.raises(oi.ConfigError, match="hooks dir .*/nope: No such file or directory"):
        policy(tmp_path, flags=["--oi-hooks-dir", str(tmp_path / "nope")])


def test_global_rule_runs_before_hook_files_and_config_rules(tmp_path):
    d = tmp_path / "hooks.d"
    d.mkdir()
    write(d / "h.json", hook_file({"always": True}))
    hooks = write(tmp_path / "add.json", {"hooks": {"prestart": [HOOK]}})
    p = policy(tmp_path, {"version": 1, "env": ["A=1"], "hook-config-path": hooks, "hooks-dir": [str(d)],
                          "rules": [{"name": "last", "env-force": ["Z=1"]}]})
    assert [r.name for r in p.rules] == ["(global)", "hook-config-path %s" % hooks, "hooks.d h.json", "last"]


# --- precedence of env, relative paths ------------------------------------------------------

def test_a_later_source_sets_an_env_default_or_forced_value(tmp_path):
    """file < profile < flags for env and env-force too: a later NAME= replaces an earlier one."""
    config = {"version": 1, "env": ["TZ=UTC", "LANG=C"], "env-force": ["PROXY=file", "KEEP=1"],
              "profiles": {"p": {"env": ["TZ=Asia/Tokyo", "EXTRA=1"], "env-force": ["PROXY=profile"]}}}
    p = policy(tmp_path, config, flags=["--oi-env", "TZ=Europe/Paris"])
    assert p.rules[0].actions["env"] == ["TZ=Europe/Paris", "LANG=C"]
    p = policy(tmp_path, config, flags=["--oi-profile", "p"])
    assert p.rules[0].actions["env"] == ["TZ=Asia/Tokyo", "LANG=C", "EXTRA=1"]
    assert p.rules[0].actions["env-force"] == ["PROXY=profile", "KEEP=1"]
    p = policy(tmp_path, config, flags=["--oi-profile", "p", "--oi-env-force", "PROXY=flag", "--oi-env=TZ=a",
                                        "--oi-env=TZ=b"])
    assert p.rules[0].actions == {"env": ["TZ=b", "LANG=C", "EXTRA=1"], "env-force": ["PROXY=flag", "KEEP=1"]}
    # Still a default: the container's own value beats every source.
    spec = spec_with(env=["TZ=mine"])
    oi.apply_rules(spec, p.rules)
    assert spec["process"]["env"] == ["TZ=mine", "LANG=C", "EXTRA=1", "PROXY=flag", "KEEP=1"]
    spec = spec_with(env=["PATH=/bin"])
    oi.apply_rules(spec, p.rules)
    assert spec["process"]["env"] == ["PATH=/bin", "TZ=b", "LANG=C", "EXTRA=1", "PROXY=flag", "KEEP=1"]


def test_relative_paths_in_a_config_file_are_relative_to_its_directory(tmp_path, monkeypatch):
    etc = tmp_path / "etc"
    (etc / "hooks.d").mkdir(parents=True)
    write(etc / "hooks.json", {"hooks": {"prestart": [HOOK]}})
    config = {"version": 1, "hook-config-path": "hooks.json", "hooks-dir": ["./hooks.d"],
              "debug-output-dir": "../log", "runtime-path": "bin/runc",
              "profiles": {"crun": {"runtime-path": "crun"}, "local": {"runtime-path": "./my-runtime"}}}
    write(etc / "config.json", config)
    elsewhere = tmp_path / "bundle"
    elsewhere.mkdir()
    monkeypatch.chdir(str(elsewhere))          # under Docker, the bundle
    for config_arg in (str(etc / "config.json"), "../etc/config.json"):
        opts, _ = oi.split_command_line(["--oi-config", config_arg, "create", "x"])
        p = oi.load_policy(opts, "oci-interceptor", complete=False)
        assert p.debug_output_dir == str(tmp_path / "log")
        assert p.runtime_path == str(etc / "bin" / "runc")
        assert p.rules == []
    opts, _ = oi.split_command_line(["--oi-config", str(etc / "config.json"), "--oi-hooks-dir", "rel.d",
                                     "--oi-profile", "local", "create", "x"])
    with pytest.raises(oi.ConfigError, match="hooks dir rel.d: No such file"):   # flags: relative to the cwd
        oi.load_policy(opts, "oci-interceptor")
    p = oi.load_policy(opts, "oci-interceptor", complete=False)
    assert p.runtime_path == str(etc / "my-runtime")
    opts, _ = oi.split_command_line(["--oi-config", str(etc / "config.json"), "--oi-profile", "crun", "create", "x"])
    p = oi.load_policy(opts, "oci-interceptor")
    assert p.runtime_path == "crun"                     # a bare name is looked up on PATH
    assert [r.name for r in p.rules] == ["hook-config-path %s" % (etc / "hooks.json")]
    os.rmdir(str(etc / "hooks.d"))
    with pytest.raises(oi.ConfigError, match="hooks dir %s: No such file" % (etc / "hooks.d")):
        oi.load_policy(opts, "oci-interceptor")
