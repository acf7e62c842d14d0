"""What ships: the man page covers every flag, versions agree, and the
module stays valid Python 3.6 (vermin)."""

import os
import re
import shutil
import subprocess
import sys

import build_zipapp
import oci_interceptor as oi
from conftest import REPO, need


def test_man_page_has_every_flag_of_the_help():
    help_text = oi.help_text()
    flags = set(re.findall(r"^  (--oi-[a-z-]+)", help_text, re.M))
    assert len(flags) == len(oi.FLAGS)
    page = build_zipapp.man_page().replace("\\-", "-")
    for flag in flags:
        assert flag in page, flag
    for action in oi.ACTIONS:
        assert action.key in page
    for key, _ in oi.CONDITION_HELP:
        assert key in page
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "CONFIGURATION FILE", "EXAMPLES", "FILES", "EXIT STATUS"):
        assert ".SH " + section in page


def test_man_page_renders_without_warnings(tmp_path):
    need(shutil.which("man") is not None, "man is not installed")
    page = tmp_path / "oci-interceptor.1"
    page.write_text(build_zipapp.man_page())
    result = subprocess.run(["man", "--warnings", "-l", "-Tutf8", str(page)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, env=dict(os.environ, MANWIDTH="80"))
    assert result.returncode == 0
    assert result.stderr == ""
    assert "--oi-readonly-networking-mounts" in result.stdout


def test_default_config_activates_no_policy(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(build_zipapp.DEFAULT_CONFIG)
    path.chmod(0o644)
    opts, _ = oi.split_command_line(["--oi-config", str(path), "create", "x"])
    policy = oi.load_policy(opts, "oci-interceptor")
    assert policy.rules == [] and policy.runtime_path == "runc" and not policy.write_debug_output


def test_package_versions_match_the_module():
    with open(os.path.join(REPO, "debian", "changelog")) as f:
        first = f.readline()
    assert first.startswith("oci-interceptor (%s-1) " % oi.__version__)
    with open(os.path.join(REPO, "rpm", "oci-interceptor.spec")) as f:
        spec = f.read()
    assert re.search(r"^Version:\s+%s$" % re.escape(oi.__version__), spec, re.M)
    assert re.search(r"^\* .* - %s-1$" % re.escape(oi.__version__), spec, re.M)


def test_module_is_valid_python_3_6():
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    need(os.path.exists(vermin), "vermin is not installed in this environment")
    result = subprocess.run([vermin, "--target=3.6-", "--violations", "--no-tips", "--eval-annotations",
                             os.path.join(REPO, "oci_interceptor.py"), os.path.join(REPO, "build_zipapp.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert result.returncode == 0, result.stdout


def test_the_readme_rpm_command_builds_the_rpm(tmp_path):
    """The README's copy-paste command, run from this checkout with a HOME of
    its own (and --nodeps: this host's rpm database knows no python3)."""
    need(shutil.which("rpmbuild") is not None and shutil.which("git") is not None, "rpmbuild is not installed")
    need(os.path.exists(os.path.join(REPO, ".git")), "not a git checkout")
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    command = re.search(r"<!-- rpm-command -->\n```sh\n(.*?)\n```", readme, re.S).group(1)
    assert "\n" not in command and command.count("rpmbuild -bb ") == 1
    result = subprocess.run(["bash", "-c", command.replace("rpmbuild -bb ", "rpmbuild --nodeps -bb ")],
                            cwd=REPO, env=dict(os.environ, HOME=str(tmp_path)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:]
    rpm = tmp_path / "rpmbuild" / "RPMS" / "noarch" / ("oci-interceptor-%s-1.noarch.rpm" % oi.__version__)
    assert rpm.exists(), os.listdir(str(tmp_path / "rpmbuild"))
    listed = subprocess.run(["rpm", "-qlp", str(rpm)], stdout=subprocess.PIPE, universal_newlines=True).stdout
    assert "/usr/bin/oci-interceptor" in listed.split() and "/etc/oci-interceptor/config.json" in listed.split()
