"""Every spelling of a create/run that runc or crun accepts is read as the
runtime reads it, or refused: a container never starts from a config we did
not edit, and a decoy config.json is never edited in place of the real one.

runtime_models.py models how runc 1.1 and crun 1.8 read a whole command
line; the end-to-end tests check the models against the real binaries on a
corpus of hostile spellings and run each spelling through the program with a
policy, looking inside the container. A property test then holds
parse_runtime_call to the models on any argv made of such pieces.
"""

import json
import os
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import oci_interceptor as oi
import runtime_models
from conftest import make_bundle, new_id

UNREADABLE = "oci-interceptor: cannot read the runtime's command line: "

# Command lines after the runtime's name; STATE is the test's private --root,
# OTHER the intended bundle's absolute path, ID a fresh container id. The
# working directory holds a decoy config.json.
CORPUS = [
    "--root STATE run ID",
    "--root STATE run -b OTHER ID",
    "--root STATE run -bOTHER ID",
    "--root STATE run -b=OTHER ID",
    "--root STATE run --bundle OTHER ID",
    "--root STATE run --bundle=OTHER ID",
    "--root STATE run -bundle OTHER ID",
    "--root STATE run -bundle=OTHER ID",
    "--root STATE run --bund OTHER ID",
    "--root STATE run --bund=OTHER ID",
    "--root STATE run --b OTHER ID",
    "--root STATE run -dbOTHER ID",
    "--root STATE run -d -b OTHER ID",
    "--root STATE run ID --bundle OTHER",
    "--root STATE run ID -b OTHER",
    "--root STATE run -b /nonexistent --bundle OTHER ID",
    "--root STATE run --bundle /nonexistent --bundle OTHER ID",
    "--root STATE run -b /nonexistent -b OTHER ID",
    "--root STATE run -b undle ID",
    "--root STATE run --bundle= ID",
    "--root STATE run -f x.json ID",
    "--root STATE run -fx.json ID",
    "--root STATE run --conf x.json ID",
    "--root STATE run --con x.json ID",
    "--root STATE run -b OTHER -f config.json ID",
    "--root STATE run -b OTHER -f ./config.json ID",
    "--root STATE run -b OTHER -f x.json ID",
    "--root STATE run -b OTHER --config=OTHER/x.json ID",
    "--root STATE run --p x -b OTHER ID",
    "--root STATE run --pro x -b OTHER ID",
    "--root STATE run --HANG=0 -b OTHER ID",
    "--root STATE run --no-p -b OTHER ID",
    "--root STATE run --keep -b OTHER ID",
    "--root STATE run --detach=true -b OTHER ID",
    "--root STATE run -b OTHER -- ID",
    "--root STATE run -- ID",
    "--root STATE run --frob -b OTHER ID",
    "--root STATE run -x -b OTHER ID",
    "--root STATE -- run -b OTHER ID",
    "--debug --root STATE -- run -b OTHER ID",
    "--log-f text --root STATE run -b OTHER ID",
    "--cgroup-m cgroupfs --root STATE run -b OTHER ID",
    "--c cgroupfs --root STATE run -b OTHER ID",
    "--roo STATE run -b OTHER ID",
    "--r STATE run -b OTHER ID",
    "--rootl STATE run -b OTHER ID",
    "-root STATE run -b OTHER ID",
    "-root=STATE -log-format=text run -b OTHER ID",
    "--root=STATE --log-format=text run -b OTHER ID",
    "--root STATE --frob run -b OTHER ID",
    "--root STATE --frob x run -b OTHER ID",
    "--root STATE --program-name x run -b OTHER ID",
    "--root STATE --p x run -b OTHER ID",
    "--root STATE --lo /dev/null run -b OTHER ID",
    "--root STATE --HANG=0 run -b OTHER ID",
    "--root STATE --d run -b OTHER ID",
    "--root STATE --debug=false run -b OTHER ID",
    "--root STATE --criu /bin/true run -b OTHER ID",
    "--root STATE -v run ID",
    "--root STATE --version run ID",
    "--root STATE - run -b OTHER ID",
]

