"""The holes an attacker's review found, each as a test: repeated env
entries, keys Go's JSON reader folds together, deep nesting, a planted debug
directory, an untrusted way to a policy file. Real runc and crun where the
runtimes behave differently; the runtimes' own behaviour is checked too, so
that a test stands on a fact, not on an assumption."""

import json
import os
import stat
import subprocess

import pytest

import oci_interceptor as oi
from conftest import new_id, run
from test_containers import run_container, through

NOBODY = 65534


def plain_run(runtime, bundle):
    """The runtime itself, without us: what it really does with a config."""
    cid = new_id()
    try:
        return runtime("run", "--bundle", bundle.path, cid, stdin=subprocess.DEVNULL)
    finally:
        runtime("delete", "--force", cid)


def container_env(result):
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.decode().splitlines() if line.startswith("HTTP_PROXY")]


# --- env: the last entry wins ----------------------------------------------------------

def test_runtimes_give_the_process_the_last_of_repeated_entries(runtime, bundle_factory):
    bundle = bundle_factory(["env"], env=["PATH=/bin", "HTTP_PROXY=evil1", "HTTP_PROXY=evil2"])
    assert container_env(plain_run(runtime, bundle)) == ["HTTP_PROXY=evil2"]


def test_a_bare_name_unsets_under_crun_and_fails_under_runc(runtime, bundle_factory):
    bundle = bundle_factory(["env"], env=["PATH=/bin", "HTTP_PROXY=set", "HTTP_PROXY"])
    result = plain_run(runtime, bundle)
    if runtime.name == "runc":
        assert result.returncode != 0 and b"invalid environment variable" in result.stderr
    else:
        assert container_env(result) == []


@pytest.mark.parametrize("env", [
    ["PATH=/bin", "HTTP_PROXY=evil1", "HTTP_PROXY=evil2"],
    ["PATH=/bin", "HTTP_PROXY", "HTTP_PROXY=evil"],
    ["PATH=/bin", "HTTP_PROXY=evil", "HTTP_PROXY", "HTTP_PROXY=evil3"],
])
def test_env_force_wins_over_repeated_entries(pyz, runtime, bundle_factory, env):
    bundle = bundle_factory(["env"], env=env)
    result = run_container(pyz, runtime, bundle, oi=["--oi-env-force", "HTTP_PROXY=http://proxy:3128"])
    assert container_env(result) == ["HTTP_PROXY=http://proxy:3128"]
    assert [e for e in bundle.read()["process"]["env"] if e.startswith("HTTP_PROXY")] == [
        "HTTP_PROXY=http://proxy:3128"]


def test_env_default_reads_the_value_the_process_gets(pyz, runtime, bundle_factory):
    # Under crun a trailing bare name leaves the variable unset: the default applies.
    bundle = bundle_factory(["env"], env=["PATH=/bin", "HTTP_PROXY=own", "HTTP_PROXY"])
    result = run_container(pyz, runtime, bundle, oi=["--oi-env", "HTTP_PROXY=default"])
    if runtime.name == "runc":
        assert result.returncode != 0           # runc refuses the bare name, as without us
    else:
        assert container_env(result) == ["HTTP_PROXY=default"]
    bundle = bundle_factory(["env"], env=["PATH=/bin", "HTTP_PROXY=one", "HTTP_PROXY=own"])
    assert container_env(run_container(pyz, runtime, bundle, oi=["--oi-env", "HTTP_PROXY=default"])) == [
        "HTTP_PROXY=own"]


def test_env_unset_leaves_no_entry(pyz, runtime, bundle_factory, tmp_path):
    config = tmp_path / "policy.json"
    config.write_text(json.dumps({"version": 1, "rules": [{"name": "no-proxy", "env-unset": ["HTTP_PROXY"]}]}))
    bundle = bundle_factory(["env"], env=["PATH=/bin", "HTTP_PROXY=a", "HTTP_PROXY=b"])
    assert container_env(run_container(pyz, runtime, bundle, oi=["--oi-config", str(config)])) == []


# --- keys that Go's JSON reader folds together (runc) ----------------------------------

def test_runc_reads_keys_ignoring_case_and_crun_does_not(runtime, bundle_factory):
    bundle = bundle_factory(["env"], env=["PATH=/bin", "HTTP_PROXY=good"])
    spec = bundle.read()
    spec["process"]["Env"] = ["PATH=/bin", "HTTP_PROXY=evil"]
    bundle.write(spec)
    result = plain_run(runtime, bundle)
    expected = "evil" if runtime.name == "runc" else "good"
    assert container_env(result) == ["HTTP_PROXY=" + expected]


