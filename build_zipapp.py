#!/usr/bin/env python3
"""Build dist/oci-interceptor.pyz: one executable file holding oci_interceptor.py.

The archive starts with a short /bin/sh preamble instead of a `#!python`
line. The preamble executes the system Python isolated (-I: no PYTHON*
variables, no user site-packages; -S: no site module), in UTF-8 mode (see
PYTHON_FLAGS), and loads the module straight from the archive (see
PYTHON_CODE), which skips the interpreter's zipapp start-up (runpy and its
imports) that a plain `#!` zipapp pays on every call. A zip file may carry
any prefix, so `python3 oci-interceptor.pyz ...` works too, through the
archive's __main__.py (in UTF-8 mode only as that python3 is started).

The archive carries the module's bytecode (an unchecked hash-based .pyc for
the interpreter that builds it, PEP 552), so nothing is compiled at run time;
any other interpreter version ignores that .pyc and compiles the source,
which is in the archive too. Building with Python older than 3.7 (no
hash-based .pyc) ships the source alone.

Loading on demand. The module marks the code that most calls never run
(systemd mode, JSON patches, --oi-register, --oi-check-config, ...) as
on-demand blocks, between a line `# [on-demand: NAME]` and a line
`# [end on-demand: NAME]` (a block may span several such ranges of one
NAME). With Python 3.8 and newer, each block is compiled on its own and
written after the module's code in the .pyc, where nothing reads it until
it is needed; in the module's code, each of the block's functions that code
outside the block uses is bound to a small stub instead. A stub's first
call reads the block, runs it in the module's namespace, which binds the
real functions, then calls the real one; tables that hold a stub keep
working. So a call unmarshals and builds only the code it runs, and the
module's code does not grow with the blocks. The source file itself holds
all code and no stub: running it, importing it (the tests), and the .py
fallback in the archive are unchanged. `_ON_DEMAND_LOADED` in the .pyc's
module lists the blocks loaded so far (tests/test_startup.py reads it).
Rules, checked by the build, each breach a build error naming the line: a
block holds only definitions (functions, classes, constants, imports),
whole top-level statements, and changes nothing defined outside it; its
names are its own; its classes and constants are used only inside it (its
functions anywhere). Its constants are computed when it loads.

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
import re
import stat
import sys
import tempfile
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
MODULE = "oci_interceptor.py"

# 1980-01-01, the earliest time a zip entry can carry.
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)

PREAMBLE = """#!/bin/sh
# oci-interceptor {version}: a Python zip application; the zip archive follows
# this /bin/sh preamble.
{fast_path}exec {python_call}
# Never reached; makes the archive below a here-document, so the whole file
# stays valid shell (sh -n, lintian).
: <<'OCI_INTERCEPTOR_ZIP_ARCHIVE'
"""

# What the preamble runs in Python (no single quote in it): the module loaded
# from the archive ("$0") and run in a module of its own, then main. Python
# compiles this code on every start, so it is short (compiling the dozen
# lines it takes to load the module would cost a fifth of a millisecond):
# when the .pyc is this interpreter's ({magic}), it reads the first {length}
# bytes of the .pyc straight from where the build wrote them ({offset} bytes
# into the archive) -- the module's code, then a loader's (LOADER, compiled
# by the build), then the on-demand blocks, which it leaves -- and runs the
# loader. Otherwise -- another interpreter, an archive rewritten by some tool
# -- it runs LOAD_FROM_ZIP: zipimport's get_code loads the .pyc, or compiles
# the source where the .pyc is another interpreter's. Never `import`: it has
# zipimport unmarshal the .pyc twice, once more to learn the file name for
# the module's spec (CPython issue 141276). The archive stays open (not
# inherited by the runtime) for the on-demand blocks: they come from the file
# that was started even if a package upgrade replaces it meanwhile. It
# first turns the cyclic garbage collector off: a call is short-lived
# and makes no cycles worth collecting, and the collector's passes over the
# module's thousands of new objects cost about a tenth of a millisecond.
PYTHON_CODE = """import sys,posix,marshal,gc;gc.disable()
o={offset};f=posix.open(sys.argv[1],0);d=posix.pread(f,{length},o)
exec(marshal.loads(d[{loader}:]) if d[:4]=={magic} else {load_from_zip})"""
LOADER = """m=sys.modules["{name}"]=type(sys)("{name}")
m.__file__=sys.argv[1]+"/{source}c"
m._ON_DEMAND_SOURCE=(f,o+len(d))
exec(marshal.loads(memoryview(d)[16:]),m.__dict__)
"""
LOAD_FROM_ZIP = """import sys,zipimport
a=sys.argv[1];z=zipimport.zipimporter(a);c=z.get_code("{name}");m=sys.modules["{name}"]=type(sys)("{name}")
m.__loader__=z;m.__file__=a+("/{source}c" if c.co_filename=="{source}" else "/{source}");exec(c,m.__dict__)"""
RUN_MAIN = "\nsys.exit(m.main(sys.argv[1],sys.argv[2:]))"

# How the preamble starts Python: isolated (-I: no PYTHON* variables, no
# user site), without site (-S), and in UTF-8 mode (-X utf8; Python 3.6
# ignores it). UTF-8 mode is what Python turns on by itself under the C
# locale, where engines started without a locale run us; with it always on,
# paths from argv and config.json are the same bytes whatever the engine's
# locale (the bytes the runtime uses: config.json is UTF-8), and under a
# UTF-8 locale the interpreter starts with 4 % fewer instructions than
# `python3 -I -S -c pass` (no locale encoding to look up).
PYTHON_FLAGS = "-I -S -X utf8"

# A create, run or restore starts Python at once, before the shell reads the
# fast path below: any call with such a word among its arguments does (an
# argument that merely reads so is left to Python too, which is always right).
EDITING_EXIT = """case " $* " in {words}) exec {python_call} ;; esac
"""

# The fast path: a call that cannot edit anything and logs nothing (no config
# file, a subcommand other than create/run/restore, and only flags whose
# passthrough meaning is "runtime" or "ignored") execs the runtime from the
# shell, as Python would, without starting Python. Anything unusual (a flag
# it does not know, a bad value, a runtime it cannot find) leaves it to
# Python, which decides and words any error. So does any runtime option
# before the subcommand other than a global option spelled exactly (`--root
# X`, `-root=X`, `--debug`): an abbreviation (`--log-f`), a `--`, an unknown
# option may hide the subcommand, and only Python reads those. Its patterns
# are generated from the module's own tables.
FAST_PATH = r"""oi_slow= oi_cached=
oi_global() {{  # oi_kind: "value" (takes the next argument), "flag", or "" (leave it to Python)
  case $1 in
    {globals_value}) oi_kind=value ;;
    {globals_flag}) oi_kind=flag ;;
    *) oi_kind= ;;
  esac
}}
case ${{0##*/}} in oci-add-hooks) oi_slow=1 ;; esac
oi_cfg=${{{config_env}-{default_config}}}
if [ -n "$oi_cfg" ]; then
  # No config file: only the built-in default may be absent, and then the
  # file, or else its nearest existing ancestor must be a searchable
  # directory, so that Python would see "No such file" too.
  oi_p=$oi_cfg
  while [ -n "$oi_p" ] && [ ! -e "$oi_p" ] && [ ! -L "$oi_p" ]; do
    case $oi_p in */*) oi_p=${{oi_p%/*}} ;; *) oi_p= ;; esac
  done
  if [ "$oi_p" = "$oi_cfg" ]; then
    # A config file: only what Python recorded of it (as root, while the
    # file and its directory stay root's, the file keeps the modification
    # time the record was given, and the record's trust window lasts; see
    # remember_passthrough) lets a call by. Shell tests and reads only, no
    # process: the window ends at the whole second of /proc/uptime that
    # the expires file holds.
    oi_slow=1 oi_name=${{0##*/}} oi_state=${{{state_dir_env}:-{state_dir}}}
    case $oi_cfg:$oi_name in
      /*:*[!A-Za-z0-9._-]*|/*:.*|/*:|[!/]*) ;;
      *) oi_cache=$oi_state/passthrough-$oi_name oi_until=$oi_state/expires-$oi_name oi_d=${{oi_cfg%/*}}
         [ -n "$oi_d" ] || oi_d=/
         oi_now= oi_end=
         if [ -O "$oi_state" ] && ! [ -L "$oi_state" ] &&
            [ -f "$oi_cache" ] && ! [ -L "$oi_cache" ] && [ -O "$oi_cache" ] &&
            [ -f "$oi_until" ] && ! [ -L "$oi_until" ] && [ -O "$oi_until" ] &&
            [ -f "$oi_cfg" ] && [ -O "$oi_cfg" ] && [ -O "$oi_d" ] &&
            ! [ "$oi_cfg" -nt "$oi_cache" ] && ! [ "$oi_cache" -nt "$oi_cfg" ] &&
            {{ read -r oi_now oi_x; }} 2>/dev/null </proc/uptime && {{ read -r oi_end; }} 2>/dev/null <"$oi_until"; then
           oi_now=${{oi_now%%.*}}
           case $oi_now in ''|*[!0-9]*|???????????*) oi_now= ;; esac
           case $oi_end in ''|*[!0-9]*|???????????*) oi_end= ;; esac
           # Open: before its end, which lies no more than the window's
           # length ahead (a number from before a reboot, or from another
           # boot-time clock, shuts it).
           if [ -n "$oi_now" ] && [ -n "$oi_end" ] && [ "$oi_now" -lt "$oi_end" ] &&
              [ "$oi_end" -le $((oi_now + {window})) ] &&
              {{ IFS= read -r oi_l1; IFS= read -r oi_l2; IFS= read -r oi_l3; }} 2>/dev/null <"$oi_cache"; then
             if [ "$oi_l1" = "{magic}" ] && [ "$oi_l2" = "$oi_cfg" ] && [ -n "$oi_l3" ]; then
               oi_slow= oi_cached=1 oi_runtime=$oi_l3
             fi
           fi
         fi ;;
    esac
  elif [ -n "${{{config_env}+set}}" ]; then oi_slow=1  # a file named by {config_env} must exist
  elif [ -n "$oi_p" ] && {{ [ ! -d "$oi_p" ] || [ ! -x "$oi_p" ]; }}; then oi_slow=1
  fi
fi
if [ -z "$oi_slow" ] && [ -z "$oi_cached" ]; then
  # Records of containers created with a runtime or mode of their own (see
  # the module's section 8): only Python reads them.
  for oi_r in "${{{state_dir_env}:-{state_dir}}}"/{records}/*; do
    [ -e "$oi_r" ] && oi_slow=1; break
  done
fi
if [ -z "$oi_cached" ]; then oi_runtime={default_runtime}; fi
oi_want= oi_cmd= oi_own_runtime=
if [ -z "$oi_slow" ]; then
  for oi_a do
    [ -n "$oi_cmd" ] && break
    if [ -n "$oi_want" ]; then
      case $oi_want in
        skip) ;;
        runtime) oi_runtime=$oi_a; case $oi_a in ?*) ;; *) oi_slow=1 ;; esac ;;
        env) case $oi_a in [!=]*=*) ;; *) oi_slow=1 ;; esac ;;
        nonempty) case $oi_a in ?*) ;; *) oi_slow=1 ;; esac ;;
      esac
      oi_want=; continue
    fi
    case $oi_a in
{flag_cases}
      {our_flags}) oi_slow=1; break ;;
      -) oi_cmd=- ;;
      -*) oi_global "$oi_a"
          case $oi_kind in value) oi_want=skip ;; flag) ;; *) oi_slow=1; break ;; esac ;;
      *) oi_cmd=$oi_a ;;
    esac
  done
  case $oi_want in ''|skip) ;; *) oi_slow=1 ;; esac
  case $oi_cmd in {editing}) oi_slow=1 ;; esac
  # A runtime a flag names overrides the config file's: Python decides. The
  # other flags of ours only matter to create, and Python recorded that the
  # call is the same with them.
  if [ -n "$oi_cached" ] && [ -n "$oi_own_runtime" ]; then oi_slow=1; fi
fi
oi_exe=
if [ -z "$oi_slow" ]; then
  case $oi_runtime in
    */*) [ -f "$oi_runtime" ] && [ -x "$oi_runtime" ] && oi_exe=$oi_runtime ;;
    *) oi_ifs=$IFS; IFS=:; set -f
       for oi_d in $PATH {fallback_dirs}; do
         [ -n "$oi_d" ] || continue
         while :; do case $oi_d in */) oi_d=${{oi_d%/}} ;; *) break ;; esac; done
         if [ -f "$oi_d/$oi_runtime" ] && [ -x "$oi_d/$oi_runtime" ]; then oi_exe=$oi_d/$oi_runtime; break; fi
       done
       set +f; IFS=$oi_ifs ;;
  esac