CONFIGS = {"decoy": "config.json", "cwd-x": "x.json", "undle": "undle/config.json"}
OTHER_CONFIGS = {"other": "config.json", "other-x": "x.json"}


@pytest.fixture
def bundles(tmp_path, rootfs, spec_template):
    """A working directory with a decoy config.json (and x.json, undle/), and
    the intended bundle "other" (with x.json): each container says which
    config it was started from, and the policy's MARK."""
    cwd, other = tmp_path / "cwd", tmp_path / "other"
    (cwd / "undle").mkdir(parents=True)
    other.mkdir()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    paths = {}
    for which, directory, name in ([(w, cwd, n) for w, n in CONFIGS.items()]
                                   + [(w, other, n) for w, n in OTHER_CONFIGS.items()]):
        bundle = make_bundle(scratch, rootfs, spec_template, ["sh", "-c", 'echo "$MARK $WHICH"'],
                             env=["PATH=/bin", "WHICH=" + which], network_files=False)
        path = str(directory / name)
        os.rename(bundle.config_path, path)
        with open(path, "rb") as f:
            paths[path] = f.read()

    class Bundles(object):
        directory = str(cwd)
        other_path = str(other)
        pristine = paths

        def which(self, path):
            with open(path) as f:
                env = json.load(f)["process"]["env"]
            return [e for e in env if e.startswith("WHICH=")][0][len("WHICH="):]

        def changed(self):
            changed = set()
            for path, raw in self.pristine.items():
                with open(path, "rb") as f:
                    if f.read() != raw:
                        changed.add(path)
            return changed

        def restore(self):
            for path, raw in self.pristine.items():
                with open(path, "wb") as f:
                    f.write(raw)
    return Bundles()


def expand(template, runtime, bundles, cid):
    return [word.replace("STATE", runtime.root).replace("OTHER", bundles.other_path).replace("ID", cid)
            for word in template.split()]


def run_in(bundles, argv):
    return subprocess.run(argv, cwd=bundles.directory, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=60)


def containers(runtime):
    listed = runtime("list", "-q")
    return listed.stdout.decode().split()


@pytest.mark.parametrize("template", CORPUS)
def test_each_spelling_runs_with_the_policy_or_is_refused(pyz, runtime, bundles, template):
    # What the real runtime does with this command line, and whether the model agrees.
    cid = new_id("oi-argv")
    args = expand(template, runtime, bundles, cid)
    try:
        direct = run_in(bundles, [runtime.path] + args)
    finally:
        runtime("delete", "--force", cid)
    said = direct.stdout.decode().split()
    truth = None
    if direct.returncode == 0 and said:
        truth = ([p for p in bundles.pristine if bundles.which(p) == said[-1]] + [None])[0]
    predicted = runtime_models.MODELS[runtime.name](args, bundles.directory)
    if predicted is not None and not os.path.exists(predicted[1]):
        predicted = None                # the models do not look at the filesystem
    assert (os.path.normpath(predicted[1]) if predicted else None) == truth, (direct.returncode, direct.stdout,
                                                                               direct.stderr)
    assert bundles.changed() == set()

    # The same call through the program, with a policy.
    cid = new_id("oi-argv")
    args = expand(template, runtime, bundles, cid)
    try:
        result = run_in(bundles, [pyz, "--oi-runtime-path", runtime.path, "--oi-env-force", "MARK=policy"] + args)
        left = containers(runtime)
    finally:
        runtime("delete", "--force", cid)
        changed = bundles.changed()
        bundles.restore()
    err = result.stderr.decode()
    if err.startswith(UNREADABLE):
        assert result.returncode == 1 and err.count("\n") == 1, err
        assert changed == set() and cid not in left
        assert result.stdout == b""
    elif truth is not None:
        # The runtime ran the config it reads, edited; nothing else was touched.
        assert result.returncode == 0, err
        assert result.stdout.decode().split() == ["policy", bundles.which(truth)]
        assert changed == {truth}
    else:
        # The runtime starts no container from this command line (it refuses
        # it, or prints its version), through us as without us; at most the
        # config we read was edited (there is no other to confuse it with).
        assert result.returncode == direct.returncode and cid not in left
        assert len(changed) <= 1


