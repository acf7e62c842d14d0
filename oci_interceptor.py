#!/usr/bin/env python3
"""oci-interceptor: an OCI runtime wrapper that enforces policy on every container.

Docker, Podman or containerd call this program in place of runc. On `create`,
`run` and `restore` it rewrites the bundle's config.json by the rules it was
given, then replaces itself (os.execv) with the real runtime, every other
argument untouched. Every other subcommand goes straight through.

The file reads top to bottom like the call it handles:

  1. Command line    our --oi-* flags, split from the runtime's own arguments
  2. Runtime call    which subcommand, which bundle, which log file
  3. Edits           small functions over the spec dict, run as a pipeline
  4. Bundle I/O      parse and serialize raw JSON, write atomically
  5. Reporting       errors to stderr and the runtime's --log; debug output
  6. Exec and main

Standard library only, valid Python 3.6 and newer. Modules that a plain
passthrough call does not need (json, time formatting, ...) are imported
inside the functions that use them, so forwarding `state` or `start` costs
little more than starting the interpreter.
"""

import os
import sys

__version__ = "0.2.0"

PROG = "oci-interceptor"
DEFAULT_RUNTIME = "runc"
DEFAULT_DEBUG_DIR = "/var/log/oci-interceptor"

# Where a bare runtime name is looked for after PATH: daemons often run with a
# thin PATH that lacks the sbin directories runc is installed in.
FALLBACK_RUNTIME_DIRS = (
    "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin",
)

EXIT_FAILURE = 1
EXIT_USAGE = 2


class InterceptorError(Exception):
    """A problem that stops the call: reported in one line, runtime not run."""

    exit_code = EXIT_FAILURE


class UsageError(InterceptorError):
    """A bad command line of ours."""

    exit_code = EXIT_USAGE


# ---------------------------------------------------------------------------
# 1. Command line: our --oi-* flags, split from the runtime's own arguments
# ---------------------------------------------------------------------------
#
# Our flags all start with --oi- and may stand anywhere before the runtime's
# subcommand, mixed with the runtime's global options. Everything else is
# forwarded byte for byte and in order. Nothing after the subcommand is ever
# taken: `exec ID prog --oi-x` reaches the container intact.


class Flag(object):
    """One of our flags.

    kind is "value" (takes one value, last wins), "list" (repeatable, values
    collected in order), "switch" (no value; `=true`/`=false` allowed) or
    "action" (does something instead of running the runtime).
    """

    def __init__(self, name, kind, dest, help, metavar=None, check=None, aliases=()):
        self.name = name
        self.kind = kind
        self.dest = dest
        self.help = help
        self.metavar = metavar
        self.check = check
        self.aliases = aliases


def _check_env_assignment(flag, value):
    name, sep, _ = value.partition("=")
    if not sep:
        raise UsageError("%s %s: expected NAME=VALUE" % (flag, _quote_for_message(value)))
    if not name:
        raise UsageError("%s %s: the variable name is empty" % (flag, _quote_for_message(value)))


def _check_not_empty(flag, value):
    if not value:
        raise UsageError("%s: the value is empty" % flag)