fi
if [ -n "$oi_exe" ]; then
  oi_first=1 oi_drop= oi_cmd=
  for oi_a do
    [ -n "$oi_first" ] && {{ set --; oi_first=; }}
    if [ -n "$oi_cmd" ]; then set -- "$@" "$oi_a"; continue; fi
    if [ -n "$oi_drop" ]; then [ "$oi_drop" = keep ] && set -- "$@" "$oi_a"; oi_drop=; continue; fi
    case $oi_a in
{drop_cases}
      -) set -- "$@" "$oi_a"; oi_cmd=1 ;;
      -*) set -- "$@" "$oi_a"; oi_global "$oi_a"; [ "$oi_kind" = value ] && oi_drop=keep ;;
      *) set -- "$@" "$oi_a"; oi_cmd=1 ;;
    esac
  done
  exec "$oi_exe" "$@"
fi
"""


def fast_path(module):
    """The shell fast path, its patterns made from the module's tables."""
    value_checks = {module._check_env_assignment: "env", module._check_not_empty: "nonempty"}
    flag_cases, drop_cases, ours = [], [], []
    for flag in module.FLAGS:
        names = (flag.name,) + tuple(flag.aliases)
        ours.extend(names)
        if flag.passthrough is None:
            continue
        spelled = "|".join(names)
        if flag.kind == "switch":
            words = module._TRUE_WORDS + module._FALSE_WORDS
            forms = "|".join([spelled] + ["%s=%s" % (n, w) for n in names for w in words])
            flag_cases.append("      %s) ;;" % forms)
            drop_cases.append("      %s) ;;" % forms)
            continue
        want = "runtime" if flag.passthrough == "runtime" else value_checks[flag.check]
        own_runtime = " oi_own_runtime=1" if want == "runtime" else ""
        flag_cases.append("      %s)%s oi_want=%s ;;" % (spelled, own_runtime, want))
        with_value = "|".join(n + "=*" for n in names)
        if want == "runtime":
            flag_cases.append('      %s) oi_own_runtime=1 oi_runtime=${oi_a#*=}; '
                              'case $oi_runtime in ?*) ;; *) oi_slow=1 ;; esac ;;' % with_value)
        else:
            pattern = "[!=]*=*" if want == "env" else "?*"
            flag_cases.append('      %s) case ${oi_a#*=} in %s) ;; *) oi_slow=1 ;; esac ;;'
                              % (with_value, pattern))
        drop_cases.append("      %s) oi_drop=drop ;;" % spelled)
        drop_cases.append("      %s) ;;" % with_value)
    our_flags = "|".join(["--oi-*"] + ["%s|%s=*" % (n, n) for n in ours if not n.startswith("--oi-")])
    globals_value, globals_flag = global_option_patterns(module)
    return FAST_PATH.format(
        config_env=module.CONFIG_ENV, default_config=module.DEFAULT_CONFIG,
        state_dir_env=module.STATE_DIR_ENV, state_dir=module.STATE_DIR, records=module.RECORDS_SUBDIR,
        magic="%s %s" % (module.PASSTHROUGH_MAGIC, module.__version__), window=int(module.PASSTHROUGH_WINDOW),
        default_runtime=module.DEFAULT_RUNTIME, flag_cases="\n".join(flag_cases),
        drop_cases="\n".join(drop_cases), our_flags=our_flags,
        globals_value="|".join(globals_value), globals_flag="|".join(globals_flag),
        editing="|".join(sorted(module.EDITING_COMMANDS)),
        fallback_dirs=" ".join(module.FALLBACK_RUNTIME_DIRS))


