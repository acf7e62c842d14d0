"""Policy as data, as a process and with real containers: config files,
profiles by program name, hook injection from every source, dry run, config
check, and the oci-add-hooks drop-in."""

import json
import os
import subprocess

import pytest

from conftest import new_id, run


def write_json(path, data):
    with open(str(path), "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(str(path), 0o644)
    return str(path)


def simple_bundle(directory, env=("PATH=/bin",), args=("/bin/app",), annotations=None):
    spec = {"ociVersion": "1.0.2", "process": {"args": list(args), "env": list(env)}, "hostname": "box",
            "mounts": [{"destination": "/etc/hosts", "type": "bind", "source": "/x", "options": ["rbind", "rw"]}]}
    if annotations:
        spec["annotations"] = annotations
    directory.mkdir(exist_ok=True)
    write_json(directory / "config.json", spec)
    return str(directory)


# --- as a process ----------------------------------------------------------------------

def test_default_config_file_applies_without_any_flag(pyz, fake, tmp_path):
    config = write_json(tmp_path / "config.json", {
        "version": 1, "runtime-path": fake.runtime, "env-force": ["FROM=file"]})
    bundle = simple_bundle(tmp_path / "b")
    result = run([pyz], ["create", "--bundle", bundle, "c"], fake, env={"OCI_INTERCEPTOR_CONFIG": config})
    assert result.returncode == 0, result.stderr
    with open(os.path.join(bundle, "config.json")) as f:
        assert json.load(f)["process"]["env"] == ["PATH=/bin", "FROM=file"]
    assert fake.args() == [b"create", b"--bundle", bundle.encode(), b"c"]


def test_profiles_side_by_side_by_symlink_name(pyz, fake, tmp_path):
    config = write_json(tmp_path / "config.json", {
        "version": 1, "runtime-path": fake.runtime,
        "profiles": {"oi-strict": {"readonly-networking-mounts": True, "env-force": ["PROFILE=strict"]},
                     "oi-relaxed": {"env": ["PROFILE=relaxed"]}}})
    links = {}
    for name in ("oi-strict", "oi-relaxed"):
        links[name] = str(tmp_path / name)
        os.symlink(pyz, links[name])
    env = {"OCI_INTERCEPTOR_CONFIG": config}
    strict = simple_bundle(tmp_path / "s")
    relaxed = simple_bundle(tmp_path / "r")
    assert run([links["oi-strict"]], ["create", "-b", strict, "c1"], fake, env=env).returncode == 0
    assert run([links["oi-relaxed"]], ["create", "-b", relaxed, "c2"], fake, env=env).returncode == 0
    with open(os.path.join(strict, "config.json")) as f:
        s = json.load(f)
    with open(os.path.join(relaxed, "config.json")) as f:
        r = json.load(f)
    assert s["process"]["env"][-1] == "PROFILE=strict" and s["mounts"][0]["options"] == ["rbind", "ro"]
    assert r["process"]["env"][-1] == "PROFILE=relaxed" and r["mounts"][0]["options"] == ["rbind", "rw"]


def test_bad_config_refuses_the_call_with_one_line(pyz, fake, tmp_path):
    config = write_json(tmp_path / "config.json", {
        "version": 1, "rules": [{"env": ["A=1"]}, {"env": ["A=1"]},
                                {"when": {"commands": ["(unclosed"]}, "env": ["A=1"]}]})
    log = tmp_path / "log.json"
    bundle = simple_bundle(tmp_path / "b")
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    result = run([pyz], ["--oi-config", config, "--oi-runtime-path", fake.runtime, "--log", str(log),
                         "--log-format", "json", "create", "-b", bundle, "c"], fake)
    assert result.returncode == 2
    expected = ("oci-interceptor: config %s: rules[2].when.commands[0]: bad regex \"(unclosed\": "
                "missing ), unterminated subpattern at position 0" % config)
    assert result.stderr.decode() == expected + "\n"
    assert json.loads(log.read_text())["msg"] == expected
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw
    assert not fake.called()


def test_check_config(pyz, fake, tmp_path):
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    write_json(hooks_dir / "01-x.json", {"version": "1.0.0", "hook": {"path": "/bin/true"},
                                         "when": {"always": True}, "stages": ["prestart"]})
    config = write_json(tmp_path / "config.json", {
        "version": 1, "runtime-path": fake.runtime, "env": ["A=1"], "hooks-dir": str(hooks_dir),
        "rules": [{"name": "gpu", "when": {"annotations": {"gpu": "yes"}}, "env-force": ["G=1"]}]})
    result = run([pyz], ["--oi-config", config, "--oi-check-config"])
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "configuration is valid" in out
    assert "runtime: %s -> %s" % (fake.runtime, fake.runtime) in out
    assert "rules: 3" in out
    assert ("  gpu (%s rules[0])\n    when: {\"annotations\": {\"gpu\": \"yes\"}}\n    env-force: [\"G=1\"]\n"
            % config) in out
    assert "hook file: %s" % (hooks_dir / "01-x.json") in out
    assert "hooks dir: %s" % hooks_dir in out
    write_json(tmp_path / "config.json", {"version": 1, "rules": [{"when": {"hostname": "["}, "env": ["A=1"]}]})
    result = run([pyz], ["--oi-config", config, "--oi-check-config"])
    assert result.returncode == 2
    assert b"rules[0].when.hostname: bad regex" in result.stderr
    assert result.stdout == b""


def test_check_config_fails_when_the_configuration_cannot_work(pyz, fake, tmp_path):
    """Exit 2 for a runtime or hook program that is missing or not executable;
    the summary shows every rule in full and the resolved paths."""
    not_executable = tmp_path / "hook.sh"
    not_executable.write_text("#!/bin/sh\n")
    not_executable.chmod(0o644)
    hooks = write_json(tmp_path / "hooks.json", {"hooks": {"poststop": [{"path": "/nonexistent/cleanup"}]}})
    config = write_json(tmp_path / "config.json", {
        "version": 1, "runtime-path": "bin/crun", "hook-config-path": "hooks.json", "debug-output-dir": "log",
        "write-debug-output": True,
        "rules": [{"name": "hooked", "when": {"commands": ["^/bin/app$"], "hasBindMounts": True},
                   "hooks": {"prestart": [{"path": str(not_executable), "args": ["h", "x"]}]},
                   "add-mounts": [{"destination": "/scratch", "type": "tmpfs", "source": "tmpfs",
                                   "options": ["size=1m"]}]}]})
    result = run([pyz], ["--oi-config", config, "--oi-check-config"], cwd=str(tmp_path / ".."))
    assert result.returncode == 2
    out = result.stdout.decode().splitlines()
    assert out[0].endswith(": configuration cannot work")
    assert "runtime: %s -> NOT FOUND" % (tmp_path / "bin" / "crun") in out
    assert "debug output: %s" % (tmp_path / "log") in out
    assert "hook file: %s" % hooks in out
    assert "    when: {\"commands\": [\"^/bin/app$\"], \"hasBindMounts\": true}" in out
    assert ("    add-mounts: [{\"destination\": \"/scratch\", \"type\": \"tmpfs\", \"source\": \"tmpfs\", "
            "\"options\": [\"size=1m\"]}]") in out
    assert "    hooks: {\"prestart\": [{\"path\": \"%s\", \"args\": [\"h\", \"x\"]}]}" % not_executable in out
    problems = ["runtime %s does not exist" % (tmp_path / "bin" / "crun"),
                "rule hook-config-path %s: prepend-hooks poststop: hook program /nonexistent/cleanup does not exist"
                % hooks,
                "rule hooked: hooks prestart: hook program %s is not executable" % not_executable]
    assert out[-3:] == ["problem: " + p for p in problems]
    assert result.stderr.decode() == "oci-interceptor: configuration cannot work: %s\n" % "; ".join(problems)
    # Fixed, it passes.
    not_executable.chmod(0o755)
    write_json(tmp_path / "hooks.json", {"hooks": {"poststop": [{"path": "/bin/true"}]}})
    (tmp_path / "bin").mkdir()
    os.symlink(fake.runtime, str(tmp_path / "bin" / "crun"))
    result = run([pyz], ["--oi-config", config, "--oi-check-config"])
    assert result.returncode == 0, result.stderr
    assert b"configuration is valid" in result.stdout and result.stderr == b""


@pytest.mark.parametrize("env, named", [
    ({"OCI_INTERCEPTOR_CONFIG": "/etc/oci-interceptor/confg.json"}, "$OCI_INTERCEPTOR_CONFIG"),
    ({}, "--oi-config")])
def test_a_missing_config_file_named_explicitly_fails_create_and_check(pyz, fake, tmp_path, env, named):
    args = [] if env else ["--oi-config", "/etc/oci-interceptor/confg.json"]
    bundle = simple_bundle(tmp_path / "b")
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    message = ("oci-interceptor: config /etc/oci-interceptor/confg.json: No such file or directory (named by %s)\n"
               % named)
    for call in (["--oi-check-config"], ["--oi-runtime-path", fake.runtime, "create", "-b", bundle, "c"]):
        result = run([pyz], args + call, fake, env=env)
        assert (result.returncode, result.stdout, result.stderr.decode()) == (2, b"", message)
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw
    assert not fake.called()
    # "" means no config file, and check-config says so.
    for call in (["--oi-config=", "--oi-check-config"], ["--oi-check-config"]):
        result = run([pyz], call, env={"OCI_INTERCEPTOR_CONFIG": ""})
        assert result.returncode == 0
    assert "config file: (none: $OCI_INTERCEPTOR_CONFIG is empty)" in result.stdout.decode()
    result = run([pyz], ["--oi-config=", "--oi-check-config"])
    assert "config file: (none: --oi-config is empty)" in result.stdout.decode()


def test_dry_run_shows_the_diff_and_changes_nothing(pyz, fake, tmp_path):
    config = write_json(tmp_path / "config.json", {
        "version": 1, "readonly-networking-mounts": True,
        "rules": [{"name": "app-only", "when": {"commands": ["^/bin/app$"]}, "env-force": ["APP=1"]},
                  {"name": "never", "when": {"always": False}, "env-force": ["NEVER=1"]}]})
    bundle = simple_bundle(tmp_path / "b")
    raw = open(os.path.join(bundle, "config.json"), "rb").read()
    result = run([pyz], ["--oi-config", config, "--oi-runtime-path", fake.runtime, "--oi-dry-run",
                         "--root", "/r", "create", "--bundle", bundle, "c"], fake)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "rules matched: (global), app-only\n" in out
    assert "  app-only: process.env: added APP\n" in out
    assert '+      "APP=1"' in out and '-        "rw"' in out and '+        "ro"' in out
    assert out.endswith("would exec: %s --root /r create --bundle %s c\n" % (fake.runtime, bundle))
    assert open(os.path.join(bundle, "config.json"), "rb").read() == raw
    assert not fake.called()
    result = run([pyz], ["--oi-config", config, "--oi-runtime-path", fake.runtime, "--oi-dry-run", "state", "c"], fake)
    assert "state does not edit the config" in result.stdout.decode()


def test_oci_add_hooks_drop_in(pyz, fake, tmp_path):
    drop_in = str(tmp_path / "oci-add-hooks")
    os.symlink(pyz, drop_in)
    hooks = write_json(tmp_path / "hooks.json", {"hooks": {"prestart": [{"path": "/usr/bin/mark"}]}})
    bundle = simple_bundle(tmp_path / "b")
    fake_name = os.path.basename(fake.runtime)      # found on PATH, as oci-add-hooks cannot
    args = ["--hook-config-path", hooks, "--runtime-path", fake_name, "--root", "/r", "create",
            "--bundle", bundle, "c"]
    env = {"PATH": os.path.dirname(fake.runtime) + ":/usr/bin:/bin"}
    for _ in range(2):   # twice: the hook is not duplicated
        result = run([drop_in], args, fake, env=env)
        assert result.returncode == 0, result.stderr
    with open(os.path.join(bundle, "config.json")) as f:
        assert json.load(f)["hooks"] == {"prestart": [{"path": "/usr/bin/mark"}]}
    assert fake.args() == [b"--root", b"/r", b"create", b"--bundle", bundle.encode(), b"c"]
    version = run([drop_in], ["--version"])
    assert version.returncode == 0 and version.stdout.startswith(b"oci-interceptor ")
    missing = run([drop_in], ["--hook-config-path", hooks, "--runtime-path", "/nonexistent/runc", "state", "c"])
    assert missing.stderr == b"oci-interceptor: runtime /nonexistent/runc does not exist\n"


# --- with real containers ------------------------------------------------------------------

def hook_writing(marker):
    """A hook that saves the state JSON runc gives it on stdin."""
    return {"path": "/bin/sh", "args": ["sh", "-c", "cat > %s" % marker]}


@pytest.mark.parametrize("runtime", ["runc"], indirect=True)
def test_hooks_from_every_source_run(pyz, runtime, bundle_factory, tmp_path):
    markers = {name: str(tmp_path / ("marker-" + name)) for name in ("flag", "hooksd", "rule", "creatert")}
    hook_config = write_json(tmp_path / "add-hooks.json", {"hooks": {"prestart": [hook_writing(markers["flag"])]}})
    hooks_dir = tmp_path / "hooks.d"
    hooks_dir.mkdir()
    write_json(hooks_dir / "10-mark.json", {"version": "1.0.0", "hook": hook_writing(markers["hooksd"]),
                                            "when": {"commands": ["^true$"]}, "stages": ["createRuntime"]})
    config = write_json(tmp_path / "config.json", {"version": 1, "rules": [
        {"name": "mark", "hooks": {"prestart": [hook_writing(markers["rule"])],
                                   "createRuntime": [hook_writing(markers["creatert"])]}}]})
    bundle = bundle_factory(["true"])
    cid = new_id()
    try:
        result = subprocess.run([pyz, "--oi-config", config, "--oi-hook-config-path", hook_config,
                                 "--oi-hooks-dir", str(hooks_dir), "--oi-runtime-path", runtime.path,
                                 "--root", runtime.root, "run", "--bundle", bundle.path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert result.returncode == 0, result.stderr
    finally:
        runtime("delete", "--force", cid)
    for name, marker in markers.items():
        with open(marker) as f:
            state = json.load(f)
        assert state["id"] == cid, name
        assert state["bundle"] == bundle.path


@pytest.mark.parametrize("runtime", ["runc"], indirect=True)
def test_rule_matches_only_containers_with_the_annotation_or_command(pyz, runtime, bundle_factory, tmp_path):
    config = write_json(tmp_path / "config.json", {"version": 1, "rules": [
        {"name": "team-blue", "when": {"annotations": {"^com\\.example\\.team$": "^blue$"}},
         "env-force": ["TEAM=blue"], "readonly-networking-mounts": True},
        {"name": "env-cmd", "when": {"commands": ["^env$"]}, "env-force": ["RAN=env"]}]})
    script = "env; echo x >> /etc/hosts && echo hosts-writable; true"
    outputs = {}
    for label, annotations in (("blue", {"com.example.team": "blue"}), ("red", {"com.example.team": "red"})):
        bundle = bundle_factory(["sh", "-c", script])
        spec = bundle.read()
        spec["annotations"] = annotations
        bundle.write(spec)
        cid = new_id()
        try:
            result = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path,
                                     "--root", runtime.root, "run", "--bundle", bundle.path, cid],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    timeout=60)
        finally:
            runtime("delete", "--force", cid)
        assert result.returncode == 0, result.stderr
        outputs[label] = (result.stdout.decode().splitlines(), result.stderr.decode())
    blue_out, blue_err = outputs["blue"]
    red_out, red_err = outputs["red"]
    assert "TEAM=blue" in blue_out and "Read-only file system" in blue_err
    assert not any(line.startswith("TEAM=") for line in red_out) and "hosts-writable" in red_out
    assert not any(line.startswith("RAN=") for line in blue_out + red_out)   # args[0] is sh
    bundle = bundle_factory(["env"])
    cid = new_id()
    try:
        result = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path,
                                 "--root", runtime.root, "run", "--bundle", bundle.path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    finally:
        runtime("delete", "--force", cid)
    assert "RAN=env" in result.stdout.decode().splitlines()


@pytest.mark.parametrize("runtime", ["runc"], indirect=True)
def test_bad_regex_refuses_the_container_with_a_log_error(pyz, runtime, bundle_factory, tmp_path):
    config = write_json(tmp_path / "config.json", {"version": 1, "rules": [
        {"name": "broken", "when": {"annotations": {"x": "*bad"}}, "env": ["A=1"]}]})
    bundle = bundle_factory(["true"])
    log = tmp_path / "log.json"
    cid = new_id()
    try:
        result = subprocess.run([pyz, "--oi-config", config, "--oi-runtime-path", runtime.path,
                                 "--root", runtime.root, "--log", str(log), "--log-format", "json",
                                 "create", "--bundle", bundle.path, cid],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert result.returncode == 2
        last = json.loads(log.read_text().splitlines()[-1])
        assert last["level"] == "error"
        assert last["msg"] == ("oci-interceptor: config %s: rules[0].when.annotations.x: bad regex \"*bad\": "
                               "nothing to repeat at position 0" % config)
        assert runtime("state", cid).returncode != 0
    finally:
        runtime("delete", "--force", cid)


def test_containerd_runc_binary_gets_its_policy_from_the_config_file(pyz, containerd):
    """`ctr run --runc-binary` (what a Kubernetes RuntimeClass's BinaryName
    does) passes no argument of ours: the policy comes from the config file."""
    containerd.write_policy({"version": 1, "env-force": ["FROM_POLICY=yes"], "rules": [
        {"name": "strict", "when": {"annotations": {"^com\\.example\\.policy$": "^strict$"}},
         "add-mounts": [{"destination": "/strict", "type": "tmpfs", "source": "tmpfs",
                         "options": ["nosuid", "nodev", "ro"]}]}]})
    script = "env; grep ' /strict ' /proc/mounts; touch /strict/x 2>&1; true"
    plain = containerd.run(pyz, new_id(), ["sh", "-c", script])
    strict = containerd.run(pyz, new_id(), ["sh", "-c", script], extra=["--annotation", "com.example.policy=strict"])
    assert plain.returncode == 0 and strict.returncode == 0, (plain.stderr, strict.stderr)
    plain_out, strict_out = plain.stdout.decode(), strict.stdout.decode()
    assert "FROM_POLICY=yes" in plain_out.splitlines() and "FROM_POLICY=yes" in strict_out.splitlines()
    assert " /strict " not in plain_out and "touch: /strict/x: No such file or directory" in plain_out
    assert "tmpfs /strict tmpfs ro," in strict_out
    assert "touch: /strict/x: Read-only file system" in strict_out


def test_containerd_policy_error_is_reported(pyz, containerd):
    containerd.write_policy({"version": 1, "env": ["NOEQUALS"]})
    result = containerd.run(pyz, new_id(), ["true"])
    assert result.returncode != 0
    assert "oci-interceptor: config %s: env[0]: expected NAME=VALUE" % containerd.policy_path in result.stderr.decode()