FLAGS = (
    Flag("--oi-runtime-path", "value", "runtime_path", metavar="PATH",
         check=_check_not_empty, aliases=("--runtime-path",),
         help="The real runtime to run (default: runc). A bare name is looked up "
              "on PATH, then in " + ", ".join(FALLBACK_RUNTIME_DIRS) + "."),
    Flag("--oi-readonly-networking-mounts", "switch", "readonly_networking_mounts",
         aliases=("--readonly-networking-mounts",),
         help="Make the mounts of /etc/hosts, /etc/hostname and /etc/resolv.conf "
              "read-only: every 'rw' option removed, 'ro' added."),
    Flag("--oi-env", "list", "env_defaults", metavar="NAME=VALUE",
         check=_check_env_assignment,
         help="Set an environment variable unless the container already has it. "
              "Repeatable; the value may contain '='."),
    Flag("--oi-env-force", "list", "env_force", metavar="NAME=VALUE",
         check=_check_env_assignment,
         help="Set an environment variable, replacing the container's own value. "
              "Repeatable; applied after --oi-env."),
    Flag("--oi-write-debug-output", "switch", "write_debug_output",
         help="Keep <hostname>_original.json, <hostname>_parsed.json and "
              "<hostname>_modified.json (when modified) of each edited config, and "
              "append every forwarded call to runtime_calls.log. Files are readable "
              "by their owner only."),
    Flag("--oi-debug-output-dir", "value", "debug_output_dir", metavar="DIR",
         check=_check_not_empty,
         help="Where debug output goes (default: %s)." % DEFAULT_DEBUG_DIR),
    Flag("--oi-version", "action", "version",
         help="Print the version and exit."),
    Flag("--oi-help", "action", "help",
         help="Print this help and exit."),
)

_FLAGS_BY_NAME = {}
for _flag in FLAGS:
    _FLAGS_BY_NAME[_flag.name] = _flag
    for _alias in _flag.aliases:
        _FLAGS_BY_NAME[_alias] = _flag
del _flag, _alias

_TRUE_WORDS = ("true", "yes", "on", "1")
_FALSE_WORDS = ("false", "no", "off", "0")


class Options(object):
    """Everything our flags asked for."""

    def __init__(self):
        self.runtime_path = DEFAULT_RUNTIME
        self.readonly_networking_mounts = False
        self.env_defaults = []
        self.env_force = []
        self.write_debug_output = False
        self.debug_output_dir = DEFAULT_DEBUG_DIR
        self.action = None          # "help" or "version"


def _is_our_flag(arg):
    if arg.startswith("--oi-"):
        return True
    return arg.partition("=")[0] in _FLAGS_BY_NAME


def split_command_line(args, runtime_globals_with_value=None):
    """Split args into (Options, runtime_args).

    Our flags are taken only before the runtime's subcommand. Runtime global
    options that take a value are recognised so that their value is not
    mistaken for the subcommand. A bad flag raises UsageError carrying the
    runtime arguments as far as they could be split (for error reporting).
    """
    if runtime_globals_with_value is None:
        runtime_globals_with_value = RUNTIME_GLOBALS_WITH_VALUE
    opts = Options()
    runtime_args = []
    error = None
    i, n = 0, len(args)
    while i < n:
        arg = args[i]
        if _is_our_flag(arg):
            name, has_value, value = arg.partition("=")
            flag = _FLAGS_BY_NAME.get(name)
            i += 1
            try:
                if flag is None:
                    raise UsageError("unknown flag %s (see --oi-help)" % _quote_for_message(name))
                if flag.kind in ("value", "list"):
                    if not has_value:
                        if i >= n:
                            raise UsageError("%s needs a value" % name)
                        value = args[i]
                        i += 1
                    if flag.check:
                        flag.check(name, value)
                    if flag.kind == "list":
                        getattr(opts, flag.dest).append(value)
                    else:
                        setattr(opts, flag.dest, value)
                elif flag.kind == "switch":
                    if not has_value or value.lower() in _TRUE_WORDS:
                        setattr(opts, flag.dest, True)
                    elif value.lower() in _FALSE_WORDS:
                        setattr(opts, flag.dest, False)
                    else:
                        raise UsageError("%s takes no value, or =true / =false" % name)
                else:
                    if has_value:
                        raise UsageError("%s takes no value" % name)
                    opts.action = opts.action or flag.dest
            except UsageError as exc:
                error = error or exc
            continue
        runtime_args.append(arg)
        i += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            # The subcommand (or an explicit end of options): the rest is the
            # runtime's, untouched.
            runtime_args.extend(args[i:])
            break
        if "=" not in arg and _option_name(arg) in runtime_globals_with_value and i < n:
            runtime_args.append(args[i])
            i += 1
    if error is not None:
        error.runtime_args = runtime_args
        raise error
    return opts, runtime_args