def global_option_patterns(module):
    """The runtime global options the fast path reads itself: each name of
    the module's EXACT_GLOBALS after one or two dashes, alone or with
    `=VALUE`. Returns (those that take the next argument, the others)."""
    value, flag = [], []
    for name in sorted(module.EXACT_GLOBALS):
        for spelling in ("-" + name, "--" + name):
            (value if module.EXACT_GLOBALS[name] else flag).append(spelling)
            flag.append(spelling + "=*")
    return value, flag


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
    """(the module's .pyc, the length of its part the preamble reads, where
    the preamble's loader starts in it), or None where this Python cannot
    make a hash-based .pyc. After the module's code come the loader's (see
    PYTHON_CODE) and, with Python 3.8 and newer, the on-demand blocks (see
    compile_split): marshal reads one object and ignores what follows."""
    mode = getattr(py_compile, "PycInvalidationMode", None)
    if mode is None:
        return None
    import marshal
    loader = marshal.dumps(loader_code())
    if sys.version_info >= (3, 8):
        import importlib.util
        with open(source_path, "rb") as f:
            source = f.read()
        code, _, blocks = compile_split(source.decode("utf-8"), MODULE)
        # What py_compile writes for an unchecked hash-based .pyc (PEP 552):
        # flags 0b01, the source's hash, the code.
        source_hash = importlib.util.source_hash(source)  # novermin: 3.8+ only, checked just above
        pyc = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + source_hash + marshal.dumps(code)
        return pyc + loader + blocks, len(pyc) + len(loader), len(pyc)
    with tempfile.TemporaryDirectory() as tmp:
        target = os.path.join(tmp, "module.pyc")
        py_compile.compile(source_path, cfile=target, dfile=MODULE, doraise=True,  # novermin: 3.7+ only,
                           invalidation_mode=mode.UNCHECKED_HASH,               # checked just above
                           optimize=OPTIMIZE)
        with open(target, "rb") as f:
            pyc = f.read()
        return pyc + loader, len(pyc) + len(loader), len(pyc)