@pytest.mark.parametrize("edit, where", [
    (lambda s: s.__setitem__("Mounts", list(s["mounts"])), '"mounts" and "Mounts" are one key to runc'),
    (lambda s: s["process"].__setitem__("Env", ["HTTP_PROXY=evil"]), 'process: "env" and "Env" are one key'),
    (lambda s: s.__setitem__("Hooks", None), '"Hooks": runc reads it as "hooks"'),
    (lambda s: s.__setitem__("mount\u017f", []), '"mounts" and "mount\\u017f" are one key to runc'),
    (lambda s: s["linux"].__setitem__("\u212aernel", 1), 'linux: "\\u212aernel": runc reads it as "kernel"'),
    (lambda s: s["mounts"][0].__setitem__("\u212aind", "x"), None),
    (lambda s: s["mounts"][0].__setitem__("OPTIONS", ["rw"]), 'mounts[0]: "OPTIONS": runc reads it as "options"'),
])
def test_configs_with_case_folded_keys_are_refused(pyz, runtime, bundle_factory, tmp_path, edit, where):
    bundle = bundle_factory(["true"])
    spec = bundle.read()
    edit(spec)
    with open(bundle.config_path, "w") as f:
        json.dump(spec, f, ensure_ascii=False)
    before = bundle.raw()
    log = tmp_path / "log.json"
    cid = new_id()
    argv = [pyz, "--oi-runtime-path", runtime.path, "--oi-readonly-networking-mounts", "--root", runtime.root,
            "--log", str(log), "--log-format", "json", "run", "--bundle", bundle.path, cid]
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            timeout=60)
    runtime("delete", "--force", cid)
    if where is None:        # "\u212aind" folds to "kind", no field: Go ignores it, so do we
        assert result.returncode == 0, result.stderr
        return
    err = result.stderr.decode()
    assert result.returncode == 1
    assert err.count("\n") == 1 and where in err and bundle.config_path in err
    assert json.loads(log.read_text())["msg"] == err.strip()
    assert bundle.raw() == before
    assert cid not in runtime("list", "-q").stdout.decode()


def test_map_keys_are_data_and_may_differ_in_case_only():
    spec = {"annotations": {"Mounts": "a", "mounts": "b"}, "linux": {"sysctl": {"Net.x": "1", "net.x": "2"}}}
    assert oi.check_keys_as_go_reads_them(spec) is None
    spec = {"linux": {"resources": {"rdma": {"mlx": {"hcaHandles": 1, "HcaHandles": 2}}}}}
    assert "linux.resources.rdma.mlx" in oi.check_keys_as_go_reads_them(spec)
    spec = {"linux": {"resources": {"memory": {"\u212aernel": 1}}}}
    assert oi.check_keys_as_go_reads_them(spec).startswith('linux.resources.memory: "\\u212aernel"')


def test_every_field_a_real_engine_writes_is_spelled_as_the_spec_has_it(spec_template):
    assert oi.check_keys_as_go_reads_them(spec_template) is None
    names = set()

    def walk(value):
        if isinstance(value, dict):
            names.update(value)
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
    walk(spec_template)
    names -= set(spec_template.get("annotations") or {})
    assert names <= oi.SPEC_FIELDS


# --- deep nesting ---------------------------------------------------------------------

@pytest.mark.parametrize("depth", [600, 5000])
def test_deep_nesting_is_refused_with_the_limit(pyz, fake, tmp_path, depth):
    raw = '{"ociVersion":"1.0.2","process":{"args":["sh"]},"x":%s%s}' % ("[" * depth, "]" * depth)
    (tmp_path / "config.json").write_text(raw)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env", "A=1", "create", "-b", str(tmp_path),
                         "c"], fake)
    assert result.returncode == 1 and not fake.called()
    err = result.stderr.decode()
    assert err.startswith("oci-interceptor: ") and err.count("\n") == 1
    assert "%s: nested deeper than %d levels" % (tmp_path / "config.json", oi.MAX_CONFIG_DEPTH) in err
    assert "refusing it" in err


def test_the_deepest_allowed_config_is_edited(pyz, fake, tmp_path):
    depth = oi.MAX_CONFIG_DEPTH - 2
    raw = '{"ociVersion":"1.0.2","process":{"args":["sh"]},"x":%s%s}' % ("[" * depth, "]" * depth)
    (tmp_path / "config.json").write_text(raw)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-env", "A=1", "create", "-b", str(tmp_path),
                         "c"], fake)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "config.json").read_text())["process"]["env"] == ["A=1"]


# --- a planted debug directory ------------------------------------------------------------

@pytest.fixture
def planted_debug_dir(tmp_path):
    """A debug directory another user made, with a FIFO named like our log."""
    os.chmod(str(tmp_path), 0o755)
    debug = tmp_path / "debug"
    debug.mkdir()
    os.mkfifo(str(debug / "runtime_calls.log"))
    os.chown(str(debug), NOBODY, NOBODY)
    os.chown(str(debug / "runtime_calls.log"), NOBODY, NOBODY)
    return debug


@pytest.mark.parametrize("command", [["kill", "c", "KILL"], ["delete", "c"], ["create", "-b", "BUNDLE", "c"]])
def test_a_debug_directory_of_another_user_is_not_used_and_blocks_nothing(
        pyz, fake, tmp_path, planted_debug_dir, command):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion":"1.0.2","process":{"args":["sh"]},"hostname":"h"}')
    command = [str(bundle) if a == "BUNDLE" else a for a in command]
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir",
                         str(planted_debug_dir)] + command, fake, timeout=20)
    assert result.returncode == 0 and fake.called()
    assert result.stderr.decode() == (
        "oci-interceptor: warning: no debug output: %s: refusing it: owner uid %d, mode 0755 (it must be "
        "ours and writable by no one else)\n" % (planted_debug_dir, NOBODY))
    assert sorted(os.listdir(str(planted_debug_dir))) == ["runtime_calls.log"]