def _option_name(arg):
    """'--root', '-root' (Go's flag package accepts both) -> 'root'; '-r' -> 'r'."""
    return arg.lstrip("-").partition("=")[0]


def help_text():
    lines = [
        "usage: %s [--oi-FLAG ...] [RUNTIME GLOBAL OPTIONS] COMMAND [ARGS ...]" % PROG,
        "",
        "An OCI runtime wrapper. Register it with Docker, Podman or containerd in",
        "place of runc. On 'create', 'run' and 'restore' it edits the bundle's",
        "config.json as the flags below say, then executes the real runtime with",
        "every other argument unchanged; every other command goes straight through.",
        "",
        "Our flags start with --oi- and must come before the runtime's command;",
        "'--oi-x VALUE' and '--oi-x=VALUE' are the same. Anything after the",
        "command belongs to the runtime. Plain --help and --version are the",
        "runtime's own.",
        "",
        "flags:",
    ]
    for flag in FLAGS:
        head = "  " + flag.name
        if flag.metavar:
            head += " " + flag.metavar
        lines.append(head)
        lines.extend(_wrap(flag.help, "        "))
        if flag.aliases:
            lines.append("        Deprecated spelling (oci-interceptor 0.1): %s."
                         % ", ".join(flag.aliases))
    lines += [
        "",
        "examples:",
        "  %s --oi-readonly-networking-mounts --oi-env TZ=UTC \\" % PROG,
        "      --root /run/runc create --bundle /path/to/bundle mycontainer",
        "  %s --oi-runtime-path=crun --oi-env-force=HTTP_PROXY= run -b . box" % PROG,
        "",
        "Errors are one line on stderr and in the runtime's --log file (in its",
        "--log-format); the container is then not created. Exit status: the",
        "runtime's own, or 1 when a policy could not be applied, 2 for a bad flag.",
    ]
    return "\n".join(lines) + "\n"


def _wrap(text, indent, width=78):
    out, line = [], indent
    for word in text.split():
        if len(line) + len(word) + 1 > width and line.strip():
            out.append(line.rstrip())
            line = indent
        line += word + " "
    if line.strip():
        out.append(line.rstrip())
    return out


# ---------------------------------------------------------------------------
# 2. Runtime call: which subcommand, which bundle, which log file
# ---------------------------------------------------------------------------
#
# Global options of runc, crun and youki that take a value, in any of the
# spellings they accept: `--root X`, `--root=X`, Go's `-root X`.
RUNTIME_GLOBALS_WITH_VALUE = frozenset((
    "root", "log", "log-format", "log-level", "criu", "rootless",
    "cgroup-manager", "r", "l",
))

# The subcommands that create a container from a bundle's config.json.
EDITING_COMMANDS = frozenset(("create", "run", "restore"))

# Options of those subcommands that take a value (runc, crun, youki), so that
# a value is never mistaken for the container id or for a bundle flag.
COMMAND_OPTIONS_WITH_VALUE = frozenset((
    "b", "bundle", "f", "config", "console", "console-socket", "pid-file",
    "preserve-fds", "pidfd-socket", "image-path", "work-path", "parent-path",
    "manage-cgroups-mode", "empty-ns", "lsm-profile", "lsm-mount-context",
))


class RuntimeCall(object):
    """What the runtime is asked to do, read from its argument list."""

    def __init__(self, args):
        self.args = args
        self.command = None
        self.command_args = []
        self.log_path = None
        self.log_format = "text"
        self.bundle = None
        self.config_file = None      # crun's -f/--config
        self.container_id = None

    @property
    def edits_config(self):
        return self.command in EDITING_COMMANDS

    @property
    def config_path(self):
        """The config.json the runtime will read, as an absolute path."""
        if self.config_file is not None:
            return os.path.abspath(self.config_file)
        return os.path.join(os.path.abspath(self.bundle or "."), "config.json")


