#!/usr/bin/env python3
"""Build dist/oci-interceptor.pyz: one executable file holding oci_interceptor.py.

The archive starts with a short /bin/sh preamble instead of a `#!python`
line. The preamble executes the system Python isolated (-I: no PYTHON*
variables, no user site-packages; -S: no site module) and imports the module
straight from the archive, which skips the interpreter's zipapp start-up
(runpy and its imports) that a plain `#!` zipapp pays on every call. A zip
file may carry any prefix, so `python3 oci-interceptor.pyz ...` works too,
through the archive's __main__.py.

The archive carries the module's bytecode (an unchecked hash-based .pyc for
the interpreter that builds it, PEP 552), so nothing is compiled at run time;
any other interpreter version ignores that .pyc and compiles the source,
which is in the archive too. Building with Python older than 3.7 (no
hash-based .pyc) ships the source alone.

The build is reproducible: the same sources and interpreter give the same
bytes (fixed entry order, timestamps and permissions; the .pyc records a hash
of the source, not a time).

It also writes what the distribution packages install besides the program
(--man: the oci-interceptor(1) man page, generated from the module's own
flag, action and condition tables, so it cannot miss one; --default-config:
a config file that activates no policy).

usage: python3 build_zipapp.py [--output PATH] [--python INTERPRETER]
                               [--man PATH] [--default-config PATH]
"""

import argparse
import os
import py_compile
import stat
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "oci_interceptor.py"

# 1980-01-01, the earliest time a zip entry can carry.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)

PREAMBLE = """#!/bin/sh
# oci-interceptor {version}: a Python zip application. This line and the next
# start it isolated from the environment; the zip archive follows.
exec {python} -I -S -c 'import sys;sys.path.insert(0,sys.argv[1]);import oci_interceptor as m;sys.exit(m.main(sys.argv[1],sys.argv[2:]))' "$0" "$@"
"""

MAIN = """import sys
import oci_interceptor
sys.exit(oci_interceptor.main(sys.argv[0], sys.argv[1:]))
"""


def module_version(source):
    for line in source.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    raise SystemExit("build_zipapp: no __version__ in " + MODULE)


def bytecode(source_path):
    """The module's .pyc, or None where this Python cannot make a
    hash-based one."""
    mode = getattr(py_compile, "PycInvalidationMode", None)
    if mode is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "module.pyc")
        py_compile.compile(source_path, cfile=target, dfile=MODULE, doraise=True,  # novermin: 3.7+ only,
                           invalidation_mode=mode.UNCHECKED_HASH)                # checked just above
        with open(target, "rb") as f:
            return f.read()