def test_the_corpus_exercises_every_outcome(runtime, bundles):
    """The corpus holds spellings each runtime runs from the decoy's
    directory, from the intended bundle, from -f files (crun), and refuses."""
    outcomes = set()
    for template in CORPUS:
        predicted = runtime_models.MODELS[runtime.name](expand(template, runtime, bundles, "c"),
                                                        bundles.directory)
        outcomes.add(bundles.which(predicted[1]) if predicted and os.path.exists(predicted[1]) else None)
    expected = {"decoy", "other", "undle", None} | ({"cwd-x", "other-x"} if runtime.name == "crun" else set())
    assert outcomes == expected


# --- unit: the issue's spellings, and the engines' own command lines ------------------------------

@pytest.mark.parametrize("args, config", [
    (["--", "run", "--bundle", "/b", "id"], "/b/config.json"),
    (["--root", "/r", "--", "create", "-b", "/b", "id"], "/b/config.json"),
    (["--log-f", "text", "run", "-b", "/b", "id"], "/b/config.json"),
    (["--cgroup-m", "cgroupfs", "run", "-b", "/b", "id"], "/b/config.json"),
    (["run", "-b/other", "id"], "/other/config.json"),
    (["run", "--bund", "/other", "id"], "/other/config.json"),
    (["run", "--bund=/other", "id"], "/other/config.json"),
    (["run", "-db/other", "id"], "/other/config.json"),
    (["run", "-d", "-fb.json", "-b", "/other", "id"], "CWD/b.json"),
    (["run", "-b", "/other", "-f", "config.json", "id"], "/other/config.json"),
    (["run", "-b", "/other", "-f", "./config.json", "id"], "CWD/config.json"),
    (["--r", "/r", "--rootl", "/r", "run", "-b", "/b", "id"], "/b/config.json"),
    (["--program-name", "x", "--HANG=0", "create", "--pro", "x", "-b", "/b", "id"], "/b/config.json"),
    (["create", "-b", "/a", "--bundle", "/b", "id"], "/b/config.json"),
    (["create", "--bundle=", "id"], "CWD/config.json"),
])
def test_spellings_the_runtimes_accept_are_read_as_they_read_them(tmp_path, monkeypatch, args, config):
    monkeypatch.chdir(str(tmp_path))
    call = oi.parse_runtime_call(args)
    assert call.unreadable is None and call.edits_config
    assert call.config_path == config.replace("CWD", str(tmp_path))
    assert call.container_id == "id"


@pytest.mark.parametrize("args, message", [
    (["--frob", "run", "id"], "unknown global option --frob before run"),
    (["--frob", "x", "state", "create"], "unknown global option --frob before create"),
    (["--root", "/r", "--lo", "/l", "-x", "create", "id"], "unknown global option -x before create"),
    (["run", "-b=/other", "id"], "run option -b=/other means bundle /other to runc but bundle =/other to crun"),
    (["run", "-bundle", "/other", "id"],
     "run option -bundle means bundle (the next argument) to runc but bundle undle to crun"),
    (["create", "--con", "x", "id"], "unknown or ambiguous create option --con"),
    (["create", "--p", "x", "id"], "unknown or ambiguous create option --p"),
    (["create", "--frob", "id"], "unknown or ambiguous create option --frob"),
    (["create", "---bundle", "/b", "id"], "unknown or ambiguous create option ---bundle"),
    (["create", "id", "-b/other"], "unknown create option -b/other after the container id"),
    (["restore", "id", "--bundle=/other"],
     "restore option --bundle=/other after the container id: runc reads it, crun ignores it"),
    (["create", "id", "--bundle"], "create option --bundle needs a value"),
    # runc prints its help; crun takes -h for a second argument and restores.
    (["restore", "-", "-h"], "restore option -h after the container id: runc prints its help, crun restores"),
    (["restore", "id", "--help=true"],
     "restore option --help=true after the container id: runc prints its help, crun restores"),
])
def test_what_cannot_be_read_with_certainty_fails_closed(args, message):
    call = oi.parse_runtime_call(args)
    assert call.unreadable == message
    assert call.edits_config
    with pytest.raises(oi.InterceptorError) as info:
        call.config_path
    assert str(info.value) == "cannot read the runtime's command line: " + message