def parse_runtime_call(args):
    """Read the runtime's global options, subcommand and, for the editing
    subcommands, the bundle, config file and container id."""
    call = RuntimeCall(args)
    i, n = 0, len(args)
    while i < n:
        arg = args[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-") or arg == "-":
            call.command = arg
            call.command_args = args[i:]
            break
        name, has_value, value = arg.lstrip("-").partition("=")
        if name in RUNTIME_GLOBALS_WITH_VALUE:
            if not has_value:
                if i >= n:
                    break
                value = args[i]
                i += 1
            if name in ("log", "l"):
                call.log_path = value
            elif name == "log-format":
                call.log_format = value
    if call.edits_config:
        _parse_command_options(call)
    return call


def _parse_command_options(call):
    # runc (urfave/cli) also takes options after the container id, so the
    # whole tail is scanned, up to a "--".
    args = call.command_args
    i, n = 0, len(args)
    while i < n:
        arg = args[i]
        i += 1
        if arg == "--":
            if call.container_id is None and i < n:
                call.container_id = args[i]
            break
        if not arg.startswith("-") or arg == "-":
            if call.container_id is None:
                call.container_id = arg
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in COMMAND_OPTIONS_WITH_VALUE:
            continue
        if not has_value:
            if i >= n:
                break
            value = args[i]
            i += 1
        if name in ("b", "bundle"):
            call.bundle = value
        elif name in ("f", "config"):
            call.config_file = value


def find_runtime(path):
    """Resolve the runtime to an executable file, or raise InterceptorError."""
    if "/" in path:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
        if os.path.exists(path):
            raise InterceptorError("runtime %s is not an executable file" % _quote_for_message(path))
        raise InterceptorError("runtime %s does not exist" % _quote_for_message(path))
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += [d for d in FALLBACK_RUNTIME_DIRS if d not in dirs]
    for directory in dirs:
        candidate = os.path.join(directory, path)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InterceptorError("runtime %s not found on PATH or in %s"
                           % (_quote_for_message(path), ", ".join(FALLBACK_RUNTIME_DIRS)))


# ---------------------------------------------------------------------------
# 3. Edits: small functions over the spec dict, run as a pipeline
# ---------------------------------------------------------------------------
#
# Each edit takes (spec, opts), changes the spec in place when its flag asks
# for it, and returns a list of one-line descriptions of what it changed (an
# empty list: nothing changed). Edits are idempotent: running the pipeline
# twice changes nothing the second time. A spec of a shape that cannot take
# the edit raises InterceptorError naming the key path.

NETWORKING_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def edit_readonly_networking_mounts(spec, opts):
    """Mounts at /etc/hosts, /etc/hostname, /etc/resolv.conf become read-only."""
    if not opts.readonly_networking_mounts:
        return []
    changes = []
    for index, mount in enumerate(_get_list(spec, "mounts")):
        where = "mounts[%d]" % index
        if not isinstance(mount, dict):
            raise InterceptorError("%s is not an object" % where)
        destination = mount.get("destination")
        if not isinstance(destination, str) or _clean_path(destination) not in NETWORKING_FILES:
            continue
        options = mount.get("options")
        if options is not None and not (
                isinstance(options, list) and all(isinstance(o, str) for o in options)):
            raise InterceptorError("%s.options is not a list of strings" % where)
        new_options = make_readonly(options or [])
        if new_options != options:
            mount["options"] = new_options
            changes.append("%s (%s): options %s -> %s"
                           % (where, destination, "(none)" if options is None else options, new_options))
    return changes


def make_readonly(options):
    """['rbind', 'rw'] -> ['rbind', 'ro']; [] -> ['ro']; every 'rw' removed."""
    result = []
    for option in options:
        if option == "rw":
            option = "ro"
        if option == "ro" and "ro" in result:
            continue
        result.append(option)
    if "ro" not in result:
        result.append("ro")
    return result


def edit_env_defaults(spec, opts):
    """--oi-env: set NAME=VALUE unless the container already has NAME."""
    return _set_env(spec, opts.env_defaults, force=False)


def edit_env_force(spec, opts):
    """--oi-env-force: set NAME=VALUE whatever the container had."""
    return _set_env(spec, opts.env_force, force=True)


def _set_env(spec, assignments, force):
    if not assignments:
        return []
    process = spec.get("process")
    if process is None:
        # No process: nothing will run from this config, so there is no
        # environment to give it (runc refuses such a config at start).
        return []
    if not isinstance(process, dict):
        raise InterceptorError("process is not an object")
    env = process.get("env")
    if env is None:
        env = process["env"] = []
    if not isinstance(env, list):
        raise InterceptorError("process.env is not a list")
    changes = []
    for assignment in assignments:
        name = assignment.partition("=")[0]
        index = _find_env(env, name)
        if index is None:
            env.append(assignment)
            changes.append("process.env: added %s" % name)
        elif force and env[index] != assignment:
            env[index] = assignment
            changes.append("process.env[%d]: replaced %s" % (index, name))
    return changes


def _find_env(env, name):
    """Index of the first NAME= (or bare NAME) entry, or None."""
    for index, entry in enumerate(env):
        if not isinstance(entry, str):
            raise InterceptorError("process.env[%d] is not a string" % index)
        if entry.partition("=")[0] == name:
            return index
    return None


# The pipeline, in order. Defaults are applied before forced values.
EDITS = (
    edit_readonly_networking_mounts,
    edit_env_defaults,
    edit_env_force,
)


def apply_edits(spec, opts):
    """Run every edit over spec; return the list of changes (empty: none)."""
    if not isinstance(spec, dict):
        raise InterceptorError("the config is not a JSON object")
    changes = []
    for edit in EDITS:
        changes.extend(edit(spec, opts))
    return changes


def _get_list(spec, key):
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InterceptorError("%s is not a list" % key)
    return value


def _clean_path(path):
    """'/etc//hosts/' -> '/etc/hosts', as runtimes clean a destination."""
    import posixpath
    return posixpath.normpath("/" + path.lstrip("/")) if path else path


# ---------------------------------------------------------------------------
# 4. Bundle I/O: parse and serialize raw JSON, write atomically
# ---------------------------------------------------------------------------
#
# The config is parsed into plain dicts and lists, which keep key order.
# Floats are kept as the text they were written as (RawNumber), integers of
# any size are exact, strings keep their characters. Duplicate keys, NaN and
# Infinity are refused: Go's JSON reader, which runc uses, would read them
# differently or not at all. When written back, the layout (indentation,
# separators, final newline) follows the original.


class RawNumber(object):
    """A JSON number with a fraction or exponent, kept as written."""

    __slots__ = ("text",)

    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, RawNumber) and other.text == self.text

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(self.text)

    def __repr__(self):
        return "RawNumber(%r)" % self.text


