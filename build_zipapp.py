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

usage: python3 build_zipapp.py [--output PATH] [--python INTERPRETER]
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
        py_compile.compile(source_path, cfile=target, dfile=MODULE, doraise=True,
                           invalidation_mode=mode.UNCHECKED_HASH)
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


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the oci-interceptor zip application.")
    parser.add_argument("--output", "-o", default=os.path.join(HERE, "dist", "oci-interceptor.pyz"),
                        help="where to write the archive (default: dist/oci-interceptor.pyz)")
    parser.add_argument("--python", default="/usr/bin/python3",
                        help="the interpreter the archive starts (default: /usr/bin/python3)")
    args = parser.parse_args(argv)
    print(build(args.output, args.python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