# The module's bytecode is compiled without docstrings (as `python -OO`
# would): they are for readers of the source, and a tenth of the bytes the
# preamble reads and unmarshals on every call. The module never reads a
# docstring and has no assert.
OPTIMIZE = 2

# On-demand blocks (see the docstring): the markers, and what the .pyc gets
# in place of the blocks.
ON_DEMAND_BEGIN = re.compile(r"# \[on-demand: ([a-z0-9][a-z0-9-]*)\]$")
ON_DEMAND_END = re.compile(r"# \[end on-demand: ([a-z0-9][a-z0-9-]*)\]$")

ON_DEMAND_LOADER = '''
def _on_demand(block, name):
    if block not in _ON_DEMAND_LOADED:
        import marshal
        _ON_DEMAND_LOADED.append(block)
        try:
            exec(marshal.loads(_on_demand_code(*_ON_DEMAND[block])), globals())
        except BaseException:
            _ON_DEMAND_LOADED.remove(block)
            raise
    return globals()[name]


def _on_demand_code(offset, size):
    source = globals().get("_ON_DEMAND_SOURCE")
    if source is None:
        data = __loader__.get_data(__file__)
        source = globals()["_ON_DEMAND_SOURCE"] = memoryview(data)[len(data) - _ON_DEMAND_BYTES:]
    if isinstance(source, tuple):
        import posix
        return posix.pread(source[0], size, source[1] + offset)
    return source[offset:offset + size]


def _on_demand_stub(block, name):
    def stub(*args, **kwargs):
        return _on_demand(block, name)(*args, **kwargs)
    stub.__name__ = stub.__qualname__ = name
    return stub


_ON_DEMAND_LOADED = []
'''
ON_DEMAND_NAMES = ("_on_demand", "_on_demand_code", "_on_demand_stub", "_ON_DEMAND_LOADED", "_ON_DEMAND",
                   "_ON_DEMAND_BYTES", "_ON_DEMAND_SOURCE")