@pytest.mark.parametrize("args", [
    ["--frob", "state", "x"], ["--frob", "x", "kill", "id", "9"], ["-x", "delete", "--force", "id"],
    ["--lo", "x", "list"], ["--", "--frob", "create"],
])
def test_an_unreadable_option_in_a_call_that_cannot_create_passes_through(args):
    call = oi.parse_runtime_call(args)
    assert call.unreadable is None and not call.edits_config


def test_engine_command_lines_are_read_with_certainty():
    # As Docker, Podman and containerd's CRI call a runtime (captured from the engines).
    docker = ["--root", "/run/docker/runtime-runc/moby", "--log", "/t/log.json", "--log-format", "json"]
    lines = [docker + ["create", "--bundle", "/t", "--pid-file", "/t/init.pid", "id"],
             docker + ["create", "--bundle", "/t", "--pid-file", "/t/init.pid", "--console-socket", "/s", "id"],
             ["create", "--bundle", "/t", "--pid-file", "/p/pidfile", "id"]]
    for args in lines:
        call = oi.parse_runtime_call(args)
        assert (call.unreadable, call.config_path, call.container_id) == (None, "/t/config.json", "id")
    for tail in (["start", "id"], ["exec", "--process", "/p", "--detach", "--pid-file", "/e", "id"],
                 ["ps", "--format", "json", "id"], ["pause", "id"], ["resume", "id"], ["kill", "id", "15"],
                 ["kill", "--all", "id", "9"], ["delete", "id"], ["delete", "--force", "id"]):
        for args in (docker + tail, tail):
            call = oi.parse_runtime_call(args)
            assert call.unreadable is None and not call.edits_config and call.command == tail[0]
            assert call.log_path == ("/t/log.json" if args[0] == "--root" else None)


# --- property: any argv of such pieces ------------------------------------------------------------

PIECES = st.sampled_from([
    "--root", "-root", "--root=/r", "--roo", "--r", "--rootless", "--rootl", "--log", "--log-f", "--lo",
    "--log-format=json", "--cgroup-m", "--c", "--criu", "--debug", "--d", "--debug=true", "--systemd-cgroup",
    "-v", "-V", "-?", "-h", "--h", "--help", "--usage", "--HANG=0", "--H", "--program-name", "--p", "--pro",
    "--frob", "-x", "--", "-", "create", "run", "restore", "state", "kill",
    "-b", "--bundle", "--bundle=/x", "-bundle", "-bundle=/x", "--bund", "--b", "-b/x", "-bx", "-b=/x", "-db/x",
    "-bd", "-d", "--detach", "--detach=false", "-f", "-fy", "--config", "--config=config.json", "--conf",
    "--con", "config.json", "./config.json", "--pid-file", "--pi", "--keep", "--no-p", "--no",
    "--console-socket", "--image-path", "--tcp-established", "/x", "/y", "x", "y", "id", "=x", "",
])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(args=st.lists(PIECES, max_size=9))
def test_a_call_any_runtime_would_create_from_is_read_as_it_reads_it_or_refused(args):
    cwd = os.getcwd()
    call = oi.parse_runtime_call(args)
    for name, model in sorted(runtime_models.MODELS.items()):
        creates = model(args, cwd)
        if creates is None or call.unreadable is not None:
            continue
        assert call.edits_config, (name, creates)
        assert (call.command, call.config_path) == (creates[0], os.path.normpath(creates[1])), name