def test_a_fifo_in_our_own_debug_directory_blocks_nothing(pyz, fake, tmp_path):
    debug = tmp_path / "debug"
    debug.mkdir(mode=0o700)
    os.mkfifo(str(debug / "runtime_calls.log"))
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir",
                         str(debug), "delete", "c"], fake, timeout=20)
    assert result.returncode == 0 and fake.called()
    assert "no debug output" in result.stderr.decode()
    assert stat.S_ISFIFO(os.lstat(str(debug / "runtime_calls.log")).st_mode)


def test_a_debug_directory_others_can_write_is_not_used(pyz, fake, tmp_path):
    debug = tmp_path / "debug"
    debug.mkdir()
    os.chmod(str(debug), 0o1777)
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-write-debug-output", "--oi-debug-output-dir",
                         str(debug), "state", "c"], fake, timeout=20)
    assert result.returncode == 0 and fake.called()
    assert "mode 1777" in result.stderr.decode()
    assert os.listdir(str(debug)) == []


# --- the way to a policy file ------------------------------------------------------------

def load(path):
    return oi.load_policy(oi.split_command_line(["--oi-config", str(path), "list"])[0], "x")


@pytest.fixture
def user_dir(tmp_path):
    os.chmod(str(tmp_path), 0o755)
    d = tmp_path / "user"
    d.mkdir()
    os.chown(str(d), NOBODY, NOBODY)
    return d


@pytest.mark.skipif(os.geteuid() != 0, reason="the trust check applies to root")
def test_a_users_symlink_to_a_root_config_is_refused(tmp_path, user_dir):
    real = tmp_path / "root-owned"
    real.mkdir()
    target = real / "config.json"
    target.write_text('{"version": 1}')
    link = user_dir / "config.json"
    link.symlink_to(target)
    os.lchown(str(link), NOBODY, NOBODY)
    with pytest.raises(oi.ConfigError, match=r"its directory .*/user is writable by a non-root user "
                                             r"\(owner uid 65534, mode 0755\)"):
        load(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="the trust check applies to root")
def test_every_step_on_the_way_is_checked(tmp_path, user_dir):
    real = tmp_path / "root-owned"
    real.mkdir()
    (real / "config.json").write_text('{"version": 1}')
    # A root-owned link in a root-owned directory, pointing through a user's directory.
    (user_dir / "hop").symlink_to(real)
    os.lchown(str(user_dir / "hop"), 0, 0)
    safe = tmp_path / "safe"
    safe.mkdir()
    (safe / "config.json").symlink_to(user_dir / "hop" / "config.json")
    with pytest.raises(oi.ConfigError, match=r"its directory .*/user is writable by a non-root user"):
        load(safe / "config.json")
    # A user's symlink in a root-owned directory.
    (safe / "mine.json").symlink_to(real / "config.json")
    os.lchown(str(safe / "mine.json"), NOBODY, NOBODY)
    with pytest.raises(oi.ConfigError, match=r"the symlink .*/safe/mine.json on its way belongs to uid 65534"):
        load(safe / "mine.json")
    # Root's symlinks in root's directories, and a relative link with "..": trusted.
    (safe / "ok.json").symlink_to("../root-owned/config.json")
    assert load(safe / "ok.json").config_path == str(safe / "ok.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="the trust check applies to root")
def test_a_sticky_directory_on_the_way_is_fine(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(str(sticky), 0o1777)
    (sticky / "policy").mkdir()
    (sticky / "policy" / "config.json").write_text('{"version": 1}')
    assert load(sticky / "policy" / "config.json").config_path.endswith("config.json")
    hooks = sticky / "hooks.d"
    hooks.mkdir()
    os.chmod(str(hooks), 0o1777)       # the hooks directory itself: no exception
    with pytest.raises(oi.ConfigError, match=r"hooks dir .*hooks.d: refusing it, it is writable"):
        oi.load_policy(oi.split_command_line(["--oi-hooks-dir", str(hooks), "create"])[0], "x")


@pytest.mark.skipif(os.geteuid() != 0, reason="the trust check applies to root")
def test_a_policy_behind_a_users_symlink_starts_no_container(pyz, fake, tmp_path, user_dir):
    real = tmp_path / "root-owned"
    real.mkdir()
    (real / "config.json").write_text('{"version": 1, "env": ["A=1"]}')
    link = user_dir / "config.json"
    link.symlink_to(real / "config.json")
    os.lchown(str(link), NOBODY, NOBODY)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion":"1.0.2","process":{"args":["sh"]}}')
    result = run([pyz], ["--oi-runtime-path", fake.runtime, "--oi-config", str(link), "create", "-b",
                         str(bundle), "c"], fake)
    assert result.returncode == 2 and not fake.called()
    assert "refusing it, its directory" in result.stderr.decode()