def _object_without_duplicates(pairs):
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError("duplicate key %s" % _quote_for_message(key))
            seen.add(key)
    return obj


def _refuse_constant(name):
    raise ValueError("%s is not valid JSON" % name)


def parse_config(raw, path):
    """Bytes of a config.json -> dict, or InterceptorError naming the problem."""
    import json
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InterceptorError("cannot parse %s: invalid UTF-8 at byte %d" % (path, exc.start))
    try:
        spec = json.loads(text, object_pairs_hook=_object_without_duplicates,
                          parse_float=RawNumber, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise InterceptorError("cannot parse %s: %s: line %d column %d"
                               % (path, exc.msg, exc.lineno, exc.colno))
    except RecursionError:
        raise InterceptorError("cannot parse %s: nested too deeply" % path)
    except ValueError as exc:
        raise InterceptorError("cannot parse %s: %s" % (path, exc))
    if not isinstance(spec, dict):
        raise InterceptorError("%s is not a JSON object" % path)
    return spec


class Layout(object):
    """How a JSON text was laid out: indentation, separators, final newline."""

    def __init__(self, indent=None, item_sep=",", key_sep=":", final_newline=False):
        self.indent = indent
        self.item_sep = item_sep
        self.key_sep = key_sep
        self.final_newline = final_newline

    @classmethod
    def of(cls, raw):
        final_newline = raw.endswith(b"\n")
        lines = raw.strip().split(b"\n")
        if len(lines) > 1:
            second = lines[1].decode("utf-8", "replace")
            indent = second[:len(second) - len(second.lstrip(" \t"))] or "  "
            return cls(indent, ",", ": ", final_newline)
        if b'": ' in raw:
            return cls(None, ", ", ": ", final_newline)
        return cls(None, ",", ":", final_newline)


PRETTY = Layout("  ", ",", ": ", True)


def serialize_config(spec, layout):
    """dict -> bytes, laid out as layout says; non-ASCII written as UTF-8."""
    from json.encoder import encode_basestring, encode_basestring_ascii
    out = []
    _encode_value(spec, out, layout, 0, encode_basestring)
    if layout.final_newline:
        out.append("\n")
    text = "".join(out)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (from a \udXXX escape) cannot be UTF-8: escape all.
        out = []
        _encode_value(spec, out, layout, 0, encode_basestring_ascii)
        if layout.final_newline:
            out.append("\n")
        return "".join(out).encode("ascii")


def _encode_value(value, out, layout, level, encode_string):
    if isinstance(value, str):
        out.append(encode_string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, RawNumber):
        out.append(value.text)
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InterceptorError("cannot write %r as JSON" % value)
        out.append(float.__repr__(value))
    elif isinstance(value, dict):
        _encode_container(value.items(), "{", "}", out, layout, level, encode_string, True)
    elif isinstance(value, (list, tuple)):
        _encode_container(value, "[", "]", out, layout, level, encode_string, False)
    else:
        raise InterceptorError("cannot write a %s as JSON" % type(value).__name__)


def _encode_container(items, open_, close, out, layout, level, encode_string, is_dict):
    out.append(open_)
    if layout.indent is None:
        separator = layout.item_sep
        closing = ""
    else:
        separator = layout.item_sep + "\n" + layout.indent * (level + 1)
        closing = "\n" + layout.indent * level
    first = True
    for item in items:
        out.append(separator[len(layout.item_sep):] if first else separator)
        first = False
        if is_dict:
            key, item = item
            out.append(encode_string(key))
            out.append(layout.key_sep)
        _encode_value(item, out, layout, level + 1, encode_string)
    if not first:
        out.append(closing)
    out.append(close)


def read_config(path):
    """Read a config file: (raw bytes, os.stat_result).

    Refuses a symlink (we would replace the link, not its target) and anything
    that is not a regular file (a FIFO would block the runtime forever).
    """
    import errno
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InterceptorError("cannot read %s: it is a symlink; refusing to edit through it" % path)
        raise InterceptorError("cannot read %s: %s" % (path, exc.strerror))
    try:
        st = os.fstat(fd)
        import stat
        if not stat.S_ISREG(st.st_mode):
            raise InterceptorError("cannot read %s: not a regular file" % path)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st
    except OSError as exc:
        raise InterceptorError("cannot read %s: %s" % (path, exc.strerror))
    finally:
        os.close(fd)


_TEMP_MARK = ".oi-tmp-"


def write_atomically(path, data, st):
    """Replace path with data: a temp file in the same directory, written,
    given the original mode and owner, fsynced, then renamed over path.
    Either the complete old or the complete new file is there, never a mix."""
    directory, name = os.path.split(path)
    _remove_stale_temp_files(directory, name)
    temp = os.path.join(directory, ".%s%s%d-%s" % (name, _TEMP_MARK, os.getpid(), os.urandom(4).hex()))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temp, flags, 0o600)
    except OSError as exc:
        raise InterceptorError("cannot write %s: %s" % (path, exc.strerror))
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, st.st_mode & 0o7777)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise InterceptorError("cannot write %s: %s" % (path, exc.strerror))
    _fsync_directory(directory)