def shell_word(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def build(output, python):
    with open(os.path.join(HERE, MODULE), "rb") as f:
        source = f.read()
    version = module_version(source.decode("utf-8"))
    entries = [
        ("__main__.py", MAIN.encode("utf-8")),
        (MODULE, source),
    ]
    pyc = bytecode(os.path.join(HERE, MODULE))
    if pyc is not None:
        entries.append((MODULE + "c", pyc))
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    temp = output + ".tmp"
    with open(temp, "wb") as f:
        f.write(PREAMBLE.format(version=version, python=shell_word(python)).encode("utf-8"))
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for name, data in sorted(entries):
                info = zipfile.ZipInfo(name, FIXED_DATE_TIME)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3
                archive.writestr(info, data)
    os.chmod(temp, 0o755)
    os.rename(temp, output)
    return output


DEFAULT_CONFIG = """{
    "version": 1,
    "rules": []
}
"""


def _roff(text):
    """Escape text for a man page line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def man_page():
    sys.path.insert(0, HERE)
    import oci_interceptor as oi
    date = "2026-11-22"
    out = [
        '.TH OCI\\-INTERCEPTOR 1 "%s" "oci-interceptor %s" "User Commands"' % (date, oi.__version__),
        ".SH NAME",
        "oci\\-interceptor \\- OCI runtime wrapper that enforces policy on every container",
        ".SH SYNOPSIS",
        ".B oci\\-interceptor",
        "[\\fB\\-\\-oi\\-\\fR\\fIFLAG\\fR ...] [\\fIRUNTIME GLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR ...]",
        ".SH DESCRIPTION",
        _roff("oci-interceptor is called by Docker, Podman or containerd in place of runc. On create, "
              "run and restore it edits the bundle's config.json by its policy, then executes the real "
              "runtime (runc, crun, youki) with every other argument unchanged; every other command goes "
              "straight through. Its flags start with --oi- and must come before the runtime's command; "
              "--oi-x VALUE and --oi-x=VALUE are the same. Anything after the command belongs to the "
              "runtime, and so do plain --help and --version."),
        ".PP",
        _roff("Policy comes from the flags and from a JSON config file: %s when it exists, or the file "
              "--oi-config names. When a policy cannot be applied, no container starts: one line goes to "
              "stderr and to the runtime's --log file, in its --log-format." % oi.DEFAULT_CONFIG),
        ".SH OPTIONS",
    ]
    for flag in oi.FLAGS:
        head = "\\fB%s\\fR" % _roff(flag.name)
        if flag.metavar:
            head += " \\fI%s\\fR" % _roff(flag.metavar)
        out += [".TP", head, _roff(flag.help)]
        if flag.key:
            out.append(_roff('Config file key: "%s".' % flag.key))
        if flag.aliases:
            out.append(_roff("Also accepted (deprecated or drop-in spelling): %s." % ", ".join(flag.aliases)))
    out += [
        ".SH CONFIGURATION FILE",
        _roff('A JSON object with "version": 1, the settings above by their keys, "rules" (a list) '
              'and "profiles" (an object of named profiles, each with settings and rules). '
              "Precedence: built-in defaults, then the file's top level, then the profile, then flags; "
              "lists add up. The profile named like the program (a symlink's name) applies unless "
              "--oi-profile names one. Rules apply in order: the settings as rule (global), hook files, "
              "hooks directories, then the file's rules. Each rule has an optional \"name\", an optional "
              '"when" (without it the rule always applies) and one or more actions. Conditions are '
              "evaluated against the config as the engine wrote it. As root, a policy file or directory "
              "a non-root user can write is refused."),
        ".SS Conditions (all given must match)",
    ]
    for key, text in oi.CONDITION_HELP:
        out += [".TP", "\\fB%s\\fR" % _roff(key), _roff(text)]
    out.append(".SS Actions (applied in this order within a rule)")
    for action in oi.ACTIONS:
        out += [".TP", "\\fB%s\\fR" % _roff(action.key), _roff(action.help)]
    out += [
        ".SH EXAMPLES",
        ".nf",
        _roff("# Read-only /etc/hosts, /etc/hostname, /etc/resolv.conf and a default TZ:"),
        _roff("oci-interceptor --oi-readonly-networking-mounts --oi-env TZ=UTC \\"),
        _roff("    --root /run/runc create --bundle /path/to/bundle mycontainer"),
        "",
        _roff("# /etc/oci-interceptor/config.json:"),
        _roff('{"version": 1, "readonly-networking-mounts": true, "rules": ['),
        _roff('  {"name": "ci", "when": {"annotations": {"^com\\\\.example\\\\.team$": "^ci$"}},'),
        _roff('   "env-unset": ["HTTP_PROXY"]}]}'),
        "",
        _roff("# Register with Docker by path, as the default runtime:"),
        _roff("oci-interceptor --oi-register docker --oi-register-default"),
        "",
        _roff("# Check the policy; see what a call would do:"),
        _roff("oci-interceptor --oi-check-config"),
        _roff("oci-interceptor --oi-dry-run create --bundle /path/to/bundle test"),
        ".fi",
        ".SH FILES",
        ".TP", _roff(oi.DEFAULT_CONFIG), _roff("The default policy file."),
        ".TP", _roff(oi.DEFAULT_DEBUG_DIR), _roff("Debug output, with --oi-write-debug-output."),
        ".SH ENVIRONMENT",
        ".TP", _roff(oi.CONFIG_ENV), _roff("Names another default policy file; empty: none."),
        ".SH EXIT STATUS",
        _roff("The runtime's own when it ran; 1 when a policy could not be applied; 2 for a bad flag "
              "or config file."),
        ".SH SEE ALSO",
        "\\fBrunc\\fR(8), \\fBcrun\\fR(1), \\fBdockerd\\fR(8), \\fBpodman\\fR(1), \\fBoci\\-hooks\\fR(5)",
    ]
    return "\n".join(out) + "\n"


def write_text(path, text):
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the oci-interceptor zip application.")
    parser.add_argument("--output", "-o", default=os.path.join(HERE, "dist", "oci-interceptor.pyz"),
                        help="where to write the archive (default: dist/oci-interceptor.pyz)")
    parser.add_argument("--python", default="/usr/bin/python3",
                        help="the interpreter the archive starts (default: /usr/bin/python3)")
    parser.add_argument("--man", metavar="PATH", help="also write the man page oci-interceptor(1) here")
    parser.add_argument("--default-config", metavar="PATH",
                        help="also write a config file that activates no policy here")
    args = parser.parse_args(argv)
    print(build(args.output, args.python))
    if args.man:
        print(write_text(args.man, man_page()))
    if args.default_config:
        print(write_text(args.default_config, DEFAULT_CONFIG))
    return 0


if __name__ == "__main__":
    sys.exit(main())