# How bytecode names a global (or, at module level, a module-level name).
_GLOBAL_NAME_OPS = frozenset(("LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME", "STORE_NAME",
                              "DELETE_NAME", "LOAD_FROM_DICT_OR_GLOBALS"))


def on_demand_ranges(lines, filename=MODULE):
    """[(block name, begin marker line, end marker line)] of the source's
    lines (numbered from 1), in order."""
    ranges, open_ = [], None
    for number, line in enumerate(lines, 1):
        begin, end = ON_DEMAND_BEGIN.match(line), ON_DEMAND_END.match(line)
        if not (begin or end) and "on-demand:" in line and line.startswith("#"):
            _fail(filename, number, "not an on-demand marker: expected '# [on-demand: NAME]' or "
                                    "'# [end on-demand: NAME]' at the start of a line")
        if begin:
            if open_:
                _fail(filename, number, "block %s begins inside block %s (line %d)" % (
                    begin.group(1), open_[0], open_[1]))
            open_ = (begin.group(1), number)
        elif end:
            if not open_ or open_[0] != end.group(1):
                _fail(filename, number, "end of block %s, which is not open here" % end.group(1))
            ranges.append((open_[0], open_[1], number))
            open_ = None
    if open_:
        _fail(filename, open_[1], "block %s has no end marker" % open_[0])
    return ranges


def _fail(filename, line, problem):
    raise SystemExit("build_zipapp: %s:%d: %s" % (filename, line, problem))