def _fsync_directory(directory):
    try:
        fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temp_files(directory, name):
    """Remove temp files left by a writer that was killed mid-write."""
    prefix = "." + name + _TEMP_MARK
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].partition("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_exists(int(pid)):
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass


def _process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def edit_bundle(call, opts):
    """Read the call's config, run the edits, write it back if changed.
    Returns the list of changes."""
    path = call.config_path
    raw, st = read_config(path)
    spec = parse_config(raw, path)
    parsed = serialize_config(spec, PRETTY) if opts.write_debug_output else None
    changes = apply_edits(spec, opts)
    modified = None
    if changes:
        modified = serialize_config(spec, Layout.of(raw))
        if modified != raw:
            write_atomically(path, modified, st)
    if opts.write_debug_output:
        name = debug_file_stem(spec.get("hostname"), call.container_id)
        files = [(name + "_original.json", raw), (name + "_parsed.json", parsed)]
        if changes:
            files.append((name + "_modified.json", serialize_config(spec, PRETTY)))
        write_debug_files(opts.debug_output_dir, files)
    return changes


# ---------------------------------------------------------------------------
# 5. Reporting: errors to stderr and the runtime's --log; debug output
# ---------------------------------------------------------------------------


def _quote_for_message(text):
    """Quote a user-supplied string for a one-line message."""
    if text and all(c.isprintable() and c not in " '\"\\" for c in text):
        return text
    return repr(text)


def _one_line(text):
    return " ".join(str(text).splitlines()) or "error"


def _utc_timestamp(fraction=False):
    import time
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    if fraction:
        stamp += ".%06d" % int((now % 1) * 1000000)
    return stamp + "Z"


def format_log_line(message, log_format):
    """A line as runc itself writes to its --log file."""
    import json
    if log_format == "json":
        return json.dumps({"level": "error", "msg": message, "time": _utc_timestamp()}) + "\n"
    return 'time="%s" level=error msg=%s\n' % (_utc_timestamp(), json.dumps(message))


def report_error(message, call):
    """One line to stderr and, when the runtime was given --log, to that file."""
    line = "%s: %s" % (PROG, _one_line(message))
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if call is None or not call.log_path:
        return
    try:
        fd = os.open(call.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError:
        return
    try:
        if not _same_file_as_stderr(fd):
            os.write(fd, format_log_line(line, call.log_format).encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    finally:
        os.close(fd)


def _same_file_as_stderr(fd):
    try:
        a, b = os.fstat(fd), os.fstat(2)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def report_warning(message):
    try:
        sys.stderr.write("%s: warning: %s\n" % (PROG, _one_line(message)))
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def debug_file_stem(hostname, container_id):
    """A file name stem that can never leave the debug directory."""
    name = hostname if isinstance(hostname, str) and hostname else (container_id or "unknown")
    name = "".join(c if c in _SAFE_NAME_CHARS else "_" for c in name)[:128]
    if name.startswith("."):
        name = "_" + name[1:]
    return name


def _open_debug_dir(directory):
    """An fd of the debug directory, created 0700 if missing; never through a symlink."""
    import errno
    try:
        os.makedirs(directory, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(directory, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, "it is a symlink or not a directory")
        raise


def write_debug_files(directory, files):
    """Write each (name, bytes) into directory: temp file 0600, then rename,
    so a symlink planted at the name is replaced, never written through."""
    try:
        dir_fd = _open_debug_dir(directory)
    except OSError as exc:
        report_warning("no debug output: %s: %s" % (directory, exc.strerror))
        return
    try:
        for name, data in files:
            temp = ".%s%s%d-%s" % (name, _TEMP_MARK, os.getpid(), os.urandom(4).hex())
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except OSError as exc:
        report_warning("no debug output: %s: %s" % (directory, exc.strerror))
    finally:
        os.close(dir_fd)


def log_runtime_call(directory, argv):
    """Append one line (timestamp, shell-quoted command) to runtime_calls.log.
    One write() on an O_APPEND file under an exclusive lock: lines of
    concurrent calls never interleave."""
    line = "%s %s\n" % (_utc_timestamp(fraction=True), " ".join(shell_quote(a) for a in argv))
    try:
        dir_fd = _open_debug_dir(directory)
    except OSError as exc:
        report_warning("no debug output: %s: %s" % (directory, exc.strerror))
        return
    try:
        import fcntl
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open("runtime_calls.log", flags, 0o600, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if st.st_uid != os.geteuid():
                raise OSError(0, "runtime_calls.log belongs to another user")
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line.encode("utf-8", "surrogateescape"))
        finally:
            os.close(fd)
    except OSError as exc:
        report_warning("no debug output: %s: %s" % (directory, exc.strerror or exc))
    finally:
        os.close(dir_fd)


_SHELL_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


def shell_quote(arg):
    """Quote an argument for a POSIX shell; control characters and bytes that
    are not UTF-8 use bash's $'...' form so the result stays on one line."""
    if arg and all(c in _SHELL_SAFE for c in arg):
        return arg
    raw = os.fsencode(arg)
    if all(32 <= b < 127 for b in raw) or (
            all(b >= 32 and b != 127 for b in raw) and _is_utf8(raw)):
        return "'" + arg.replace("'", "'\"'\"'") + "'"
    out = []
    for b in raw:
        if b == 0x27 or b == 0x5C:
            out.append("\\" + chr(b))
        elif 32 <= b < 127:
            out.append(chr(b))
        else:
            out.append("\\x%02x" % b)
    return "$'" + "".join(out) + "'"


def _is_utf8(raw):
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ---------------------------------------------------------------------------
# 6. Exec and main
# ---------------------------------------------------------------------------


def exec_runtime(runtime, runtime_args):
    """Replace this process with the runtime: same PID, same stdio, so signals
    and exit codes are the runtime's own."""
    # The interpreter ignores SIGPIPE and SIGXFSZ; an ignored signal stays
    # ignored across exec, so give the runtime the default, as a shell would.
    try:
        import _signal as signal_module
    except ImportError:  # pragma: no cover - other interpreters
        import signal as signal_module
    for name in ("SIGPIPE", "SIGXFSZ"):
        number = getattr(signal_module, name, None)
        if number is not None:
            signal_module.signal(number, signal_module.SIG_DFL)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    try:
        os.execv(runtime, [runtime] + runtime_args)
    except OSError as exc:
        raise InterceptorError("cannot execute runtime %s: %s" % (runtime, exc.strerror))


def run(argv0, args):
    """Handle one call. Returns an exit status only when the runtime is not
    executed (help, version, errors)."""
    call = None
    try:
        try:
            opts, runtime_args = split_command_line(args)
        except UsageError as exc:
            call = parse_runtime_call(getattr(exc, "runtime_args", []))
            raise
        if opts.action == "help":
            sys.stdout.write(help_text())
            return 0
        if opts.action == "version":
            sys.stdout.write("%s %s\n" % (PROG, __version__))
            return 0
        call = parse_runtime_call(runtime_args)
        runtime = find_runtime(opts.runtime_path)
        if call.edits_config:
            edit_bundle(call, opts)
        if opts.write_debug_output:
            log_runtime_call(opts.debug_output_dir, [runtime] + runtime_args)
        exec_runtime(runtime, runtime_args)
        return EXIT_FAILURE  # not reached
    except InterceptorError as exc:
        report_error(exc, call)
        return exc.exit_code
    except Exception as exc:  # never a traceback in the path of a container
        report_error("internal error: %s: %s" % (type(exc).__name__, exc), call)
        return EXIT_FAILURE


def main(argv0=None, args=None):
    if args is None:
        argv0, args = sys.argv[0], sys.argv[1:]
    return run(argv0, args)


if __name__ == "__main__":
    sys.exit(main())
