#!/usr/bin/env python3
"""oci-interceptor: an OCI runtime wrapper that enforces policy on every container.

Docker, Podman or containerd call this program in place of runc. On `create`,
`run` and `restore` it rewrites the bundle's config.json by the rules it was
given, then replaces itself (os.execv) with the real runtime, every other
argument untouched. Every other subcommand goes straight through.

The file reads top to bottom like the call it handles:

  1. Command line    our --oi-* flags, split from the runtime's own arguments
  2. Policy          config file, profiles, hook files -> a list of rules
  3. Runtime call    which subcommand, which bundle, which log file
  4. Conditions      when a rule applies (OCI hooks 1.0.0 `when`, and more)
  5. Edits           small functions over the spec dict, run as a pipeline
  6. JSON            raw parsing and writing, equality, pointers
  7. Bundle I/O      read, edit, write atomically
  8. Reporting       errors to stderr and the runtime's --log; debug output
  9. Exec and main   dry run, config check, exec

Standard library only, valid Python 3.6 and newer. Modules that a plain
passthrough call does not need (json, re, difflib, ...) are imported inside
the functions that use them, so forwarding `state` or `start` costs little
more than starting the interpreter.
"""

import posix
import sys


class _LazyModule(object):
    """A module imported on first use. `os` costs about a millisecond to
    import (its collections.abc import, mostly); a passthrough call needs
    only `posix`, which the interpreter has loaded already, so the few
    functions on that path use posix and everything else uses os."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attribute):
        module = __import__(self._name)
        globals()[self._name] = module
        return getattr(module, attribute)


os = _LazyModule("os")

__version__ = "0.4.0"

PROG = "oci-interceptor"
DEFAULT_RUNTIME = "runc"
DEFAULT_DEBUG_DIR = "/var/log/oci-interceptor"
DEFAULT_CONFIG = "/etc/oci-interceptor/config.json"
# Names another default config file ("" for none); meant for tests and for
# hosts that keep policy elsewhere. Only whoever starts the engine sets it.
CONFIG_ENV = "OCI_INTERCEPTOR_CONFIG"
CONFIG_VERSION = 1
# Where, as root, a call that edits nothing records what the config file
# made of it, so that the .pyz's shell preamble can pass later such calls
# straight through (see remember_passthrough). The env var names another.
STATE_DIR = "/run/oci-interceptor"
STATE_DIR_ENV = "OCI_INTERCEPTOR_STATE_DIR"
PASSTHROUGH_MAGIC = "oci-interceptor-passthrough"

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


class ConfigError(InterceptorError):
    """A bad config file, hook file or hooks directory."""

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
    "action" (does something instead of running the runtime). key is the
    config file key that means the same, if any.

    passthrough says what the flag means to a call that edits nothing
    (`state`, `start`, `delete`, ...): "runtime" (it names the runtime),
    "ignored" (it only matters to create/run/restore), or None (it changes
    what such a call does: debug output, systemd, a config file, an action).
    The .pyz's shell preamble runs such calls without Python when every flag
    is "runtime" or "ignored" (see build_zipapp.py).
    """

    def __init__(self, name, kind, dest, help, metavar=None, check=None, aliases=(), key=None,
                 passthrough=None):
        self.name = name
        self.kind = kind
        self.dest = dest
        self.help = help
        self.metavar = metavar
        self.check = check
        self.aliases = aliases
        self.key = key
        self.passthrough = passthrough


def _check_env_assignment(flag, value):
    name, sep, _ = value.partition("=")
    if not sep:
        raise UsageError("%s %s: expected NAME=VALUE" % (flag, _quote_for_message(value)))
    if not name:
        raise UsageError("%s %s: the variable name is empty" % (flag, _quote_for_message(value)))


def _check_not_empty(flag, value):
    if not value:
        raise UsageError("%s: the value is empty" % flag)


SYSTEMD_MODES = ("off", "auto", "always")


def _check_systemd_mode(flag, value):
    if value not in SYSTEMD_MODES:
        raise UsageError("%s %s: expected one of %s" % (flag, _quote_for_message(value), ", ".join(SYSTEMD_MODES)))


ENGINES = ("docker", "podman", "containerd")
DOCKER_DAEMON_JSON = "/etc/docker/daemon.json"


def _check_engine(flag, value):
    if value not in ENGINES:
        raise UsageError("%s %s: expected one of %s" % (flag, _quote_for_message(value), ", ".join(ENGINES)))