def _bound_names(stmt, filename):
    """The module-level names a definition binds; anything that is not a
    definition is a build error."""
    import ast
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [stmt.name]
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = list(stmt.targets) if isinstance(stmt, ast.Assign) else [stmt.target]
        names = []
        while targets:
            target = targets.pop(0)
            if isinstance(target, (ast.Tuple, ast.List)):
                targets[0:0] = target.elts
            elif isinstance(target, ast.Name):
                names.append(target.id)
            else:
                _fail(filename, stmt.lineno, "an on-demand block binds only names: it must not change "
                                             "what is defined outside it")
        return names
    if isinstance(stmt, (ast.Import, ast.ImportFrom)):
        if any(alias.name == "*" for alias in stmt.names):
            _fail(filename, stmt.lineno, "no import * in an on-demand block")
        return [alias.asname or alias.name.partition(".")[0] for alias in stmt.names]
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
        return []
    if isinstance(stmt, ast.Pass):
        return []
    _fail(filename, stmt.lineno, "an on-demand block holds only definitions (functions, classes, "
                                 "constants, imports), not a %s statement" % type(stmt).__name__)


def _global_names(code, top=True):
    """{name: a line using it} of the globals code uses or binds (at module
    level: the names), through every code object nested in it. A class
    body's names count as globals (it may read them)."""
    import dis
    names = {}
    for instruction in dis.get_instructions(code):
        if instruction.opname in _GLOBAL_NAME_OPS and (top or instruction.opname not in ("STORE_NAME",
                                                                                           "DELETE_NAME")):
            positions = getattr(instruction, "positions", None)
            line = positions.lineno if positions is not None else instruction.starts_line
            names.setdefault(instruction.argval, line or code.co_firstlineno)
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            for name, line in _global_names(const, top=False).items():
                names.setdefault(name, line)
    return names


def _stored_names(code, top=True):
    """The module-level names code binds: at its top level, and by `global`
    anywhere."""
    import dis
    names = set()
    for instruction in dis.get_instructions(code):
        if instruction.opname in ("STORE_GLOBAL", "DELETE_GLOBAL") or (
                top and instruction.opname in ("STORE_NAME", "DELETE_NAME")):
            names.add(instruction.argval)
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            names |= _stored_names(const, top=False)
    return names


def compile_split(source, filename=MODULE):
    """(code of the module, {block: code}, the blocks marshalled one after
    the other): the module compiled with its on-demand blocks left out, and
    in their place the loader and the stubs (see the docstring); each block
    compiled on its own. The module finds a block at its offset in those
    bytes, which it reads from _ON_DEMAND_SOURCE: (a descriptor, where the
    bytes start in its file), or the bytes themselves; without it, from its
    loader's data of its __file__, which the bytes end. Breaking a rule is a
    SystemExit naming the line. Python 3.8 or newer."""
    import ast
    import marshal
    ranges = on_demand_ranges(source.splitlines(), filename)
    if not ranges:
        return compile(source, filename, "exec", dont_inherit=True, optimize=OPTIMIZE), {}, b""
    tree = ast.parse(source, filename)
    main, blocks, range_of = [], {}, {}
    for stmt in tree.body:
        start = min([stmt.lineno] + [d.lineno for d in getattr(stmt, "decorator_list", [])])
        inside = [r for r in ranges if r[1] < start < r[2]]
        for name, begin, end in ranges:
            for marker in (begin, end):
                if start < marker <= stmt.end_lineno:
                    _fail(filename, marker, "the on-demand marker lies inside the statement of line %d" % start)
        if inside:
            blocks.setdefault(inside[0][0], []).append(stmt)
            range_of[id(stmt)] = inside[0]
        else:
            main.append(stmt)
    for name, begin, end in ranges:
        if not any(range_of.get(id(s)) == (name, begin, end) for s in tree.body):
            _fail(filename, begin, "block %s is empty" % name)

    def compiled(body):
        return compile(ast.Module(body=body, type_ignores=[]), filename, "exec", dont_inherit=True,
                       optimize=OPTIMIZE)

    main_code = compiled(main)
    main_bound = _stored_names(main_code)
    owner, functions, codes = {}, {}, {}
    for block, stmts in blocks.items():
        counts = {}
        for stmt in stmts:
            for name in _bound_names(stmt, filename):
                counts[name] = counts.get(name, 0) + 1
                if name in owner and owner[name][0] != block:
                    _fail(filename, stmt.lineno, "%s is bound in block %s too (line %d)" % (
                        name, owner[name][0], owner[name][1]))
                if name in main_bound or name in ON_DEMAND_NAMES:
                    _fail(filename, stmt.lineno, "%s is bound outside block %s too" % (name, block))
                owner.setdefault(name, (block, stmt.lineno))
        functions[block] = [s.name for s in stmts if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef))
                            and counts[s.name] == 1]
        codes[block] = compiled(stmts)

    def check_uses(code, where):
        """Names used by code (main, or block `where`) that belong to
        another block: its functions (returned), else a build error."""
        used = set()
        for name, line in sorted(_global_names(code).items(), key=lambda item: item[1] or 0):
            if name not in owner or owner[name][0] == where:
                continue
            block, defined = owner[name]
            if name not in functions[block]:
                _fail(filename, line or 0, "%s, a class or constant of on-demand block %s (line %d), is "
                                           "used outside it: move it out of the block, or its users in"
                                           % (name, block, defined))
            used.add(name)
        return used

    stubbed = check_uses(main_code, None)
    for block, code in codes.items():
        stubbed |= check_uses(code, block)

    def at_line(nodes, line):
        for node in nodes:
            for child in ast.walk(node):
                if "lineno" in child._attributes:
                    child.lineno = child.end_lineno = line
                    child.col_offset = child.end_col_offset = 0
        return nodes

    marshalled = [(block, marshal.dumps(codes[block])) for block in sorted(codes)]
    places, offset = {}, 0
    for block, data in marshalled:
        places[block] = (offset, len(data))
        offset += len(data)
    loader = ast.parse(ON_DEMAND_LOADER + "_ON_DEMAND = %r\n_ON_DEMAND_BYTES = %d\n" % (places, offset)).body
    body, done = [], False
    for stmt in tree.body:
        where = range_of.get(id(stmt))
        if where is None:
            body.append(stmt)
            continue
        if not done:
            body.extend(at_line(loader, where[1]))
            done = True
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name in stubbed:
            stub = ast.parse("%s = _on_demand_stub(%r, %r)" % (stmt.name, where[0], stmt.name)).body
            body.extend(at_line(stub, where[1]))
    module = ast.Module(body=body, type_ignores=[])
    return (compile(module, filename, "exec", dont_inherit=True, optimize=OPTIMIZE), codes,
            b"".join(data for _, data in marshalled))


