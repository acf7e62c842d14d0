"""The README's examples are checked, so the docs cannot drift."""

import json
import os
import re

import oci_interceptor as oi
from conftest import REPO


def readme():
    with open(os.path.join(REPO, "README.md")) as f:
        return f.read()


def json_blocks_after(heading):
    text = readme()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", 1)]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.S)]


def test_policy_file_example_is_valid(tmp_path):
    (example,) = json_blocks_after("## Policy files")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(example))
    path.chmod(0o644)
    opts, _ = oi.split_command_line(["--oi-config", str(path), "create", "x"])
    policy = oi.load_policy(opts, "oci-interceptor-strict")
    assert policy.profile == "oci-interceptor-strict"
    assert [r.name for r in policy.rules] == ["(global)", "no-proxy-for-ci", "scratch-tmpfs"]
    spec = {"process": {"args": ["/usr/bin/build"], "env": ["HTTP_PROXY=x"]},
            "annotations": {"com.example.team": "ci"}, "mounts": []}
    oi.apply_rules(spec, oi.matching_rules(spec, policy))
    assert spec["process"]["env"] == ["TZ=UTC"]
    assert spec["mounts"][0]["destination"] == "/scratch"


def test_docker_examples_are_valid_daemon_json():
    blocks = json_blocks_after("## Register it with Docker")
    assert blocks[0]["runtimes"]["oci-interceptor"] == {"path": "/usr/local/bin/oci-interceptor"}
    args = blocks[1]["runtimes"]["oci-interceptor"]["runtimeArgs"]
    opts, runtime_args = oi.split_command_line(args + ["create", "x"])
    assert runtime_args == ["create", "x"] and all(" " not in a for a in args)


def test_every_flag_is_in_the_readme():
    text = readme()
    for flag in oi.FLAGS:
        assert "`%s" % flag.name in text, flag.name
    for action in oi.ACTIONS:
        assert '`"%s"' % action.key in text, action.key


def toml_blocks_after(heading):
    text = readme()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", 1)]
    return re.findall(r"```toml\n(.*?)```", section, re.S)


def printed_snippet(engine, *flags):
    """What --oi-register prints for a program installed as the README's
    /usr/local/bin/oci-interceptor (only an executable file is registered)."""
    import subprocess
    import tempfile
    from conftest import SYSTEM_PYTHON
    with tempfile.TemporaryDirectory() as tmp:
        program = os.path.join(tmp, "oci-interceptor")
        with open(program, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(program, 0o755)
        out = subprocess.run([SYSTEM_PYTHON, os.path.join(REPO, "oci_interceptor.py"), "--oi-register", engine,
                              "--oi-register-path", program] + list(flags),
                             stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
    return out.replace(program, "/usr/local/bin/oci-interceptor")


def test_readme_podman_snippet_is_what_the_program_prints():
    (block,) = toml_blocks_after("## Register it with Podman")
    assert block in printed_snippet("podman", "--oi-register-default")


def test_readme_containerd_snippet_is_what_the_program_prints():
    (block,) = toml_blocks_after("## Register it with containerd")
    assert block in printed_snippet("containerd")


def test_no_merge_conflict_markers_are_left_in_the_tree():
    import subprocess
    tracked = subprocess.run(["git", "-C", REPO, "ls-files"], stdout=subprocess.PIPE,
                             universal_newlines=True).stdout.split()
    for name in tracked:
        path = os.path.join(REPO, name)
        if not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            lines = f.read().split(b"\n")
        marked = [i + 1 for i, line in enumerate(lines)
                  if line.startswith((b"<<<<<<< ", b">>>>>>> ")) or line == b"======="]
        assert not marked, (name, marked)