FLAGS = (
    Flag("--oi-runtime-path", "value", "runtime_path", metavar="PATH", key="runtime-path",
         check=_check_not_empty, aliases=("--runtime-path",), passthrough="runtime",
         help="The real runtime to run (default: runc). A bare name is looked up "
              "on PATH, then in " + ", ".join(FALLBACK_RUNTIME_DIRS) + "."),
    Flag("--oi-readonly-networking-mounts", "switch", "readonly_networking_mounts",
         key="readonly-networking-mounts", aliases=("--readonly-networking-mounts",), passthrough="ignored",
         help="Make the mounts of /etc/hosts, /etc/hostname and /etc/resolv.conf "
              "read-only: every 'rw' option removed, 'ro' added."),
    Flag("--oi-env", "list", "env", metavar="NAME=VALUE", key="env",
         check=_check_env_assignment, passthrough="ignored",
         help="Set an environment variable unless the container already has it. "
              "Repeatable; the value may contain '='."),
    Flag("--oi-env-force", "list", "env_force", metavar="NAME=VALUE", key="env-force",
         check=_check_env_assignment, passthrough="ignored",
         help="Set an environment variable, replacing the container's own value. "
              "Repeatable; applied after --oi-env."),
    Flag("--oi-systemd", "value", "systemd", metavar="MODE", key="systemd", check=_check_systemd_mode,
         help="Run systemd containers without --privileged: off (default), auto (containers "
              "whose command is /sbin/init, /usr/sbin/init, /usr/local/sbin/init or .../systemd, as "
              "Podman decides) or always. Adds tmpfs mounts, the container env systemd expects, a "
              "cgroup namespace with a writable view of the container's own cgroup only, and halts "
              "such a container cleanly on SIGTERM. A container turns it off with the env "
              "OCI_INTERCEPTOR_SYSTEMD=off (or oci-systemd-hook=disabled)."),
    Flag("--oi-config", "value", "config", metavar="FILE", check=_check_not_empty,
         help="Read policy from this JSON file instead of %s (which is read only "
              "if it exists; $%s names another default)." % (DEFAULT_CONFIG, CONFIG_ENV)),
    Flag("--oi-profile", "value", "profile", metavar="NAME", check=_check_not_empty,
         help="Apply this named profile of the config file. Without it, the profile "
              "named like the program (a symlink's name) applies, if there is one."),
    Flag("--oi-hook-config-path", "list", "hook_config_path", metavar="FILE",
         key="hook-config-path", check=_check_not_empty, aliases=("--hook-config-path",),
         passthrough="ignored",
         help="Prepend the hooks of this oci-add-hooks hook file ({\"hooks\": {STAGE: "
              "[HOOK, ...]}}) to every container, all six stages. Repeatable. A hook "
              "already present is not added again."),
    Flag("--oi-hooks-dir", "list", "hooks_dir", metavar="DIR", key="hooks-dir",
         check=_check_not_empty, passthrough="ignored",
         help="Inject the matching hooks of the OCI hooks 1.0.0 files (*.json) in "
              "this directory, as Podman and CRI-O read them. Repeatable; a file in a "
              "later directory masks one of the same name in an earlier one."),
    Flag("--oi-write-debug-output", "switch", "write_debug_output", key="write-debug-output",
         help="Keep <hostname>_original.json, <hostname>_parsed.json and "
              "<hostname>_modified.json (when modified) of each edited config, and "
              "append every forwarded call to runtime_calls.log. Files are readable "
              "by their owner only."),
    Flag("--oi-debug-output-dir", "value", "debug_output_dir", metavar="DIR",
         key="debug-output-dir", check=_check_not_empty,
         help="Where debug output goes (default: %s)." % DEFAULT_DEBUG_DIR),
    Flag("--oi-dry-run", "switch", "dry_run",
         help="Print what this call would do (the rules that match, a diff of "
              "config.json, the runtime command) and change and run nothing."),
    Flag("--oi-check-config", "action", "check-config",
         help="Check the flags, config file and hook files, print a summary, and "
              "exit 0 (valid) or 2 (not)."),
    Flag("--oi-register", "value", "register", metavar="ENGINE", check=_check_engine,
         help="Register this program with an engine and exit. docker: merge a runtime "
              "into daemon.json (everything else kept, a backup written, idempotent) and "
              "print the restart command. podman, containerd: print the configuration "
              "snippet to add (their TOML is not rewritten)."),
    Flag("--oi-register-name", "value", "register_name", metavar="NAME", check=_check_not_empty,
         help="The runtime name to register (default: %s)." % PROG),
    Flag("--oi-register-default", "switch", "register_default",
         help="With --oi-register: make it the engine's default runtime."),
    Flag("--oi-register-path", "value", "register_path", metavar="PATH", check=_check_not_empty,
         help="With --oi-register: the program path to register (default: this program)."),
    Flag("--oi-daemon-json", "value", "daemon_json", metavar="FILE", check=_check_not_empty,
         help="With --oi-register docker: the file to edit (default: %s)." % DOCKER_DAEMON_JSON),
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
    """Everything our flags asked for. None: not given on the command line
    (the config file or the built-in default decides)."""

    def __init__(self):
        for flag in FLAGS:
            if flag.kind == "list":
                setattr(self, flag.dest, [])
            elif flag.kind != "action":
                setattr(self, flag.dest, None)
        self.action = None          # "help", "version" or "check-config"


def _is_our_flag(arg):
    if arg.startswith("--oi-"):
        return True
    return arg.partition("=")[0] in _FLAGS_BY_NAME


def split_command_line(args):
    """Split args into (Options, runtime_args).

    Our flags are taken only before the runtime's subcommand. Runtime global
    options are read as parse_runtime_call reads them, so that a value is
    not mistaken for the subcommand (one it cannot read is taken to have
    none). A bad flag raises UsageError carrying the runtime arguments as far
    as they could be split (for error reporting).
    """
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
        reading, _ = read_global_option(arg)
        if reading is not None and reading[1] is _NEXT and i < n:
            runtime_args.append(args[i])
            i += 1
    if error is not None:
        error.runtime_args = runtime_args
        raise error
    return opts, runtime_args


def adapt_drop_in(argv0, args):
    """Invoked as oci-add-hooks (a symlink), behave as it does: its
    `--hook-config-path X --runtime-path Y RUNTIME ARGS` are our aliases
    already; its lone `--version` is answered here."""
    if (argv0 or "").rpartition("/")[2] == "oci-add-hooks" and args == ["--version"]:
        return ["--oi-version"]
    return args


def help_text():
    lines = [
        "usage: %s [--oi-FLAG ...] [RUNTIME GLOBAL OPTIONS] COMMAND [ARGS ...]" % PROG,
        "",
        "An OCI runtime wrapper. Register it with Docker, Podman or containerd in",
        "place of runc. On 'create', 'run' and 'restore' it edits the bundle's",
        "config.json by its policy, then executes the real runtime with every",
        "other argument unchanged; every other command goes straight through.",
        "",
        "Policy comes from the flags below and from a JSON config file",
        "(%s if it exists, or --oi-config FILE): global" % DEFAULT_CONFIG,
        "settings, named profiles, and rules that apply edits to the containers",
        "their 'when' matches. Flags override the file's settings; list flags add",
        "to its lists.",
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
        if flag.key:
            lines.append("        Config file key: \"%s\"." % flag.key)
        if flag.aliases:
            lines.append("        Also accepted (deprecated or drop-in spelling): %s."
                         % ", ".join(flag.aliases))
    lines += [
        "",
        "rule actions (config file, in the order they apply):",
    ]
    for action in ACTIONS:
        lines.append("  \"%s\"" % action.key)
        lines.extend(_wrap(action.help, "        "))
    lines += [
        "",
        "rule conditions (\"when\"; all given must match):",
    ]
    for key, text in CONDITION_HELP:
        lines.append("  \"%s\"" % key)
        lines.extend(_wrap(text, "        "))
    lines += [
        "",
        "examples:",
        "  %s --oi-readonly-networking-mounts --oi-env TZ=UTC \\" % PROG,
        "      --root /run/runc create --bundle /path/to/bundle mycontainer",
        "  %s --oi-runtime-path=crun --oi-env-force=HTTP_PROXY= run -b . box" % PROG,
        "  %s --oi-config policy.json --oi-check-config" % PROG,
        "  %s --oi-dry-run create --bundle /path/to/bundle mycontainer" % PROG,
        "",
        "Errors are one line on stderr and in the runtime's --log file (in its",
        "--log-format); the container is then not created. Exit status: the",
        "runtime's own, or 1 when a policy could not be applied, 2 for a bad flag",
        "or config file.",
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
# 2. Policy: config file, profiles, hook files -> a list of rules
# ---------------------------------------------------------------------------
#
# Everything that edits a config becomes a Rule: the global settings (flags
# and the file's top level) are the first rule, "(global)", which always
# applies; then one rule per oci-add-hooks hook file, one per matching OCI
# hooks 1.0.0 file, and the config file's own rules in file order.
#
# Precedence: built-in defaults < config file top level < profile < flags.
# Lists (env, env-force, hook-config-path, hooks-dir) add up in that order;
# single values are overridden. A profile's rules follow the file's rules.


class Rule(object):
    def __init__(self, name, when, actions, source):
        self.name = name
        self.when = when            # a Condition, or None: always
        self.actions = actions      # {action key: validated value}
        self.source = source        # where it was defined, for messages


class Policy(object):
    def __init__(self):
        self.runtime_path = DEFAULT_RUNTIME
        self.write_debug_output = False
        self.debug_output_dir = DEFAULT_DEBUG_DIR
        self.config_path = None
        self.config_stat = None     # fstat of the descriptor the config file was read from
        self.config_dir_stat = None  # its directory's stat, taken before reading it
        self.profile = None
        self.rules = []
        self.files = []             # every policy file read, in order

    @property
    def uses_systemd(self):
        """Can any rule put a container in systemd mode?"""
        return any(rule.actions.get("systemd", "off") != "off" for rule in self.rules)


def load_policy(opts, argv0, complete=True):
    """Resolve flags, the config file and its profile into a Policy.

    complete=False is for calls that apply no rule (`state`, `start`,
    `delete`, ...): hook files and directories are not read, and the rules'
    regular expressions are not compiled (so `re` is never imported); the
    settings and the rules' shape are still checked.
    """
    policy = Policy()
    settings = {}
    rules = []
    path, explicit = _config_file_to_read(opts)
    if path is not None:
        data = _load_config_file(path, explicit, policy)
        if data is not None:
            policy.config_path = path
            policy.files.append(path)
            settings, rules = _read_config_data(data, path, opts.profile, argv0, policy, complete)
    elif opts.profile is not None:
        raise ConfigError("--oi-profile %s: there is no config file" % _quote_for_message(opts.profile))

    for flag in FLAGS:
        if not flag.key:
            continue
        value = getattr(opts, flag.dest)
        if flag.kind == "list":
            if value:
                settings[flag.key] = settings.get(flag.key, []) + value
        elif value is not None:
            settings[flag.key] = value

    policy.runtime_path = settings.get("runtime-path", DEFAULT_RUNTIME)
    policy.write_debug_output = settings.get("write-debug-output", False)
    policy.debug_output_dir = settings.get("debug-output-dir", DEFAULT_DEBUG_DIR)

    global_actions = {}
    for key in ("env", "env-force", "readonly-networking-mounts"):
        if settings.get(key):
            global_actions[key] = settings[key]
    if settings.get("systemd", "off") != "off":
        global_actions["systemd"] = settings["systemd"]
    if global_actions:
        policy.rules.append(Rule("(global)", None, global_actions, "flags and config"))
    if complete:
        for hook_file in settings.get("hook-config-path", []):
            policy.rules.append(_load_hook_config_file(hook_file))
            policy.files.append(hook_file)
        for hook_file, rule in _load_hooks_dirs(settings.get("hooks-dir", [])):
            policy.rules.append(rule)
            policy.files.append(hook_file)
    policy.rules.extend(rules)
    return policy


def _config_file_to_read(opts):
    """(path, explicit): the --oi-config file, else the default if any."""
    if opts.config is not None:
        return opts.config, True
    default = getenv(CONFIG_ENV)
    if default is None:
        default = DEFAULT_CONFIG
    if not default:
        return None, False
    return default, False


def _load_config_file(path, explicit, policy):
    """The parsed JSON of a policy file; None when the default file is absent.
    Keeps in the policy what remember_passthrough needs: the stat of the
    descriptor read, and of the directory before the file was opened."""
    try:
        dir_stat = posix.stat(path.rpartition("/")[0] or "/") if path.startswith("/") else None
    except OSError:
        dir_stat = None
    read = _read_policy_file(path, "config", missing_ok=not explicit, trusted_as="config file")
    if read is None:
        return None
    policy.config_stat, policy.config_dir_stat = read[1], dir_stat
    try:
        return parse_json(read[0])
    except ValueError as exc:
        raise ConfigError("config %s: %s" % (path, exc))


def _strip_prefix(message, prefix, path):
    return path + ": " + message[len(prefix):] if message.startswith(prefix) else message


_S_IFMT, _S_IFDIR, _S_IFLNK, _S_ISVTX = 0o170000, 0o040000, 0o120000, 0o1000


def _check_trusted(path, st, what):
    """As root, refuse a policy file (or its directory) a non-root user can
    write: it decides what runs as root in every container. (posix only,
    unless the path is a symlink: every call that reads a config runs this.)"""
    if posix.geteuid() != 0:
        return
    checks = [(path, st)]
    if (posix.lstat(path).st_mode & _S_IFMT) == _S_IFLNK:
        directory = os.path.dirname(os.path.realpath(path)) or "/"
    else:
        directory = path.rpartition("/")[0] if "/" in path else "."
        directory = directory or "/"
    try:
        checks.append((directory, posix.stat(directory)))
    except OSError:
        pass
    for name, info in checks:
        is_sticky_dir = (info.st_mode & _S_IFMT) == _S_IFDIR and info.st_mode & _S_ISVTX
        writable_by_others = info.st_mode & 0o022 and not (is_sticky_dir and name != path)
        if info.st_uid != 0 or writable_by_others:
            raise ConfigError(
                "%s %s: refusing it, %s is writable by a non-root user (owner uid %d, mode %04o)"
                % (what, path, "it" if name == path else "its directory " + name,
                   info.st_uid, info.st_mode & 0o7777))


def _read_config_data(data, path, profile_name, argv0, policy, complete=True):
    """Validate a config file's data; return (settings, rules)."""
    def fail(where, problem):
        raise ConfigError("config %s: %s%s" % (path, where + ": " if where else "", problem))

    if not isinstance(data, dict):
        fail("", "expected a JSON object")
    allowed = set(_SETTING_KEYS) | {"version", "rules", "profiles"}
    _no_unknown_keys(data, allowed, "", fail)
    if data.get("version") != CONFIG_VERSION:
        fail("version", "expected %d, found %s" % (CONFIG_VERSION, _json_text(data.get("version"))))
    settings = _read_settings(data, "", fail)
    rules = _read_rules(data.get("rules", []), "rules", path, fail, complete)

    profiles = data.get("profiles", {})
    if not isinstance(profiles, dict):
        fail("profiles", "expected an object of named profiles")
    for name, profile in profiles.items():
        where = "profiles.%s" % name
        if not isinstance(profile, dict):
            fail(where, "expected an object")
        _no_unknown_keys(profile, set(_SETTING_KEYS) | {"rules"}, where + ".", fail)
    if profile_name is None:
        invoked_as = (argv0 or "").rpartition("/")[2]
        if invoked_as in profiles:
            profile_name = invoked_as
    elif profile_name not in profiles:
        fail("profiles", "no profile named %s" % _quote_for_message(profile_name))
    # Every profile is validated, used or not, so a typo shows at once.
    chosen = None
    for name, profile in profiles.items():
        where = "profiles.%s" % name
        profile_settings = _read_settings(profile, where + ".", fail)
        profile_rules = _read_rules(profile.get("rules", []), where + ".rules", path, fail, complete)
        if name == profile_name:
            chosen = (profile_settings, profile_rules)
    if chosen is not None:
        policy.profile = profile_name
        for key, value in chosen[0].items():
            if _SETTING_KEYS[key][1] == "list":
                settings[key] = settings.get(key, []) + value
            else:
                settings[key] = value
        rules = rules + chosen[1]
    return settings, rules


def _no_unknown_keys(data, allowed, prefix, fail):
    for key in data:
        if key not in allowed:
            fail(prefix + key, "unknown key (allowed: %s)" % ", ".join(sorted(allowed)))


def _read_settings(data, prefix, fail):
    settings = {}
    for key, (validator, _) in _SETTING_KEYS.items():
        if key in data:
            try:
                settings[key] = validator(data[key])
            except ValueError as exc:
                fail(prefix + key + _subpath(exc), _message(exc))
    return settings


def _read_rules(data, where, path, fail, complete=True):
    if not isinstance(data, list):
        fail(where, "expected a list of rules")
    rules = []
    names = set()
    for index, item in enumerate(data):
        here = "%s[%d]" % (where, index)
        if not isinstance(item, dict):
            fail(here, "expected an object")
        allowed = {"name", "when"} | {a.key for a in ACTIONS}
        _no_unknown_keys(item, allowed, here + ".", fail)
        name = item.get("name", here)
        if not isinstance(name, str) or not name:
            fail(here + ".name", "expected a non-empty string")
        if name in names:
            fail(here + ".name", "a rule named %s exists already" % _quote_for_message(name))
        names.add(name)
        when = None
        if "when" in item:
            try:
                when = parse_condition(item["when"], extended=True, compile_now=complete)
            except ValueError as exc:
                fail(here + ".when" + _subpath(exc), _message(exc))
        actions = {}
        for action in ACTIONS:
            if action.key in item:
                try:
                    actions[action.key] = action.validate(item[action.key])
                except ValueError as exc:
                    fail(here + "." + action.key + _subpath(exc), _message(exc))
        if not actions:
            fail(here, "the rule has no action")
        rules.append(Rule(name, when, actions, "%s %s" % (path, here)))
    return rules


class PathError(ValueError):
    """A validation problem at a sub-path of the value being validated."""

    def __init__(self, subpath, message):
        ValueError.__init__(self, message)
        self.subpath = subpath


def _subpath(exc):
    return getattr(exc, "subpath", "")


def _message(exc):
    return exc.args[0] if exc.args else str(exc)


def _at(subpath, exc):
    """Re-raise a nested validation error with its position prefixed."""
    return PathError(subpath + _subpath(exc), _message(exc))


def _valid_bool(value):
    if not isinstance(value, bool):
        raise ValueError("expected true or false, found %s" % _json_text(value))
    return value


def _valid_nonempty_string(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string, found %s" % _json_text(value))
    return value


def _valid_systemd_mode(value):
    if value not in SYSTEMD_MODES:
        raise ValueError("expected one of %s, found %s" % (", ".join(SYSTEMD_MODES), _json_text(value)))
    return value


def _valid_string_list(value):
    if not isinstance(value, list):
        raise ValueError("expected a list of strings, found %s" % _json_text(value))
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise PathError("[%d]" % index, "expected a string, found %s" % _json_text(item))
    return value


def _valid_path_list(value):
    """A path or a list of paths."""
    if isinstance(value, str):
        value = [value]
    _valid_string_list(value)
    for index, item in enumerate(value):
        if not item:
            raise PathError("[%d]" % index, "expected a non-empty path")
    return list(value)


def _valid_env_list(value):
    _valid_string_list(value)
    for index, item in enumerate(value):
        name, sep, _ = item.partition("=")
        if not sep or not name:
            raise PathError("[%d]" % index, "expected NAME=VALUE, found %s" % _json_text(item))
    return value


def _valid_name_list(value):
    _valid_string_list(value)
    for index, item in enumerate(value):
        if not item or "=" in item:
            raise PathError("[%d]" % index, "expected a variable name, found %s" % _json_text(item))
    return value


def _valid_destination_globs(value):
    _valid_string_list(value)
    for index, item in enumerate(value):
        if not item.startswith("/"):
            raise PathError("[%d]" % index, "expected an absolute path or glob, found %s"
                            % _json_text(item))
    return value


# The settings a config file (and a profile) may have, and how each is
# checked and merged: "list" values add up, "value" ones replace.
_SETTING_KEYS = {
    "runtime-path": (_valid_nonempty_string, "value"),
    "readonly-networking-mounts": (_valid_bool, "value"),
    "env": (_valid_env_list, "list"),
    "env-force": (_valid_env_list, "list"),
    "hook-config-path": (_valid_path_list, "list"),
    "hooks-dir": (_valid_path_list, "list"),
    "write-debug-output": (_valid_bool, "value"),
    "debug-output-dir": (_valid_nonempty_string, "value"),
    "systemd": (_valid_systemd_mode, "value"),
}


HOOK_STAGES = ("prestart", "createRuntime", "createContainer", "startContainer",
               "poststart", "poststop")


def _valid_hook(value):
    """One OCI hook: {"path": ABSOLUTE, "args": [...], "env": [...], "timeout": N}."""
    if not isinstance(value, dict):
        raise ValueError("expected a hook object, found %s" % _json_text(value))
    for key in value:
        if key not in ("path", "args", "env", "timeout"):
            raise PathError("." + key, "unknown key (allowed: args, env, path, timeout)")
    path = value.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise PathError(".path", "expected an absolute path, found %s" % _json_text(path))
    for key in ("args", "env"):
        if key in value:
            try:
                _valid_string_list(value[key])
            except ValueError as exc:
                raise _at("." + key, exc)
    if "timeout" in value:
        timeout = value["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise PathError(".timeout", "expected a whole number of seconds > 0, found %s"
                            % _json_text(timeout))
    return value


def _valid_hooks(value):
    """{STAGE: [HOOK, ...]} for the six OCI hook stages."""
    if not isinstance(value, dict):
        raise ValueError("expected an object of hook stages, found %s" % _json_text(value))
    for stage, hooks in value.items():
        if stage not in HOOK_STAGES:
            raise PathError("." + stage, "unknown hook stage (stages: %s)" % ", ".join(HOOK_STAGES))
        if not isinstance(hooks, list):
            raise PathError("." + stage, "expected a list of hooks")
        for index, hook in enumerate(hooks):
            try:
                _valid_hook(hook)
            except ValueError as exc:
                raise _at(".%s[%d]" % (stage, index), exc)
    return value


def _objects_in_list(value, what, item):
    """Check that value is a list of objects; yield (position, object)."""
    if not isinstance(value, list):
        raise ValueError("expected a list of %s, found %s" % (what, _json_text(value)))
    for index, obj in enumerate(value):
        where = "[%d]" % index
        if not isinstance(obj, dict):
            raise PathError(where, "expected %s object" % item)
        yield where, obj


def _valid_mounts(value):
    for where, mount in _objects_in_list(value, "mounts", "a mount"):
        destination = mount.get("destination")
        if not isinstance(destination, str) or not destination.startswith("/"):
            raise PathError(where + ".destination", "expected an absolute path, found %s"
                            % _json_text(destination))
        for key in ("type", "source"):
            if key in mount and not isinstance(mount[key], str):
                raise PathError(where + "." + key, "expected a string")
        if "options" in mount:
            try:
                _valid_string_list(mount["options"])
            except ValueError as exc:
                raise _at(where + ".options", exc)
    return value


def _valid_annotations(value):
    if not isinstance(value, dict):
        raise ValueError("expected an object of annotations, found %s" % _json_text(value))
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            raise PathError("." + key, "expected a string, or null to remove")
    return value


def _valid_merge_patch(value):
    if not isinstance(value, dict):
        raise ValueError("expected a JSON merge patch object (RFC 7386), found %s" % _json_text(value))
    return value


def _valid_json_patch(value):
    for where, op in _objects_in_list(value, "JSON patch operations (RFC 6902)", "an operation"):
        kind = op.get("op")
        if kind not in ("add", "remove", "replace", "move", "copy", "test"):
            raise PathError(where + ".op", "expected add, remove, replace, move, copy or test, "
                            "found %s" % _json_text(kind))
        members = ["path"] + (["from"] if kind in ("move", "copy") else [])
        for member in members:
            try:
                parse_pointer(op.get(member))
            except ValueError as exc:
                raise PathError(where + "." + member, str(exc))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PathError(where, "%s needs a value" % kind)
        if kind == "move" and (op["path"] + "/").startswith(op["from"] + "/") and op["path"] != op["from"]:
            raise PathError(where, "cannot move a value into itself")
    return value


def _load_hook_config_file(path):
    """An oci-add-hooks hook file: {"hooks": {STAGE: [HOOK, ...]}} (other keys
    ignored, as oci-add-hooks does) -> a rule that prepends those hooks."""
    raw, st = _read_policy_file(path, "hook config file")
    try:
        data = parse_json(raw)
    except ValueError as exc:
        raise ConfigError("hook config file %s: %s" % (path, exc))
    if not isinstance(data, dict) or not isinstance(data.get("hooks"), dict):
        raise ConfigError("hook config file %s: expected {\"hooks\": {STAGE: [HOOK, ...]}}" % path)
    try:
        hooks = _valid_hooks(data["hooks"])
    except ValueError as exc:
        raise ConfigError("hook config file %s: hooks%s: %s" % (path, _subpath(exc), _message(exc)))
    return Rule("hook-config-path %s" % path, None, {"prepend-hooks": hooks}, path)


def _read_policy_file(path, what, missing_ok=False, trusted_as=None):
    """(raw, stat) of a policy file root must own; None if missing_ok and
    the file does not exist."""
    import errno
    try:
        raw, st = read_config(path, follow_symlinks=True)
    except ReadError as exc:
        if missing_ok and exc.errno == errno.ENOENT:
            return None
        raise ConfigError("%s %s" % (what, _strip_prefix(str(exc), "cannot read %s: " % path, path)))
    _check_trusted(path, st, trusted_as or what)
    return raw, st


def _load_hooks_dirs(directories):
    """OCI hooks 1.0.0 files of the directories, as Podman and CRI-O read
    them: *.json only, a later directory masks a file of the same name,
    hooks ordered by lower-cased file name. Yields (file, rule)."""
    chosen = {}
    for directory in directories:
        try:
            st = os.stat(directory)
            names = os.listdir(directory)
        except OSError as exc:
            raise ConfigError("hooks dir %s: %s" % (directory, exc.strerror))
        _check_trusted(directory, st, "hooks dir")
        for name in names:
            if name.endswith(".json"):
                chosen[name] = os.path.join(directory, name)
    for name in sorted(chosen, key=lambda n: (n.lower(), n)):
        path = chosen[name]
        yield path, _load_hook_file(path)


def _load_hook_file(path):
    raw, _ = _read_policy_file(path, "hook file")

    def fail(where, problem):
        raise ConfigError("hook file %s: %s%s" % (path, where + ": " if where else "", problem))

    try:
        data = parse_json(raw)
    except ValueError as exc:
        fail("", str(exc))
    if not isinstance(data, dict):
        fail("", "expected a JSON object")
    _no_unknown_keys(data, {"version", "hook", "when", "stages"}, "", fail)
    if data.get("version") != "1.0.0":
        fail("version", "expected \"1.0.0\", found %s" % _json_text(data.get("version")))
    try:
        hook = _valid_hook(data.get("hook"))
    except ValueError as exc:
        fail("hook" + _subpath(exc), _message(exc))
    if "when" not in data:
        fail("when", "required")
    try:
        when = parse_condition(data["when"], extended=False)
    except ValueError as exc:
        fail("when" + _subpath(exc), _message(exc))
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        fail("stages", "expected a non-empty list of stages")
    for index, stage in enumerate(stages):
        if stage not in HOOK_STAGES:
            fail("stages[%d]" % index, "unknown hook stage %s (stages: %s)"
                 % (_json_text(stage), ", ".join(HOOK_STAGES)))
    hooks = {}
    for stage in stages:
        hooks.setdefault(stage, [hook])
    return Rule("hooks.d %s" % os.path.basename(path), when, {"hooks": hooks}, path)


# ---------------------------------------------------------------------------
# 3. Runtime call: which subcommand, which bundle, which log file
# ---------------------------------------------------------------------------
#
# A create, run or restore must be read exactly as the runtime will read it:
# a config we did not edit must never start. The runtimes parse differently,
# so each option is read the way runc and the way crun would read it:
#   - runc (urfave/cli 1 on Go's flag package): the exact name after one or
#     two dashes (`-root`, `--root`), its value as `=V` or the next argument;
#     no abbreviations, no clusters. It reads a subcommand's options after the
#     container id too, and moves what it does not know as one of them after
#     a later `--`, among the arguments (`run -bx --` runs container "-bx").
#   - crun (glibc argp): a long option by its name or a prefix no option of a
#     different kind shares (`--bund`), its value as `=V` or the next argument
#     (an optional value only as `=V`); short options clustered, a value
#     attached or next (`-db/x`, `-b /x`, `-b=/x` meaning "=/x"). It stops at
#     the container id: create and run refuse more arguments, restore ignores
#     a second one.
# What one runtime rejects is read as the other reads it. An option both
# accept with different meanings, or neither knows, cannot be read with
# certainty: a call that could then create a container fails closed
# (RuntimeCall.unreadable); any other call passes through untouched.

# Global options (before the subcommand): name -> takes a value (True: `=V`
# or the next argument; False: none; None: only as `=V`). By exact name:
# runc's, and youki's -r/-l.
EXACT_GLOBALS = {
    "debug": False, "log": True, "log-format": True, "root": True, "criu": True,
    "systemd-cgroup": False, "rootless": True, "help": False, "h": False, "version": False,
    "v": False, "r": True, "l": True,
}
# crun's long and short options, with argp's own (help, usage, program-name,
# HANG); any unambiguous prefix of a long one.
CRUN_GLOBALS = {
    "debug": False, "cgroup-manager": True, "systemd-cgroup": False, "log": True,
    "log-format": True, "log-level": True, "root": True, "rootless": True, "version": False,
    "help": False, "usage": False, "program-name": True, "HANG": None,
}
CRUN_GLOBAL_SHORTS = {"v": False, "V": False, "?": False}

# The subcommands that create a container from a bundle's config.json.
EDITING_COMMANDS = frozenset(("create", "run", "restore"))

# Their options (all three subcommands together): runc's by exact name...
RUNC_COMMAND_OPTIONS = {
    "bundle": True, "b": True, "console-socket": True, "pid-file": True, "preserve-fds": True,
    "pidfd-socket": True, "no-pivot": False, "no-new-keyring": False, "no-subreaper": False,
    "detach": False, "d": False, "keep": False, "image-path": True, "work-path": True,
    "parent-path": True, "manage-cgroups-mode": True, "empty-ns": True, "lsm-profile": True,
    "lsm-mount-context": True, "tcp-established": False, "ext-unix-sk": False, "shell-job": False,
    "file-locks": False, "auto-dedup": False, "lazy-pages": False, "help": False, "h": False,
}
# ...and crun's, long (with argp's) and short.
CRUN_COMMAND_OPTIONS = {
    "bundle": True, "config": True, "console-socket": True, "pid-file": True, "preserve-fds": True,
    "no-pivot": False, "no-new-keyring": False, "no-subreaper": False, "detach": False,
    "keep": False, "image-path": True, "work-path": True, "manage-cgroups-mode": True,
    "tcp-established": False, "ext-unix-sk": False, "shell-job": False, "file-locks": False,
    "help": False, "usage": False, "program-name": True, "HANG": None,
}
CRUN_COMMAND_SHORTS = {"b": True, "f": True, "d": False, "?": False}

# One-letter names, by the long option they stand for.
_SHORT_OPTIONS = {"b": "bundle", "f": "config", "d": "detach", "h": "help", "?": "help",
                  "v": "version", "V": "version", "r": "root", "l": "log"}

# An option's value is the next argument.
_NEXT = object()


class RuntimeCall(object):
    """What the runtime is asked to do, read from its argument list.

    unreadable: why the call cannot be read with certainty while it could
    create a container. Such a call counts as editing, and asking for its
    config raises, so that it fails closed wherever a config would be read.
    """

    def __init__(self, args):
        self.args = args
        self.command = None
        self.command_args = []
        self.log_path = None
        self.log_format = "text"
        self.bundle = None
        self.config_file = None      # crun's -f/--config
        self.container_id = None
        self.unreadable = None

    @property
    def edits_config(self):
        return self.unreadable is not None or self.command in EDITING_COMMANDS

    @property
    def config_path(self):
        """The config.json the runtime will read, as an absolute path."""
        if self.unreadable is not None:
            raise InterceptorError("cannot read the runtime's command line: %s" % self.unreadable)
        bundle = os.path.abspath(self.bundle or ".")
        if self.config_file is None or self.config_file == "config.json":
            # crun resolves any other -f against the directory it started
            # in, but opens "config.json" itself in the bundle.
            return os.path.join(bundle, "config.json")
        return os.path.abspath(self.config_file)


def parse_runtime_call(args):
    """Read the runtime's global options, subcommand and, for the editing
    subcommands, the bundle, config file and container id. Never raises: a
    call it cannot read gets `unreadable` set."""
    call = RuntimeCall(args)
    certain = True
    i, n = 0, len(args)
    while i < n:
        arg = args[i]
        i += 1
        if arg == "--":                 # runc and crun: the subcommand follows
            if i < n:
                call.command, call.command_args = args[i], args[i + 1:]
            break
        if not arg.startswith("-") or arg == "-":
            call.command, call.command_args = arg, args[i:]
            break
        reading, problem = read_global_option(arg)
        if problem:
            # Whether the next argument is its value or the subcommand is
            # unknown: read on as if it took none, trusting nothing more.
            later = [a for a in args[i:] if a in EDITING_COMMANDS]
            if certain and later:
                call.unreadable = "%s before %s" % (problem, later[0])
            certain = False
            continue
        name, value = reading
        if value is _NEXT:
            if i >= n:
                break
            value = args[i]
            i += 1
        if certain and name in ("log", "log-format"):
            setattr(call, "log_path" if name == "log" else "log_format", value)
    if call.command in EDITING_COMMANDS and call.unreadable is None:
        _parse_command_options(call)
    return call


def read_global_option(arg):
    """How the runtimes read `arg`, an option before the subcommand:
    ((name, value), None) when certain -- name None when it could be one of
    several options, value None, the attached text or _NEXT -- else (None,
    the problem)."""
    readings = [r for r in (_read_exact(arg, EXACT_GLOBALS),
                            _read_argp(arg, CRUN_GLOBALS, CRUN_GLOBAL_SHORTS, ambiguous_ok=True))
                if r is not None]
    if not readings:
        return None, "unknown global option %s" % _quote_for_message(arg)
    last = [r[-1] for r in readings]
    if len(set(value is _NEXT for _, value in last)) > 1:
        return None, "runc and crun read global option %s differently" % _quote_for_message(arg)
    name = last[0][0] if all(other[0] == last[0][0] for other in last) else None
    return (name, last[0][1]), None


def _parse_command_options(call):
    args = call.command_args
    i, n = 0, len(args)
    while i < n:
        arg = args[i]
        i += 1
        if arg == "--":
            if call.container_id is None and i < n:
                call.container_id = args[i]
            return
        if not arg.startswith("-") or arg == "-":
            if call.container_id is None:
                call.container_id = arg
            continue
        effects, problem = _read_command_option(arg, call.command, call.container_id is not None,
                                                "--" in args[i:])
        if problem:
            call.unreadable = problem
            return
        for name, value in effects:
            if value is _NEXT:
                if i >= n:
                    call.unreadable = "%s option %s needs a value" % (call.command, _quote_for_message(arg))
                    return
                value = args[i]
                i += 1
            if name == "bundle":
                call.bundle = value         # the last one wins, in runc and crun
            elif name == "config":
                call.config_file = value


def _read_command_option(arg, command, after_id, double_dash_follows):
    """What an option of create/run/restore means: ([(name, value), ...],
    None), or (None, the problem)."""
    where = "%s option %s" % (command, _quote_for_message(arg))
    runc = _read_exact(arg, RUNC_COMMAND_OPTIONS)
    if after_id:
        # Only runc reads options after the container id.
        if runc is None:
            return None, "unknown %s after the container id" % where
        if command == "restore" and any(name in ("bundle", "config") for name, _ in runc):
            return None, "%s after the container id: runc reads it, crun ignores it" % where
        return runc, None
    crun = _read_argp(arg, CRUN_COMMAND_OPTIONS, CRUN_COMMAND_SHORTS, ambiguous_ok=False)
    if runc is None and crun is None:
        return None, "unknown or ambiguous " + where
    if runc is not None and crun is not None and runc != crun:
        return None, "%s means %s to runc but %s to crun" % (where, _describe(runc), _describe(crun))
    if runc is None and double_dash_follows:
        return None, "%s before a --: runc takes it for an argument" % where
    return (runc if runc is not None else crun), None


def _read_exact(arg, table):
    """runc's reading (Go's flag package): [(name, value)], or None when it
    rejects the option."""
    body = arg[2:] if arg.startswith("--") else arg[1:]
    name, has_value, value = body.partition("=")
    if name not in table:               # also `---x`, `-=x`: bad syntax to Go
        return None
    if not has_value:
        value = _NEXT if table[name] else None
    return [(_SHORT_OPTIONS.get(name, name) if len(name) == 1 else name, value)]


def _read_argp(arg, longs, shorts, ambiguous_ok):
    """crun's reading (glibc argp): [(name, value), ...] (a cluster of short
    options gives several), or None when it rejects the option. A prefix of
    several long options is ambiguous to argp unless they are all one
    option; ambiguous_ok accepts it when they all take a value or all do not,
    with the name None."""
    if arg.startswith("--"):
        name, has_value, value = arg[2:].partition("=")
        candidates = [name] if name in longs else [n for n in sorted(longs) if name and n.startswith(name)]
        kinds = set(longs[n] for n in candidates)
        if len(kinds) != 1 or (len(candidates) > 1 and not ambiguous_ok):
            return None
        takes = kinds.pop()
        if has_value and takes is False:
            return None                 # "doesn't allow an argument"
        if not has_value:
            value = _NEXT if takes else None
        return [(candidates[0] if len(candidates) == 1 else None, value)]
    effects = []
    for index, letter in enumerate(arg[1:]):
        if letter not in shorts:
            return None
        if shorts[letter]:
            effects.append((_SHORT_OPTIONS[letter], arg[index + 2:] or _NEXT))
            return effects
        effects.append((_SHORT_OPTIONS[letter], None))
    return effects or None


def _describe(effects):
    """[("bundle", "=/x")] -> 'bundle =/x'."""
    return ", ".join(name if value is None else "%s %s" % (
        name, "(the next argument)" if value is _NEXT else _quote_for_message(value)) for name, value in effects)


def find_runtime(path):
    """Resolve the runtime to an executable file, or raise InterceptorError."""
    if "/" in path:
        if _is_executable_file(path):
            return path
        try:
            posix.stat(path)
        except OSError:
            raise InterceptorError("runtime %s does not exist" % _quote_for_message(path))
        raise InterceptorError("runtime %s is not an executable file" % _quote_for_message(path))
    dirs = [d for d in (getenv("PATH") or "").split(":") if d]
    dirs += [d for d in FALLBACK_RUNTIME_DIRS if d not in dirs]
    for directory in dirs:
        candidate = directory.rstrip("/") + "/" + path
        if _is_executable_file(candidate):
            return candidate
    raise InterceptorError("runtime %s not found on PATH or in %s"
                           % (_quote_for_message(path), ", ".join(FALLBACK_RUNTIME_DIRS)))


def _is_executable_file(path):
    try:
        st = posix.stat(path)
    except (OSError, ValueError):
        return False
    return (st.st_mode & 0o170000) == 0o100000 and posix.access(path, posix.X_OK)


def getenv(name):
    """os.environ.get(name) without importing os."""
    value = posix.environ.get(name.encode())
    return None if value is None else value.decode(sys.getfilesystemencoding(), "surrogateescape")


# ---------------------------------------------------------------------------
# 4. Conditions: when a rule applies
# ---------------------------------------------------------------------------
#
# The OCI hooks 1.0.0 `when` object, as Podman and CRI-O read it: every
# property given must match (AND across kinds). Regular expressions search
# (match anywhere, like Go's MatchString); anchor them with ^ and $.
# Conditions are evaluated against the config as the engine wrote it, before
# any rule edits it.

CONDITION_HELP = (
    ("always", "true: matches. false: never matches."),
    ("annotations", "{KEY_REGEX: VALUE_REGEX, ...}: every pair matches some annotation."),
    ("commands", "[REGEX, ...]: one matches process.args[0], as in OCI hooks 1.0.0."),
    ("hasBindMounts", "true: the container has a bind mount other than those every engine adds "
                      "(/etc/hosts, /etc/hostname, /etc/resolv.conf, /dev/shm, /run/.containerenv, "
                      "/run/secrets, /dev/termination-log). false: never matches, as in OCI hooks 1.0.0."),
    ("hostname", "REGEX: matches the container's hostname (rules only, not hook files)."),
    ("env", "{NAME: VALUE_REGEX, ...}: the container has every NAME with a matching value "
            "(rules only)."),
)

_STANDARD_CONDITIONS = ("always", "annotations", "commands", "hasBindMounts")
_EXTENDED_CONDITIONS = _STANDARD_CONDITIONS + ("hostname", "env")

ENGINE_BIND_MOUNTS = frozenset((
    "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm", "/run/.containerenv",
    "/run/secrets", "/dev/termination-log",
))


class Condition(object):
    def __init__(self):
        self.always = None
        self.annotations = []       # [(key regex, value regex)]
        self.commands = []          # [regex]
        self.has_bind_mounts = None
        self.hostname = None        # regex
        self.env = []               # [(name, value regex)]


def _compile(pattern, where, compile_now=True):
    if not isinstance(pattern, str):
        raise PathError(where, "expected a regular expression string, found %s" % _json_text(pattern))
    if not compile_now:
        return _DeferredPattern(pattern)
    import re
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise PathError(where, "bad regex %s: %s" % (_json_text(pattern), exc))


class _DeferredPattern(object):
    """A regular expression compiled on first use, for policies loaded by
    calls that apply no rule: they never import re."""

    def __init__(self, pattern):
        self.pattern = pattern
        self._compiled = None

    def search(self, text):
        if self._compiled is None:
            import re
            self._compiled = re.compile(self.pattern)
        return self._compiled.search(text)


def parse_condition(data, extended, compile_now=True):
    """A `when` object -> Condition, or ValueError/PathError saying what is
    wrong. compile_now=False defers compiling (and checking) the regular
    expressions to their first use."""
    if not isinstance(data, dict):
        raise ValueError("expected an object of conditions, found %s" % _json_text(data))
    allowed = _EXTENDED_CONDITIONS if extended else _STANDARD_CONDITIONS
    for key in data:
        if key not in allowed:
            raise PathError("." + key, "unknown condition (conditions: %s)" % ", ".join(allowed))
    if not data:
        raise ValueError("at least one condition is needed (conditions: %s)" % ", ".join(allowed))
    cond = Condition()
    for key in ("always", "hasBindMounts"):
        if key in data:
            if not isinstance(data[key], bool):
                raise PathError("." + key, "expected true or false, found %s" % _json_text(data[key]))
    cond.always = data.get("always")
    cond.has_bind_mounts = data.get("hasBindMounts")
    for key, target in (("annotations", cond.annotations), ("env", cond.env)):
        if key not in data:
            continue
        if not isinstance(data[key], dict) or not data[key]:
            raise PathError("." + key, "expected a non-empty object of regular expressions")
        for name, value in data[key].items():
            left = name if key == "env" else _compile(name, ".%s[%s]" % (key, _json_text(name)), compile_now)
            target.append((left, _compile(value, ".%s.%s" % (key, name), compile_now)))
    if "commands" in data:
        commands = data["commands"]
        if not isinstance(commands, list) or not commands:
            raise PathError(".commands", "expected a non-empty list of regular expressions")
        cond.commands = [_compile(p, ".commands[%d]" % i, compile_now) for i, p in enumerate(commands)]
    if "hostname" in data:
        cond.hostname = _compile(data["hostname"], ".hostname", compile_now)
    return cond


def condition_matches(cond, spec):
    if cond is None:
        return True
    if cond.always is False:
        return False
    if cond.has_bind_mounts is not None and not (cond.has_bind_mounts and has_bind_mounts(spec)):
        return False
    if cond.annotations:
        annotations = spec.get("annotations")
        items = list(annotations.items()) if isinstance(annotations, dict) else []
        for key_re, value_re in cond.annotations:
            if not any(isinstance(v, str) and key_re.search(k) and value_re.search(v)
                       for k, v in items):
                return False
    if cond.commands:
        command = container_command(spec)
        if command is None or not any(p.search(command) for p in cond.commands):
            return False
    if cond.hostname is not None:
        hostname = spec.get("hostname")
        if not isinstance(hostname, str) or not cond.hostname.search(hostname):
            return False
    if cond.env:
        env = _env_values(spec)
        for name, value_re in cond.env:
            if name not in env or not value_re.search(env[name]):
                return False
    return True


def container_command(spec):
    """process.args[0] (exactly, as OCI hooks 1.0.0 match it), or None."""
    process = spec.get("process")
    args = process.get("args") if isinstance(process, dict) else None
    if not isinstance(args, list) or not args or not isinstance(args[0], str):
        return None
    return args[0]


def has_bind_mounts(spec):
    mounts = spec.get("mounts")
    for mount in mounts if isinstance(mounts, list) else []:
        if not isinstance(mount, dict):
            continue
        options = mount.get("options") if isinstance(mount.get("options"), list) else []
        is_bind = mount.get("type") == "bind" or "bind" in options or "rbind" in options
        destination = mount.get("destination")
        if is_bind and isinstance(destination, str) and _clean_path(destination) not in ENGINE_BIND_MOUNTS:
            return True
    return False


def _env_values(spec):
    """{NAME: VALUE} of the container's environment; the first entry wins."""
    process = spec.get("process")
    env = process.get("env") if isinstance(process, dict) else None
    values = {}
    for entry in env if isinstance(env, list) else []:
        if isinstance(entry, str):
            name, _, value = entry.partition("=")
            values.setdefault(name, value)
    return values


# ---------------------------------------------------------------------------
# 5. Edits: small functions over the spec dict, run as a pipeline
# ---------------------------------------------------------------------------
#
# Each edit takes (spec, value) -- value is what the rule asked for -- changes
# the spec in place, and returns a list of one-line descriptions of what it
# changed (empty: nothing). Edits are idempotent: running a rule twice changes
# nothing the second time (a json-patch "add" to a list end excepted: guard it
# with a "test"). A spec of a shape that cannot take the edit raises
# InterceptorError naming the key path.

NETWORKING_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


def edit_remove_mounts(spec, globs):
    """Remove the mounts whose destination matches one of the globs."""
    mounts = _get_list(spec, "mounts")
    changes = []
    for index in reversed(range(len(mounts))):
        destination = _mount_destination(mounts, index)
        if any(_glob_match(destination, g) for g in globs):
            del mounts[index]
            changes.append("mounts[%d] (%s): removed" % (index, destination))
    return changes[::-1]


def edit_add_mounts(spec, new_mounts):
    """Add mounts. A mount already at the same destination is replaced (in
    its place); a new one goes before the first mount nested under it, else
    at the end, so a parent is always mounted before its children."""
    if "mounts" not in spec or spec["mounts"] is None:
        spec["mounts"] = []
    mounts = _get_list(spec, "mounts")
    changes = []
    for new in new_mounts:
        destination = _clean_path(new["destination"])
        same = [i for i in range(len(mounts)) if _mount_destination(mounts, i) == destination]
        if len(same) == 1 and json_equal(mounts[same[0]], new):
            continue
        for index in reversed(same):
            del mounts[index]
        position = _insert_mount(mounts, _copy_json(new), same[0] if same else None)
        changes.append("mounts[%d] (%s): %s" % (position, destination, "replaced" if same else "added"))
    return changes


def edit_readonly_networking_mounts(spec, enabled):
    """Mounts at /etc/hosts, /etc/hostname, /etc/resolv.conf become read-only."""
    if not enabled:
        return []
    return _make_mounts_readonly(spec, lambda destination: destination in NETWORKING_FILES)


def edit_readonly_mounts(spec, globs):
    """Mounts whose destination matches one of the globs become read-only."""
    return _make_mounts_readonly(spec, lambda destination: any(_glob_match(destination, g) for g in globs))


def _make_mounts_readonly(spec, wanted):
    changes = []
    mounts = _get_list(spec, "mounts")
    for index in range(len(mounts)):
        destination = _mount_destination(mounts, index)
        if not wanted(destination):
            continue
        mount = mounts[index]
        options = mount.get("options")
        if options is not None and not (
                isinstance(options, list) and all(isinstance(o, str) for o in options)):
            raise InterceptorError("mounts[%d].options is not a list of strings" % index)
        new_options = make_readonly(options or [])
        if new_options != options:
            mount["options"] = new_options
            changes.append("mounts[%d] (%s): options %s -> %s"
                           % (index, destination, "(none)" if options is None else options, new_options))
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


def edit_env_defaults(spec, assignments):
    """env / --oi-env: set NAME=VALUE unless the container already has NAME."""
    return _set_env(spec, assignments, force=False)


def edit_env_force(spec, assignments):
    """env-force / --oi-env-force: set NAME=VALUE whatever the container had."""
    return _set_env(spec, assignments, force=True)


def edit_env_unset(spec, names):
    """env-unset: remove every entry of each NAME."""
    env = _process_env(spec, create=False)
    changes = []
    if env is None:
        return changes
    for name in names:
        while True:
            index = _find_env(env, name)
            if index is None:
                break
            del env[index]
            changes.append("process.env[%d]: removed %s" % (index, name))
    return changes


def _set_env(spec, assignments, force):
    if not assignments:
        return []
    env = _process_env(spec, create=True)
    if env is None:
        return []
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


def _process_env(spec, create):
    process = spec.get("process")
    if process is None:
        # No process: nothing will run from this config, so there is no
        # environment to give it (runc refuses such a config at start).
        return None
    if not isinstance(process, dict):
        raise InterceptorError("process is not an object")
    env = process.get("env")
    if env is None:
        if not create:
            return None
        env = process["env"] = []
    if not isinstance(env, list):
        raise InterceptorError("process.env is not a list")
    return env


def _find_env(env, name):
    """Index of the first NAME= (or bare NAME) entry, or None."""
    for index, entry in enumerate(env):
        if not isinstance(entry, str):
            raise InterceptorError("process.env[%d] is not a string" % index)
        if entry.partition("=")[0] == name:
            return index
    return None


def edit_hooks(spec, hooks):
    """Append hooks to their stages; a hook already there is not added again."""
    return _add_hooks(spec, hooks, prepend=False)


def edit_prepend_hooks(spec, hooks):
    """Put hooks first in their stages (as oci-add-hooks does); a hook
    already there is not added again."""
    return _add_hooks(spec, hooks, prepend=True)


def _add_hooks(spec, hooks, prepend):
    if "hooks" not in spec or spec["hooks"] is None:
        spec["hooks"] = {}
    all_hooks = spec["hooks"]
    if not isinstance(all_hooks, dict):
        raise InterceptorError("hooks is not an object")
    changes = []
    for stage in HOOK_STAGES:
        wanted = hooks.get(stage)
        if not wanted:
            continue
        present = all_hooks.get(stage)
        if present is None:
            present = all_hooks[stage] = []
        if not isinstance(present, list):
            raise InterceptorError("hooks.%s is not a list" % stage)
        new = []
        for hook in wanted:
            if not any(json_equal(hook, old) for old in present + new):
                new.append(_copy_json(hook))
        if new:
            if prepend:
                present[0:0] = new
            else:
                present.extend(new)
            for hook in new:
                changes.append("hooks.%s: %s %s" % (stage, "prepended" if prepend else "added", hook["path"]))
    return changes


def edit_annotations(spec, annotations):
    """Set annotations; a null value removes one."""
    current = spec.get("annotations")
    if current is None:
        if all(value is None for value in annotations.values()):
            return []
        current = spec["annotations"] = {}
    if not isinstance(current, dict):
        raise InterceptorError("annotations is not an object")
    changes = []
    for key, value in annotations.items():
        if value is None:
            if key in current:
                del current[key]
                changes.append("annotations: removed %s" % key)
        elif current.get(key) != value:
            current[key] = value
            changes.append("annotations: set %s" % key)
    return changes


# systemd as PID 1 needs, without --privileged (what oci-systemd-hook did
# from a prestart hook, and Podman does with --systemd):
#   - tmpfs at /run and /run/lock (Debian's systemd treats a failed /run/lock
#     mount as fatal), /tmp and /var/log/journal, and /var/lib/systemd when
#     the root is read-only (logind needs it);
#   - container=oci (else systemd believes it runs in a VM) and container_uuid;
#   - its own cgroup, writable, in a cgroup namespace: on cgroup v1 the
#     container's name=systemd subtree bind-mounted at /sys/fs/cgroup/systemd,
#     on v2 the /sys/fs/cgroup mount read-write. The host's tree is never
#     made writable.
# No capability or privilege is added.

SYSTEMD_INIT_COMMANDS = ("/sbin/init", "/usr/sbin/init", "/usr/local/sbin/init")
SYSTEMD_ANNOTATION = "oci-interceptor.systemd"
SYSTEMD_SWITCH = "OCI_INTERCEPTOR_SYSTEMD"
SYSTEMD_TMPFS = (
    ("/run", ["nosuid", "nodev", "strictatime", "mode=755", "size=65536k"]),
    ("/run/lock", ["nosuid", "nodev", "noexec", "mode=1777", "size=5120k"]),
    ("/tmp", ["nosuid", "nodev", "mode=1777"]),
    ("/var/log/journal", ["nosuid", "nodev", "mode=2755"]),
)
SYSTEMD_READONLY_ROOT_TMPFS = (("/var/lib/systemd", ["nosuid", "nodev", "mode=755"]),)
SIGRTMIN_PLUS_3 = "37"     # what systemd halts on (glibc's SIGRTMIN is 34)


class EditContext(object):
    """Facts an edit may need beyond the spec: the container id, and the
    host's cgroup version (read from /proc/self/mountinfo on first use)."""

    def __init__(self, container_id=None, cgroup_version=None):
        self.container_id = container_id
        self._cgroup_version = cgroup_version

    @property
    def cgroup_version(self):
        if self._cgroup_version is None:
            self._cgroup_version = host_cgroup_version()
        return self._cgroup_version


def host_cgroup_version():
    """2 when /sys/fs/cgroup is the unified hierarchy, else 1 (legacy or hybrid)."""
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split(" - ", 1)
                if len(fields) == 2 and fields[0].split()[4] == "/sys/fs/cgroup":
                    return 2 if fields[1].split()[0] == "cgroup2" else 1
    except OSError:
        pass
    return 1


def is_systemd_command(spec):
    """Podman's test: process.args[0] (after a leading `/bin/sh -c`) is an
    init path or ends in /systemd."""
    process = spec.get("process")
    args = process.get("args") if isinstance(process, dict) else None
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        return False
    if len(args) > 2 and args[0] == "/bin/sh" and args[1] == "-c":
        args = args[2:]
    return args[0] in SYSTEMD_INIT_COMMANDS or args[0].rpartition("/")[2] == "systemd"


def systemd_disabled_by_container(spec):
    env = _env_values(spec)
    return (env.get("oci-systemd-hook", "").lower() == "disabled"
            or env.get(SYSTEMD_SWITCH, "").lower() in ("off", "disabled", "false", "0", "no"))


def systemd_cgroup_path(cgroups_path, container_id):
    """The container's cgroup, relative to a hierarchy's root, from
    linux.cgroupsPath: cgroupfs style ("/docker/ID", "ID") or systemd style
    ("system.slice:docker:ID" -> "/system.slice/docker-ID.scope")."""
    if not cgroups_path:
        return "/" + (container_id or "")
    if ":" in cgroups_path and not cgroups_path.startswith("/"):
        slice_, prefix, name = (cgroups_path.split(":", 2) + ["", ""])[:3]
        unit = name if name.endswith(".slice") else "%s-%s.scope" % (prefix, name) if prefix else name + ".scope"
        return _expand_slice(slice_ or "-.slice") + "/" + unit
    return "/" + cgroups_path.strip("/")


def _expand_slice(slice_):
    """"a-b-c.slice" -> "/a.slice/a-b.slice/a-b-c.slice"; "-.slice" -> ""."""
    if slice_ in ("", "-.slice"):
        return ""
    name = slice_[:-len(".slice")] if slice_.endswith(".slice") else slice_
    parts = name.split("-")
    return "".join("/" + "-".join(parts[:i + 1]) + ".slice" for i in range(len(parts)))


def edit_systemd(spec, mode, context):
    """systemd / --oi-systemd: auto, always or off (see above)."""
    if mode == "off" or systemd_disabled_by_container(spec):
        return []
    if mode == "auto" and not is_systemd_command(spec):
        return []
    if "mounts" not in spec or spec["mounts"] is None:
        spec["mounts"] = []
    mounts = _get_list(spec, "mounts")
    changes = _systemd_cgroups(spec, mounts, context)
    present = {_mount_destination(mounts, i) for i in range(len(mounts))}
    tmpfs = SYSTEMD_TMPFS
    root = spec.get("root")
    if isinstance(root, dict) and root.get("readonly") is True:
        tmpfs += SYSTEMD_READONLY_ROOT_TMPFS
    for destination, options in tmpfs:
        if destination not in present:
            mount = {"destination": destination, "type": "tmpfs", "source": "tmpfs", "options": list(options)}
            position = _insert_mount(mounts, mount)
            changes.append("mounts[%d] (%s): added tmpfs" % (position, destination))
    env_changes = _set_env(spec, ["container=oci", "container_uuid=" + _container_uuid(context.container_id)],
                           force=False)
    changes.extend(env_changes)
    changes.extend(edit_annotations(spec, {SYSTEMD_ANNOTATION: "true"}))
    return changes


def _container_uuid(container_id):
    """32 hex digits, as systemd reads container_uuid: a hex container id's
    first 32, else a digest of the id."""
    cid = container_id or ""
    if len(cid) >= 32 and all(c in "0123456789abcdef" for c in cid[:32]):
        return cid[:32]
    import hashlib
    return hashlib.sha256(cid.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _systemd_cgroups(spec, mounts, context):
    changes = []
    linux = spec.get("linux")
    if linux is None:
        linux = spec["linux"] = {}
    if not isinstance(linux, dict):
        raise InterceptorError("linux is not an object")
    namespaces = linux.get("namespaces")
    if namespaces is None:
        namespaces = linux["namespaces"] = []
    if not isinstance(namespaces, list):
        raise InterceptorError("linux.namespaces is not a list")
    if not any(isinstance(n, dict) and n.get("type") == "cgroup" for n in namespaces):
        namespaces.append({"type": "cgroup"})
        changes.append("linux.namespaces: added cgroup")
    cgroup_index = None
    for index in range(len(mounts)):
        if _mount_destination(mounts, index) == "/sys/fs/cgroup":
            cgroup_index = index
    if cgroup_index is None:
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
        cgroup_index = len(mounts) - 1
        changes.append("mounts[%d] (/sys/fs/cgroup): added cgroup" % cgroup_index)
    if context.cgroup_version == 2:
        # In its own cgroup namespace the container sees only its own subtree.
        mount = mounts[cgroup_index]
        options = [o for o in (mount.get("options") or []) if o not in ("ro", "rw")] + ["rw"]
        if mount.get("options") != options:
            mount["options"] = options
            changes.append("mounts[%d] (/sys/fs/cgroup): read-write (cgroup v2, own namespace)" % cgroup_index)
        return changes
    if "/sys/fs/cgroup/systemd" in {_mount_destination(mounts, i) for i in range(len(mounts))}:
        return changes
    cgroups_path = linux.get("cgroupsPath")
    path = systemd_cgroup_path(cgroups_path if isinstance(cgroups_path, str) else None, context.container_id)
    mounts.insert(cgroup_index + 1, {"destination": "/sys/fs/cgroup/systemd", "type": "bind",
                                     "source": "/sys/fs/cgroup/systemd" + path,
                                     "options": ["rbind", "rw", "nosuid", "noexec", "nodev"]})
    changes.append("mounts[%d] (/sys/fs/cgroup/systemd): own name=systemd cgroup %s, read-write"
                   % (cgroup_index + 1, path))
    return changes


TERM_SIGNALS = ("TERM", "SIGTERM", "15")


def systemd_kill_args(call, runtime, runtime_args):
    """`kill ID TERM` (SIGTERM, 15, or no signal: runc's default) of a
    container created in systemd mode becomes `kill ID 37`: systemd as PID 1
    answers SIGTERM by re-executing itself and keeps running, while
    SIGRTMIN+3 halts it cleanly. Other signals and containers pass through."""
    args = call.command_args
    positional = [i for i, a in enumerate(args) if not a.startswith("-")]
    if not positional:
        return runtime_args
    signal_index = positional[1] if len(positional) > 1 else None
    signal = args[signal_index] if signal_index is not None else "TERM"
    if signal.upper() not in TERM_SIGNALS:
        return runtime_args
    global_args = runtime_args[:len(runtime_args) - len(args) - 1]
    if not created_in_systemd_mode(runtime, global_args, args[positional[0]]):
        return runtime_args
    new_args = list(args)
    if signal_index is None:
        new_args.append(SIGRTMIN_PLUS_3)
    else:
        new_args[signal_index] = SIGRTMIN_PLUS_3
    return global_args + [call.command] + new_args


def created_in_systemd_mode(runtime, global_args, container_id):
    """Does the container's config carry our systemd mark? Asked of the
    runtime (`state` gives the annotations, or the bundle to read them from)."""
    import subprocess
    keep, skip = [], False
    for arg in global_args:       # no --log: a failed lookup must not log an error
        if skip:
            skip = False
            continue
        name = arg.lstrip("-").partition("=")[0]
        if name in ("log", "l", "log-format"):
            skip = "=" not in arg
            continue
        keep.append(arg)
    try:
        result = subprocess.run([runtime] + keep + ["state", container_id], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30)
        state = parse_json(result.stdout) if result.returncode == 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return False
    if not isinstance(state, dict):
        return False
    annotations = state.get("annotations")
    if not isinstance(annotations, dict) and isinstance(state.get("bundle"), str):
        try:
            spec = parse_json(read_config(state["bundle"] + "/config.json", follow_symlinks=True)[0])
            annotations = spec.get("annotations") if isinstance(spec, dict) else None
        except (InterceptorError, ValueError):
            return False
    return isinstance(annotations, dict) and annotations.get(SYSTEMD_ANNOTATION) == "true"


def edit_merge_patch(spec, patch):
    """RFC 7386 JSON merge patch over the whole config."""
    changes = []
    _merge_into(spec, patch, "", changes)
    return changes


def _merge_into(target, patch, where, changes):
    for key, value in patch.items():
        path = where + "/" + _escape_pointer_token(key)
        if value is None:
            if key in target:
                del target[key]
                changes.append("merge-patch: removed %s" % path)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
                changes.append("merge-patch: set %s" % path)
            _merge_into(target[key], value, path, changes)
        elif key not in target or not json_equal(target[key], value):
            target[key] = _copy_json(value)
            changes.append("merge-patch: set %s" % path)


def edit_json_patch(spec, operations):
    """RFC 6902 JSON patch: all operations apply, or none (a failed "test"
    or a missing path refuses the container)."""
    document = _copy_json(spec)
    for index, op in enumerate(operations):
        try:
            document = apply_patch_operation(document, op)
        except ValueError as exc:
            raise InterceptorError("json-patch[%d] (%s %s): %s" % (index, op["op"], op["path"], exc))
    if not isinstance(document, dict):
        raise InterceptorError("json-patch: the result is not a JSON object")
    if json_equal(document, spec):
        return []
    spec.clear()
    spec.update(document)
    return ["json-patch: %s %s" % (op["op"], op["path"]) for op in operations if op["op"] != "test"]


class Action(object):
    """A key a rule may have: how its value is checked, which edit applies
    it, and whether the edit needs the EditContext too."""

    def __init__(self, key, validate, edit, help, uses_context=False):
        self.key = key
        self.validate = validate
        self.edit = edit
        self.help = help
        self.uses_context = uses_context


# The pipeline: within a rule, actions apply in this order.
ACTIONS = (
    Action("remove-mounts", _valid_destination_globs, edit_remove_mounts,
           "[GLOB, ...]: remove the mounts whose destination matches."),
    Action("add-mounts", _valid_mounts, edit_add_mounts,
           "[MOUNT, ...]: OCI mount objects. One at the same destination is replaced; "
           "parents stay before children."),
    Action("readonly-networking-mounts", _valid_bool, edit_readonly_networking_mounts,
           "true: as --oi-readonly-networking-mounts."),
    Action("readonly-mounts", _valid_destination_globs, edit_readonly_mounts,
           "[GLOB, ...]: mounts whose destination matches become read-only."),
    Action("env", _valid_env_list, edit_env_defaults,
           "[NAME=VALUE, ...]: set unless the container has NAME."),
    Action("env-force", _valid_env_list, edit_env_force,
           "[NAME=VALUE, ...]: set whatever the container had."),
    Action("env-unset", _valid_name_list, edit_env_unset,
           "[NAME, ...]: remove these variables."),
    Action("prepend-hooks", _valid_hooks, edit_prepend_hooks,
           "{STAGE: [HOOK, ...]}: put hooks first in their stage (prestart, createRuntime, "
           "createContainer, startContainer, poststart, poststop)."),
    Action("hooks", _valid_hooks, edit_hooks,
           "{STAGE: [HOOK, ...]}: add hooks at the end of their stage. A hook already "
           "present is never added twice."),
    Action("systemd", _valid_systemd_mode, edit_systemd,
           "\"auto\", \"always\" or \"off\": as --oi-systemd, for the containers the rule selects.",
           uses_context=True),
    Action("annotations", _valid_annotations, edit_annotations,
           "{KEY: VALUE, ...}: set annotations; null removes one."),
    Action("merge-patch", _valid_merge_patch, edit_merge_patch,
           "{...}: an RFC 7386 JSON merge patch of the whole config."),
    Action("json-patch", _valid_json_patch, edit_json_patch,
           "[OP, ...]: an RFC 6902 JSON patch of the whole config; a failed \"test\" "
           "refuses the container."),
)


def matching_rules(spec, policy):
    """The rules whose condition matches the config as the engine wrote it."""
    return [rule for rule in policy.rules if condition_matches(rule.when, spec)]


def apply_rules(spec, rules, context=None):
    """Apply each rule's actions in pipeline order; return the changes, each
    prefixed with the rule's name."""
    if not isinstance(spec, dict):
        raise InterceptorError("the config is not a JSON object")
    context = context or EditContext()
    changes = []
    for rule in rules:
        for action in ACTIONS:
            if action.key in rule.actions:
                value = rule.actions[action.key]
                try:
                    if action.uses_context:
                        done = action.edit(spec, value, context)
                    else:
                        done = action.edit(spec, value)
                except InterceptorError as exc:
                    raise InterceptorError("rule %s: %s: %s" % (rule.name, action.key, exc))
                changes.extend("%s: %s" % (rule.name, change) for change in done)
    return changes


def _get_list(spec, key):
    value = spec.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InterceptorError("%s is not a list" % key)
    return value


def _mount_destination(mounts, index):
    mount = mounts[index]
    if not isinstance(mount, dict):
        raise InterceptorError("mounts[%d] is not an object" % index)
    destination = mount.get("destination")
    return _clean_path(destination) if isinstance(destination, str) else None


def _clean_path(path):
    """'/etc//hosts/' -> '/etc/hosts', as runtimes clean a destination."""
    import posixpath
    return posixpath.normpath("/" + path.lstrip("/")) if path else path


def _is_under(path, parent):
    return path is not None and path != parent and (parent == "/" or path.startswith(parent + "/"))


def _insert_mount(mounts, mount, preferred=None):
    """Insert mount at `preferred` (or at the end), but before the first
    mount nested under it, so a parent is always mounted before its
    children; return the position."""
    destination = _clean_path(mount["destination"])
    position = len(mounts) if preferred is None else preferred
    for index in range(len(mounts)):
        if _is_under(_mount_destination(mounts, index), destination):
            position = min(position, index)
            break
    mounts.insert(position, mount)
    return position


def _glob_match(destination, pattern):
    import fnmatch
    return destination is not None and fnmatch.fnmatchcase(destination, _clean_path(pattern))


# ---------------------------------------------------------------------------
# 6. JSON: raw parsing and writing, equality, pointers
# ---------------------------------------------------------------------------
#
# A config is parsed into plain dicts and lists, which keep key order.
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


class _ScanContext(object):
    """The settings the standard library's C JSON scanner reads from a
    decoder. Using the scanner directly parses exactly as json.loads does,
    without importing the json package (and re, which it imports) on every
    call: that import alone costs about half an interpreter start."""

    strict = True
    object_hook = None
    object_pairs_hook = staticmethod(_object_without_duplicates)
    parse_float = RawNumber
    parse_int = int
    parse_constant = staticmethod(_refuse_constant)


_scanner = None


def _json_scanner():
    global _scanner
    if _scanner is None:
        try:
            from _json import make_scanner
        except ImportError:  # pragma: no cover - interpreters without _json
            from json.scanner import make_scanner
        _scanner = make_scanner(_ScanContext())
    return _scanner


_JSON_WHITESPACE = " \t\n\r"


def parse_json(raw):
    """Bytes -> a JSON value, or ValueError with a one-line reason: the
    same value and the same messages as json.loads."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("invalid UTF-8 at byte %d" % exc.start)
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    if not text.startswith("\ufeff"):
        try:
            value, end = _json_scanner()(text, start)
        except RecursionError:
            raise ValueError("nested too deeply")
        except (StopIteration, SystemError):
            pass        # not valid JSON: json.loads below says why
        except ValueError as exc:
            if not hasattr(exc, "lineno"):
                raise   # ours: a duplicate key, NaN, Infinity
        else:
            if not text[end:].strip(_JSON_WHITESPACE):
                return value
    # Invalid JSON (the C scanner reports most errors only once the json
    # package is loaded): let json.loads find the error and word it.
    import json
    try:
        return json.loads(text, object_pairs_hook=_object_without_duplicates,
                          parse_float=RawNumber, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError("%s: line %d column %d" % (exc.msg, exc.lineno, exc.colno))
    except RecursionError:
        raise ValueError("nested too deeply")


def parse_config(raw, path):
    """Bytes of a config.json -> dict, or InterceptorError naming the problem."""
    try:
        spec = parse_json(raw)
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
    encode_basestring, encode_basestring_ascii = _string_encoders()
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


def _string_encoders():
    try:
        from _json import encode_basestring, encode_basestring_ascii
    except ImportError:  # pragma: no cover - interpreters without _json
        from json.encoder import py_encode_basestring as encode_basestring
        from json.encoder import py_encode_basestring_ascii as encode_basestring_ascii
    return encode_basestring, encode_basestring_ascii


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


def _json_text(value):
    """A JSON value shown in a message, shortened."""
    try:
        text = serialize_config(value, Layout(None, ", ", ": ")).decode("utf-8", "replace")
    except InterceptorError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value):
    from decimal import Decimal
    return Decimal(value.text) if isinstance(value, RawNumber) else value


def json_equal(a, b):
    """Equality as JSON means it: true is not 1, 1 equals 1.0, order of
    object members does not matter, order of array items does."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    numbers = (int, float, RawNumber)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return _number(a) == _number(b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return len(a) == len(b) and all(k in b and json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return False


def _copy_json(value):
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy_json(v) for v in value]
    return value


def parse_pointer(pointer):
    """An RFC 6901 JSON pointer -> list of reference tokens."""
    if not isinstance(pointer, str):
        raise ValueError("expected a JSON pointer string, found %s" % _json_text(pointer))
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError("a JSON pointer starts with '/': %s" % _json_text(pointer))
    tokens = pointer[1:].split("/")
    for token in tokens:
        if "~" in token.replace("~0", "").replace("~1", ""):
            raise ValueError("bad escape in JSON pointer %s" % _json_text(pointer))
    return [t.replace("~1", "/").replace("~0", "~") for t in tokens]


def _escape_pointer_token(token):
    return token.replace("~", "~0").replace("/", "~1")


def _list_index(token, length, allow_end):
    if allow_end and token == "-":
        return length
    if not token or any(c not in "0123456789" for c in token) or (token != "0" and token[0] == "0"):
        raise ValueError("%s is not an array index" % _json_text(token))
    index = int(token)
    if index > length or (index == length and not allow_end):
        raise ValueError("array index %d is out of range" % index)
    return index


def _resolve_parent(document, tokens):
    """The container holding the last token, walking the ones before it."""
    node = document
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise ValueError("no member %s" % _json_text(token))
            node = node[token]
        elif isinstance(node, list):
            node = node[_list_index(token, len(node), False)]
        else:
            raise ValueError("cannot descend into %s" % _json_text(node))
    return node


def _locate(document, tokens):
    """(container, key or index) of the existing value a pointer names."""
    parent = _resolve_parent(document, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise ValueError("no member %s" % _json_text(last))
        return parent, last
    if isinstance(parent, list):
        return parent, _list_index(last, len(parent), False)
    raise ValueError("cannot descend into %s" % _json_text(parent))


def pointer_get(document, pointer):
    tokens = parse_pointer(pointer)
    if not tokens:
        return document
    parent, key = _locate(document, tokens)
    return parent[key]


def apply_patch_operation(document, op):
    """One RFC 6902 operation; returns the (possibly new) document."""
    kind = op["op"]
    if kind == "test":
        if not json_equal(pointer_get(document, op["path"]), op["value"]):
            raise ValueError("test failed")
        return document
    if kind == "copy":
        return _patch_add(document, op["path"], _copy_json(pointer_get(document, op["from"])))
    if kind == "move":
        if op["from"] == op["path"]:
            pointer_get(document, op["from"])
            return document
        value = pointer_get(document, op["from"])
        document = _patch_remove(document, op["from"])
        return _patch_add(document, op["path"], value)
    if kind == "remove":
        return _patch_remove(document, op["path"])
    if kind == "replace":
        document = _patch_remove(document, op["path"]) if op["path"] else None
        return _patch_add(document, op["path"], _copy_json(op["value"]))
    return _patch_add(document, op["path"], _copy_json(op["value"]))


def _patch_add(document, pointer, value):
    tokens = parse_pointer(pointer)
    if not tokens:
        return value
    parent = _resolve_parent(document, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(last, len(parent), True), value)
    else:
        raise ValueError("cannot add to %s" % _json_text(parent))
    return document


def _patch_remove(document, pointer):
    tokens = parse_pointer(pointer)
    if not tokens:
        raise ValueError("cannot remove the whole document")
    parent, key = _locate(document, tokens)
    del parent[key]
    return document


# ---------------------------------------------------------------------------
# 7. Bundle I/O: read, edit, write atomically
# ---------------------------------------------------------------------------


class ReadError(InterceptorError):
    def __init__(self, message, errno=None):
        InterceptorError.__init__(self, message)
        self.errno = errno


def read_config(path, follow_symlinks=False):
    """Read a file: (raw bytes, os.stat_result).

    A bundle's config.json that is a symlink is refused (we would replace the
    link, not its target); anything that is not a regular file is refused
    too (a FIFO would block forever). Uses posix only: a call that merely
    looks for the default config file stays cheap.
    """
    import errno
    flags = posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC
    if not follow_symlinks:
        flags |= posix.O_NOFOLLOW
    try:
        fd = posix.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise ReadError("cannot read %s: it is a symlink; refusing to edit through it" % path)
        raise ReadError("cannot read %s: %s" % (path, exc.strerror), exc.errno)
    try:
        st = posix.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise ReadError("cannot read %s: not a regular file" % path)
        chunks = []
        while True:
            chunk = posix.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), st
    except OSError as exc:
        raise ReadError("cannot read %s: %s" % (path, exc.strerror), exc.errno)
    finally:
        posix.close(fd)


_TEMP_MARK = ".oi-tmp-"


def write_atomically(path, data, st=None, mode=0o600):
    """Replace path with data: a temp file in the same directory, written,
    given the original's mode and owner (st; without it, `mode` and our own
    owner), fsynced, then renamed over path. Either the complete old or the
    complete new file is there, never a mix."""
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
            if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                os.fchown(fd, st.st_uid, st.st_gid)
            os.fchmod(fd, st.st_mode & 0o7777 if st is not None else mode)
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


class EditResult(object):
    def __init__(self, path, raw, stat, spec, rules, changes, new_raw, parsed):
        self.path = path
        self.raw = raw              # the config as read
        self.stat = stat            # its os.stat_result
        self.spec = spec            # after the edits
        self.rules = rules          # the rules that matched
        self.changes = changes
        self.new_raw = new_raw      # what is (or would be) written; None: unchanged
        self.parsed = parsed        # PRETTY form before edits, when asked for


def plan_edit(call, policy, keep_parsed=False):
    """Read the call's config and apply the matching rules in memory.
    keep_parsed: also keep the config as parsed, before the edits, in PRETTY
    layout (for debug output and dry runs)."""
    path = call.config_path
    raw, st = read_config(path)
    spec = parse_config(raw, path)
    parsed = serialize_config(spec, PRETTY) if keep_parsed else None
    rules = matching_rules(spec, policy)
    changes = apply_rules(spec, rules, EditContext(call.container_id))
    new_raw = None
    if changes:
        new_raw = serialize_config(spec, Layout.of(raw))
        if new_raw == raw:
            new_raw = None
    return EditResult(path, raw, st, spec, rules, changes, new_raw, parsed)


def edit_bundle(call, policy):
    """Edit the call's config in place (only when something changed), and
    keep debug copies if asked. Returns the EditResult."""
    result = plan_edit(call, policy, keep_parsed=policy.write_debug_output)
    if result.new_raw is not None:
        write_atomically(result.path, result.new_raw, result.stat)
    if policy.write_debug_output:
        name = debug_file_stem(result.spec.get("hostname"), call.container_id)
        files = [(name + "_original.json", result.raw), (name + "_parsed.json", result.parsed)]
        if result.changes:
            files.append((name + "_modified.json", serialize_config(result.spec, PRETTY)))
        write_debug_files(policy.debug_output_dir, files)
    return result


# ---------------------------------------------------------------------------
# 8. Reporting: errors to stderr and the runtime's --log; debug output
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
    quoted = _string_encoders()[1](message)
    if log_format == "json":
        return '{"level":"error","msg":%s,"time":"%s"}\n' % (quoted, _utc_timestamp())
    return 'time="%s" level=error msg=%s\n' % (_utc_timestamp(), quoted)


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


_warned = set()


def report_warning(message):
    """One line to stderr; the same warning only once per call."""
    if message in _warned:
        return
    _warned.add(message)
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
# 9. Exec and main: dry run, config check, exec
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
        posix.execv(runtime, [runtime] + runtime_args)
    except OSError as exc:
        raise InterceptorError("cannot execute runtime %s: %s" % (runtime, exc.strerror))


def register(opts, argv0):
    """--oi-register ENGINE: returns the text to print."""
    program = os.path.abspath(opts.register_path or argv0 or PROG)
    name = opts.register_name or PROG
    if opts.register == "docker":
        return register_docker(program, name, bool(opts.register_default),
                               opts.daemon_json or DOCKER_DAEMON_JSON)
    if opts.register == "podman":
        return PODMAN_SNIPPET.format(name=name, path=program,
                                     default="" if opts.register_default else "# ")
    return CONTAINERD_SNIPPET.format(name=name, path=program,
                                     default="" if opts.register_default else "# ")


PODMAN_SNIPPET = """\
# Add to /etc/containers/containers.conf (or a file in containers.conf.d/):
[engine]
{default}runtime = "{name}"

[engine.runtimes]
{name} = ["{path}"]

# Then: podman --runtime {name} run ... (or every container, with runtime = "{name}").
# Policy comes from /etc/oci-interceptor/config.json.
"""

CONTAINERD_SNIPPET = """\
# Add to /etc/containerd/config.toml (version = 2), then restart containerd:
[plugins."io.containerd.grpc.v1.cri".containerd]
  {default}default_runtime_name = "{name}"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
    BinaryName = "{path}"

# For Kubernetes, a RuntimeClass whose handler is this runtime:
# apiVersion: node.k8s.io/v1
# kind: RuntimeClass
# metadata:
#   name: {name}
# handler: {name}
# Policy comes from /etc/oci-interceptor/config.json.
"""


def register_docker(program, name, make_default, daemon_json):
    """Merge a runtime entry into daemon.json: everything else is kept, the
    old file is backed up, and a second run changes nothing."""
    import errno
    if name in ("runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"):
        raise UsageError("--oi-register-name %s: Docker reserves that name" % name)
    try:
        raw, st = read_config(daemon_json, follow_symlinks=True)
    except ReadError as exc:
        if exc.errno != errno.ENOENT:
            raise
        raw, st = None, None
    data = {}
    if raw is not None and raw.strip():
        try:
            data = parse_json(raw)
        except ValueError as exc:
            raise InterceptorError("cannot parse %s: %s" % (daemon_json, exc))
    if not isinstance(data, dict) or not isinstance(data.get("runtimes", {}), dict):
        raise InterceptorError("%s: expected an object with a \"runtimes\" object" % daemon_json)
    changes = []
    runtimes = data.setdefault("runtimes", {})
    entry = runtimes.get(name)
    if not isinstance(entry, dict):
        runtimes[name] = {"path": program}
        changes.append("added runtime %s: %s" % (name, program))
    elif entry.get("path") != program:
        changes.append("runtime %s: path %s -> %s" % (name, entry.get("path"), program))
        entry["path"] = program
    if make_default and data.get("default-runtime") != name:
        changes.append("default-runtime: %s -> %s" % (data.get("default-runtime", "(runc)"), name))
        data["default-runtime"] = name
    if not changes:
        return "%s: runtime %s is already registered; nothing changed\n" % (daemon_json, name)
    layout = Layout.of(raw) if raw and raw.strip() else Layout("    ", ",", ": ", True)
    new_raw = serialize_config(data, layout)
    lines = []
    if st is None:
        directory = os.path.dirname(daemon_json)
        if directory:
            os.makedirs(directory, exist_ok=True)
        write_atomically(daemon_json, new_raw, mode=0o644)
        lines.append("%s: created" % daemon_json)
    else:
        import time
        stamp = "%s.bak-%s" % (daemon_json, time.strftime("%Y%m%d%H%M%S"))
        for attempt in range(100):
            backup = stamp if attempt == 0 else "%s.%d" % (stamp, attempt)
            try:
                fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
                break
            except FileExistsError:
                continue
        else:
            raise InterceptorError("cannot write a backup of %s" % daemon_json)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        finally:
            os.close(fd)
        write_atomically(daemon_json, new_raw, st)
        lines.append("%s: updated (backup: %s)" % (daemon_json, backup))
    lines.extend("  " + change for change in changes)
    lines.append("Restart Docker to apply: systemctl restart docker")
    lines.append("Then: docker run --runtime %s ...%s" % (
        name, "" if make_default else "  (or register with --oi-register-default)"))
    return "\n".join(lines) + "\n"


def remember_passthrough(argv0, opts, call, policy):
    """As root, record in STATE_DIR what this call, which edits nothing, made
    of the config file, with the identity (device, inode, size, times, owner,
    mode) of the file as it was read -- the stat of the descriptor the policy
    came from -- and of its directory as it was before the file was opened.
    Nothing is recorded unless both still are exactly that: a rename or an
    edit in between would pair another file with this file's decision. While
    both stay unchanged, the .pyz's shell preamble execs that runtime for
    such calls without starting Python; any change to the file, its
    directory, the program's version or name sends the call here again.
    Best effort: a failure here never fails the call."""
    path = policy.config_path
    name = (argv0 or "").rpartition("/")[2]
    if (posix.geteuid() != 0 or not path or not path.startswith("/") or call.edits_config
            or policy.write_debug_output or policy.uses_systemd
            or any(getattr(opts, f.dest) not in (None, []) for f in FLAGS if f.kind != "action")
            or "\n" in path or "\n" in policy.runtime_path or policy.runtime_path.strip() != policy.runtime_path
            or not name or debug_file_stem(name, "") != name or len(name) > 128
            or policy.config_stat is None or policy.config_dir_stat is None):
        return
    state_dir = getenv(STATE_DIR_ENV) or STATE_DIR
    try:
        signature = _stat_signature(policy.config_stat)
        if _stat_signature(posix.lstat(path)) != signature:
            return          # a symlink (the preamble could not check its target), or changed since
        directory = path.rpartition("/")[0] or "/"
        dir_signature = _stat_signature(policy.config_dir_stat)
        if _stat_signature(posix.stat(directory)) != dir_signature:
            return          # changed while the file was read (a rename over it, perhaps)
        content = "%s %s\n%s\n%s\n%s\n%s\n" % (
            PASSTHROUGH_MAGIC, __version__, path, signature, dir_signature, policy.runtime_path)
        try:
            posix.mkdir(state_dir, 0o700)
        except FileExistsError:
            pass
        dst = posix.lstat(state_dir)
        if (dst.st_mode & _S_IFMT) != _S_IFDIR or dst.st_uid != 0 or dst.st_mode & 0o7777 != 0o700:
            return
        target = "%s/passthrough-%s" % (state_dir, name)
        try:
            if read_config(target)[0] == content.encode("utf-8", "surrogateescape"):
                return
        except ReadError:
            pass
        write_atomically(target, content.encode("utf-8", "surrogateescape"), mode=0o600)
    except (OSError, InterceptorError):
        pass


def _stat_signature(st):
    """What `stat -c '%d:%i:%s:%.9Y:%.9Z:%u:%g:%a'` prints for a file."""
    return "%d:%d:%d:%d.%09d:%d.%09d:%d:%d:%o" % (
        st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns // 10 ** 9, st.st_mtime_ns % 10 ** 9,
        st.st_ctime_ns // 10 ** 9, st.st_ctime_ns % 10 ** 9, st.st_uid, st.st_gid, st.st_mode & 0o7777)


def check_config_report(policy):
    """The --oi-check-config summary."""
    lines = ["%s %s: configuration is valid" % (PROG, __version__)]
    lines.append("config file: %s" % (policy.config_path or "(none)"))
    lines.append("profile: %s" % (policy.profile or "(none)"))
    try:
        runtime = find_runtime(policy.runtime_path)
    except InterceptorError as exc:
        runtime = "NOT FOUND (%s)" % exc
    lines.append("runtime: %s -> %s" % (policy.runtime_path, runtime))
    lines.append("debug output: %s" % (policy.debug_output_dir if policy.write_debug_output else "off"))
    lines.append("rules: %d" % len(policy.rules))
    for rule in policy.rules:
        lines.append("  %s: when %s; %s" % (rule.name, "always" if rule.when is None else "conditions",
                                             ", ".join(a.key for a in ACTIONS if a.key in rule.actions)))
    for path in policy.files[1 if policy.config_path else 0:]:
        lines.append("hook file: %s" % path)
    return "\n".join(lines) + "\n"


def dry_run_report(call, policy, runtime, runtime_args):
    """The --oi-dry-run report: what this call would do."""
    lines = ["%s dry run: nothing is written or executed" % PROG]
    if call.edits_config:
        result = plan_edit(call, policy, keep_parsed=True)
        lines.append("config: %s" % result.path)
        lines.append("rules matched: %s" % (", ".join(r.name for r in result.rules) or "(none)"))
        for change in result.changes:
            lines.append("  " + change)
        if result.new_raw is None:
            lines.append("config.json would not change")
        else:
            import difflib
            before = result.parsed.decode("utf-8", "replace").splitlines()
            after = serialize_config(result.spec, PRETTY).decode("utf-8", "replace").splitlines()
            lines.extend(difflib.unified_diff(before, after, result.path, result.path + " (edited)",
                                              lineterm=""))
    else:
        lines.append("%s does not edit the config" % (call.command or "this call"))
        if call.command == "kill" and policy.uses_systemd:
            runtime_args = systemd_kill_args(call, runtime, runtime_args)
    lines.append("would exec: %s" % " ".join(shell_quote(a) for a in [runtime] + runtime_args))
    return "\n".join(lines) + "\n"


def run(argv0, args):
    """Handle one call. Returns an exit status only when the runtime is not
    executed (help, version, check, dry run, errors)."""
    call = None
    try:
        args = adapt_drop_in(argv0, args)
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
        if opts.register:
            sys.stdout.write(register(opts, argv0))
            return 0
        call = parse_runtime_call(runtime_args)
        editing = call.edits_config or opts.dry_run or opts.action == "check-config"
        policy = load_policy(opts, argv0, complete=editing)
        if opts.action == "check-config":
            sys.stdout.write(check_config_report(policy))
            return 0
        runtime = find_runtime(policy.runtime_path)
        if opts.dry_run:
            sys.stdout.write(dry_run_report(call, policy, runtime, runtime_args))
            return 0
        if call.edits_config:
            edit_bundle(call, policy)
        elif call.command == "kill" and policy.uses_systemd:
            runtime_args = systemd_kill_args(call, runtime, runtime_args)
        else:
            remember_passthrough(argv0, opts, call, policy)
        if policy.write_debug_output:
            log_runtime_call(policy.debug_output_dir, [runtime] + runtime_args)
        exec_runtime(runtime, runtime_args)
        return EXIT_FAILURE  # not reached
    except InterceptorError as exc:
        report_error(exc, call)
        return exc.exit_code
    except KeyboardInterrupt:
        report_error("interrupted before the runtime ran", call)
        return 130
    except Exception as exc:  # never a traceback in the path of a container
        report_error("internal error: %s: %s" % (type(exc).__name__, exc), call)
        return EXIT_FAILURE


def main(argv0=None, args=None):
    if args is None:
        argv0, args = sys.argv[0], sys.argv[1:]
    return run(argv0, args)


if __name__ == "__main__":
    sys.exit(main())