def shell_word(text):
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _module():
    sys.path.insert(0, HERE)
    try:
        import oci_interceptor
    finally:
        sys.path.pop(0)
    return oci_interceptor


def _names():
    return {"name": MODULE[:-len(".py")], "source": MODULE}


def loader_code():
    """LOADER, compiled (for the .pyc: see PYTHON_CODE)."""
    return compile(LOADER.format(**_names()), "<%s loader>" % MODULE, "exec", dont_inherit=True)


def python_code(pyc_length=None, loader_offset=None, pyc_offset=0):
    """The Python the preamble runs (see PYTHON_CODE): with pyc_length (the
    part of the .pyc to read, whose loader starts at loader_offset), the
    bytecode is read at pyc_offset in the archive; without it, the module
    comes through zipimport."""
    load_from_zip = LOAD_FROM_ZIP.format(**_names())
    if pyc_length is None:
        return load_from_zip + RUN_MAIN
    import importlib.util
    magic = 'b"%s"' % "".join("\\x%02x" % byte for byte in importlib.util.MAGIC_NUMBER)
    literal = '"%s"' % load_from_zip.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    # Fixed width: the offset is known once the archive is written behind
    # the preamble, and then written into it in place.
    return PYTHON_CODE.format(offset="%10d" % pyc_offset, length=pyc_length, loader=loader_offset, magic=magic,
                              load_from_zip=literal) + RUN_MAIN


def load_code(archive):
    """The Python with which the archive's preamble loads the module (into
    `m`), without running main: for tests and benchmarks."""
    import shlex
    with open(archive, "rb") as f:
        head = f.read(1 << 16).decode("utf-8", "replace")
    command = head[:head.index("\n# Never reached")].rpartition("\nexec ")[2]
    words = shlex.split(command)                # PYTHON FLAGS -c CODE "$0" "$@"
    code = words[words.index("-c") + 1]
    assert code.endswith(RUN_MAIN)
    return code[:-len(RUN_MAIN)]


def build(output, python, fast=True):
    """Write the archive; fast=False leaves out the shell fast path (every
    call then starts Python)."""
    with open(os.path.join(HERE, MODULE), "rb") as f:
        source = f.read()
    version = module_version(source.decode("utf-8"))
    entries = [
        ("__main__.py", MAIN.encode("utf-8")),
        (MODULE, source),
    ]
    pyc, pyc_length, loader_offset = bytecode(os.path.join(HERE, MODULE)) or (None, None, None)
    if pyc is not None:
        entries.append((MODULE + "c", pyc))
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    temp = output + ".tmp"
    module = _module()

    def preamble(pyc_offset):
        python_call = "%s %s -c %s \"$0\" \"$@\"" % (shell_word(python), PYTHON_FLAGS, shell_word(python_code(
            pyc_length, loader_offset, pyc_offset)))
        early = EDITING_EXIT.format(python_call=python_call, words="|".join(
            '*" %s "*' % word for word in sorted(module.EDITING_COMMANDS)))
        return PREAMBLE.format(version=version, python_call=python_call,
                               fast_path=early + fast_path(module) if fast else "").encode("utf-8")
    with open(temp, "wb") as f:
        f.write(preamble(0))
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            for name, data in sorted(entries):
                info = zipfile.ZipInfo(name, FIXED_DATE_TIME)
                info.compress_type = zipfile.ZIP_STORED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3
                archive.writestr(info, data)
    if pyc is not None:
        with open(temp, "r+b") as f:
            with zipfile.ZipFile(f) as archive:
                header = archive.getinfo(MODULE + "c").header_offset
            f.seek(header)
            local = f.read(30)
            offset = header + 30 + int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            f.seek(offset)
            assert f.read(len(pyc)) == pyc
            first, final = preamble(0), preamble(offset)
            assert len(first) == len(final)
            f.seek(0)
            f.write(final)
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
    oi = _module()
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
              "lists add up, and in env and env-force a later NAME= replaces an earlier one. Relative "
              "paths in the file are relative to its directory. Only the default file may be absent: "
              "a file named by --oi-config or $OCI_INTERCEPTOR_CONFIG must exist. The profile named "
              "like the program (a symlink's name) applies unless "
              "--oi-profile names one. Rules apply in order: the settings as rule (global), hook files, "
              "hooks directories, then the file's rules. Each rule has an optional \"name\", an optional "
              '"when" (without it the rule always applies) and one or more actions. Conditions are '
              "evaluated against the config as the engine wrote it. As root, a policy file or directory "
              "a non-root user can write is refused."),
        ".SH LIFECYCLE CALLS",
        _roff("Only create, run and restore need the policy, and only they fail closed. Every other call "
              "(start, state, kill, delete, exec, pause, resume, ps, events, update, list, checkpoint, "
              "features, spec, a --help) reaches the runtime whatever state the policy files are in: a "
              "broken, untrusted or missing policy is one warning on stderr and in the runtime's --log "
              "(level warning), and the exit status is the runtime's. As root, create records in "
              "%s/%s the runtime of each container whose later calls could not find it without the "
              "policy (a rule's runtime-path, a runtime other than the command line's, systemd mode); "
              "every later call of that container goes to it, and delete removes the record."
              % (oi.STATE_DIR, oi.RECORDS_SUBDIR)),
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
        ".TP", _roff(oi.DOCKER_DAEMON_JSON + ", " + oi.PODMAN_CONF_DIR + ", " + oi.CONTAINERD_CONFIG),
        _roff("What --oi-register docker, podman --oi-write and containerd --oi-write edit (a backup "
              "written next to each); --oi-unregister undoes it."),
        ".TP", _roff(oi.DEFAULT_DEBUG_DIR), _roff("Debug output, with --oi-write-debug-output."),
        ".TP", _roff(oi.STATE_DIR),
        _roff("Passthrough records (root only, mode 0700): what a call that edits nothing made of the "
              "config file, so that later such calls skip Python while the file is unchanged; and in "
              "%s/, one record per container that needs one (its runtime, systemd mode)."
              % oi.RECORDS_SUBDIR),
        ".SH ENVIRONMENT",
        ".TP", _roff(oi.CONFIG_ENV),
        _roff("Names the policy file instead of the default; it must exist. Empty: no policy file."),
        ".TP", _roff(oi.STATE_DIR_ENV), _roff("Names another directory for passthrough and container records."),
        ".SH EXIT STATUS",
        _roff("The runtime's own when it ran; 1 when a policy could not be applied; 2 for a bad flag, "
              "a bad or missing config file, hook file or hooks directory, and for --oi-check-config when "
              "the configuration cannot work (runtime or hook program missing or not executable)."),
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
    parser.add_argument("--no-fast-path", action="store_true",
                        help="leave out the shell fast path: every call starts Python")
    parser.add_argument("--man", metavar="PATH", help="also write the man page oci-interceptor(1) here")
    parser.add_argument("--default-config", metavar="PATH",
                        help="also write a config file that activates no policy here")
    args = parser.parse_args(argv)
    print(build(args.output, args.python, fast=not args.no_fast_path))
    if args.man:
        print(write_text(args.man, man_page()))
    if args.default_config:
        print(write_text(args.default_config, DEFAULT_CONFIG))
    return 0


if __name__ == "__main__":
    sys.exit(main())
