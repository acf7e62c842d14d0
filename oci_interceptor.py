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
  4. Conditions      when a rule applies (OCI hooks 1.0.0 `when`, and more);
                     guardrail conditions (host paths, capabilities, host
                     namespaces, ...) and the preset levels baseline and
                     restricted
  5. Edits           small functions over the spec dict, run as a pipeline;
                     guardrail actions (deny, clamps) and rule modes
  5a. Devices (CDI)  spec files read when a device is asked for; their edits
  6. JSON            raw parsing and writing, equality, pointers
  7. Bundle I/O      read, edit, write atomically
  8. Records         which runtime (and mode) each container was created with;
                     the trust window of the shell's passthrough records
  9. Reporting       errors to stderr and the runtime's --log; debug output;
                     the audit log
 10. Exec and main   lifecycle calls, dry run, config check, exec

Standard library only, valid Python 3.6 and newer. Modules that a plain
passthrough call does not need (json, re, difflib, ...) are imported inside
the functions that use them, so forwarding `state` or `start` costs little
more than starting the interpreter.

Loading on demand. Code that most calls never run -- a feature a policy may
not use (guardrails, CDI devices, systemd mode, JSON patches, mount rules,
hooks directories, debug output, the audit log), a source of policy a
deployment may not have (a config file's rules), or a call of its own
(lifecycle calls, --oi-register, --oi-check-config, --oi-dry-run,
--oi-help) -- sits between two marker lines, at the start of a line:

    # [on-demand: NAME]
    def feature_edit(spec, value):
        ...
    # [end on-demand: NAME]

In the .pyz, build_zipapp.py compiles each such block apart and leaves in
its place a stub for each of its functions that code outside it calls: the
block's code is unmarshalled and run (in this module's namespace) only when
a call first needs one of them, so every other call starts about as fast as
if the block did not exist.
Here, in the source, nothing changes: run or import this file and all code
is there. When a new feature or call is not needed by most containers, mark
its code so (a block may be split into several ranges of the same NAME, say
one per section, each kept where its code belongs). The build checks the
rules and names the line of a breach: a block holds only whole top-level
definitions (functions, classes, constants, imports) that change nothing
outside it; code outside a block may call its functions (tables may hold
them) but not use its classes or constants, which belong to the block alone
and are computed when it loads; so a constant that others need (like
SYSTEMD_ANNOTATION) stays outside. tests/test_startup.py checks that a
create whose policy uses no such feature loads no block, and runs each
block through the .pyz and through this file alike.
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
# Where CDI spec files are read from by default (later wins), as the CDI library does.
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")
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
# How long (seconds) a passthrough record stands on the config file's trust
# as Python last checked it: the preamble sees an edit or a new owner at
# once, but not a mode or a directory above (it runs no process to look);
# after this, the next call goes to Python, which checks them again.
PASSTHROUGH_WINDOW = 10

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
PODMAN_CONF_DIR = "/etc/containers/containers.conf.d"
CONTAINERD_CONFIG = "/etc/containerd/config.toml"


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
    Flag("--oi-config", "value", "config", metavar="FILE",
         help="Read policy from this JSON file instead of %s, which is read only "
              "if it exists; a file named here or by $%s must exist. An empty "
              "value (as an empty $%s): no config file." % (DEFAULT_CONFIG, CONFIG_ENV, CONFIG_ENV)),
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
         help="Keep <hostname>_<id>_original.json, <hostname>_<id>_parsed.json and "
              "<hostname>_<id>_modified.json (when modified) of each edited config, and "
              "append every forwarded call to runtime_calls.log. Files are readable "
              "by their owner only."),
    Flag("--oi-debug-output-dir", "value", "debug_output_dir", metavar="DIR",
         key="debug-output-dir", check=_check_not_empty,
         help="Where debug output goes (default: %s)." % DEFAULT_DEBUG_DIR),
    Flag("--oi-audit-log", "value", "audit_log", metavar="PATH", key="audit-log", check=_check_not_empty,
         passthrough="ignored",
         help="Append one JSON line per create, run and restore to this file (0600, created if "
              "missing), or send it to syslog (/dev/log, tag oci-interceptor) with the value "
              "'syslog': time, container id, runtime root, bundle, the rules that matched with "
              "their mode, each change, the verdict (allowed, changed, denied, error) and the "
              "message of a refusal. A log that cannot be written is a warning."),
    Flag("--oi-dry-run", "switch", "dry_run",
         help="Print what this call would do (the rules that match, a diff of "
              "config.json, the runtime command) and change and run nothing."),
    Flag("--oi-check-config", "action", "check-config",
         help="Check the flags, config file and hook files, print a summary, and "
              "exit 0 (valid) or 2 (not)."),
    Flag("--oi-register", "value", "register", metavar="ENGINE", check=_check_engine,
         help="Register this program with an engine and exit. docker: merge a runtime "
              "into daemon.json (everything else kept, a backup written, idempotent) and "
              "print the command that applies it. podman, containerd: print the "
              "configuration to add, or with --oi-write write it. Policy flags given too "
              "are registered with it (Docker's runtimeArgs; for Podman only --oi-config, "
              "as conmon_env_vars)."),
    Flag("--oi-unregister", "value", "unregister", metavar="ENGINE", check=_check_engine,
         help="Remove what --oi-register added for this engine (the daemon.json entry, the "
              "containers.conf.d file, the config.toml block), a backup written; idempotent."),
    Flag("--oi-register-name", "value", "register_name", metavar="NAME", check=_check_not_empty,
         help="With --oi-register: the runtime name (default: the program's file name, without "
              ".pyz: a profile symlink registers under its own name)."),
    Flag("--oi-register-default", "switch", "register_default",
         help="With --oi-register: make it the engine's default runtime."),
    Flag("--oi-register-path", "value", "register_path", metavar="PATH", check=_check_not_empty,
         help="With --oi-register: the program path to register (default: this program); it "
              "must be an executable file."),
    Flag("--oi-write", "switch", "write",
         help="With --oi-register podman or containerd: write the configuration (Podman: a "
              "file in containers.conf.d; containerd: a marked block appended to config.toml) "
              "instead of printing it."),
    Flag("--oi-daemon-json", "value", "daemon_json", metavar="FILE", check=_check_not_empty,
         help="With --oi-register docker: the file to edit (default: %s)." % DOCKER_DAEMON_JSON),
    Flag("--oi-podman-conf-dir", "value", "podman_conf_dir", metavar="DIR", check=_check_not_empty,
         help="With --oi-register podman: the containers.conf.d directory (default: %s)."
              % PODMAN_CONF_DIR),
    Flag("--oi-containerd-config", "value", "containerd_config", metavar="FILE", check=_check_not_empty,
         help="With --oi-register containerd: the config.toml to edit (default: %s)." % CONTAINERD_CONFIG),
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
    if error is None:
        error = _misplaced_flag(opts)
    if error is not None:
        error.runtime_args = runtime_args
        error.opts = opts
        raise error
    return opts, runtime_args


# Flags that mean something only with --oi-register or --oi-unregister.
REGISTER_ONLY_FLAGS = ("--oi-register-name", "--oi-register-default", "--oi-register-path", "--oi-write",
                       "--oi-daemon-json", "--oi-podman-conf-dir", "--oi-containerd-config")


def _misplaced_flag(opts):
    """A UsageError for flags that cannot go together, or None. For
    --oi-unregister ENGINE, opts.register names the engine too."""
    if opts.unregister:
        if opts.register:
            return UsageError("--oi-register and --oi-unregister exclude each other")
        opts.register = opts.unregister
    elif not opts.register:
        for name in REGISTER_ONLY_FLAGS:
            if getattr(opts, _FLAGS_BY_NAME[name].dest) is not None:
                return UsageError("%s means something only with --oi-register" % name)
    if opts.register and opts.dry_run:
        return UsageError("--oi-dry-run does not apply to --oi-register")
    return None


def adapt_drop_in(argv0, args):
    """Invoked as oci-add-hooks (a symlink), behave as it does: its
    `--hook-config-path X --runtime-path Y RUNTIME ARGS` are our aliases
    already; its lone `--version` is answered here."""
    if (argv0 or "").rpartition("/")[2] == "oci-add-hooks" and args == ["--version"]:
        return ["--oi-version"]
    return args


# [on-demand: help]
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
        "guardrail presets (\"preset\" in a rule; levels named like Kubernetes' Pod",
        "Security Standards, judged on the config as the engine wrote it):",
    ]
    for level, controls in preset_levels():
        lines.append("  \"%s\"" % level)
        for control in controls:
            lines.extend(_wrap("%s: %s" % (control.name, control.help), "        "))
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
# [end on-demand: help]


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
# Lists (env, env-force, hook-config-path, hooks-dir) add up in that order,
# a later NAME= replacing an earlier one in env and env-force; single values
# are overridden. A profile's rules follow the file's rules. A config file's
# relative paths are relative to its directory.


class Rule(object):
    def __init__(self, name, when, actions, source, mode="enforce"):
        self.name = name
        self.when = when            # a Condition, or None: always
        self.actions = actions      # {action key: validated value}
        self.source = source        # where it was defined, for messages
        self.mode = mode            # enforce, warn or audit (see RULE_MODES)


class Policy(object):
    def __init__(self):
        self.runtime_path = DEFAULT_RUNTIME
        self.write_debug_output = False
        self.debug_output_dir = DEFAULT_DEBUG_DIR
        self.config_path = None
        self.config_sought = None   # (path or None, who named it) when no file was read
        self.config_stat = None     # fstat of the descriptor the config file was read from
        self.config_dir_stat = None  # its directory's stat, taken before reading it
        self.profile = None
        self.rules = []
        self.files = []             # every policy file read, in order
        self.hooks_dirs = []        # the hooks directories read
        self.cdi_spec_dirs = list(CDI_SPEC_DIRS)
        self.cdi_annotations = True     # containers may ask for CDI devices by cdi.k8s.io/* annotations
        self.cdi_env = None             # ... and by this env variable's value
        self.audit_log = None       # a file, "syslog", or None

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
    data = _load_config_file(path, explicit, policy) if path is not None else None
    if data is not None:
        policy.config_path = path
        policy.files.append(path)
        settings, rules = _read_config_data(data, path, opts.profile, argv0, policy, complete)
    else:
        policy.config_sought = (path, explicit)
        if opts.profile is not None:
            raise ConfigError("--oi-profile %s: there is no config file (%s)"
                              % (_quote_for_message(opts.profile), _no_config_file_reason(path, explicit)))

    flag_settings = {}
    for flag in FLAGS:
        value = getattr(opts, flag.dest) if flag.key else None
        if value is not None and value != []:
            flag_settings[flag.key] = value
    _merge_settings(settings, flag_settings)

    policy.runtime_path = settings.get("runtime-path", DEFAULT_RUNTIME)
    policy.write_debug_output = settings.get("write-debug-output", False)
    policy.debug_output_dir = settings.get("debug-output-dir", DEFAULT_DEBUG_DIR)
    policy.cdi_spec_dirs = settings.get("cdi-spec-dirs", list(CDI_SPEC_DIRS))
    policy.cdi_annotations = settings.get("cdi-annotations", True)
    policy.cdi_env = settings.get("cdi-env") or None
    policy.audit_log = settings.get("audit-log")

    global_actions = {}
    for key in ("env", "env-force", "readonly-networking-mounts"):
        if settings.get(key):
            global_actions[key] = settings[key]
    if settings.get("systemd", "off") != "off":
        global_actions["systemd"] = settings["systemd"]
    if global_actions:
        policy.rules.append(Rule("(global)", None, global_actions, "flags and config"))
    policy.hooks_dirs = settings.get("hooks-dir", [])
    if complete:
        for hook_file in settings.get("hook-config-path", []):
            policy.rules.append(_load_hook_config_file(hook_file))
            policy.files.append(hook_file)
        for hook_file, rule in _load_hooks_dirs(policy.hooks_dirs) if policy.hooks_dirs else ():
            policy.rules.append(rule)
            policy.files.append(hook_file)
    policy.rules.extend(rules)
    return policy


def _config_file_to_read(opts):
    """(path, explicit): the file --oi-config or $OCI_INTERCEPTOR_CONFIG
    names, explicit then saying which of them ("--oi-config", "$NAME");
    else the built-in default, explicit False. path None: no config file
    (either of them given as "")."""
    if opts.config is not None:
        return opts.config or None, "--oi-config"
    named = getenv(CONFIG_ENV)
    if named is not None:
        return named or None, "$" + CONFIG_ENV
    return DEFAULT_CONFIG, False


def _no_config_file_reason(path, explicit):
    if path is None:
        return "%s is empty" % explicit
    return "%s does not exist" % path


def _load_config_file(path, explicit, policy):
    """The parsed JSON of a policy file; None when the built-in default file
    is absent. A file named explicitly must exist: a typo in its name must
    not run every container without its policy. Keeps in the policy what
    remember_passthrough needs: the stat of the descriptor read, and of the
    directory before the file was opened."""
    try:
        dir_stat = posix.stat(path.rpartition("/")[0] or "/") if path.startswith("/") else None
    except OSError:
        dir_stat = None
    try:
        read = _read_policy_file(path, "config", missing_ok=not explicit, trusted_as="config file")
    except ConfigError as exc:
        import errno
        if explicit and getattr(exc, "errno", None) == errno.ENOENT:
            raise ConfigError("%s (named by %s)" % (exc, explicit))
        raise
    if read is None:
        return None
    policy.config_stat, policy.config_dir_stat = read[1], dir_stat
    try:
        data = parse_json(read[0])
    except ValueError as exc:
        raise ConfigError("config %s: %s" % (path, exc))
    if not isinstance(data, dict):
        # (A file of null too: it is a policy gone wrong, not no policy.)
        raise ConfigError("config %s: expected a JSON object" % path)
    return data


def _strip_prefix(message, prefix, path):
    return path + ": " + message[len(prefix):] if message.startswith(prefix) else message


_S_IFMT, _S_IFDIR, _S_IFLNK, _S_ISVTX = 0o170000, 0o040000, 0o120000, 0o1000


def _check_trusted(path, st, what):
    """As root, refuse a policy file (or hooks directory) that a non-root
    user could change or swap: it decides what runs as root in every
    container. The file (st: what was read), every symlink followed to
    reach it and every directory on the way must be root's and writable by
    no one else; a sticky directory such as /tmp is fine on the way (others
    cannot rename or remove what root put there). Uses posix only."""
    if posix.geteuid() != 0:
        return
    problem = _untrusted_step(path, st)
    if problem:
        raise ConfigError("%s %s: refusing it, %s" % (what, path, problem))


def _untrusted_step(path, st):
    """The first step on the way to path that a non-root user controls, as
    a message; None when there is none."""
    todo = [c for c in (path if path.startswith("/") else posix.getcwd() + "/" + path).split("/") if c]
    todo.reverse()
    current, links = "", 0
    try:
        info = posix.lstat("/")
        while True:
            final = not todo
            mode = info.st_mode
            kind = mode & _S_IFMT
            if kind == _S_IFLNK:
                if info.st_uid != 0:
                    return ("the symlink %s on its way belongs to uid %d, who can repoint it"
                            % (current, info.st_uid))
                links += 1
                if links > 40:
                    return "too many symlinks on its way"
                target = posix.readlink(current)
                if target.startswith("/"):
                    current = ""
                else:
                    current = current.rpartition("/")[0]
                todo.extend(reversed([c for c in target.split("/") if c]))
                info = posix.lstat(current or "/")
                continue
            if final:
                info = st   # what was read (a file renamed over it since is checked next time)
                mode = info.st_mode
            sticky_on_the_way = kind == _S_IFDIR and mode & _S_ISVTX and not final
            if info.st_uid != 0 or (mode & 0o022 and not sticky_on_the_way):
                return "%s is writable by a non-root user (owner uid %d, mode %04o)" % (
                    "it" if final else "its directory " + (current or "/"), info.st_uid, mode & 0o7777)
            if final:
                return None
            name = todo.pop()
            if name == "..":
                current = current.rpartition("/")[0]
            elif name != ".":
                current += "/" + name
            info = posix.lstat(current or "/")
    except OSError as exc:
        return "cannot check %s on its way: %s" % (current or "/", exc.strerror)


def _read_config_data(data, path, profile_name, argv0, policy, complete=True):
    """Validate a config file's data; return (settings, rules). A file of
    settings alone (no rule, no profile, as most are) is read here; one with
    rules or profiles, or anything amiss, by _read_policy_file_data (the
    policy-file block), which also words every problem."""
    if (isinstance(data, dict) and _is_config_version(data.get("version")) and data.get("rules", []) == []
            and profile_name is None and _SETTINGS_FILE_KEYS.issuperset(data)):
        return _resolve_relative_paths(_read_settings(data, "", _config_failure(path)), path), []
    return _read_policy_file_data(data, path, profile_name, argv0, policy, complete)


def _is_config_version(value):
    """The number 1 (not true, which equals it in Python)."""
    return type(value) is int and value == CONFIG_VERSION


def _config_failure(path):
    """fail(where, problem): raises the ConfigError naming the config file."""
    def fail(where, problem):
        raise ConfigError("config %s: %s%s" % (path, where + ": " if where else "", problem))
    return fail


# [on-demand: policy-file]
def _read_policy_file_data(data, path, profile_name, argv0, policy, complete=True):
    """_read_config_data of a file with rules or profiles."""
    fail = _config_failure(path)
    if not isinstance(data, dict):
        fail("", "expected a JSON object")
    _no_unknown_keys(data, _SETTINGS_FILE_KEYS | {"profiles"}, "", fail)
    if not _is_config_version(data.get("version")):
        fail("version", "expected %d, found %s" % (CONFIG_VERSION, _json_text(data.get("version"))))
    settings = _resolve_relative_paths(_read_settings(data, "", fail), path)
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
        profile_settings = _resolve_relative_paths(_read_settings(profile, where + ".", fail), path)
        profile_rules = _read_rules(profile.get("rules", []), where + ".rules", path, fail, complete)
        if name == profile_name:
            chosen = (profile_settings, profile_rules)
    if chosen is not None:
        policy.profile = profile_name
        _merge_settings(settings, chosen[0])
        rules = rules + chosen[1]
    return settings, rules
# [end on-demand: policy-file]


def _merge_settings(settings, later):
    """Merge the settings of a later source (the profile, the flags) into
    settings: values replace; lists add up; in env and env-force a later
    NAME= replaces an earlier one (both stay defaults or forced values)."""
    for key, value in later.items():
        kind = _SETTING_KEYS[key][1]
        if kind == "env":
            settings[key] = _merge_env(settings.get(key, []), value)
        elif kind == "list":
            settings[key] = settings.get(key, []) + value
        else:
            settings[key] = value


def _merge_env(earlier, later):
    """NAME=VALUE lists, the later assignment of a NAME replacing the earlier
    one where it stood."""
    merged, where = [], {}
    for item in list(earlier) + list(later):
        name = item.partition("=")[0]
        if name in where:
            merged[where[name]] = item
        else:
            where[name] = len(merged)
            merged.append(item)
    return merged


# Settings that name files: relative ones in a config file are relative to
# the file's directory (the runtime's working directory is the bundle).
_PATH_SETTINGS = ("hook-config-path", "hooks-dir", "debug-output-dir", "runtime-path", "cdi-spec-dirs",
                  "audit-log")


def _is_name_not_path(key, item):
    """A runtime-path without a slash is looked up on PATH; an audit-log
    of "syslog" means syslog: neither is a file relative to anything."""
    return (key == "runtime-path" and "/" not in item) or (key == "audit-log" and item == AUDIT_SYSLOG)


def _resolve_relative_paths(settings, config_path):
    """A config file's relative paths made absolute, against its directory
    (a runtime-path without a slash stays a name looked up on PATH)."""
    if settings.keys().isdisjoint(_PATH_SETTINGS):
        return settings
    directory = None
    for key in _PATH_SETTINGS:
        value = settings.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if all(item.startswith("/") or _is_name_not_path(key, item) for item in values):
            continue
        if directory is None:
            directory = config_path.rpartition("/")[0] if "/" in config_path else "."
            if not config_path.startswith("/"):
                directory = posix.getcwd() + "/" + directory
            directory = directory or "/"
        resolved = [item if item.startswith("/") or _is_name_not_path(key, item)
                    else _join_path(directory, item) for item in values]
        settings[key] = resolved if isinstance(value, list) else resolved[0]
    return settings


def _join_path(directory, relative):
    """An absolute directory + a relative path, without "." and ".." steps
    (as posixpath.normpath, which would import os)."""
    parts = []
    for part in (directory + "/" + relative).split("/"):
        if part == "..":
            if parts:
                parts.pop()
        elif part and part != ".":
            parts.append(part)
    return "/" + "/".join(parts)


def _no_unknown_keys(data, allowed, prefix, fail):
    if allowed.issuperset(data):
        return
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


# [on-demand: policy-file]
def _read_rules(data, where, path, fail, complete=True):
    if not isinstance(data, list):
        fail(where, "expected a list of rules")
    rules = []
    names = set()
    allowed = {"name", "when", "mode"} | {a.key for a in ACTIONS}
    for index, item in enumerate(data):
        here = "%s[%d]" % (where, index)
        if not isinstance(item, dict):
            fail(here, "expected an object")
        _no_unknown_keys(item, allowed, here + ".", fail)
        # A preset rule is named after its level unless it has a name.
        name = item.get("name", item["preset"] if item.get("preset") in PRESET_LEVELS else here)
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
        for action, value in actions_in_order(item):
            try:
                actions[action.key] = action.validate(value)
            except ValueError as exc:
                fail(here + "." + action.key + _subpath(exc), _message(exc))
        if not actions:
            fail(here, "the rule has no action")
        mode = item.get("mode", "enforce")
        if mode not in RULE_MODES:
            fail(here + ".mode", "expected one of %s, found %s" % (", ".join(RULE_MODES), _json_text(mode)))
        if "preset" in actions and len(actions) > 1:
            fail(here, "a preset rule has no other action (it judges the config as the engine "
                       "wrote it; put clamps in a rule of their own)")
        _resolve_relative_paths(actions, path)          # a rule's runtime-path
        rules.append(Rule(name, when, actions, "%s %s" % (path, here), mode))
    return rules
# [end on-demand: policy-file]


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


def _valid_cdi_env(value):
    """The name of the env variable that asks for CDI devices ("": none)."""
    if not isinstance(value, str) or "=" in value:
        raise ValueError("expected a variable name (or \"\" for none), found %s" % _json_text(value))
    return value


# [on-demand: cdi]
def _valid_cdi_device_names(value):
    _valid_string_list(value)
    for index, item in enumerate(value):
        try:
            parse_cdi_name(item)
        except ValueError as exc:
            raise PathError("[%d]" % index, _message(exc))
    return value
# [end on-demand: cdi]


# The settings a config file (and a profile) may have, and how each is
# checked and merged: "list" values add up, "value" ones replace, "env"
# lists add up with a later NAME= replacing an earlier one. (The cdi-*
# settings have no flag; see the "cdi-devices" action.)
_SETTING_KEYS = {
    "runtime-path": (_valid_nonempty_string, "value"),
    "readonly-networking-mounts": (_valid_bool, "value"),
    "env": (_valid_env_list, "env"),
    "env-force": (_valid_env_list, "env"),
    "hook-config-path": (_valid_path_list, "list"),
    "hooks-dir": (_valid_path_list, "list"),
    "write-debug-output": (_valid_bool, "value"),
    "debug-output-dir": (_valid_nonempty_string, "value"),
    "systemd": (_valid_systemd_mode, "value"),
    "cdi-spec-dirs": (_valid_path_list, "value"),
    "cdi-annotations": (_valid_bool, "value"),
    "cdi-env": (_valid_cdi_env, "value"),
    "audit-log": (_valid_nonempty_string, "value"),
}
# The keys of a config file of settings alone (_read_config_data).
_SETTINGS_FILE_KEYS = frozenset(_SETTING_KEYS) | {"version", "rules"}


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


# [on-demand: mounts]
def _objects_in_list(value, what, item):
    """Check that value is a list of objects; yield (position, object)."""
    if not isinstance(value, list):
        raise ValueError("expected a list of %s, found %s" % (what, _json_text(value)))
    for index, obj in enumerate(value):
        where = "[%d]" % index
        if not isinstance(obj, dict):
            raise PathError(where, "expected %s object" % item)
        yield where, obj


# The members of an OCI mount (runtime-spec config.md, "Mounts").
MOUNT_KEYS = ("destination", "source", "type", "options", "uidMappings", "gidMappings")
ID_MAPPING_KEYS = ("containerID", "hostID", "size")


def _valid_mounts(value):
    for where, mount in _objects_in_list(value, "mounts", "a mount"):
        for key in mount:
            if key not in MOUNT_KEYS:
                raise PathError(where + "." + key, "unknown key (allowed: %s)" % ", ".join(sorted(MOUNT_KEYS)))
        for key in ("uidMappings", "gidMappings"):
            if key in mount:
                try:
                    _valid_id_mappings(mount[key])
                except ValueError as exc:
                    raise _at(where + "." + key, exc)
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


def _valid_id_mappings(value):
    for where, mapping in _objects_in_list(value, "ID mappings", "an ID mapping"):
        for key in mapping:
            if key not in ID_MAPPING_KEYS:
                raise PathError(where + "." + key, "unknown key (allowed: %s)" % ", ".join(ID_MAPPING_KEYS))
        for key in ID_MAPPING_KEYS:
            number = mapping.get(key)
            if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number < 1 << 32:
                raise PathError(where + "." + key, "expected a whole number from 0 to 4294967295, found %s"
                                % _json_text(number))
    return value
# [end on-demand: mounts]


def _valid_annotations(value):
    if not isinstance(value, dict):
        raise ValueError("expected an object of annotations, found %s" % _json_text(value))
    for key, item in value.items():
        if item is not None and not isinstance(item, str):
            raise PathError("." + key, "expected a string, or null to remove")
    return value


# [on-demand: json-patch]
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
# [end on-demand: json-patch]


# Guardrail rules: a rule's mode, and the values of the guardrail actions
# (section 5) and of the preset levels (section 4). Only the names live here;
# the tables behind them are built on first use.

RULE_MODES = ("enforce", "warn", "audit")
PRESET_LEVELS = ("baseline", "restricted")
AUDIT_SYSLOG = "syslog"


# [on-demand: guardrails]
def _valid_deny(value):
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected the message to show (a non-empty string), found %s" % _json_text(value))
    return value


def _valid_preset(value):
    if value not in PRESET_LEVELS:
        raise ValueError("expected one of %s, found %s" % (", ".join(PRESET_LEVELS), _json_text(value)))
    return value


def _valid_capability_list(value, allow_all=False):
    """[CAP, ...] -> the same names as the runtimes spell them (CAP_X);
    "CAP_" is optional and case does not matter."""
    _valid_string_list(value)
    names = []
    for index, item in enumerate(value):
        if allow_all and item.upper() == "ALL":
            names.append("ALL")
            continue
        name = capability_name(item)
        if name is None:
            raise PathError("[%d]" % index, "unknown capability %s (see capabilities(7))" % _json_text(item))
        names.append(name)
    return names


def _valid_capabilities_action(value):
    """{"drop": [CAP|"ALL", ...], "allow": [CAP, ...]}"""
    if not isinstance(value, dict) or not value:
        raise ValueError("expected {\"drop\": [CAP or \"ALL\", ...], \"allow\": [CAP, ...]}, found %s"
                         % _json_text(value))
    result = {}
    for key in value:
        if key not in ("drop", "allow"):
            raise PathError("." + key, "unknown key (allowed: allow, drop)")
        try:
            result[key] = _valid_capability_list(value[key], allow_all=key == "drop")
        except ValueError as exc:
            raise _at("." + key, exc)
    both = set(result.get("drop", ())) & set(result.get("allow", ()))
    if both:
        raise PathError(".allow", "%s both dropped and allowed" % ", ".join(sorted(both)))
    return result


_BYTE_SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value):
    """512m, 1.5g, 1048576 (bytes; k, m, g, t as 1024-based, as Docker
    reads them) -> an int, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip().lower()
    suffix = text[-1:] if text[-1:] in _BYTE_SUFFIXES else ""
    number = text[:len(text) - len(suffix)]
    if not number or not all(c.isdigit() or c == "." for c in number) or number.count(".") > 1 or number == ".":
        return None
    result = int(float(number) * _BYTE_SUFFIXES[suffix])
    return result if result > 0 else None


def _valid_limits(value):
    """{"pids": N, "memory": BYTES, "cpus": N}: ceilings."""
    if not isinstance(value, dict) or not value:
        raise ValueError("expected {\"pids\": N, \"memory\": \"512m\", \"cpus\": 1.5}, found %s"
                         % _json_text(value))
    for key, item in value.items():
        if key == "pids":
            if isinstance(item, bool) or not isinstance(item, int) or item <= 0:
                raise PathError(".pids", "expected a whole number > 0, found %s" % _json_text(item))
        elif key == "memory":
            if parse_bytes(item) is None:
                raise PathError(".memory", "expected bytes > 0, as a number or with a k, m or g suffix "
                                           "(\"512m\"), found %s" % _json_text(item))
        elif key == "cpus":
            cpus = json_float(item)
            if cpus is None or not cpus >= 0.01 or cpus > 1e6:
                raise PathError(".cpus", "expected a number of CPUs, at least 0.01, found %s" % _json_text(item))
        else:
            raise PathError("." + key, "unknown key (allowed: cpus, memory, pids)")
    return value
# [end on-demand: guardrails]


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
    try:
        raw, st = read_config(path, follow_symlinks=True)
    except ReadError as exc:
        import errno
        if missing_ok and exc.errno == errno.ENOENT:
            return None
        error = ConfigError("%s %s" % (what, _strip_prefix(str(exc), "cannot read %s: " % path, path)))
        error.errno = exc.errno
        raise error
    _check_trusted(path, st, trusted_as or what)
    return raw, st


# [on-demand: hooks-dir]
def _load_hooks_dirs(directories):
    """OCI hooks 1.0.0 files of the directories, as Podman and CRI-O read
    them: *.json only, a later directory masks a file of the same name,
    hooks ordered by lower-cased file name. Yields (file, rule)."""
    chosen = {}
    for directory in directories:
        try:
            st = posix.stat(directory)
            names = posix.listdir(directory)
        except OSError as exc:
            raise ConfigError("hooks dir %s: %s" % (directory, exc.strerror))
        _check_trusted(directory, st, "hooks dir")
        for name in names:
            if name.endswith(".json"):
                chosen[name] = path_join(directory, name)
    for name in sorted(chosen, key=lambda n: (n.lower(), n)):
        path = chosen[name]
        rule = _load_hook_file(path)
        program = next(iter(rule.actions["hooks"].values()))[0]["path"]
        if not path_exists(program, follow=False):
            # As Podman does: a package that removed its hook program but
            # left its JSON must not break every container.
            report_warning("hook file %s: skipped, its hook.path %s does not exist" % (path, program))
            continue
        yield path, rule


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
    return Rule("hooks.d %s" % path.rpartition("/")[2], when, {"hooks": hooks}, path)
# [end on-demand: hooks-dir]


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
# What Go's strconv.ParseBool reads as true (runc's `--help=t`).
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")


# The other subcommands that name a container, and their options that take
# a value (runc, crun), so that the container id is found after them.
LIFECYCLE_OPTIONS_WITH_VALUE = {
    "start": frozenset(), "state": frozenset(), "kill": frozenset(), "delete": frozenset(),
    "pause": frozenset(), "resume": frozenset(),
    "exec": frozenset(("console-socket", "pidfd-socket", "cwd", "env", "e", "user", "u",
                       "additional-gids", "g", "process", "p", "pid-file", "process-label",
                       "apparmor", "cap", "c", "preserve-fds", "cgroup")),
    "ps": frozenset(("format", "f")),
    "events": frozenset(("interval",)),
    "update": frozenset(("r", "resources", "blkio-weight", "cpu-period", "cpu-quota", "cpu-share",
                         "cpu-rt-period", "cpu-rt-runtime", "cpuset-cpus", "cpuset-mems", "cpu-idle",
                         "kernel-memory", "kernel-memory-tcp", "memory", "memory-reservation",
                         "memory-swap", "pids-limit", "l3-cache-schema", "mem-bw-schema")),
    "checkpoint": frozenset(("image-path", "work-path", "parent-path", "page-server",
                             "manage-cgroups-mode", "empty-ns", "lsm-profile", "lsm-mount-context")),
}


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
        self.root = None             # the runtime's --root: its state directory
        self.unreadable = None
        self.help = False            # `create --help`: the runtime's help, nothing to edit

    @property
    def edits_config(self):
        return self.unreadable is not None or (self.command in EDITING_COMMANDS and not self.help)

    @property
    def config_path(self):
        """The config.json the runtime will read, as an absolute path."""
        if self.unreadable is not None:
            raise InterceptorError("cannot read the runtime's command line: %s" % self.unreadable)
        bundle = path_abspath(self.bundle or ".")
        if self.config_file is None or self.config_file == "config.json":
            # crun resolves any other -f against the directory it started
            # in, but opens "config.json" itself in the bundle.
            return path_join(bundle, "config.json")
        return path_abspath(self.config_file)


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
        if certain and name in ("log", "log-format", "root"):
            setattr(call, {"log": "log_path", "log-format": "log_format"}.get(name, name), value)
    if call.command in EDITING_COMMANDS and call.unreadable is None:
        _parse_command_options(call)
    elif call.command in LIFECYCLE_OPTIONS_WITH_VALUE:
        call.container_id = _lifecycle_container_id(call.command_args,
                                                    LIFECYCLE_OPTIONS_WITH_VALUE[call.command])
    return call


# [on-demand: lifecycle]
def _lifecycle_container_id(args, with_value):
    """The container a call other than create names: its first word that is
    not an option or an option's value (which only chooses the runtime from
    the container's record: a misreading falls back to the policy's)."""
    i, n = 0, len(args)
    while i < n:
        arg = args[i]
        i += 1
        if arg == "--":
            return args[i] if i < n else None
        if not arg.startswith("-") or arg == "-":
            return arg
        if "=" not in arg and arg.lstrip("-") in with_value:
            i += 1
    return None
# [end on-demand: lifecycle]


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
            elif name in ("help", "usage") and (value is None or value in _GO_TRUE):
                call.help = True            # the runtime prints its help and creates nothing


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
        if command == "restore" and any(name == "help" and (value is None or value in _GO_TRUE)
                                        for name, value in runc):
            # crun takes it for a second argument, which restore ignores.
            return None, "%s after the container id: runc prints its help, crun restores" % where
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


# os.path's abspath, normpath, exists, isdir, join and split for str
# paths, without importing os (a create needs only these of it).

def path_abspath(path):
    """os.path.abspath(path)."""
    if not path.startswith("/"):
        path = path_join(posix.getcwd(), path)
    return path_normpath(path)


def path_normpath(path):
    """os.path.normpath(path): "." and ".." steps and repeated slashes
    resolved by the text alone (POSIX keeps two leading slashes)."""
    native = getattr(posix, "_path_normpath", None)        # Python 3.11+
    if native is not None:
        return native(path) or "."
    if not path:
        return "."
    slashes = 2 if path.startswith("//") and not path.startswith("///") else 1 if path.startswith("/") else 0
    parts = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != ".." or (not slashes and not parts) or (parts and parts[-1] == ".."):
            parts.append(part)
        elif parts:
            parts.pop()
    return "/" * slashes + "/".join(parts) or "."


def path_exists(path, follow=True):
    """os.path.exists(path) (follow=False: os.path.lexists)."""
    try:
        posix.stat(path) if follow else posix.lstat(path)
    except (OSError, ValueError):
        return False
    return True


def path_isdir(path):
    """os.path.isdir(path)."""
    try:
        return (posix.stat(path).st_mode & _S_IFMT) == _S_IFDIR
    except (OSError, ValueError):
        return False


def path_join(directory, name):
    """os.path.join(directory, name)."""
    if name.startswith("/"):
        return name
    if not directory or directory.endswith("/"):
        return directory + name
    return directory + "/" + name


def path_split(path):
    """os.path.split(path): (directory, last part)."""
    head, tail = path[:path.rfind("/") + 1], path[path.rfind("/") + 1:]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head, tail


# ---------------------------------------------------------------------------
# 4. Conditions: when a rule applies
# ---------------------------------------------------------------------------
#
# The OCI hooks 1.0.0 `when` object, as Podman and CRI-O read it: every
# property given must match (AND across kinds). Regular expressions search
# (match anywhere, like Go's MatchString); anchor them with ^ and $.
# Conditions are evaluated against the config as the engine wrote it, before
# any rule edits it.

# [on-demand: help]
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
    ("hostPaths", "[PATH, ...]: a bind mount lets the container reach one of these host paths: its "
                  "source, resolved on the host when the container is created (symlinks, '..', other "
                  "names of the same file or directory), is the path, lies inside it, or is a "
                  "directory above it (rules only)."),
    ("capabilities", "[CAP, ...]: the container holds one of them in any of its five capability sets "
                     "(CAP_ optional, any case; rules only)."),
    ("hostNamespaces", "[TYPE, ...]: the container shares one of these namespaces (pid, network, ipc, "
                       "uts, user, cgroup, mount) with the host: the config has none of that type, or "
                       "joins by path the runtime's own, or one it cannot look at (rules only)."),
    ("privileged", "true: the config is what --privileged writes (Docker, Podman, containerd): it "
                   "holds CAP_SYS_ADMIN and may use every device. false: any other config (rules only)."),
    ("rootUser", "true: the process runs as uid 0 and no user namespace maps it to another host uid. "
                 "false: the opposite (rules only)."),
    ("unconfined", "[KIND, ...]: seccomp (no profile, or one that allows every syscall), apparmor "
                   "(profile unconfined, or none on a host that runs AppArmor), selinux (no label, or "
                   "a type that is not a container type, on a host that runs SELinux), systempaths "
                   "(the /proc and /sys paths engines mask or make read-only are not) (rules only)."),
    ("not", "{...}: the conditions in it do not all match (rules only)."),
    ("anyOf", "[{...}, ...]: at least one of these condition objects matches (rules only)."),
)
# [end on-demand: help]

_STANDARD_CONDITIONS = ("always", "annotations", "commands", "hasBindMounts")
_GUARDRAIL_CONDITIONS = ("hostPaths", "capabilities", "hostNamespaces", "privileged", "rootUser",
                         "unconfined", "not", "anyOf")
_PLAIN_CONDITIONS = _STANDARD_CONDITIONS + ("hostname", "env")
_EXTENDED_CONDITIONS = _PLAIN_CONDITIONS + _GUARDRAIL_CONDITIONS

ENGINE_BIND_MOUNTS = frozenset((
    "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/dev/shm", "/run/.containerenv",
    "/run/secrets", "/dev/termination-log",
))


# [on-demand: policy-file]
class Condition(object):
    """A parsed `when`: what it does not say keeps these defaults."""
    always = None
    annotations = ()                # [(key regex, value regex)]
    commands = ()                   # [regex]
    has_bind_mounts = None
    hostname = None                 # regex
    env = ()                        # [(name, value regex)]
    guards = None                   # [(key, value, as written)] of guardrail conditions (parse_guard_conditions)


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
    if not data.keys().isdisjoint(_PLAIN_CONDITIONS):
        _parse_plain_conditions(data, cond, compile_now)
    if extended and not data.keys().isdisjoint(_GUARDRAIL_CONDITIONS):
        cond.guards = parse_guard_conditions(data, compile_now)
    return cond


def _parse_plain_conditions(data, cond, compile_now):
    """The conditions of a `when` that are not guardrails' into cond."""
    for key in ("always", "hasBindMounts"):
        if key in data:
            if not isinstance(data[key], bool):
                raise PathError("." + key, "expected true or false, found %s" % _json_text(data[key]))
    cond.always = data.get("always")
    cond.has_bind_mounts = data.get("hasBindMounts")
    for key in ("annotations", "env"):
        if key not in data:
            continue
        if not isinstance(data[key], dict) or not data[key]:
            raise PathError("." + key, "expected a non-empty object of regular expressions")
        target = []
        for name, value in data[key].items():
            left = name if key == "env" else _compile(name, ".%s[%s]" % (key, _json_text(name)), compile_now)
            target.append((left, _compile(value, ".%s.%s" % (key, name), compile_now)))
        setattr(cond, key, target)
    if "commands" in data:
        commands = data["commands"]
        if not isinstance(commands, list) or not commands:
            raise PathError(".commands", "expected a non-empty list of regular expressions")
        cond.commands = [_compile(p, ".commands[%d]" % i, compile_now) for i, p in enumerate(commands)]
    if "hostname" in data:
        cond.hostname = _compile(data["hostname"], ".hostname", compile_now)
# [end on-demand: policy-file]


def condition_matches(cond, spec, context=None):
    """Does the config match? context: the call's EditContext (guardrail
    conditions look at the host through it, once per call)."""
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
    if cond.guards is not None and not guards_match(cond.guards, spec, context):
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
    """{NAME: VALUE} of the container's environment (see env_values)."""
    process = spec.get("process")
    env = process.get("env") if isinstance(process, dict) else None
    return env_values(env if isinstance(env, list) else [])


def env_values(env):
    """{NAME: VALUE} of an env list as the runtimes give it to the process:
    entries apply in order, so the last NAME=VALUE wins, and a bare NAME (no
    "=") unsets NAME (crun; runc refuses to start such a container)."""
    values = {}
    for entry in env:
        if isinstance(entry, str):
            name, sep, value = entry.partition("=")
            if sep:
                values[name] = value
            else:
                values.pop(name, None)
    return values


# ---------------------------------------------------------------------------
# 4b. Guardrail conditions and the preset levels
# ---------------------------------------------------------------------------
#
# What a container can reach of the host, read from its config: host paths
# through bind mounts (resolved on the host), capabilities, namespaces shared
# with the host, privileged mode, root, and what confines it (seccomp,
# AppArmor, SELinux, the masked /proc and /sys paths). The preset levels are
# sets of such checks, named like Kubernetes' Pod Security Standards. Like
# every condition they judge the config as the engine wrote it.
#
# A policy without guardrails never runs any of this: the tables are made on
# first use, and what a guardrail learns of the host (its namespaces,
# security modules, resolved paths) is looked up once per call.
#
# Host paths are resolved when the container is created. A source someone
# can change between this check and the runtime's mount (a directory inside
# a volume another running container writes, swapped for a symlink) may then
# lead elsewhere: the check is at create time, not at mount time.

# [on-demand: guardrails]
_CAPABILITY_NAMES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
    "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
    "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
    "PERFMON BPF CHECKPOINT_RESTORE")      # capabilities(7), in number order (0 to 40)
CAPABILITY_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
# The namespace types of the OCI config, and their names under /proc/PID/ns.
NAMESPACE_TYPES = (("pid", "pid"), ("network", "net"), ("ipc", "ipc"), ("uts", "uts"), ("user", "user"),
                   ("cgroup", "cgroup"), ("mount", "mnt"))
UNCONFINED_KINDS = ("seccomp", "apparmor", "selinux", "systempaths")
# What Docker, Podman, containerd and `runc spec` all mask, and all make
# read-only (a masked path counts as read-only too).
MASKED_PATHS = ("/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
CONTAINER_SELINUX_TYPES = ("container_t", "container_init_t", "container_kvm_t", "container_engine_t",
                           "svirt_lxc_net_t")
PERMISSIVE_SECCOMP_ACTIONS = ("SCMP_ACT_ALLOW", "SCMP_ACT_LOG")
# Annotations the CRI plugin writes (a pod cannot set them) naming the pod
# the container belongs to; its files live in directories named by them.
CRI_OWN_ID_ANNOTATIONS = ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri.sandbox-uid")
# Where engines bind their init program (docker run --init, podman run --init).
ENGINE_INIT_DESTINATIONS = ("/sbin/docker-init", "/run/podman-init")

_capability_table = None


def _capabilities():
    """{X and CAP_X: CAP_X} for every capability the kernel knows."""
    global _capability_table
    if _capability_table is None:
        _capability_table = {}
        for name in _CAPABILITY_NAMES.split():
            _capability_table[name] = _capability_table["CAP_" + name] = "CAP_" + name
    return _capability_table


def capability_names():
    """Every capability the kernel knows, as the runtimes spell them (CAP_X)."""
    return frozenset(_capabilities().values())


def capability_name(text):
    """'sys_admin', 'CAP_SYS_ADMIN' -> 'CAP_SYS_ADMIN'; None for no capability."""
    return (_capability_table or _capabilities()).get(text.upper()) if isinstance(text, str) else None


class GuardrailState(object):
    """What the guardrails learn in one call, once: the host's namespaces and
    security modules, the config's bind mounts resolved on the host, the
    host paths rules name. And what they find: the preset findings of each
    rule, and what each rule in warn or audit mode would have done."""

    def __init__(self, bundle=None, container_id=None):
        self.bundle = bundle
        self.container_id = container_id
        self.findings = {}          # rule name -> the findings of its preset
        self.notes = []             # RuleNote of each warn or audit rule that would act
        self._cache = {}
        self.lstats = {}            # path -> os.lstat result (None: nothing there)
        self._spec, self._spec_facts = None, {}

    def cached(self, key, make):
        """A fact of the host (or of a path on it), looked up once."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def of_spec(self, spec, key, make):
        """A fact of this config, found once while the rules are matched
        against the config as the engine wrote it (forget_spec ends that:
        the edits change the config)."""
        if self._spec is not spec:
            self._spec, self._spec_facts = spec, {}
        if key not in self._spec_facts:
            self._spec_facts[key] = make()
        return self._spec_facts[key]

    def forget_spec(self):
        self._spec, self._spec_facts = None, {}


def guardrail_state(context):
    if context.guardrails is None:
        context.guardrails = GuardrailState(context.bundle, context.container_id)
    return context.guardrails


def parse_guard_conditions(data, compile_now=True):
    """The guardrail conditions of a `when` object -> [(key, value, as
    written)], or PathError naming the problem."""
    guards = []
    for key in _GUARDRAIL_CONDITIONS:
        if key not in data:
            continue
        raw = data[key]
        where = "." + key
        try:
            if key == "hostPaths":
                value = _valid_path_list(raw) if isinstance(raw, list) and raw else None
                if value is None:
                    raise ValueError("expected a non-empty list of absolute host paths")
                for index, path in enumerate(value):
                    if not path.startswith("/") or "\0" in path:
                        raise PathError("[%d]" % index, "expected an absolute path, found %s" % _json_text(path))
                value = [_join_path("", path) for path in value]       # cleaned without importing os
            elif key == "capabilities":
                if not isinstance(raw, list) or not raw:
                    raise ValueError("expected a non-empty list of capabilities")
                value = frozenset(_valid_capability_list(raw))
            elif key in ("hostNamespaces", "unconfined"):
                kinds = [t for t, _ in NAMESPACE_TYPES] if key == "hostNamespaces" else UNCONFINED_KINDS
                if not isinstance(raw, list) or not raw:
                    raise ValueError("expected a non-empty list (of %s)" % ", ".join(kinds))
                for index, item in enumerate(raw):
                    if item not in kinds:
                        raise PathError("[%d]" % index, "expected one of %s, found %s"
                                        % (", ".join(kinds), _json_text(item)))
                value = list(raw)
            elif key in ("privileged", "rootUser"):
                value = _valid_bool(raw)
            elif key == "not":
                value = parse_condition(raw, extended=True, compile_now=compile_now)
            else:       # anyOf
                if not isinstance(raw, list) or not raw:
                    raise ValueError("expected a non-empty list of condition objects")
                value = []
                for index, item in enumerate(raw):
                    try:
                        value.append(parse_condition(item, extended=True, compile_now=compile_now))
                    except ValueError as exc:
                        raise _at("[%d]" % index, exc)
        except ValueError as exc:
            raise _at(where, exc)
        guards.append((key, value, raw))
    return guards


def guards_match(guards, spec, context=None):
    if context is None:
        context = EditContext()
    state = guardrail_state(context)
    for key, value, _ in guards:
        if key == "hostPaths":
            binds = bind_sources(spec, state)
            if not any(reaches(bind, host_path(path, state)) for path in value for bind in binds):
                return False
        elif key == "capabilities":
            if not held_capabilities(spec, state) & value:
                return False
        elif key == "hostNamespaces":
            shared = host_namespaces(spec, state)
            if not any(kind in shared for kind in value):
                return False
        elif key == "privileged":
            if is_privileged(spec, state) != value:
                return False
        elif key == "rootUser":
            if state.of_spec(spec, "root", lambda: runs_as_root(spec)) != value:
                return False
        elif key == "unconfined":
            if not unconfined_kinds(spec, state, value):
                return False
        elif key == "not":
            if condition_matches(value, spec, context):
                return False
        elif not any(condition_matches(cond, spec, context) for cond in value):      # anyOf
            return False
    return True


def _linux(spec):
    linux = spec.get("linux")
    return linux if isinstance(linux, dict) else {}


def _dict_at(obj, *keys):
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, dict) else {}


def _list_at(obj, *keys):
    for key in keys:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj if isinstance(obj, list) else []


def container_capabilities(spec):
    """Every capability in any of the process's five sets (CAP_X, upper case:
    a name the runtime does not know is counted as it would be meant)."""
    caps = _dict_at(spec, "process", "capabilities")
    names = {item.upper() for key in CAPABILITY_SETS for item in _list_at(caps, key) if isinstance(item, str)}
    return {name if name.startswith("CAP_") else "CAP_" + name for name in names}


def held_capabilities(spec, state):
    return state.of_spec(spec, "capabilities", lambda: container_capabilities(spec))


def _file_identity(path):
    """(device, inode) of what path leads to, or None."""
    try:
        st = posix.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def host_namespaces(spec, state):
    """The namespace types the container shares with the host: the config
    has none of that type (the runtime's own is kept), or joins by path the
    namespace the runtime is in (or PID 1's): Docker's --network host is
    such a path. A path that cannot be looked at counts as the host's."""
    return state.of_spec(spec, "namespaces", lambda: _host_namespaces(spec, state))


def _host_namespaces(spec, state):
    declared = {}
    for namespace in _list_at(_linux(spec), "namespaces"):
        if isinstance(namespace, dict) and isinstance(namespace.get("type"), str):
            declared.setdefault(namespace["type"], namespace.get("path"))
    shared = []
    for kind, proc_name in NAMESPACE_TYPES:
        if kind not in declared:
            shared.append(kind)
            continue
        path = declared[kind]
        if isinstance(path, str) and path:
            own = state.cached(("namespace", proc_name), lambda: {_file_identity("/proc/%s/ns/%s" % (pid, proc_name))
                                                                  for pid in ("self", "1")} - {None})
            identity = _file_identity(path)
            if identity is None or identity in own:
                shared.append(kind)
    return shared


def allows_every_device(spec):
    """Does the devices cgroup let the container use every device (a rule
    allowing all types, majors and minors: what --privileged writes)?"""
    for rule in _list_at(_linux(spec), "resources", "devices"):
        if (isinstance(rule, dict) and rule.get("allow") is True and rule.get("type") in (None, "", "a")
                and rule.get("major") in (None, -1) and rule.get("minor") in (None, -1)
                and set("rwm") <= set(rule.get("access") if isinstance(rule.get("access"), str) else "rwm")):
            return True
    return False


def is_privileged(spec, state=None):
    """What docker run --privileged, podman run --privileged and a privileged
    CRI container write, and no other container has: CAP_SYS_ADMIN and
    every device. (They also drop seccomp and the masked paths, which the
    unconfined condition sees.)"""
    held = held_capabilities(spec, state) if state is not None else container_capabilities(spec)
    return "CAP_SYS_ADMIN" in held and allows_every_device(spec)


def runs_as_root(spec):
    """Does the process run as uid 0 of the host: uid 0 (the default) and no
    user namespace of its own mapping it to another host uid? A user
    namespace joined by path cannot be looked into: counted as root."""
    user = _dict_at(spec, "process", "user")
    uid = user.get("uid", 0)
    if isinstance(uid, int) and not isinstance(uid, bool) and uid != 0:
        return False
    own_userns = any(isinstance(ns, dict) and ns.get("type") == "user" and not ns.get("path")
                     for ns in _list_at(_linux(spec), "namespaces"))
    if not own_userns:
        return True
    for mapping in _list_at(_linux(spec), "uidMappings"):
        if not isinstance(mapping, dict):
            continue
        start, host, size = (mapping.get(k) for k in ("containerID", "hostID", "size"))
        if all(isinstance(n, int) and not isinstance(n, bool) for n in (start, host, size)) and start <= 0 < start + size:
            return host - start == 0
    return True


def seccomp_unconfined(spec):
    """No seccomp profile, or one that lets every syscall through."""
    seccomp = _linux(spec).get("seccomp")
    if not isinstance(seccomp, dict):
        return True
    if seccomp.get("defaultAction") not in PERMISSIVE_SECCOMP_ACTIONS:
        return False
    return all(not isinstance(rule, dict) or rule.get("action") in PERMISSIVE_SECCOMP_ACTIONS
               for rule in _list_at(seccomp, "syscalls"))


def _read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return ""


def host_runs_apparmor(state):
    """As runc decides: securityfs has apparmor and the module is enabled."""
    return state.cached("apparmor", lambda: path_isdir("/sys/kernel/security/apparmor")
                        and _read_text("/sys/module/apparmor/parameters/enabled").startswith("Y"))


def host_runs_selinux(state):
    return state.cached("selinux", lambda: path_exists("/sys/fs/selinux/enforce"))


def apparmor_unconfined(spec, state):
    """Profile "unconfined", or none on a host that runs AppArmor (where no
    profile means none is applied). Without AppArmor nothing could confine
    the container by it, and engines write no profile: never unconfined."""
    if not host_runs_apparmor(state):
        return False
    profile = _dict_at(spec, "process").get("apparmorProfile")
    return not isinstance(profile, str) or profile in ("", "unconfined")


def selinux_unconfined(spec, state):
    """On a host that runs SELinux: no label, or a type that is not one of
    the container types (spc_t, unconfined_t, ...)."""
    if not host_runs_selinux(state):
        return False
    label = _dict_at(spec, "process").get("selinuxLabel")
    parts = label.split(":") if isinstance(label, str) else []
    return len(parts) < 3 or parts[2] not in CONTAINER_SELINUX_TYPES


def exposed_system_paths(spec):
    """The /proc and /sys paths every engine masks (or makes read-only) that
    this config leaves as they are (docker run --security-opt
    systempaths=unconfined, --privileged, a CRI procMount Unmasked). A
    path below a masked or read-only one is covered by it."""
    linux = _linux(spec)
    masked = set(p.rstrip("/") for p in _list_at(linux, "maskedPaths") if isinstance(p, str))
    readonly = masked | set(p.rstrip("/") for p in _list_at(linux, "readonlyPaths") if isinstance(p, str))

    def covered(path, paths):
        return any(prefix in paths for prefix in _path_chain(path)[:-1])     # the path and each parent but /
    return ([p for p in MASKED_PATHS if not covered(p, masked)]
            + [p for p in READONLY_PATHS if not covered(p, readonly)])


def unconfined_kinds(spec, state, kinds=UNCONFINED_KINDS):
    """Which of these kinds of confinement the container goes without."""
    found = []
    for kind in kinds:
        if kind == "seccomp":
            unconfined = seccomp_unconfined(spec)
        elif kind == "apparmor":
            unconfined = apparmor_unconfined(spec, state)
        elif kind == "selinux":
            unconfined = selinux_unconfined(spec, state)
        else:
            unconfined = bool(state.of_spec(spec, "system paths", lambda: exposed_system_paths(spec)))
        if unconfined:
            found.append(kind)
    return found


class BindSource(object):
    """A bind mount of the config, its source resolved on the host."""

    def __init__(self, index, mount, source, state):
        self.index = index
        self.mount = mount
        self.source = source            # as written (a relative one joined to the bundle)
        # symlinks and '..' resolved, as the mount would see it now; (device, inode) of it
        self.resolved, self.identity, self.is_dir = resolve_host_path(state, source)
        self._state = state
        self._chain = None

    def chain(self):
        """The identities of the source and of every directory above it."""
        if self._chain is None:
            self._chain = _chain_identities(self._state, _path_chain(self.resolved))
        return self._chain


def resolve_host_path(state, path):
    """(an absolute path resolved as the kernel resolves it now, (device,
    inode) of what it leads to or None when it does not exist, whether that
    is a directory), walking it
    one lstat a component as _untrusted_step does: symlinks followed, '..'
    taken from what they led to. What does not exist is added as written
    (cleaned). Each component is looked at once per call."""
    todo = [part for part in path.split("/") if part]
    todo.reverse()
    current, st, links, missing = "", _lstat(state, "/"), 0, False
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            current = current.rpartition("/")[0]
            continue
        current += "/" + name
        if missing:
            continue
        st = _lstat(state, current)
        if st is None:
            missing = True
        elif (st.st_mode & _S_IFMT) == _S_IFLNK:
            links += 1
            target = state.cached(("readlink", current), lambda: _readlink(current)) if links <= 40 else None
            if target is None:                          # unreadable, or a loop: as if missing
                missing = True
                continue
            current = "" if target.startswith("/") else current.rpartition("/")[0]
            todo.extend(reversed([part for part in target.split("/") if part]))
            st = None
            if not todo:                                # the link was the last component
                st = _lstat(state, current or "/")
    if missing or st is None:
        return current or "/", None, False
    return current or "/", (st.st_dev, st.st_ino), (st.st_mode & _S_IFMT) == _S_IFDIR


def _lstat(state, path):
    """os.lstat once per call (None: nothing there, or not to be looked at)."""
    cache = state.lstats
    if path not in cache:
        try:
            cache[path] = posix.lstat(path)
        except (OSError, ValueError):
            cache[path] = None
    return cache[path]


def _readlink(path):
    try:
        return posix.readlink(path)
    except (OSError, ValueError):
        return None


def _chain_identities(state, paths):
    """The identities of what these paths lead to, each looked up once per
    call (lstat: only a symlink needs resolving)."""
    found = set()
    for path in paths:
        st = _lstat(state, path)
        if st is not None and (st.st_mode & _S_IFMT) == _S_IFLNK:
            identity = resolve_host_path(state, path)[1]          # where the symlink leads
        else:
            identity = (st.st_dev, st.st_ino) if st is not None else None
        if identity is not None:
            found.add(identity)
    return found


def _path_chain(path):
    """The path and every directory above it, up to /."""
    chain = [path]
    while path not in ("/", ""):
        path = path.rpartition("/")[0] or "/"
        chain.append(path)
    return chain


def is_bind_mount(mount):
    options = mount.get("options")
    options = options if isinstance(options, list) else []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def bind_sources(spec, state):
    """The config's bind mounts with their sources resolved on the host (a
    relative source is relative to the bundle, as runc and crun read it)."""
    return state.of_spec(spec, "binds", lambda: _bind_sources(spec, state))


def _bind_sources(spec, state):
    binds = []
    mounts = spec.get("mounts")
    for index, mount in enumerate(mounts if isinstance(mounts, list) else []):
        if not isinstance(mount, dict) or not is_bind_mount(mount):
            continue
        source = mount.get("source")
        if not isinstance(source, str) or not source:
            continue
        if not source.startswith("/"):
            source = path_join(state.bundle or posix.getcwd(), source)
        binds.append(BindSource(index, mount, source, state))
    return binds


class HostPath(object):
    """A host path a rule names: as written (cleaned) and resolved, with
    the identities of it and of every directory above it."""

    def __init__(self, path, state):
        self.literal = path
        self.resolved, self.identity, self.is_dir = resolve_host_path(state, path)
        self.names = (path,) if path == self.resolved else (path, self.resolved)
        self._state = state
        self._chain = None

    def chain(self):
        """The identities of the path and of every directory above it, as
        named and as resolved."""
        if self._chain is None:
            paths = _path_chain(self.literal)
            paths += [p for p in _path_chain(self.resolved) if p not in paths]
            self._chain = _chain_identities(self._state, paths)
        return self._chain


def host_path(path, state):
    return state.cached(("host path", path), lambda: HostPath(path, state))


def _same_or_under(path, parent):
    return path == parent or _is_under(path, parent)


def reaches(bind, target):
    """Does the bind mount let the container reach the host path: is its
    source the path, inside it, or a directory above it, by name (as
    resolved) or by identity (a hard link, another mount of it)? Only a
    directory has anything inside it: the other identity checks are made
    only where they can tell."""
    for path in target.names:
        if _same_or_under(path, bind.resolved) or _same_or_under(bind.resolved, path):
            return True
    if bind.identity is None:
        return False
    if bind.identity == target.identity:
        return True
    if bind.is_dir and bind.identity in target.chain():
        return True
    return target.is_dir and target.identity is not None and target.identity in bind.chain()


def engine_managed(bind, spec, state):
    """Is this bind one of the engine's own, not a host path a user chose:
    a file of this container or its pod (below a directory named by the
    container's id, or by the pod sandbox's id or uid the CRI plugin
    writes; ids of 32 characters or more, which the engines draw at
    random), a named volume (.../volumes/NAME/_data, where Docker and
    Podman keep them), or the engine's init program (--init) bound
    read-only?"""
    own = state.of_spec(spec, "own ids", lambda: _own_ids(spec, state))
    parts = bind.resolved.split("/")
    if own & set(parts[:-1]):
        return True
    if len(parts) >= 4 and parts[-1] == "_data" and parts[-3] == "volumes" and parts[-2]:
        return True
    options = bind.mount.get("options")
    if (_clean_path(bind.mount.get("destination") or "") in ENGINE_INIT_DESTINATIONS
            and isinstance(options, list) and "ro" in options):
        try:
            st = posix.stat(bind.resolved)
        except (OSError, ValueError):
            return False
        return (st.st_mode & _S_IFMT) == 0o100000 and st.st_mode & 0o111 and st.st_uid == 0
    return False


def _own_ids(spec, state):
    annotations = spec.get("annotations") if isinstance(spec.get("annotations"), dict) else {}
    own = [state.container_id] + [annotations.get(key) for key in CRI_OWN_ID_ANNOTATIONS]
    return {i for i in own if isinstance(i, str) and len(i) >= 32 and "/" not in i}


def unsafe_sysctls(spec, safe):
    sysctl = _linux(spec).get("sysctl")
    names = sysctl if isinstance(sysctl, dict) else {}
    return sorted(name for name in names if name.replace("/", ".") not in safe)


# The preset levels: each control a check of the config that says what it
# found (None: nothing), named after the Pod Security Standards control it
# maps; controls that have nothing in an OCI config (host ports, volume
# types, HostProcess) are left out. Built on first use.

class PresetControl(object):
    def __init__(self, name, check, help, trips):
        self.name = name
        self.check = check          # (spec, state) -> what it found, or None
        self.help = help
        self.trips = trips          # a docker run flag that trips it, for the docs


_preset_table = None

# Kubernetes' baseline capabilities, plus NET_RAW: Docker, Podman and
# containerd give it to every container, and the Pod Security Standards
# judge only what a pod adds to the runtime's defaults.
_BASELINE_CAPABILITIES = ("CAP_AUDIT_WRITE CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_MKNOD "
                          "CAP_NET_BIND_SERVICE CAP_SETFCAP CAP_SETGID CAP_SETPCAP CAP_SETUID CAP_SYS_CHROOT "
                          "CAP_NET_RAW")
_SAFE_SYSCTLS = ("kernel.shm_rmid_forced net.ipv4.ip_local_port_range net.ipv4.ip_unprivileged_port_start "
                 "net.ipv4.tcp_syncookies net.ipv4.ping_group_range net.ipv4.ip_local_reserved_ports "
                 "net.ipv4.tcp_keepalive_time net.ipv4.tcp_fin_timeout net.ipv4.tcp_keepalive_intvl "
                 "net.ipv4.tcp_keepalive_probes")


def _found(items):
    return ", ".join(items) if items else None


def preset_levels():
    """[(level, [PresetControl, ...])] for baseline and restricted."""
    global _preset_table
    if _preset_table is not None:
        return _preset_table
    baseline_caps = frozenset(_BASELINE_CAPABILITIES.split())
    safe_sysctls = frozenset(_SAFE_SYSCTLS.split())

    def host_paths(spec, state):
        return _found(["%s at %s" % (bind.source, bind.mount.get("destination"))
                       for bind in bind_sources(spec, state) if not engine_managed(bind, spec, state)])

    def root(spec, state):
        return "uid 0" if state.of_spec(spec, "root", lambda: runs_as_root(spec)) else None

    baseline = [
        PresetControl("host-namespaces", lambda spec, state: _found(
            [k for k in host_namespaces(spec, state) if k in ("pid", "network", "ipc", "uts")]),
            "no pid, network, ipc or uts namespace shared with the host.",
            "--pid host, --network host, --ipc host, --uts host"),
        PresetControl("privileged", lambda spec, state: "privileged" if is_privileged(spec, state) else None,
                      "not privileged (CAP_SYS_ADMIN and every device).", "--privileged"),
        PresetControl("capabilities", lambda spec, state: _found(sorted(held_capabilities(spec, state) - baseline_caps)),
                      "no capability beyond the baseline set: AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, "
                      "FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT, "
                      "and NET_RAW, which every engine grants by default.", "--cap-add SYS_ADMIN"),
        PresetControl("host-paths", host_paths,
                      "no bind mount of a host path; the engine's own files of the container or its pod, "
                      "named volumes (.../volumes/NAME/_data) and the --init program are not host paths.",
                      "-v /srv:/srv, --mount type=bind,..."),
        PresetControl("proc-mount", lambda spec, state: _found(state.of_spec(spec, "system paths",
                                                                             lambda: exposed_system_paths(spec))),
                      "the /proc and /sys paths engines mask or make read-only stay so.",
                      "--security-opt systempaths=unconfined"),
        PresetControl("apparmor", lambda spec, state: "unconfined" if apparmor_unconfined(spec, state) else None,
                      "an AppArmor profile other than unconfined (on a host that runs AppArmor).",
                      "--security-opt apparmor=unconfined"),
        PresetControl("selinux", lambda spec, state: "no container type" if selinux_unconfined(spec, state)
                      else None, "an SELinux label of a container type (on a host that runs SELinux).",
                      "--security-opt label=disable"),
        PresetControl("seccomp", lambda spec, state: "unconfined" if seccomp_unconfined(spec) else None,
                      "a seccomp profile that does not allow every syscall.",
                      "--security-opt seccomp=unconfined"),
        PresetControl("sysctls", lambda spec, state: _found(unsafe_sysctls(spec, safe_sysctls)),
                      "only the sysctls Kubernetes calls safe: " + ", ".join(_SAFE_SYSCTLS.split()) + ".",
                      "--sysctl kernel.msgmax=65536"),
    ]
    restricted = [c for c in baseline if c.name not in ("capabilities", "seccomp")] + [
        PresetControl("capabilities", lambda spec, state: _found(
            sorted(held_capabilities(spec, state) - {"CAP_NET_BIND_SERVICE"})),
            "no capability but NET_BIND_SERVICE (drop ALL).", "no --cap-drop ALL"),
        PresetControl("seccomp", lambda spec, state: None if (
            not seccomp_unconfined(spec) and _linux(spec)["seccomp"].get("defaultAction")
            not in PERMISSIVE_SECCOMP_ACTIONS) else "no allowlist profile",
            "a seccomp profile that refuses what it does not list (as the engines' defaults do).",
            "--security-opt seccomp=unconfined"),
        PresetControl("run-as-non-root", root, "the process does not run as root of the host.",
                      "no --user, or --user 0"),
        PresetControl("privilege-escalation", lambda spec, state: None if _dict_at(spec, "process").get(
            "noNewPrivileges") is True else "no-new-privileges not set",
            "no privilege escalation: no-new-privileges set.", "no --security-opt no-new-privileges"),
    ]
    _preset_table = [("baseline", baseline), ("restricted", restricted)]
    return _preset_table


def preset_findings(level, spec, state):
    """What the config breaks of the level: ["control (what)", ...]."""
    for name, controls in preset_levels():
        if name == level:
            findings = []
            for control in controls:           # (restricted shares most of baseline's: each runs once)
                found = state.of_spec(spec, control, lambda: control.check(spec, state))
                if found:
                    findings.append("%s (%s)" % (control.name, found))
            return findings
    raise InterceptorError("no preset level %s" % _quote_for_message(level))
# [end on-demand: guardrails]


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


# [on-demand: mounts]
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
# [end on-demand: mounts]


def edit_readonly_networking_mounts(spec, enabled):
    """Mounts at /etc/hosts, /etc/hostname, /etc/resolv.conf become read-only."""
    if not enabled:
        return []
    return _make_mounts_readonly(spec, lambda destination: destination in NETWORKING_FILES)


# [on-demand: mounts]
def edit_readonly_mounts(spec, globs):
    """Mounts whose destination matches one of the globs become read-only."""
    return _make_mounts_readonly(spec, lambda destination: any(_glob_match(destination, g) for g in globs))
# [end on-demand: mounts]


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
        new_options = make_readonly(options or [], _may_carry_submounts(mount.get("source")))
        if new_options != options:
            mount["options"] = new_options
            changes.append("mounts[%d] (%s): options %s -> %s"
                           % (index, destination, "(none)" if options is None else options, new_options))
    return changes


def make_readonly(options, submounts=True):
    """Options that make a mount read-only, and a recursive bind's submounts
    too: every 'rw' and 'rrw' removed (for 'rrw' runc clears read-only on
    the whole tree after the 'ro' remount), 'ro' added, and 'rro' to an
    'rbind' that may carry submounts (runc 1.1+, crun; Linux 5.12+, else
    the runtime refuses the container).
    ['rbind', 'rw'] -> ['rbind', 'ro', 'rro']; [] -> ['ro']."""
    result = []
    for option in options:
        if option == "rw":
            option = "ro"
        if option == "rrw" or (option == "ro" and "ro" in result):
            continue
        result.append(option)
    if "ro" not in result:
        result.append("ro")
    if submounts and "rbind" in result and "rro" not in result:
        result.append("rro")
    return result


def _may_carry_submounts(source):
    """Can a bind of this source bring mounts below it? Only a directory
    can: not a file, nor a missing path (the runtime refuses that). A
    source that cannot be looked at (relative, unreadable) may."""
    if not isinstance(source, str) or not source.startswith("/"):
        return True
    try:
        return (posix.stat(source).st_mode & _S_IFMT) == _S_IFDIR
    except (FileNotFoundError, NotADirectoryError):         # ENOENT, ENOTDIR
        return False
    except (OSError, ValueError):
        return True


def edit_env_defaults(spec, assignments):
    """env / --oi-env: set NAME=VALUE unless the container already has NAME."""
    return _set_env(spec, assignments, force=False)


def edit_env_force(spec, assignments):
    """env-force / --oi-env-force: set NAME=VALUE whatever the container had."""
    return _set_env(spec, assignments, force=True)


def edit_env_unset(spec, names):
    """env-unset: remove every entry of each NAME (bare NAME entries too)."""
    env = _process_env(spec, create=False)
    changes = []
    if env is None:
        return changes
    for name in names:
        positions = _env_positions(env, name)
        for index in reversed(positions):
            del env[index]
        changes.extend("process.env[%d]: removed %s" % (index, name) for index in positions)
    return changes


def _set_env(spec, assignments, force):
    """Defaults (force=False) are added only where the container has no value
    for NAME, as the runtimes read it (see env_values); forced values leave
    exactly one entry of NAME, in the place of the first, so no later
    duplicate or bare NAME can override or unset them."""
    if not assignments:
        return []
    env = _process_env(spec, create=True)
    if env is None:
        return []
    changes = []
    for assignment in assignments:
        name = assignment.partition("=")[0]
        positions = _env_positions(env, name)
        if not force:
            if name not in env_values(env):
                env.append(assignment)
                changes.append("process.env: added %s" % name)
            continue
        if len(positions) == 1 and env[positions[0]] == assignment:
            continue
        if not positions:
            env.append(assignment)
            changes.append("process.env: added %s" % name)
            continue
        for index in reversed(positions[1:]):
            del env[index]
        env[positions[0]] = assignment
        changes.append("process.env[%d]: replaced %s%s" % (
            positions[0], name, " (and %d more entries of it removed)" % (len(positions) - 1)
            if len(positions) > 1 else ""))
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


def _env_positions(env, name):
    """Indexes of every NAME=... and bare NAME entry."""
    positions = []
    for index, entry in enumerate(env):
        if not isinstance(entry, str):
            raise InterceptorError("process.env[%d] is not a string" % index)
        if entry.partition("=")[0] == name:
            positions.append(index)
    return positions


def edit_hooks(spec, hooks):
    """Append hooks to their stages; a hook already there is not added again."""
    return _add_hooks(spec, hooks, prepend=False)


def edit_prepend_hooks(spec, hooks):
    """Put hooks first in their stages (as oci-add-hooks does); a hook
    already there is not added again."""
    return _add_hooks(spec, hooks, prepend=True)


def _member(parent, key, kind, where):
    """parent[key], an empty kind (dict or list) put there when it is absent
    or null; InterceptorError naming where when it is something else."""
    value = parent.get(key)
    if value is None:
        value = parent[key] = kind()
    if not isinstance(value, kind):
        raise InterceptorError("%s is not %s" % (where, "an object" if kind is dict else "a list"))
    return value


def _add_hooks(spec, hooks, prepend):
    all_hooks = _member(spec, "hooks", dict, "hooks")
    changes = []
    for stage in HOOK_STAGES:
        wanted = hooks.get(stage)
        if not wanted:
            continue
        present = _member(all_hooks, stage, list, "hooks." + stage)
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
#   - its own cgroup, writable, and no other: on cgroup v1 the container's
#     own name=systemd cgroup bind-mounted read-write at
#     /sys/fs/cgroup/systemd, once proven to lie inside that hierarchy (no
#     '..', no symlink, not its root) and to be new or an empty leaf, as
#     the runtime is about to create it; on v2 a cgroup mount at
#     /sys/fs/cgroup made read-write, only in a new cgroup namespace of the
#     container's own (where it shows nothing above the container's cgroup)
#     and only when cgroup2 is mounted with nsdelegate (else the container
#     could change its own cgroup's limits from the namespace root). A bind
#     at /sys/fs/cgroup is left as the engine wrote it. Anything else is
#     refused, with the key path and the problem.
# No capability or privilege is added.

SYSTEMD_ANNOTATION = "oci-interceptor.systemd"
# [on-demand: systemd]
SYSTEMD_INIT_COMMANDS = ("/sbin/init", "/usr/sbin/init", "/usr/local/sbin/init")
SYSTEMD_SWITCH = "OCI_INTERCEPTOR_SYSTEMD"
SYSTEMD_TMPFS = (
    ("/run", ["nosuid", "nodev", "strictatime", "mode=755", "size=65536k"]),
    ("/run/lock", ["nosuid", "nodev", "noexec", "mode=1777", "size=5120k"]),
    ("/tmp", ["nosuid", "nodev", "mode=1777"]),
    ("/var/log/journal", ["nosuid", "nodev", "mode=2755"]),
)
SYSTEMD_READONLY_ROOT_TMPFS = (("/var/lib/systemd", ["nosuid", "nodev", "mode=755"]),)
SIGRTMIN_PLUS_3 = "37"     # what systemd halts on (glibc's SIGRTMIN is 34)


SYSTEMD_HIERARCHY = "/sys/fs/cgroup/systemd"
CGROUP_MOUNT_TYPES = ("cgroup", "cgroup2")
# [end on-demand: systemd]


class EditContext(object):
    """Facts an edit may need beyond the spec: the container id, and the
    host's cgroups, read on first use (tests give them): the cgroup
    version, where the v1 name=systemd hierarchy is mounted ("" for
    nowhere), whether cgroup2 has nsdelegate, and the name=systemd cgroup
    of this process, which becomes the runtime. The CDI spec directories,
    read on the first device asked for (section 5a)."""

    def __init__(self, container_id=None, cgroup_version=None, systemd_hierarchy=None, nsdelegate=None,
                 own_systemd_cgroup=None, cdi_spec_dirs=None):
        self.container_id = container_id
        self.cdi_spec_dirs = list(CDI_SPEC_DIRS if cdi_spec_dirs is None else cdi_spec_dirs)
        self.cdi_cache = None       # a CdiCache, once a device is asked for
        self.cdi_resolved = []      # (device name, spec file) of every device applied
        self._facts = {"cgroup_version": cgroup_version, "systemd_hierarchy": systemd_hierarchy,
                       "nsdelegate": nsdelegate, "own_systemd_cgroup": own_systemd_cgroup}
        self._host = None
        self.runtime_path = None    # a rule's "runtime-path": the runtime that runs this container
        self.bundle = None          # the bundle directory (relative bind sources are relative to it)
        self.guardrails = None      # GuardrailState, made by the first guardrail that needs it
        self.rule = None            # the rule whose actions apply now

    def _fact(self, name):
        if self._facts[name] is None:
            if name == "own_systemd_cgroup":
                self._facts[name] = own_systemd_cgroup()
            else:
                if self._host is None:
                    self._host = host_cgroup_mounts()
                self._facts[name] = self._host[name]
        return self._facts[name]

    cgroup_version = property(lambda self: self._fact("cgroup_version"))
    systemd_hierarchy = property(lambda self: self._fact("systemd_hierarchy"))
    nsdelegate = property(lambda self: self._fact("nsdelegate"))
    own_systemd_cgroup = property(lambda self: self._fact("own_systemd_cgroup"))


# [on-demand: systemd]
def host_cgroup_mounts(lines=None):
    """What /proc/self/mountinfo (or these lines of it) says: cgroup_version
    2 when the mount on top at /sys/fs/cgroup is cgroup2, else 1 (legacy or
    hybrid); nsdelegate, whether that cgroup2 has the option; and
    systemd_hierarchy, where the v1 name=systemd hierarchy is mounted
    (SYSTEMD_HIERARCHY preferred; "" for nowhere)."""
    facts = {"cgroup_version": 1, "nsdelegate": False, "systemd_hierarchy": ""}
    if lines is None:
        try:
            lines = _read_kernel_text("/proc/self/mountinfo").split("\n")
        except OSError:
            return facts
    for line in lines:
        before, separator, after = line.partition(" - ")
        before, after = before.split(), after.split()
        if not separator or len(before) < 5 or len(after) < 3:
            continue
        point, fstype, options = before[4], after[0], after[2].split(",")
        if point == "/sys/fs/cgroup":          # a later line is mounted on top
            facts["cgroup_version"] = 2 if fstype == "cgroup2" else 1
            facts["nsdelegate"] = fstype == "cgroup2" and "nsdelegate" in options
        if fstype == "cgroup" and "name=systemd" in options and facts["systemd_hierarchy"] != SYSTEMD_HIERARCHY:
            facts["systemd_hierarchy"] = point
    return facts


def host_cgroup_version():
    """2 when /sys/fs/cgroup is the unified hierarchy, else 1 (legacy or hybrid)."""
    return host_cgroup_mounts()["cgroup_version"]


def own_systemd_cgroup():
    """This process's name=systemd cgroup, from /proc/self/cgroup ("/" if none)."""
    try:
        for line in _read_kernel_text("/proc/self/cgroup").split("\n"):
            fields = line.split(":", 2)
            if len(fields) == 3 and "name=systemd" in fields[1].split(","):
                return fields[2]
    except OSError:
        pass
    return "/"


def _read_kernel_text(path):
    """A file the kernel writes of paths (mountinfo, cgroup), its bytes
    decoded as paths are (os.fsdecode): a mount point or cgroup named in
    bytes that are not UTF-8 reads as the path it is, not as an error, and
    only a newline ends a line. OSError as open raises it."""
    with open(path, "rb") as f:
        return f.read().decode(sys.getfilesystemencoding(), "surrogateescape")


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


def systemd_cgroup_path(cgroups_path, container_id, own_cgroup="/"):
    """The container's cgroup, as a path from a hierarchy's root, from
    linux.cgroupsPath: cgroupfs style ("/docker/ID") or systemd style
    ("system.slice:docker:ID" -> "/system.slice/docker-ID.scope"). A
    relative path (none: the container id) lies under the runtime's own
    cgroup for runc but under the root for crun: taken only where the two
    agree. ValueError says what keeps the path from surely lying below the
    hierarchy's root: '..', a '/' in a systemd-style part, the root itself,
    a NUL."""
    if cgroups_path and ":" in cgroups_path and not cgroups_path.startswith("/"):
        parts = (cgroups_path.split(":", 2) + ["", ""])[:3]
        if any("/" in part for part in parts):
            raise ValueError("found '/' in a slice:prefix:name part")
        slice_, prefix, name = parts
        unit = name if name.endswith(".slice") else "%s-%s.scope" % (prefix, name) if prefix else name + ".scope"
        path = _expand_slice(slice_ or "-.slice") + "/" + unit
    else:
        path = cgroups_path or container_id or ""
        if not path.startswith("/"):
            if own_cgroup != "/":
                raise ValueError("found a relative path, which runc puts under its own cgroup %s and crun "
                                 "under the root: give an absolute one" % own_cgroup)
            path = "/" + path
    components = [c for c in path.split("/") if c not in ("", ".")]
    if "\0" in path:
        raise ValueError("found a NUL character")
    if ".." in components:
        raise ValueError("found '..'")
    if not components:
        raise ValueError("found the hierarchy's root, which the host shares")
    return "/" + "/".join(components)


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
    """The container's own cgroup, writable (see above). Everything is
    checked before anything is changed."""
    changes = []
    linux = _member(spec, "linux", dict, "linux")
    namespaces = _member(linux, "namespaces", list, "linux.namespaces")
    cgroup_namespaces = [i for i, n in enumerate(namespaces) if isinstance(n, dict) and n.get("type") == "cgroup"]
    joined = [i for i in cgroup_namespaces if namespaces[i].get("path") is not None]
    cgroup_index = None
    for index in range(len(mounts)):
        if _mount_destination(mounts, index) == "/sys/fs/cgroup":
            cgroup_index = index
    destinations = {_mount_destination(mounts, i) for i in range(len(mounts))}
    if context.cgroup_version == 2:
        writable = cgroup_index is None or _is_cgroup_mount(mounts[cgroup_index])
        if writable and joined:
            raise InterceptorError("linux.namespaces[%d]: joins the cgroup namespace %s; on cgroup v2 systemd "
                                   "needs a new one of its own"
                                   % (joined[0], _path_text(namespaces[joined[0]]["path"])))
        if writable and not context.nsdelegate:
            raise InterceptorError("cgroup2 at /sys/fs/cgroup is mounted without nsdelegate: in a writable "
                                   "/sys/fs/cgroup the container could change its own cgroup's limits")
    elif SYSTEMD_HIERARCHY not in destinations:
        source, path = _own_systemd_cgroup(linux, context)
    if not cgroup_namespaces:
        namespaces.append({"type": "cgroup"})
        changes.append("linux.namespaces: added cgroup")
    if cgroup_index is None:
        mounts.append({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                       "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]})
        cgroup_index = len(mounts) - 1
        changes.append("mounts[%d] (/sys/fs/cgroup): added cgroup" % cgroup_index)
    if context.cgroup_version == 2:
        # In its own cgroup namespace the container sees only its own subtree.
        mount = mounts[cgroup_index]
        if not writable:
            return changes              # a bind: left as the engine wrote it
        options = [o for o in (mount.get("options") or []) if o not in ("ro", "rw")] + ["rw"]
        if mount.get("options") != options:
            mount["options"] = options
            changes.append("mounts[%d] (/sys/fs/cgroup): read-write (cgroup v2, own namespace)" % cgroup_index)
        return changes
    if SYSTEMD_HIERARCHY in destinations:
        return changes
    mounts.insert(cgroup_index + 1, {"destination": SYSTEMD_HIERARCHY, "type": "bind", "source": source,
                                     "options": ["rbind", "rw", "nosuid", "noexec", "nodev"]})
    changes.append("mounts[%d] (%s): own name=systemd cgroup %s, read-write"
                   % (cgroup_index + 1, SYSTEMD_HIERARCHY, path))
    return changes


def _is_cgroup_mount(mount):
    """A cgroup filesystem mounted for the container, not a bind of a host
    path (a cgroup type with a bind option is a bind: the type is ignored)."""
    options = mount.get("options")
    if options is None:
        options = []
    return (mount.get("type") in CGROUP_MOUNT_TYPES and isinstance(options, list)
            and "bind" not in options and "rbind" not in options)


def _own_systemd_cgroup(linux, context):
    """(source, path): the container's name=systemd cgroup on the host,
    proven to be its own: inside the hierarchy, below its root, with no
    symlink on the way, and new or an empty leaf (no process, no child
    cgroup) -- a runtime creates it next; runc 1.1 warns of a non-empty one
    and 1.2 refuses it."""
    cgroups_path = linux.get("cgroupsPath")
    if cgroups_path is not None and not isinstance(cgroups_path, str):
        raise InterceptorError("linux.cgroupsPath is not a string")
    where = "linux.cgroupsPath " + (_path_text(cgroups_path) if cgroups_path is not None else "(not set)")
    hierarchy = context.systemd_hierarchy
    if not hierarchy:
        raise InterceptorError("%s: cgroup v1 without a name=systemd hierarchy: systemd can have no cgroup "
                               "of its own" % where)
    try:
        path = systemd_cgroup_path(cgroups_path, context.container_id, context.own_systemd_cgroup)
    except ValueError as exc:
        raise InterceptorError("%s: the container's cgroup must lie inside %s (%s)" % (where, hierarchy, exc))
    source = hierarchy.rstrip("/") + path
    real = os.path.realpath(source)
    if real != os.path.realpath(hierarchy).rstrip("/") + path:
        raise InterceptorError("%s: the container's cgroup must lie inside %s (found a symlink: %s is %s)"
                               % (where, hierarchy, _quote_for_message(source), _quote_for_message(real)))
    if os.path.lexists(real):
        try:
            with open(os.path.join(real, "cgroup.procs")) as f:
                processes = len(f.read().split())
            children = [e for e in os.listdir(real) if os.path.isdir(os.path.join(real, e))]
        except OSError as exc:
            raise InterceptorError("%s: %s must be a new cgroup of the container's own (found no cgroup: %s)"
                                   % (where, _quote_for_message(source), exc.strerror))
        if processes or children:
            raise InterceptorError("%s: %s must be a new cgroup of the container's own (found %s in it)"
                                   % (where, _quote_for_message(source), "%d process(es)" % processes
                                      if processes else "child cgroups"))
    return source, path


def _path_text(value):
    """A path from the config, in a message: as JSON, whole unless very long."""
    text = serialize_config(value, Layout(None, ", ", ": ")).decode("utf-8", "replace")
    return text if len(text) <= 200 else text[:197] + "..."


TERM_SIGNALS = ("TERM", "SIGTERM", "15")


def systemd_kill_args(call, runtime, runtime_args, systemd=None):
    """`kill ID TERM` (SIGTERM, 15, or no signal: runc's default) of a
    container created in systemd mode becomes `kill ID 37`: systemd as PID 1
    answers SIGTERM by re-executing itself and keeps running, while
    SIGRTMIN+3 halts it cleanly. Other signals and containers pass through.
    systemd: the container's mode when its record says it; None: ask the
    runtime for the container's config."""
    args = call.command_args
    positional = [i for i, a in enumerate(args) if not a.startswith("-")]
    if not positional:
        return runtime_args
    signal_index = positional[1] if len(positional) > 1 else None
    signal = args[signal_index] if signal_index is not None else "TERM"
    if signal.upper() not in TERM_SIGNALS:
        return runtime_args
    global_args = runtime_args[:len(runtime_args) - len(args) - 1]
    if systemd is None:
        systemd = created_in_systemd_mode(runtime, global_args, args[positional[0]])
    if not systemd:
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
# [end on-demand: systemd]


def edit_cdi_devices(spec, names, context):
    """cdi-devices: give the container these CDI devices (section 5a)."""
    return inject_cdi_devices(spec, names, context)


# [on-demand: json-patch]
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
# [end on-demand: json-patch]


def edit_runtime_path(spec, path, context):
    """runtime-path (in a rule): the containers the rule selects run under
    this runtime, and every later call of such a container follows them
    there (see section 8). Not an edit of the config: nothing is written."""
    context.runtime_path = path
    return []


# Guardrail actions: refuse a container (deny, a preset level it does not
# meet), or clamp what it may do (capabilities removed, limits lowered, no
# new privileges, a read-only root). A clamp never adds a capability nor
# raises a limit. A refusal raises Denied; apply_rules names the rule.


class Denied(InterceptorError):
    """A rule refuses the container: `denied by rule NAME: REASON`."""

    def __init__(self, reason, rule=None):
        InterceptorError.__init__(self, reason)
        self.reason = reason
        self.rule = rule

    def __str__(self):
        return "denied by rule %s: %s" % (self.rule, self.reason) if self.rule else self.reason


# [on-demand: guardrails]
def edit_deny(spec, message):
    """deny: refuse the container, with the admin's message."""
    raise Denied(message)


def edit_preset(spec, level, context):
    """preset: refuse a container that does not meet the level. It matched
    only because it does not (see matching_rules); the findings are those
    of the config as the engine wrote it."""
    state = guardrail_state(context)
    findings = state.findings.get(context.rule.name) if context.rule is not None else None
    if findings is None:
        findings = preset_findings(level, spec, state)
    if findings:
        raise Denied("does not meet the %s level: %s" % (level, "; ".join(findings)))
    return []


def edit_capabilities(spec, value):
    """capabilities: remove from all five sets the dropped ones ("ALL":
    every one) and, when `allow` is given, every one it does not list (an
    allowed one is never dropped). Never adds one."""
    drop = set(value.get("drop", ()))
    allow = set(value["allow"]) if "allow" in value else None

    def removed(item):
        name = capability_name(item) or item.upper()
        if allow is not None:
            return name not in allow
        return "ALL" in drop or name in drop
    process = spec.get("process")
    if not isinstance(process, dict) or process.get("capabilities") is None:
        return []
    caps = process["capabilities"]
    if not isinstance(caps, dict):
        raise InterceptorError("process.capabilities is not an object")
    changes = []
    for key in CAPABILITY_SETS:
        items = caps.get(key)
        if items is None:
            continue
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise InterceptorError("process.capabilities.%s is not a list of strings" % key)
        gone = [item for item in items if removed(item)]
        if gone:
            caps[key] = [item for item in items if item not in gone]
            changes.append("process.capabilities.%s: removed %s" % (key, ", ".join(gone)))
    return changes


def _resources(spec, key):
    """linux.resources.KEY, made if missing; InterceptorError for a shape
    that cannot take a limit."""
    linux = _member(spec, "linux", dict, "linux")
    resources = _member(linux, "resources", dict, "linux.resources")
    return _member(resources, key, dict, "linux.resources." + key)


def _limit_number(value):
    """A limit as written -> a number, or None for none (absent, 0, -1)."""
    number = json_float(value)
    return number if number is not None and number > 0 else None


def _shown(value):
    return "(none)" if value is None else _json_text(value)


def edit_limits(spec, limits):
    """limits: ceilings for pids, memory (bytes) and cpus. Set where the
    container has no limit or a higher one; a lower one stays. Values of
    the cgroup v2 `unified` map for the same files are clamped too."""
    changes = []
    if "pids" in limits:
        pids = _resources(spec, "pids")
        current = _limit_number(pids.get("limit"))
        if current is None or current > limits["pids"]:
            changes.append("linux.resources.pids.limit: %s -> %d" % (_shown(pids.get("limit")), limits["pids"]))
            pids["limit"] = limits["pids"]
    if "memory" in limits:
        ceiling = parse_bytes(limits["memory"])
        memory = _resources(spec, "memory")
        swap = _limit_number(memory.get("swap"))
        if swap is not None and swap < ceiling:
            ceiling = int(swap)         # memory+swap is lower still: the limit may not exceed it
        current = _limit_number(memory.get("limit"))
        if current is None or current > ceiling:
            changes.append("linux.resources.memory.limit: %s -> %d" % (_shown(memory.get("limit")), ceiling))
            memory["limit"] = ceiling
    if "cpus" in limits:
        cpus = json_float(limits["cpus"])
        cpu = _resources(spec, "cpu")
        quota, period = _limit_number(cpu.get("quota")), _limit_number(cpu.get("period"))
        if period is None or period > 1000000:
            period = 100000
        current = quota / period if quota is not None else None
        if current is None or current > cpus + 1e-9:
            new_period = int(period)
            new_quota = int(round(cpus * new_period))
            if new_quota < 1000:           # the kernel's smallest quota: 1 ms
                new_period, new_quota = 100000, int(round(cpus * 100000))
            changes.append("linux.resources.cpu: quota %s, period %s -> quota %d, period %d" % (
                _shown(cpu.get("quota")), _shown(cpu.get("period")), new_quota, new_period))
            cpu["quota"], cpu["period"] = new_quota, new_period
    changes.extend(_clamp_unified(spec, limits))
    return changes


def _clamp_unified(spec, limits):
    """cgroup v2 files the config sets directly (linux.resources.unified),
    which the runtime writes after the limits above."""
    unified = _dict_at(spec, "linux", "resources").get("unified")
    if not isinstance(unified, dict):
        return []
    changes = []
    wanted = {}
    if "pids" in limits:
        wanted["pids.max"] = str(limits["pids"])
    if "memory" in limits:
        limit = json_float(_dict_at(spec, "linux", "resources", "memory").get("limit"))
        wanted["memory.max"] = "%d" % limit if limit is not None else None
    if "cpus" in limits:
        cpu = _dict_at(spec, "linux", "resources", "cpu")
        wanted["cpu.max"] = "%d %d" % (cpu["quota"], cpu["period"]) if "quota" in cpu else None
    for name, ceiling in sorted(wanted.items()):
        if name not in unified or ceiling is None:
            continue
        value = unified[name]
        words = value.split() if isinstance(value, str) else []
        if name == "cpu.max":
            current = (float(words[0]) / float(words[1] if len(words) > 1 else 100000)
                       if words and words[0] != "max" and _is_number(words[0]) else None)
            keep = current is not None and current <= json_float(limits["cpus"]) + 1e-9
        else:
            keep = len(words) == 1 and _is_number(words[0]) and 0 < int(float(words[0])) <= int(ceiling)
        if not keep:
            unified[name] = ceiling
            changes.append("linux.resources.unified.%s: %s -> %s" % (name, _json_text(value), ceiling))
    return changes


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def edit_no_new_privileges(spec, enabled):
    """no-new-privileges: the process cannot gain privileges (setuid files,
    file capabilities)."""
    process = spec.get("process")
    if not enabled or not isinstance(process, dict) or process.get("noNewPrivileges") is True:
        return []
    process["noNewPrivileges"] = True
    return ["process.noNewPrivileges: set"]


def edit_readonly_rootfs(spec, enabled):
    """readonly-rootfs: the container's root filesystem is mounted read-only."""
    root = spec.get("root")
    if not enabled or root is None:
        return []
    if not isinstance(root, dict):
        raise InterceptorError("root is not an object")
    if root.get("readonly") is True:
        return []
    root["readonly"] = True
    return ["root.readonly: set"]
# [end on-demand: guardrails]


class Action(object):
    """A key a rule may have: how its value is checked, which edit applies
    it, and whether the edit needs the EditContext too."""

    def __init__(self, key, validate, edit, help, uses_context=False):
        self.key = key
        self.validate = validate
        self.edit = edit
        self.help = help
        self.uses_context = uses_context


# The pipeline: within a rule, actions apply in this order. CDI devices
# come first, as an engine applies them while it writes the config: the
# rule's other actions see their mounts, env and hooks and may change them.
ACTIONS = (
    Action("deny", _valid_deny, edit_deny,
           "MESSAGE: refuse the containers the rule selects: the runtime is not run, and "
           "`denied by rule NAME: MESSAGE` goes to stderr and the runtime's --log (so docker run, "
           "podman run and kubelet show it). Exit status 1."),
    Action("preset", _valid_preset, edit_preset,
           "\"baseline\" or \"restricted\": refuse the containers that do not meet this level "
           "(controls named like the Pod Security Standards; see the presets below), naming each "
           "control they break. A preset rule has no other action.",
           uses_context=True),
    Action("cdi-devices", _valid_cdi_device_names, edit_cdi_devices,
           "[\"vendor.com/class=name\", ...]: give the container these CDI (Container Device "
           "Interface) devices, as an engine with CDI does, from the spec files (*.json, *.yaml) of the "
           "setting \"cdi-spec-dirs\" (default: %s; a later directory wins): their device nodes, "
           "declared in linux.devices and allowed in linux.resources.devices, env, mounts, hooks and "
           "additional GIDs. A device not found refuses the container. Containers ask for devices "
           "themselves with cdi.k8s.io/* annotations (\"cdi-annotations\": false ignores them) and, when "
           "the setting \"cdi-env\" names a variable, with its value (comma-separated names)."
           % ", ".join(CDI_SPEC_DIRS), uses_context=True),
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
    Action("capabilities", _valid_capabilities_action, edit_capabilities,
           "{\"drop\": [CAP or \"ALL\", ...], \"allow\": [CAP, ...]}: remove the dropped "
           "capabilities, and every one `allow` does not list, from all five sets; never adds one."),
    Action("limits", _valid_limits, edit_limits,
           "{\"pids\": N, \"memory\": \"512m\", \"cpus\": 1.5}: ceilings, set where the container "
           "has no limit or a higher one (a lower one stays). Memory in bytes or with a k, m or g suffix."),
    Action("no-new-privileges", _valid_bool, edit_no_new_privileges,
           "true: the process cannot gain privileges (setuid programs, file capabilities)."),
    Action("readonly-rootfs", _valid_bool, edit_readonly_rootfs,
           "true: the root filesystem is mounted read-only."),
    Action("runtime-path", _valid_nonempty_string, edit_runtime_path,
           "PATH: run the containers the rule selects under this runtime (a bare name is looked "
           "up as --oi-runtime-path is; a relative path is relative to the config file). Every "
           "later call of such a container (exec, kill, delete, ...) goes to the same runtime.",
           uses_context=True),
)
_ACTION_ORDER = None


def actions_in_order(actions):
    """[(Action, value), ...] of a rule's actions (or a rule object's keys),
    in the order of ACTIONS; keys that name no action are left out. (Looks
    up each key rather than trying every action on every rule.)"""
    global _ACTION_ORDER
    if _ACTION_ORDER is None:
        _ACTION_ORDER = {action.key: (index, action) for index, action in enumerate(ACTIONS)}
    found = sorted(_ACTION_ORDER[key] for key in actions if key in _ACTION_ORDER)
    return [(action, actions[action.key]) for _, action in found]


def matching_rules(spec, policy, context=None):
    """The rules whose condition matches the config as the engine wrote it,
    after the CDI devices the container asks for itself (section 5a); a
    preset rule only when the config does not meet its level, the findings
    kept in the context for the rule's action."""
    context = context or EditContext()
    matched = cdi_request_rules(spec, policy)
    for rule in policy.rules:
        if not condition_matches(rule.when, spec, context):
            continue
        if "preset" in rule.actions:
            findings = preset_findings(rule.actions["preset"], spec, guardrail_state(context))
            guardrail_state(context).findings[rule.name] = findings
            if not findings:
                continue
        matched.append(rule)
    if context.guardrails is not None:
        context.guardrails.forget_spec()
    return matched


def apply_rules(spec, rules, context=None):
    """Apply each rule's actions in pipeline order; return the changes, each
    prefixed with the rule's name. A rule in warn or audit mode changes
    nothing and refuses nothing: what it would have done is noted in the
    context (see rehearse_rule). A refusal raises Denied naming the rule."""
    if not isinstance(spec, dict):
        raise InterceptorError("the config is not a JSON object")
    context = context or EditContext()
    changes = []
    for rule in rules:
        if rule.mode == "enforce":
            changes.extend(_apply_rule(spec, rule, context))
        else:
            rehearse_rule(spec, rule, context)
    return changes


def _apply_rule(spec, rule, context):
    context.rule = rule
    changes = []
    for action, value in actions_in_order(rule.actions):
        try:
            if action.uses_context:
                done = action.edit(spec, value, context)
            else:
                done = action.edit(spec, value)
        except Denied as exc:
            raise Denied(exc.reason, rule.name)
        except InterceptorError as exc:
            raise InterceptorError("rule %s: %s: %s" % (rule.name, action.key, exc))
        changes.extend("%s: %s" % (rule.name, change) for change in done)
    return changes


# [on-demand: guardrails]
class RuleNote(object):
    """What a rule in warn or audit mode would have done."""

    def __init__(self, rule, changes, refusal):
        self.rule = rule
        self.changes = changes      # ["what", ...] without the rule's name
        self.refusal = refusal      # why it would refuse the container, or None

    def text(self):
        if self.refusal is not None:
            return "rule %s (%s): would deny: %s" % (self.rule.name, self.rule.mode, self.refusal)
        return "rule %s (%s): would change: %s" % (self.rule.name, self.rule.mode, "; ".join(self.changes))


def rehearse_rule(spec, rule, context):
    """A rule in warn or audit mode: apply it to a copy, with a copy of the
    context (a runtime-path it names is not taken), and note what it would
    have done, if anything."""
    # deny and preset only judge: no copy is needed for a rule of only those.
    trial = spec if all(key in ("deny", "preset") for key in rule.actions) else _copy_json(spec)
    shadow = EditContext.__new__(EditContext)
    shadow.__dict__.update(context.__dict__)
    refusal, changes = None, []
    try:
        changes = _apply_rule(trial, rule, shadow)
    except Denied as exc:
        refusal = exc.reason
    except InterceptorError as exc:
        refusal = str(exc)
    if changes or refusal is not None:
        prefix = rule.name + ": "
        guardrail_state(context).notes.append(RuleNote(
            rule, [c[len(prefix):] if c.startswith(prefix) else c for c in changes], refusal))
# [end on-demand: guardrails]


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
    return path_normpath("/" + path.lstrip("/")) if path else path


def _is_under(path, parent):
    return path is not None and path != parent and (parent == "/" or path.startswith(parent + "/"))


# [on-demand: mounts]
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
# [end on-demand: mounts]


# ---------------------------------------------------------------------------
# 5a. Devices (CDI): the Container Device Interface, for engines without it
# ---------------------------------------------------------------------------
#
# A vendor tool writes a CDI spec file (JSON or YAML) to /etc/cdi or
# /var/run/cdi: a "kind" (vendor.com/class), "devices" with the edits each
# needs ("containerEdits": env, deviceNodes, mounts, hooks, additionalGids),
# and spec-wide edits applied once whenever one of its devices is asked for.
# Podman, containerd 1.7 and Docker 25 apply them; Docker 20.10 and
# containerd 1.6 do not, so the "cdi-devices" action does it here, as the
# reference library (cncf-tags/container-device-interface) does:
#   - directories in order, a later one winning for the same device; in
#     each, the *.json and *.yaml files (no subdirectories). A file that
#     cannot be read or is not a valid spec is skipped with a warning naming
#     it; two files of one directory defining one device make it unusable.
#     As root, a file or directory a non-root user can write is skipped too:
#     its hooks would run as root. Unknown fields are ignored (cdiVersion
#     0.3.0 up to 1.x is read), so a newer file still works.
#   - the edits of all the devices asked for (spec-wide ones once per spec)
#     apply by kind: env (replacing a variable's value), device nodes,
#     mounts, hooks, additional GIDs. A device node's type, major and minor
#     come from the host node (lstat of hostPath, else path) when the spec
#     leaves them out; it is declared in linux.devices (uid and gid those of
#     the process when the spec names none) and, for b and c, allowed in
#     linux.resources.devices ("rwm" unless "permissions" says otherwise;
#     "none": no access) -- so a systemd cgroup manager that rewrites device
#     rules later keeps it.
#   - differences, on purpose: mounts go where add-mounts puts them (the
#     engine's mounts are not re-sorted); an identical hook, cgroup rule or
#     GID is not added twice; env keeps one entry per variable; intelRdt,
#     netDevices and containerEdits.annotations are not applied.
# Nothing here runs unless a device is asked for: the spec directories are
# read on the first request of a call.

CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
CDI_SPEC_SUFFIXES = (".json", ".yaml")
# Container types of CRI sandboxes (containerd, CRI-O): a pod annotation
# reaches the sandbox's spec too, but devices are for app containers.
CDI_SANDBOX_ANNOTATIONS = (("io.kubernetes.cri.container-type", "sandbox"),
                           ("io.kubernetes.cri-o.ContainerType", "sandbox"))


def cdi_request_rules(spec, policy):
    """The devices a container asks for itself, each source as a rule that
    applies first, before the policy's own rules (see _cdi_request_rules).
    Only a container that asks loads this section's code."""
    annotations = spec.get("annotations")
    if ((policy.cdi_annotations and isinstance(annotations, dict)
         and any(key.startswith(CDI_ANNOTATION_PREFIX) for key in annotations))
            or cdi_env_names(spec, policy.cdi_env)):
        return _cdi_request_rules(spec, policy)
    return []


def cdi_env_names(spec, variable):
    """The device names the container's env variable lists (comma-separated;
    [] without the variable or without a name in it)."""
    if not variable:
        return []
    value = _env_values(spec).get(variable)
    return [item.strip() for item in (value or "").split(",") if item.strip()]


# [on-demand: cdi]
def parse_cdi_name(name):
    """"vendor.com/class=name" -> (vendor, class, name); ValueError saying
    what is wrong, as the reference parser checks it."""
    if not isinstance(name, str):
        raise ValueError("expected a device name string, found %s" % _json_text(name))
    kind, equals, device = name.partition("=")
    vendor, slash, class_ = kind.partition("/")
    if not (equals and slash and vendor and class_ and device):
        raise ValueError("%s is not a fully qualified CDI device name (vendor.com/class=name)"
                         % _quote_for_message(name))
    problem = _cdi_kind_problem(vendor, class_) or _cdi_device_name_problem(device)
    if problem:
        raise ValueError("%s: %s" % (_quote_for_message(name), problem))
    return vendor, class_, device


_CDI_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CDI_ALNUM = _CDI_LETTERS | frozenset("0123456789")


def _cdi_kind_problem(vendor, class_):
    """What is wrong with a vendor and class: letters, digits, _ - . only,
    a letter first and a letter or digit last; None when nothing is."""
    for what, part in (("vendor", vendor), ("class", class_)):
        problem = _cdi_name_problem(part, "_-.", letter_first=True)
        if problem:
            return "%s %s" % (what, problem)
    return None


def _cdi_device_name_problem(device):
    problem = _cdi_name_problem(device, "_-.:", letter_first=False)
    return "device name " + problem if problem else None


def _cdi_name_problem(part, inner, letter_first):
    if part[0] not in (_CDI_LETTERS if letter_first else _CDI_ALNUM):
        return "%s must start with a letter%s" % (_quote_for_message(part), "" if letter_first else " or digit")
    if part[-1] not in _CDI_ALNUM:
        return "%s must end with a letter or digit" % _quote_for_message(part)
    for c in part[1:-1]:
        if c not in _CDI_ALNUM and c not in inner:
            return "%s has the character %s" % (_quote_for_message(part), _quote_for_message(c))
    return None


# --- requests -------------------------------------------------------------------

def _cdi_request_rules(spec, policy):
    """The devices a container asks for itself, each source as a rule that
    applies first, before the policy's own rules (as an engine applies CDI
    when it writes the config): the annotations cdi.k8s.io/* (a
    comma-separated list of names each, as the reference library reads
    them; not for a CRI pod sandbox) and, when the policy names one, an env
    variable. A name that is not fully qualified refuses the container."""
    rules = []
    annotations = spec.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    if any(annotations.get(key) == value for key, value in CDI_SANDBOX_ANNOTATIONS):
        return rules
    if policy.cdi_annotations:
        for key in sorted(k for k in annotations if k.startswith(CDI_ANNOTATION_PREFIX)):
            value = annotations[key]
            where = "annotation %s" % key
            if not isinstance(value, str):
                raise InterceptorError("%s: expected a string of CDI device names" % where)
            rules.append(_cdi_request_rule(where, value.split(",")))
    names = cdi_env_names(spec, policy.cdi_env)
    if names:
        rules.append(_cdi_request_rule("env %s" % policy.cdi_env, names))
    return rules


def _cdi_request_rule(where, names):
    for name in names:
        try:
            parse_cdi_name(name)
        except ValueError as exc:
            raise InterceptorError("%s: %s" % (where, _message(exc)))
    return Rule("(cdi %s)" % where, None, {"cdi-devices": names}, "the container's " + where)


# --- spec files ----------------------------------------------------------------

class CdiEdits(object):
    """The containerEdits of a spec or a device, checked and in OCI terms."""

    def __init__(self):
        self.env = []           # NAME=VALUE
        self.nodes = []         # {"path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"}
        self.mounts = []        # OCI mounts
        self.hooks = []         # (stage, OCI hook)
        self.gids = []          # additional GIDs
        self.not_applied = []   # fields given that are not applied here

    def empty(self):
        return not (self.env or self.nodes or self.mounts or self.hooks or self.gids or self.not_applied)


class CdiSpec(object):
    def __init__(self, path, kind, edits, devices, version):
        self.path = path
        self.kind = kind
        self.edits = edits          # spec-wide CdiEdits
        self.devices = devices      # {name: CdiEdits}, in file order
        self.version = version


def read_cdi_specs(directories, warn=True):
    """The CdiCache of these spec directories."""
    return CdiCache(directories, warn)


class CdiCache(object):
    """The devices of the spec directories, read once (on the first request
    of a call). devices: {qualified name: (CdiSpec, CdiEdits)}; skipped:
    [(file or directory, why)], each also a warning."""

    def __init__(self, directories, warn=True):
        self.directories = list(directories)
        self.devices = {}
        self.conflicts = {}         # qualified name -> the files of one directory that define it
        self.skipped = []
        self._warn = warn
        for directory in self.directories:
            self._scan(directory)

    def _skip(self, path, why):
        self.skipped.append((path, why))
        if self._warn:
            report_warning("cdi spec %s: skipped, %s" % (path, why))

    def _scan(self, directory):
        try:
            st = posix.stat(directory)
        except OSError as exc:
            import errno
            if exc.errno != errno.ENOENT:
                self._skip(directory, exc.strerror)
            return
        if (st.st_mode & _S_IFMT) != _S_IFDIR:
            self._skip(directory, "not a directory")
            return
        try:
            _check_trusted(directory, st, "cdi spec dir")
            names = sorted(posix.listdir(directory))
        except ConfigError as exc:
            self._skip(directory, _message(exc).partition(": ")[2])
            return
        except OSError as exc:
            self._skip(directory, exc.strerror)
            return
        here = {}
        for name in names:
            path = directory.rstrip("/") + "/" + name
            if not name.endswith(CDI_SPEC_SUFFIXES):
                continue
            try:
                if (posix.lstat(path).st_mode & _S_IFMT) == _S_IFDIR:
                    continue
                spec = read_cdi_spec(path)
            except (ValueError, InterceptorError, OSError) as exc:
                why = getattr(exc, "strerror", None) or _message(exc)
                self._skip(path, why[len("cannot read %s: " % path):] if why.startswith("cannot read ") else why)
                continue
            for device, edits in spec.devices.items():
                qualified = spec.kind + "=" + device
                if qualified in here:
                    self.conflicts.setdefault(qualified, [here[qualified]]).append(path)
                    self.devices.pop(qualified, None)
                    continue
                here[qualified] = path
                self.conflicts.pop(qualified, None)     # a later directory wins
                self.devices[qualified] = (spec, edits)

    def device(self, name):
        """(CdiSpec, CdiEdits) of a qualified name, or InterceptorError
        naming the device and the directories searched."""
        if name in self.conflicts:
            raise InterceptorError("CDI device %s is defined by more than one spec file of a directory (%s): "
                                   "refusing to choose" % (name, ", ".join(self.conflicts[name])))
        found = self.devices.get(name)
        if found is None:
            skipped = "; skipped: %s" % ", ".join(path for path, _ in self.skipped) if self.skipped else ""
            raise InterceptorError("CDI device %s: not found in the CDI spec dirs %s%s"
                                   % (name, ", ".join(self.directories) or "(none)", skipped))
        return found


def read_cdi_spec(path):
    """A CDI spec file -> CdiSpec; ValueError (or InterceptorError) saying
    what is wrong. *.json is JSON; *.yaml is read by the YAML subset below
    (or as JSON when it holds JSON). As root the file must be root's."""
    raw, st = read_config(path, follow_symlinks=True)
    try:
        _check_trusted(path, st, "cdi spec")
    except ConfigError as exc:
        raise ValueError(_message(exc).partition(": ")[2])
    if path.endswith(".json"):
        data = parse_json(raw)
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("invalid UTF-8 at byte %d" % exc.start)
        text = text[1:] if text.startswith("\ufeff") else text          # a BOM, as YAML allows
        data = parse_json(text.encode("utf-8")) if text.lstrip().startswith("{") else parse_yaml_subset(text)
    return cdi_spec_from_data(data, path)


def cdi_spec_from_data(data, path):
    fields = _cdi_fields(data, "", ("cdiVersion", "kind", "devices", "containerEdits"))
    version = fields.get("cdiVersion")
    _check_cdi_version(version)
    kind = fields.get("kind")
    vendor, slash, class_ = kind.partition("/") if isinstance(kind, str) else ("", "", "")
    if not (vendor and slash and class_):
        raise ValueError("kind: expected vendor.com/class, found %s" % _json_text(kind))
    problem = _cdi_kind_problem(vendor, class_)
    if problem:
        raise ValueError("kind: %s" % problem)
    edits = _cdi_edits(fields.get("containerEdits"), "containerEdits")
    devices = {}
    items = fields.get("devices")
    if not isinstance(items, list) or not items:
        raise ValueError("devices: expected a non-empty list of devices")
    for index, item in enumerate(items):
        where = "devices[%d]" % index
        device = _cdi_fields(item, where, ("name", "containerEdits"))
        name = _cdi_string(device.get("name"), where + ".name")
        problem = _cdi_device_name_problem(name) if name else "a device needs a name"
        if problem:
            raise ValueError("%s.name: %s" % (where, problem))
        if name in devices:
            raise ValueError("%s.name: a device named %s exists already" % (where, _quote_for_message(name)))
        device_edits = _cdi_edits(device.get("containerEdits"), where + ".containerEdits")
        if device_edits.empty():
            raise ValueError("%s.containerEdits: a device needs at least one edit" % where)
        devices[name] = device_edits
    return CdiSpec(path, kind, edits, devices, version)


def _check_cdi_version(version):
    """cdiVersion 0.3.0 up to 1.x: the versions in use (0.3.0 is the first
    the reference library reads; a 2.x could change what fields mean)."""
    parts = version.split(".") if isinstance(version, str) else []
    if len(parts) != 3 or not all(p and all(c in "0123456789" for c in p) for p in parts):
        raise ValueError("cdiVersion: expected a version such as \"0.6.0\", found %s" % _json_text(version))
    numbers = tuple(int(p) for p in parts)
    if numbers < (0, 3, 0) or numbers[0] > 1:
        raise ValueError("cdiVersion: %s is not read here (0.3.0 up to 1.x are)" % version)


_CDI_EDIT_FIELDS = ("env", "deviceNodes", "mounts", "hooks", "additionalGids", "intelRdt", "netDevices",
                    "annotations")
_CDI_NOT_APPLIED = ("intelRdt", "netDevices", "annotations")


def _cdi_edits(data, where):
    edits = CdiEdits()
    if data is None:
        return edits
    fields = _cdi_fields(data, where, _CDI_EDIT_FIELDS)
    edits.env = _cdi_env_list(fields.get("env"), where + ".env")
    for index, node in enumerate(_cdi_list(fields.get("deviceNodes"), where + ".deviceNodes")):
        edits.nodes.append(_cdi_device_node(node, "%s.deviceNodes[%d]" % (where, index)))
    for index, mount in enumerate(_cdi_list(fields.get("mounts"), where + ".mounts")):
        edits.mounts.append(_cdi_mount(mount, "%s.mounts[%d]" % (where, index)))
    for index, hook in enumerate(_cdi_list(fields.get("hooks"), where + ".hooks")):
        edits.hooks.append(_cdi_hook(hook, "%s.hooks[%d]" % (where, index)))
    for index, gid in enumerate(_cdi_list(fields.get("additionalGids"), where + ".additionalGids")):
        edits.gids.append(_cdi_uint(gid, "%s.additionalGids[%d]" % (where, index), 32))
    edits.not_applied = [key for key in _CDI_NOT_APPLIED if fields.get(key) not in (None, [], {})]
    return edits


def _cdi_fields(data, where, known):
    """The known fields of a CDI object, matched as Go's JSON reader matches
    them (ignoring case); other fields are ignored. null is as absent."""
    if not isinstance(data, dict):
        raise ValueError("%sexpected an object, found %s" % (where + ": " if where else "", _json_text(data)))
    by_lower = dict((name.lower(), name) for name in known)
    fields = {}
    for key, value in data.items():
        name = by_lower.get(key.lower())
        if name is None:
            continue
        if name in fields:
            raise ValueError("%s%s: given twice (field names ignore case)" % (where + "." if where else "", name))
        elif isinstance(value, YamlAmbiguous):
            raise ValueError("%s%s: %s" % (where + "." if where else "", name, value.problem()))
        elif value is not None:
            fields[name] = value
    return fields


def _cdi_list(value, where):
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError("%s: expected a list, found %s" % (where, _json_text(value)))
    return value


def _cdi_string(value, where, default=""):
    if value is None:
        return default
    if isinstance(value, YamlAmbiguous):
        raise ValueError("%s: %s" % (where, value.problem()))
    if not isinstance(value, str):
        raise ValueError("%s: expected a string, found %s" % (where, _json_text(value)))
    return value


def _cdi_strings(value, where):
    items = _cdi_list(value, where)
    for index, item in enumerate(items):
        _cdi_string(item, "%s[%d]" % (where, index))
    return list(items)


def _cdi_env_list(value, where):
    items = _cdi_strings(value, where)
    for index, item in enumerate(items):
        if item.find("=") <= 0:
            raise ValueError("%s[%d]: expected NAME=VALUE, found %s" % (where, index, _json_text(item)))
    return items


def _cdi_uint(value, where, bits):
    if isinstance(value, YamlAmbiguous):
        raise ValueError("%s: %s" % (where, value.problem()))
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << bits:
        raise ValueError("%s: expected a whole number from 0 to %d, found %s" % (where, (1 << bits) - 1,
                                                                                 _json_text(value)))
    return value


def _cdi_device_node(data, where):
    fields = _cdi_fields(data, where, ("path", "hostPath", "type", "major", "minor", "fileMode",
                                          "permissions", "uid", "gid"))
    node = {"path": _cdi_string(fields.get("path"), where + ".path"),
            "hostPath": _cdi_string(fields.get("hostPath"), where + ".hostPath"),
            "type": _cdi_string(fields.get("type"), where + ".type"),
            "major": _cdi_uint(fields.get("major", 0), where + ".major", 63),
            "minor": _cdi_uint(fields.get("minor", 0), where + ".minor", 63),
            "permissions": _cdi_string(fields.get("permissions"), where + ".permissions")}
    for key in ("fileMode", "uid", "gid"):
        node[key] = _cdi_uint(fields[key], where + "." + key, 32) if key in fields else None
    if not node["path"]:
        raise ValueError("%s.path: a device node needs a path" % where)
    if node["type"] not in ("", "b", "c", "u", "p"):
        raise ValueError("%s.type: expected b, c, u or p, found %s" % (where, _json_text(node["type"])))
    permissions = node["permissions"]
    if permissions != "none" and permissions.strip("rwm"):
        raise ValueError("%s.permissions: expected some of r, w, m (or none), found %s"
                         % (where, _json_text(permissions)))
    return node


def _cdi_mount(data, where):
    fields = _cdi_fields(data, where, ("hostPath", "containerPath", "options", "type"))
    host = _cdi_string(fields.get("hostPath"), where + ".hostPath")
    container = _cdi_string(fields.get("containerPath"), where + ".containerPath")
    if not host or not container:
        raise ValueError("%s: a mount needs a hostPath and a containerPath" % where)
    mount = {"destination": container}
    mount_type = _cdi_string(fields.get("type"), where + ".type")
    if mount_type:
        mount["type"] = mount_type
    mount["source"] = host
    options = _cdi_strings(fields.get("options"), where + ".options")
    if options:
        mount["options"] = options
    return mount


def _cdi_hook(data, where):
    fields = _cdi_fields(data, where, ("hookName", "path", "args", "env", "timeout"))
    stage = _cdi_string(fields.get("hookName"), where + ".hookName")
    if stage not in HOOK_STAGES:
        raise ValueError("%s.hookName: expected one of %s, found %s"
                         % (where, ", ".join(HOOK_STAGES), _json_text(stage)))
    hook = {"path": _cdi_string(fields.get("path"), where + ".path")}
    if not hook["path"]:
        raise ValueError("%s.path: a hook needs a path" % where)
    args = _cdi_strings(fields.get("args"), where + ".args")
    if args:
        hook["args"] = args
    env = _cdi_env_list(fields.get("env"), where + ".env")
    if env:
        hook["env"] = env
    if "timeout" in fields:
        timeout = fields["timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int):
            raise ValueError("%s.timeout: expected a whole number of seconds, found %s" % (where, _json_text(timeout)))
        hook["timeout"] = timeout
    return stage, hook


# --- a YAML subset, for the YAML files vendor tools write --------------------------
#
# Vendor tools (nvidia-ctk, the reference library's WriteSpec) write CDI
# specs as YAML by default. No YAML reader ships with Python, so this reads
# the part of YAML those files use and refuses, with the line, anything
# else: block mappings and lists (a list may sit at its key's indentation),
# "- key: value" items, one-line flow lists and mappings ([a, b], {k: v}),
# plain, 'single' and "double" quoted scalars (a plain one may continue on
# more indented lines), comments, a leading "---" and a final "...". It
# refuses anchors, aliases, tags, block scalars (| >), "? " keys, several
# documents, tabs in indentation, duplicate keys, and every plain scalar
# that YAML 1.1 readers (Go's, which the engines use) and YAML 1.2 readers
# read differently -- yes, no, on, off, 0644, 0x1F, 1_000, 1.5, 12:30,
# dates: quote it. A plain true, false, null, ~ or decimal integer is typed;
# every other plain scalar is a string.

MAX_YAML_DEPTH = 64


def parse_yaml_subset(text):
    """YAML text -> the JSON-like value it holds; ValueError "line N: ..."."""
    return _YamlReader(text).document()


class _YamlReader(object):

    def __init__(self, text):
        self.lines = []             # [lineno, indent, content] of lines that hold something
        started = ended = False
        for lineno, line in enumerate(text.split("\n"), 1):
            line = line.rstrip(" \t\r")
            content = line.lstrip(" ")
            indent = len(line) - len(content)
            if content.startswith("\t"):
                self.fail(lineno, "a tab in the indentation (YAML indents with spaces)")
            if not content or content.startswith("#"):
                continue
            if ended:
                self.fail(lineno, "content after the document end \"...\"")
            if indent == 0 and (content == "---" or content.startswith("--- ")):
                if started or self.lines:
                    self.fail(lineno, "a second document (one spec per file)")
                started = True
                content = _yaml_strip_comment(content[3:])
                if not content:
                    continue
                indent = 4                  # "--- {a: 1}": the document on its marker line
            if indent == 0 and (content == "..." or content.startswith("... #")):
                ended = True
                continue
            if indent == 0 and content.startswith("%"):
                self.fail(lineno, "a directive (%s) is not supported" % content.split()[0])
            self.lines.append([lineno, indent, content])
        self.pos = 0
        self.depth = 0

    @staticmethod
    def fail(lineno, problem):
        raise ValueError("line %d: %s" % (lineno, problem))

    def document(self):
        if not self.lines:
            raise ValueError("no content")
        value = self.node(0)
        if self.pos < len(self.lines):
            self.fail(self.lines[self.pos][0], "unexpected indentation")
        return value

    def node(self, min_indent):
        """The block node starting at the current line."""
        lineno, indent, content = self.lines[self.pos]
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            self.fail(lineno, "nested deeper than %d levels" % MAX_YAML_DEPTH)
        try:
            if _is_yaml_item(content):
                return self.sequence(indent)
            if self.mapping_entry(content, lineno) is not None:
                return self.mapping(indent)
            self.pos += 1
            return self.scalar_lines(content, lineno, indent - 1)
        finally:
            self.depth -= 1

    def line_at(self, indent):
        """The next line of the block at this indentation, as (lineno,
        content); None at the block's end (no more lines, or one indented
        less). A line indented more is an error."""
        if self.pos >= len(self.lines):
            return None
        lineno, line_indent, content = self.lines[self.pos]
        if line_indent < indent:
            return None
        if line_indent > indent:
            self.fail(lineno, "unexpected indentation")
        return lineno, content

    def mapping(self, indent):
        result = {}
        while True:
            line = self.line_at(indent)
            if line is None:
                break
            lineno, content = line
            entry = self.mapping_entry(content, lineno)
            if entry is None:
                self.fail(lineno, "expected KEY: VALUE" if not _is_yaml_item(content)
                          else "a list item where a mapping key belongs")
            key, rest = entry
            if key in result:
                self.fail(lineno, "duplicate key %s" % _quote_for_message(key))
            self.pos += 1
            if rest:
                result[key] = self.scalar_lines(rest, lineno, indent)
            elif self.pos < len(self.lines) and self.lines[self.pos][1] > indent:
                result[key] = self.node(indent + 1)
            elif (self.pos < len(self.lines) and self.lines[self.pos][1] == indent
                  and _is_yaml_item(self.lines[self.pos][2])):
                result[key] = self.sequence(indent)         # a list at its key's indentation
            else:
                result[key] = None
        return result

    def sequence(self, indent):
        items = []
        while True:
            line = self.line_at(indent)
            if line is None:
                break
            lineno, content = line
            if not _is_yaml_item(content):
                break                       # the key after a list at its key's indentation
            rest = content[1:].lstrip(" ")
            if not rest or rest.startswith("#"):
                self.pos += 1
                if self.pos < len(self.lines) and self.lines[self.pos][1] > indent:
                    items.append(self.node(indent + 1))
                else:
                    items.append(None)
                continue
            # "- key: value" or "- - x": the rest is a node at its own column.
            column = indent + len(content) - len(rest)
            self.lines[self.pos] = [lineno, column, rest]
            items.append(self.node(column))
        return items

    def mapping_entry(self, content, lineno):
        """(key, rest of the line) when the line is KEY: VALUE, else None."""
        if content.startswith(("? ", "?\t")) or content == "?":
            self.fail(lineno, "\"? \" keys are not supported")
        if content[0] in "\"'":
            key, end = _yaml_quoted(content, 0, lineno)
            rest = content[end:].lstrip(" ")
            if not rest.startswith(":") or not (len(rest) == 1 or rest[1] == " "):
                return None
            return key, _yaml_strip_comment(rest[1:])
        if content[0] in "[{" or _is_yaml_item(content):
            return None
        index = 0
        while True:
            index = content.find(":", index)
            if index < 0:
                return None
            comment = content.find(" #")
            if 0 <= comment < index:
                return None
            if index + 1 == len(content) or content[index + 1] == " ":
                break
            index += 1
        key = content[:index].rstrip(" ")
        if not key:
            self.fail(lineno, "an empty key")
        if key[0] in "&*!|>%@`" or key == "<<":
            self.fail(lineno, "%s is not supported in a key" % _quote_for_message(key[0] if key != "<<" else key))
        return key, _yaml_strip_comment(content[index + 1:])

    def scalar_lines(self, text, lineno, parent_indent):
        """A value on its line: a flow collection, a quoted scalar, or a
        plain scalar that may continue on lines indented deeper than its
        parent (folded into one line with spaces)."""
        value, end = _yaml_flow_value(text, 0, lineno, flow=False)
        rest = text[end:].lstrip(" ")
        if rest and not rest.startswith("#"):
            self.fail(lineno, "unexpected %s after the value" % _quote_for_message(rest[:20]))
        if isinstance(value, _YamlPlain):
            parts = [value.text]
            while (not rest and self.pos < len(self.lines) and self.lines[self.pos][1] > parent_indent
                   and self.mapping_entry(self.lines[self.pos][2], self.lines[self.pos][0]) is None
                   and not _is_yaml_item(self.lines[self.pos][2])):
                more_lineno, _, more = self.lines[self.pos]
                more_value, more_end = _yaml_flow_value(more, 0, more_lineno, flow=False)
                if not isinstance(more_value, _YamlPlain):
                    self.fail(more_lineno, "a plain scalar continues with a quoted or flow value")
                rest = more[more_end:].lstrip(" ")
                parts.append(more_value.text)
                self.pos += 1
            return _yaml_resolve(" ".join(parts), lineno)
        return value


class _YamlPlain(object):
    """A plain scalar's text, typed once its extent is known."""

    def __init__(self, text):
        self.text = text


def _is_yaml_item(content):
    return content == "-" or content.startswith(("- ", "-\t"))


def _yaml_strip_comment(text):
    text = text.strip(" ")
    return "" if text.startswith("#") else text


_YAML_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
                 "r": "\r", "e": "\x1b", " ": " ", "\"": "\"", "/": "/", "\\": "\\", "N": "\x85",
                 "_": "\xa0", "L": "\u2028", "P": "\u2029"}
_YAML_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}


def _yaml_quoted(text, start, lineno):
    """A quoted scalar starting at text[start] -> (string, end index)."""
    quote = text[start]
    out = []
    i = start + 1
    while i < len(text):
        c = text[i]
        if c == quote:
            if quote == "'" and text[i + 1:i + 2] == "'":
                out.append("'")
                i += 2
                continue
            return "".join(out), i + 1
        if quote == "\"" and c == "\\":
            code = text[i + 1:i + 2]
            if code in _YAML_ESCAPES:
                out.append(_YAML_ESCAPES[code])
                i += 2
                continue
            if code in _YAML_HEX_ESCAPES:
                digits = text[i + 2:i + 2 + _YAML_HEX_ESCAPES[code]]
                if len(digits) != _YAML_HEX_ESCAPES[code] or not all(d in "0123456789abcdefABCDEF" for d in digits):
                    raise ValueError("line %d: a bad \\%s escape" % (lineno, code))
                number = int(digits, 16)
                if 0xD800 <= number <= 0xDFFF or number > 0x10FFFF:
                    raise ValueError("line %d: \\%s%s is not a character" % (lineno, code, digits))
                out.append(chr(number))
                i += 2 + len(digits)
                continue
            raise ValueError("line %d: an unknown escape \\%s" % (lineno, code or "(end of line)"))
        if c < " " and c != "\t":
            raise ValueError("line %d: a control character in a quoted string" % lineno)
        out.append(c)
        i += 1
    raise ValueError("line %d: a quoted string must end on its line" % lineno)


def _yaml_flow_value(text, i, lineno, flow, depth=0):
    """The value at text[i:] -> (value, end). flow: inside [ ] or { }."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None, i
    c = text[i]
    if depth > MAX_YAML_DEPTH:
        raise ValueError("line %d: nested deeper than %d levels" % (lineno, MAX_YAML_DEPTH))
    if c in "\"'":
        return _yaml_quoted(text, i, lineno)
    if c in "[{":
        close, what = ("]", "a [ list") if c == "[" else ("}", "a { mapping")
        collection = [] if c == "[" else {}
        i += 1
        while True:
            while i < len(text) and text[i] == " ":
                i += 1
            if text[i:i + 1] == close:
                return collection, i + 1
            if i >= len(text):
                raise ValueError("line %d: %s must end on its line" % (lineno, what))
            if c == "[":
                value, i = _yaml_flow_value(text, i, lineno, True, depth + 1)
                collection.append(_yaml_typed(value, lineno))
            else:
                key, i = _yaml_flow_value(text, i, lineno, True, depth + 1)
                key = key.text if isinstance(key, _YamlPlain) else key
                if not isinstance(key, str) or not key:
                    raise ValueError("line %d: a { mapping key must be a string" % lineno)
                if key in collection:
                    raise ValueError("line %d: duplicate key %s" % (lineno, _quote_for_message(key)))
                while i < len(text) and text[i] == " ":
                    i += 1
                value = None
                if text[i:i + 1] == ":":
                    value, i = _yaml_flow_value(text, i + 1, lineno, True, depth + 1)
                    value = _yaml_typed(value, lineno)
                collection[key] = value
            while i < len(text) and text[i] == " ":
                i += 1
            if text[i:i + 1] == ",":
                i += 1
            elif i >= len(text):
                raise ValueError("line %d: %s must end on its line" % (lineno, what))
            elif text[i] != close:
                raise ValueError("line %d: expected , or %s in %s" % (lineno, close, what))
    if c in "&*!":
        raise ValueError("line %d: anchors, aliases and tags (%s) are not supported" % (lineno, c))
    if c in "|>":
        raise ValueError("line %d: block scalars (| and >) are not supported: write the value on one line, "
                         "quoted" % lineno)
    if c in "%@`" or (c in "-?:" and text[i + 1:i + 2] in ("", " ")) or (flow and c in ",]}"):
        raise ValueError("line %d: a value cannot start with %s: quote it" % (lineno, _quote_for_message(c)))
    start = i
    while i < len(text):
        c = text[i]
        if c == "#" and text[i - 1] == " ":
            break
        if c == ":" and (i + 1 == len(text) or text[i + 1] == " " or (flow and text[i + 1] in ",[]{}")):
            if not flow:
                raise ValueError("line %d: ': ' in a plain value: quote it" % lineno)
            break
        if flow and c in ",[]{}":
            break
        i += 1
    return _YamlPlain(text[start:i].rstrip(" ")), i


def _yaml_typed(value, lineno):
    return _yaml_resolve(value.text, lineno) if isinstance(value, _YamlPlain) else value


_YAML_AMBIGUOUS = None


class YamlAmbiguous(object):
    """A plain scalar YAML readers read differently (YAML 1.1 as Go's
    yaml.v2, YAML 1.2): an error only where a spec field is read from it,
    so a field this program ignores may hold one."""

    def __init__(self, text, lineno):
        self.text = text
        self.lineno = lineno

    def problem(self):
        return ("line %d: the plain value %s is read differently by YAML readers (a boolean, number or date "
                "to some): quote it" % (self.lineno, _quote_for_message(self.text)))


def _yaml_resolve(text, lineno):
    """A plain scalar's value: null, a boolean, a decimal integer, a string,
    or YamlAmbiguous for text YAML readers disagree on."""
    global _YAML_AMBIGUOUS
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    digits = text[1:] if text.startswith("-") else text
    if digits and all(c in "0123456789" for c in digits) and (digits == "0" or digits[0] != "0"):
        return int(text)
    if _YAML_AMBIGUOUS is None:
        import re
        _YAML_AMBIGUOUS = re.compile(
            r"(y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF|<<|=)$"        # YAML 1.1 booleans, keys
            r"|[-+]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[0-9][0-9_]*)$"  # integers: 0644, 1_000, +5
            r"|[-+]?([0-9][0-9_]*\.[0-9_]*|\.[0-9][0-9_]*)([eE][-+]?[0-9]+)?$"   # floats
            r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"
            r"|[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?$"                    # sexagesimal: 12:30
            r"|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?([Tt ]|$)"            # dates
            r"|[-+]?\.(inf|Inf|INF)$|\.(nan|NaN|NAN)$")
    if _YAML_AMBIGUOUS.match(text):
        return YamlAmbiguous(text, lineno)
    return text


def cdi_report_lines(cache, devices):
    """For --oi-dry-run and --oi-check-config: each device (name, spec
    file) with what of it is not applied here, and each file skipped."""
    lines = []
    for name, path in devices:
        not_applied = []
        if cache is not None and name in cache.devices:
            cdi_spec, edits = cache.devices[name]
            not_applied = sorted(set(cdi_spec.edits.not_applied + edits.not_applied))
        lines.append("cdi device: %s (%s)%s" % (name, path, "; not applied: " + ", ".join(not_applied)
                                                 if not_applied else ""))
    for path, why in cache.skipped if cache is not None else ():
        lines.append("cdi spec skipped: %s: %s" % (path, why))
    for name, paths in sorted(cache.conflicts.items()) if cache is not None else ():
        lines.append("cdi device unusable: %s is defined by %s" % (name, ", ".join(paths)))
    return lines


# --- the edits -----------------------------------------------------------------

def inject_cdi_devices(spec, names, context):
    """The "cdi-devices" edit: resolve the names in the spec directories
    (read on first use), then apply the spec-wide edits of each spec once
    and each device's edits, kind by kind as the reference library does."""
    if context.cdi_cache is None:
        context.cdi_cache = CdiCache(context.cdi_spec_dirs)
    edits = []
    specs = set()
    for name in names:
        cdi_spec, device_edits = context.cdi_cache.device(name)
        if (name, cdi_spec.path) not in context.cdi_resolved:
            context.cdi_resolved.append((name, cdi_spec.path))
        if id(cdi_spec) not in specs:
            specs.add(id(cdi_spec))
            edits.append(("cdi %s (spec-wide)" % cdi_spec.kind, cdi_spec.edits))
        edits.append(("cdi " + name, device_edits))
    changes = []

    def note(label, done):
        changes.extend("%s: %s" % (label, change) for change in done)

    for label, edit in edits:
        note(label, _set_env(spec, edit.env, force=True))
    for label, edit in edits:
        for node in edit.nodes:
            note(label, _add_cdi_device_node(spec, node))
    for label, edit in edits:
        if edit.mounts:
            note(label, edit_add_mounts(spec, edit.mounts))
    for label, edit in edits:
        hooks = {}
        for stage, hook in edit.hooks:
            hooks.setdefault(stage, []).append(hook)
        if hooks:
            note(label, _add_hooks(spec, hooks, prepend=False))
    for label, edit in edits:
        note(label, _add_additional_gids(spec, edit.gids))
    return changes


def cdi_host_device(path):
    """(type, major, minor) of a host device node, by lstat as the
    reference library reads it: "b", "c" or "p"."""
    try:
        st = posix.lstat(path)
    except OSError as exc:
        raise InterceptorError("cannot stat the host device %s: %s" % (path, exc.strerror))
    kind = {0o060000: "b", 0o020000: "c", 0o010000: "p"}.get(st.st_mode & _S_IFMT)     # S_IFBLK, S_IFCHR, S_IFIFO
    if kind is None:
        raise InterceptorError("the host path %s is not a device node" % path)
    return kind, posix.major(st.st_rdev), posix.minor(st.st_rdev)


def _cdi_device_numbers(node):
    """A node's type, major and minor, filled in from the host node
    (hostPath, else path) where the spec leaves them out."""
    kind, major, minor = node["type"], node["major"], node["minor"]
    if kind and (major != 0 or kind == "p"):
        return kind, major, minor
    host = node["hostPath"] or node["path"]
    host_kind, host_major, host_minor = cdi_host_device(host)
    if not kind:
        kind = host_kind
    elif kind != host_kind:
        raise InterceptorError("device %s: the spec says type %s, the host node %s is %s"
                               % (node["path"], kind, host, host_kind))
    if major == 0 and kind != "p":
        major, minor = host_major, host_minor
    return kind, major, minor


def _add_cdi_device_node(spec, node):
    """Declare a device node in linux.devices (one per path) and, for a
    block or char device, allow it in linux.resources.devices."""
    kind, major, minor = _cdi_device_numbers(node)
    device = {"path": node["path"], "type": kind, "major": major, "minor": minor}
    process = spec.get("process")
    user = process.get("user") if isinstance(process, dict) else None
    user = user if isinstance(user, dict) else {}
    for key in ("fileMode", "uid", "gid"):
        value = node[key]
        if value is None and key != "fileMode":
            owner = user.get(key)
            value = owner if isinstance(owner, int) and not isinstance(owner, bool) and owner > 0 else None
        if value is not None:
            device[key] = value
    linux = _member(spec, "linux", dict, "linux")
    devices = _member(linux, "devices", list, "linux.devices")
    path = _clean_path(node["path"])
    same = [i for i, d in enumerate(devices) if isinstance(d, dict) and isinstance(d.get("path"), str)
            and _clean_path(d["path"]) == path]
    changes = []
    if not (len(same) == 1 and json_equal(devices[same[0]], device)):
        for index in reversed(same):
            del devices[index]
        devices.append(device)
        changes.append("linux.devices: %s %s (%s %d:%d%s)" % (
            "replaced" if same else "added", node["path"], kind, major, minor,
            ", host " + node["hostPath"] if node["hostPath"] and node["hostPath"] != node["path"] else ""))
    if kind in ("b", "c"):
        access = node["permissions"] or "rwm"
        if access == "none":
            access = ""
        rule = {"allow": True, "type": kind, "major": major, "minor": minor}
        if access:
            rule["access"] = access
        resources = _member(linux, "resources", dict, "linux.resources")
        rules = _member(resources, "devices", list, "linux.resources.devices")
        if not _cgroup_rule_in_force(rules, rule):
            rules.append(rule)
            changes.append("linux.resources.devices: allowed %s %d:%d %s" % (kind, major, minor, access or "(none)"))
    return changes


def _cgroup_rule_in_force(rules, rule):
    """Is this exact rule there, with no later deny rule that covers its
    device? (Later rules win; an allow before a deny-all is no allow.)"""
    for index in range(len(rules) - 1, -1, -1):
        old = rules[index]
        if json_equal(old, rule):
            return True
        if isinstance(old, dict) and old.get("allow") is False and _cgroup_rule_covers(old, rule):
            return False
    return False


def _cgroup_rule_covers(old, rule):
    def wild(value, wanted):
        return value is None or value == -1 or json_equal(value, wanted)
    return (old.get("type") in (None, "", "a", rule["type"]) and wild(old.get("major"), rule["major"])
            and wild(old.get("minor"), rule["minor"]))


def _add_additional_gids(spec, gids):
    """process.user.additionalGids, each once; 0 ignored, as the reference
    library does."""
    gids = [gid for gid in gids if gid != 0]
    process = spec.get("process")
    if not gids or process is None:
        return []
    if not isinstance(process, dict):
        raise InterceptorError("process is not an object")
    user = process.get("user")
    if user is None:
        user = process["user"] = {"uid": 0, "gid": 0}
    if not isinstance(user, dict):
        raise InterceptorError("process.user is not an object")
    present = _member(user, "additionalGids", list, "process.user.additionalGids")
    changes = []
    for gid in gids:
        if not any(json_equal(gid, old) for old in present):
            present.append(gid)
            changes.append("process.user.additionalGids: added %d" % gid)
    return changes
# [end on-demand: cdi]


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


class _ConfigScan(_ScanContext):
    """The scan of a config.json, noting whether some object has keys that
    Go could read differently (check_keys_as_go_reads_them's key rules on
    that object alone): without one, and with no more brackets than
    MAX_CONFIG_DEPTH, that check has nothing to find (parse_config)."""

    def __init__(self):
        self.suspect = False

    def object_pairs_hook(self, pairs):
        obj = dict(pairs)
        if len(obj) != len(pairs):
            _object_without_duplicates(pairs)           # names the duplicate key
        if not (self.suspect or SPEC_FIELDS.issuperset(obj)) and _struct_keys_problem(obj, None):
            self.suspect = True
        return obj


def _c_json():
    """The standard library's C JSON module, _json, or None. Where it is an
    extension module in the interpreter's lib-dynload directory, it is
    loaded from its file there: an import would first list that directory
    and the standard library's own, which costs more than the loading."""
    if "_json" in sys.modules:
        module = sys.modules["_json"]
    else:
        module = None
        if "_json" not in sys.builtin_module_names:
            try:
                module = _load_extension_module("_json")
            except Exception:  # pragma: no cover - an interpreter laid out otherwise: import it
                module = None
        if module is None:
            try:
                import _json as module
            except ImportError:  # pragma: no cover - interpreters without _json
                return None
    if not all(hasattr(module, name) for name in _C_JSON_NAMES):
        return None
    return module


_C_JSON_NAMES = ("make_scanner", "make_encoder", "encode_basestring", "encode_basestring_ascii")


def _load_extension_module(name):
    """The extension module name loaded from the lib-dynload directory on
    sys.path, created and run as its import would (the same _imp calls,
    without the import system's locks and bookkeeping: a fifth of the
    cost); None where it is not there."""
    import _imp
    for directory in sys.path:
        if directory.endswith("/lib-dynload"):
            for suffix in _imp.extension_suffixes():
                path = "%s/%s%s" % (directory, name, suffix)
                try:
                    found = posix.stat(path).st_mode & 0o170000 == 0o100000
                except OSError:
                    found = False
                if found:
                    spec = sys.modules["_frozen_importlib"].ModuleSpec(name, None, origin=path)
                    module = _imp.create_dynamic(spec)
                    module.__spec__, module.__file__ = spec, path
                    _imp.exec_dynamic(module)
                    sys.modules[name] = module
                    return module
    return None


_scanner = None


def _json_scanner(context=None):
    """The C scanner of _ScanContext (made once), or of context."""
    global _scanner
    if context is None and _scanner is not None:
        return _scanner
    c_json = _c_json()
    if c_json is not None:
        make_scanner = c_json.make_scanner
    else:  # pragma: no cover - interpreters without _json
        from json.scanner import make_scanner
    scanner = make_scanner(context or _ScanContext())
    if context is None:
        _scanner = scanner
    return scanner


_JSON_WHITESPACE = " \t\n\r"


def parse_json(raw, context=None):
    """Bytes -> a JSON value, or ValueError with a one-line reason: the
    same value and the same messages as json.loads. context: a
    _ScanContext whose object_pairs_hook builds the objects."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError("invalid UTF-8 at byte %d" % exc.start)
    start = len(text) - len(text.lstrip(_JSON_WHITESPACE))
    if not text.startswith("\ufeff"):
        try:
            value, end = _json_scanner(context)(text, start)
        except RecursionError:
            raise ValueError("nested deeper than %d levels; refusing it" % MAX_CONFIG_DEPTH)
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
        return json.loads(text, object_pairs_hook=(context or _ScanContext).object_pairs_hook,
                          parse_float=RawNumber, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError("%s: line %d column %d" % (exc.msg, exc.lineno, exc.colno))
    except RecursionError:
        raise ValueError("nested deeper than %d levels; refusing it" % MAX_CONFIG_DEPTH)


def parse_config(raw, path):
    """Bytes of a config.json -> dict, or InterceptorError naming the problem."""
    scan = _ConfigScan()
    try:
        spec = parse_json(raw, scan)
    except ValueError as exc:
        raise InterceptorError("cannot parse %s: %s" % (path, exc))
    if not isinstance(spec, dict):
        raise InterceptorError("%s is not a JSON object" % path)
    # A nesting deeper than MAX_CONFIG_DEPTH needs more brackets than that.
    if scan.suspect or raw.count(b"{") + raw.count(b"[") > MAX_CONFIG_DEPTH:
        problem = check_keys_as_go_reads_them(spec)
        if problem:
            raise InterceptorError("%s: %s" % (path, problem))
    return spec


# runc reads config.json with Go's encoding/json, which matches an object's
# keys to the runtime-spec's fields ignoring case, with Unicode folding
# ("mount\u017f" is "mounts", the Kelvin sign is "k"), and lets the last of
# two such keys win. A "Mounts" after "mounts" would be the mounts runc uses,
# unseen by every rule. So a config whose struct objects have two keys that
# fold together, or a key that folds to a field name without being spelled
# like it, is refused. (crun's parser matches keys exactly.) The names are
# every JSON field of the runtime-spec's specs-go types.
SPEC_FIELDS = frozenset("""
    ociVersion process root hostname domainname mounts hooks annotations linux solaris windows
    vm zos terminal consoleSize user args commandLine env cwd capabilities rlimits
    noNewPrivileges apparmorProfile oomScoreAdj scheduler selinuxLabel ioPriority policy nice
    priority flags runtime deadline period bounding effective inheritable permitted ambient
    class height width uid gid umask additionalGids username path readonly destination type
    source options uidMappings gidMappings timeout prestart createRuntime createContainer
    startContainer poststart poststop sysctl resources cgroupsPath namespaces devices seccomp
    rootfsPropagation maskedPaths readonlyPaths mountLabel intelRdt personality timeOffsets
    netDevices containerID hostID size secs nanosecs hard soft pageSize limit name major minor
    weight leafWeight rate weightDevice throttleReadBpsDevice throttleWriteBpsDevice
    throttleReadIOPSDevice throttleWriteIOPSDevice reservation swap kernel kernelTCP swappiness
    disableOOMKiller useHierarchy checkBeforeUpdate shares quota burst realtimeRuntime
    realtimePeriod cpus mems idle classID priorities hcaHandles hcaObjects memory cpu pids
    blockIO hugepageLimits network rdma unified fileMode allow access domain milestone limitpriv
    maxShmMemory anet cappedCPU cappedMemory ncpus physical linkname lowerLink allowedAddress
    configureAllowedAddress defrouter linkProtection macAddress layerFolders credentialSpec
    servicing ignoreFlushesDuringBoot hyperv id idType storage count maximum iops bps
    sandboxSize endpointList allowUnqualifiedDNSQuery DNSSearchList networkSharedContainerName
    networkNamespace utilityVMPath hypervisor image parameters initrd format defaultAction
    defaultErrnoRet architectures listenerPath listenerMetadata syscalls index value valueTwo
    op names action errnoRet closID schemata l3CacheSchema memBwSchema enableCMT enableMBM
""".split())
# Fields whose value is a map (keys are data, matched exactly by Go), and
# whether the map's values are structs; credentialSpec is free JSON.
_MAP_FIELDS = {"annotations": False, "sysctl": False, "unified": False, "rdma": True,
               "timeOffsets": True, "netDevices": True, "credentialSpec": None}
# The characters outside ASCII that Go folds to an ASCII letter besides the
# Kelvin sign, which str.lower() folds already (dotless i is folded too,
# which only refuses more).
_FOLD_TO_ASCII = {0x17F: "s", 0x131: "i"}
_FOLDED_FIELDS = None
# How deeply a config may nest. runc accepts up to 10000 levels; real
# configs nest about 8 deep, and our writer recurses once per level.
MAX_CONFIG_DEPTH = 256


def _go_fold(key):
    return key.translate(_FOLD_TO_ASCII).lower()


_CONTAINER_TYPES = frozenset((dict, list))


# [on-demand: go-keys]
def check_keys_as_go_reads_them(spec):
    """None, or the first problem: a nesting deeper than MAX_CONFIG_DEPTH,
    or keys of a runtime-spec object that Go would read differently from
    us (see SPEC_FIELDS). spec: as parse_json makes it (plain dicts and
    lists)."""
    # (value, depth, path, kind): path is None for the top, else (the
    # parent's path, key or index), made text only for a message; kind
    # "struct" (key rules apply), "map" (a map of structs) or "data" (no
    # key rules).
    stack = [(spec, 1, None, "struct")]
    while stack:
        value, depth, path, kind = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            top = _path_where(path).partition(".")[0].partition("[")[0]
            return "nested deeper than %d levels (under %s); refusing it" % (MAX_CONFIG_DEPTH, _json_text(top))
        if isinstance(value, list):
            if not _CONTAINER_TYPES.isdisjoint(map(type, value)):
                for index, item in enumerate(value):
                    if isinstance(item, (dict, list)):
                        stack.append((item, depth + 1, (path, index), kind))
            continue
        if kind == "struct":
            problem = _struct_keys_problem(value, path)
            if problem:
                return problem
        if _CONTAINER_TYPES.isdisjoint(map(type, value.values())):
            continue        # (screened at C speed: most lists and objects hold no other)
        for key, item in value.items():
            if not isinstance(item, (dict, list)):
                continue
            if kind == "struct":
                if key not in SPEC_FIELDS:
                    child = "data"
                elif key in _MAP_FIELDS:
                    child = "map" if _MAP_FIELDS[key] else "data"
                else:
                    child = "struct"
            else:
                child = "struct" if kind == "map" else "data"
            stack.append((item, depth + 1, (path, key), child))
    return None
# [end on-demand: go-keys]


def _path_where(path):
    """A path of check_keys_as_go_reads_them as text: "linux.devices[2]"."""
    steps = []
    while path is not None:
        path, step = path
        steps.append(step)
    where = ""
    for step in reversed(steps):
        if isinstance(step, int):
            where = "%s[%d]" % (where, step)
        else:
            where = (where + "." if where else "") + step
    return where


def _struct_keys_problem(obj, path):
    if SPEC_FIELDS.issuperset(obj):
        return None     # only fields, spelled as such (no two fields fold together)
    global _FOLDED_FIELDS
    where = _path_where(path)
    seen = {}
    for key in obj:
        folded = _go_fold(key)
        if folded in seen:
            return ("%s%s and %s are one key to runc (Go's JSON matches keys ignoring case); "
                    "refusing the config" % (where + ": " if where else "", _ascii_key(seen[folded]),
                                             _ascii_key(key)))
        seen[folded] = key
        if key in SPEC_FIELDS or not folded.isalnum():
            continue    # a field itself, or (a dot, a dash: a sysctl name) no field's fold
        if _FOLDED_FIELDS is None:
            # (_go_fold of an ASCII name, as every field's is)
            _FOLDED_FIELDS = {name.lower(): name for name in SPEC_FIELDS}
        field = _FOLDED_FIELDS.get(folded)
        if field is not None and field != key:
            return ("%s%s: runc reads it as %s (Go's JSON matches keys ignoring case); refusing a key "
                    "not spelled as the runtime-spec field" % (where + ": " if where else "",
                                                               _ascii_key(key), _ascii_key(field)))
    return None


def _ascii_key(key):
    """A key quoted for a message, anything outside ASCII escaped: a Kelvin
    sign must not look like a K."""
    return '"%s"' % key.encode("ascii", "backslashreplace").decode("ascii")


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
    for encode_string, encoding in ((encode_basestring, "utf-8"), (encode_basestring_ascii, "ascii")):
        text = _encode_compact(spec, layout, encode_string)
        if text is None:
            out = []
            _encode_value(spec, out, layout, 0, encode_string)
            text = "".join(out)
        if layout.final_newline:
            text += "\n"
        try:
            return text.encode(encoding)
        except UnicodeEncodeError:
            # A lone surrogate (from a \udXXX escape) cannot be UTF-8: escape all.
            continue


def _encode_compact(value, layout, encode_string):
    """The text _encode_value writes for an unindented layout, written by
    the standard library's C encoder (most engines write config.json so),
    or None where it does not apply: an indented layout, a RawNumber or
    anything else only _encode_value writes (or refuses)."""
    c_json = _c_json()
    if layout.indent is not None or c_json is None:
        return None
    make_encoder = c_json.make_encoder

    def not_plain(value):
        raise TypeError("not a plain JSON value")
    try:
        return "".join(make_encoder(None, not_plain, encode_string, None, layout.key_sep, layout.item_sep,
                                    False, False, False)(value, 0))
    except Exception:
        return None


def _string_encoders():
    c_json = _c_json()
    if c_json is not None:
        return c_json.encode_basestring, c_json.encode_basestring_ascii
    from json.encoder import py_encode_basestring, py_encode_basestring_ascii  # pragma: no cover
    return py_encode_basestring, py_encode_basestring_ascii  # pragma: no cover


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


# [on-demand: guardrails]
def json_float(value):
    """A JSON number as a float (None for anything else, and for what no
    float can hold)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, RawNumber)):
        return None
    try:
        number = float(value.text if isinstance(value, RawNumber) else value)
    except (ValueError, OverflowError):
        return None
    return number if number == number and number not in (float("inf"), float("-inf")) else None
# [end on-demand: guardrails]


def _number(value):
    from decimal import Decimal
    return Decimal(value.text) if isinstance(value, RawNumber) else value


def json_equal(a, b):
    """Equality as JSON means it: true is not 1, 1 equals 1.0, order of
    object members does not matter, order of array items does."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if type(a) is int and type(b) is int:
        return a == b                   # exact, and no Decimal to import
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


# [on-demand: json-patch]
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
# [end on-demand: json-patch]


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
    flags = posix.O_RDONLY | posix.O_NONBLOCK | posix.O_CLOEXEC
    if not follow_symlinks:
        flags |= posix.O_NOFOLLOW
    try:
        fd = posix.open(path, flags)
    except OSError as exc:
        import errno
        if exc.errno == errno.ELOOP and not follow_symlinks:
            raise ReadError("cannot read %s: it is a symlink; refusing to edit through it" % path)
        raise ReadError("cannot read %s: %s" % (path, exc.strerror), exc.errno)
    try:
        st = posix.fstat(fd)
        if (st.st_mode & 0o170000) != 0o100000:
            raise ReadError("cannot read %s: not a regular file" % path)
        # One read of the size fstat gives (plus one byte, to see the end
        # at once); a read of more than the file holds allocates it all.
        chunks, want = [], st.st_size + 1 if st.st_size < (1 << 24) else 1 << 20
        while True:
            chunk = posix.read(fd, want)
            if not chunk:
                break
            chunks.append(chunk)
            want = 1 << 20
        return b"".join(chunks), st
    except OSError as exc:
        raise ReadError("cannot read %s: %s" % (path, exc.strerror), exc.errno)
    finally:
        posix.close(fd)


_TEMP_MARK = ".oi-tmp-"


def write_atomically(path, data, st=None, mode=0o600, durable=True, mtime_ns=None):
    """Replace path with data: a temp file in the same directory, written,
    given the original's mode and owner (st; without it, `mode` and our own
    owner) and, if given, this modification time, then renamed over path.
    Either the complete old or the complete new file is there, never a mix.
    durable: the temp file is fsynced before
    the rename and the directory after it, so that the new file also
    survives a crash of the machine; without it, a crash may leave the old
    file or, on some filesystems, an empty one. Uses posix only."""
    directory, name = path_split(path)
    _remove_stale_temp_files(directory, name)
    temp = path_join(directory, ".%s%s%d-%s" % (name, _TEMP_MARK, posix.getpid(), posix.urandom(4).hex()))
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | getattr(posix, "O_CLOEXEC", 0)
    try:
        fd = posix.open(temp, flags, 0o600)
    except OSError as exc:
        raise InterceptorError("cannot write %s: %s" % (path, exc.strerror))
    try:
        try:
            view = memoryview(data)
            while view:
                written = posix.write(fd, view)
                view = view[written:]
            if st is not None and (st.st_uid, st.st_gid) != (posix.geteuid(), posix.getegid()):
                posix.fchown(fd, st.st_uid, st.st_gid)
            posix.fchmod(fd, st.st_mode & 0o7777 if st is not None else mode)
            if mtime_ns is not None:
                posix.utime(fd, ns=(mtime_ns, mtime_ns))
            if durable:
                posix.fsync(fd)
        finally:
            posix.close(fd)
        posix.rename(temp, path)
    except OSError as exc:
        try:
            posix.unlink(temp)
        except OSError:
            pass
        raise InterceptorError("cannot write %s: %s" % (path, exc.strerror))
    if durable:
        _fsync_directory(directory)


def _fsync_directory(directory):
    try:
        fd = posix.open(directory or ".", posix.O_RDONLY | getattr(posix, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        posix.fsync(fd)
    except OSError:
        pass
    finally:
        posix.close(fd)


def _remove_stale_temp_files(directory, name):
    """Remove temp files left by a writer that was killed mid-write."""
    prefix = "." + name + _TEMP_MARK
    try:
        entries = posix.listdir(directory or ".")
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].partition("-")[0]
        if pid.isdigit() and int(pid) != posix.getpid() and not _process_exists(int(pid)):
            try:
                posix.unlink(path_join(directory, entry))
            except OSError:
                pass


def _process_exists(pid):
    try:
        posix.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class EditResult(object):
    def __init__(self, path, raw, stat, spec, rules, changes, new_raw, parsed, context, denied=None):
        self.path = path
        self.raw = raw              # the config as read
        self.stat = stat            # its os.stat_result
        self.spec = spec            # after the edits
        self.rules = rules          # the rules that matched
        self.changes = changes
        self.new_raw = new_raw      # what is (or would be) written; None: unchanged
        self.parsed = parsed        # PRETTY form before edits, when asked for
        self.context = context      # the EditContext: a rule's runtime-path, ...
        self.denied = denied        # the Denied of the rule that refuses the container, or None

    @property
    def notes(self):
        """What the rules in warn and audit mode would have done."""
        return self.context.guardrails.notes if self.context.guardrails is not None else []

    @property
    def verdict(self):
        return "denied" if self.denied is not None else "changed" if self.changes else "allowed"

    @property
    def systemd(self):
        """Does the container run in systemd mode (our mark is on it)?"""
        annotations = self.spec.get("annotations")
        return isinstance(annotations, dict) and annotations.get(SYSTEMD_ANNOTATION) == "true"


def plan_edit(call, policy, keep_parsed=False):
    """Read the call's config and apply the matching rules in memory.
    keep_parsed: also keep the config as parsed, before the edits, in PRETTY
    layout (for debug output and dry runs)."""
    path = call.config_path
    raw, st = read_config(path)
    spec = parse_config(raw, path)
    parsed = serialize_config(spec, PRETTY) if keep_parsed else None
    context = EditContext(call.container_id, cdi_spec_dirs=policy.cdi_spec_dirs)
    context.bundle = path_abspath(call.bundle or ".")
    rules = matching_rules(spec, policy, context)
    denied = None
    try:
        changes = apply_rules(spec, rules, context)
    except Denied as exc:
        changes, denied = [], exc
    new_raw = None
    if changes:
        new_raw = serialize_config(spec, Layout.of(raw))
        if new_raw == raw:
            new_raw = None
    return EditResult(path, raw, st, spec, rules, changes, new_raw, parsed, context, denied)


def edit_bundle(call, policy):
    """Edit the call's config in place (only when something changed), and
    keep debug copies if asked. Returns (EditResult, the runtime to run),
    the runtime found before anything is written. Rules in warn mode say
    what they would have done (a warning each); a container a rule refuses
    raises its Denied, with the EditResult as its `result`, nothing written
    but the debug copies."""
    runtime = find_runtime(policy.runtime_path)
    result = plan_edit(call, policy, keep_parsed=policy.write_debug_output)
    for note in result.notes:
        if note.rule.mode == "warn":
            report_warning(note.text(), call)
    if result.context.runtime_path is not None and result.denied is None:
        runtime = find_runtime(result.context.runtime_path)
    if result.new_raw is not None:
        # Not fsynced: the runtime reads it at once, from the page cache, and
        # engines write a new config.json for every create (containerd and
        # Podman do not fsync theirs either).
        write_atomically(result.path, result.new_raw, result.stat, durable=False)
    if policy.write_debug_output:
        name = debug_file_stem(result.spec.get("hostname"), call.container_id)
        files = [(name + "_original.json", result.raw), (name + "_parsed.json", result.parsed)]
        if result.changes:
            files.append((name + "_modified.json", serialize_config(result.spec, PRETTY)))
        write_debug_files(policy.debug_output_dir, files)
    if result.denied is not None:
        result.denied.result = result
        raise result.denied
    return result, runtime


# ---------------------------------------------------------------------------
# 8. Records: which runtime (and mode) each container was created with
# ---------------------------------------------------------------------------
#
# A call that names an existing container (start, exec, kill, delete, ...)
# must reach the runtime that created it, whatever has become of the policy
# since: a rule's runtime-path may have sent it elsewhere, and the config
# file may be broken, changed or gone. So, as root, create records what the
# later calls cannot work out without the policy: the runtime, when it is not
# the one the command line alone names (--oi-runtime-path, else runc), and
# whether the container runs in systemd mode (kill translates SIGTERM). One
# small file per container, keyed by the runtime's --root and the container
# id (an id may exist under two roots), in STATE_DIR/containers (0600 files
# in 0700 directories, root's; anything else there is ignored). A container
# that needs no record leaves none, so plain deployments write nothing.
# delete removes the record once the runtime has deleted the container; a
# record left by a crash is harmless (a runtime says the container does not
# exist) and is removed by a later create once its container is gone.

RECORDS_SUBDIR = "containers"
RECORD_MAGIC = "oci-interceptor-container 1"
# A record younger than this is kept even while its container's state is
# missing: its create may still be running.
RECORD_GRACE_SECONDS = 600
# Where runc, crun and youki keep state when no --root is given (as root).
DEFAULT_RUNTIME_ROOTS = ("/run/runc", "/run/crun", "/run/youki")


class ContainerRecord(object):
    def __init__(self, runtime, systemd=False):
        self.runtime = runtime      # absolute path of the runtime that created it
        self.systemd = systemd      # created in systemd mode

    def encode(self):
        return ("%s\nruntime %s\nsystemd %s\n" % (RECORD_MAGIC, self.runtime, "yes" if self.systemd else "no")
                ).encode("utf-8", "surrogateescape")

    @classmethod
    def decode(cls, raw):
        lines = raw.decode("utf-8", "surrogateescape").split("\n")
        if len(lines) < 3 or lines[0] != RECORD_MAGIC or not lines[1].startswith("runtime /"):
            return None
        return cls(lines[1][len("runtime "):], lines[2] == "systemd yes")


def state_dir():
    return getenv(STATE_DIR_ENV) or STATE_DIR


def _records_dir():
    return state_dir() + "/" + RECORDS_SUBDIR


_RECORD_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def record_name(root, container_id):
    """A file name for (root, id) that no two keys share: each escaped
    (%XX for bytes outside [A-Za-z0-9._-]) and joined by "@"; a digest when
    that is too long for a file name."""
    def escape(text):
        return "".join(c if c in _RECORD_NAME_CHARS else "".join("%%%02X" % b for b in c.encode(
            "utf-8", "surrogateescape")) for c in text)
    name = "%s@%s" % (escape(root or ""), escape(container_id))
    if len(name) > 200 or name.startswith("."):
        import hashlib
        name = "sha256-" + hashlib.sha256(name.encode("ascii")).hexdigest()
    return name


def _trusted_record_dir(directory, create=False):
    """Is directory root's with mode 0700 (made so when create)?"""
    try:
        if create:
            for path in (state_dir(), directory):
                try:
                    posix.mkdir(path, 0o700)
                except FileExistsError:
                    pass
        st = posix.lstat(directory)
    except OSError:
        return False
    return (st.st_mode & _S_IFMT) == _S_IFDIR and st.st_uid == 0 and st.st_mode & 0o7777 == 0o700


# [on-demand: lifecycle]
def read_record(root, container_id):
    """The container's record, or None (none, not root's, unreadable)."""
    if posix.geteuid() != 0 or not container_id:
        return None
    directory = _records_dir()
    try:
        raw, st = read_config(directory + "/" + record_name(root, container_id))
    except ReadError:
        return None
    if st.st_uid != 0 or st.st_mode & 0o7777 != 0o600 or not _trusted_record_dir(directory):
        return None
    return ContainerRecord.decode(raw)
# [end on-demand: lifecycle]


def write_record(root, container_id, record):
    """Record how the container was created, or remove an old record of the
    same key when record is None. Best effort, with a warning: a container
    whose record could not be written still runs (its later calls then go
    where the policy says)."""
    if posix.geteuid() != 0 or not container_id:
        return
    directory = _records_dir()
    path = directory + "/" + record_name(root, container_id)
    if record is None:
        try:
            posix.unlink(path)
        except OSError:
            pass
        return
    if not _trusted_record_dir(directory, create=True):
        report_warning("cannot record the runtime of container %s: %s is not root's with mode 0700"
                       % (_quote_for_message(container_id), directory))
        return
    try:
        write_atomically(path, record.encode(), mode=0o600)
    except InterceptorError as exc:
        report_warning("cannot record the runtime of container %s: %s" % (_quote_for_message(container_id), exc))
        return
    # Passthrough records that disagree no longer hold for every container.
    _forget_passthrough_records(record)
    _remove_stale_records(directory)


# Passthrough records (remember_passthrough, section 10) let the shell
# preamble serve calls that edit nothing. Each stands on the config file's
# trust as Python last checked it, for PASSTHROUGH_WINDOW seconds: its
# expires-NAME file holds until when, in whole seconds of /proc/uptime (the
# boot-time clock, which no setting of the date moves), which the shell
# reads without a process.

def passthrough_paths(name):
    """The record of program name NAME, and its expires file."""
    return "%s/passthrough-%s" % (state_dir(), name), "%s/expires-%s" % (state_dir(), name)


def _uptime():
    """Whole seconds of /proc/uptime, or None."""
    try:
        fd = posix.open("/proc/uptime", posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            return int(posix.read(fd, 64).split(b".")[0])
        finally:
            posix.close(fd)
    except (OSError, ValueError):
        return None


def open_passthrough_window(expires, since):
    """The config file's trust was checked at `since` (whole seconds of
    /proc/uptime): its record stands until PASSTHROUGH_WINDOW seconds
    after. The shell reads the file as it is rewritten in place: a partly
    written number is smaller, so the window is shut, never longer; and it
    takes a number more than PASSTHROUGH_WINDOW seconds ahead of its own
    clock (written before a reboot, or by a caller with another boot-time
    clock) for a shut window too."""
    if since is None or not _trusted_record_dir(state_dir()):
        return
    fd = posix.open(expires, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC,
                    0o600)
    try:
        if posix.fstat(fd).st_uid == 0:
            posix.fchmod(fd, 0o600)
            posix.write(fd, b"%d\n" % (since + PASSTHROUGH_WINDOW))
    finally:
        posix.close(fd)


def read_passthrough_record(record):
    """(its stat, its bytes) when the record is a file of root's (not
    followed through a symlink), else None."""
    try:
        fd = posix.open(record, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except OSError:
        return None
    try:
        record_st = posix.fstat(fd)
        if record_st.st_uid != 0 or (record_st.st_mode & _S_IFMT) != 0o100000:
            return None
        return record_st, posix.read(fd, 1 << 16)
    finally:
        posix.close(fd)


def passthrough_record(policy, identity):
    """What a passthrough record of this policy holds: the program's
    version, the config file, the runtime to exec, and the file's identity
    (for Python alone)."""
    return "%s %s\n%s\n%s\n%s\n" % (PASSTHROUGH_MAGIC, __version__, policy.config_path, policy.runtime_path, identity)


def passthrough_identity(st):
    """The record's last line, which only Python reads: what tells the file
    it was made from from any other, or from itself after a change."""
    return "%d:%d:%d:%d:%d:%d:%d:%o" % (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                                        st.st_uid, st.st_gid, st.st_mode)


def refresh_passthrough_window(argv0, policy):
    """After a create, which refuses a config file it does not trust: when
    the passthrough record was made from this very file, unchanged since
    (the same identity, its change time included), let it stand
    PASSTHROUGH_WINDOW seconds more, so that the calls that follow a create
    (start, delete) skip Python. Best effort."""
    st = policy.config_stat
    if st is None or posix.geteuid() != 0 or policy.write_debug_output or policy.uses_systemd:
        return
    record, expires = passthrough_paths((argv0 or "").rpartition("/")[2])
    try:
        identity = passthrough_identity(st)
        found = read_passthrough_record(record)
        if (found and found[1] == passthrough_record(policy, identity).encode("utf-8", "surrogateescape")
                and passthrough_identity(posix.lstat(policy.config_path)) == identity):
            now = _uptime()
            # The file's trust was checked when the create began, within a second.
            open_passthrough_window(expires, None if now is None else now - 1)
    except OSError:
        pass


# [on-demand: records-gc]
def runtime_of_root(root):
    """The runtime every recorded container under this --root has, if they
    all have the same one (for calls that name no container: list)."""
    if posix.geteuid() != 0 or not root:
        return None
    directory = _records_dir()
    prefix = record_name(root, "")
    try:
        names = [n for n in posix.listdir(directory) if n.startswith(prefix)]
    except OSError:
        return None
    runtimes = set()
    for name in names:
        record = read_record(root, _unescape(name[len(prefix):]))
        if record is not None:
            runtimes.add(record.runtime)
    if len(runtimes) == 1:
        runtime = runtimes.pop()
        if _is_executable_file(runtime):
            return runtime
    return None


def _forget_passthrough_records(record):
    """Remove the passthrough records that would send a call naming this
    container elsewhere than its record says (another runtime, or no
    systemd mode), with their expires files."""
    directory = state_dir()
    try:
        names = posix.listdir(directory)
    except OSError:
        return
    for name in names:
        if not name.startswith("passthrough-") or _TEMP_MARK in name:
            continue
        agrees = False
        if not record.systemd:
            try:
                lines = read_config(directory + "/" + name)[0].decode("utf-8", "surrogateescape").split("\n")
                agrees = len(lines) > 2 and find_runtime(lines[2]) == record.runtime
            except InterceptorError:
                pass
        if not agrees:
            for path in (name, "expires-" + name[len("passthrough-"):]):
                try:
                    posix.unlink(directory + "/" + path)
                except OSError:
                    pass


def records_agree(runtime):
    """Does every container record say what a plain call would do anyway:
    this runtime, no systemd mode? (Then the shell fast path may serve
    calls that name a container.)"""
    directory = _records_dir()
    try:
        names = posix.listdir(directory)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    for name in names:
        if _TEMP_MARK in name:
            continue
        try:
            record = ContainerRecord.decode(read_config(directory + "/" + name)[0])
        except ReadError:
            continue
        if record is not None and (record.systemd or record.runtime != runtime):
            return False
    return True


def _remove_stale_records(directory):
    """Remove the records whose container is gone: no state of it under
    its --root (or the runtimes' default roots), after the grace time.
    Runs in every create that writes a record, so it imports nothing (on
    a host whose containers outlive the grace time, importing os and
    urllib.parse would cost more than the whole create)."""
    import time
    now = time.time()
    try:
        names = posix.listdir(directory)
    except OSError:
        return
    for name in names:
        root, at, escaped_id = name.rpartition("@")
        if not at or _TEMP_MARK in name:
            continue
        try:
            if now - posix.lstat(directory + "/" + name).st_mtime < RECORD_GRACE_SECONDS:
                continue
            container_id = _unescape(escaped_id)
            roots = [_unescape(root)] if root else DEFAULT_RUNTIME_ROOTS
            if all(_surely_gone(path_join(r, container_id)) for r in roots if r.startswith("/")):
                posix.unlink(directory + "/" + name)
        except (OSError, ValueError):
            continue


def _surely_gone(path):
    """Is nothing at path, as lstat says (ENOENT, ENOTDIR)? Any other
    error keeps the record. A name the file system encoding cannot encode
    (an ASCII locale: the id's bytes were not UTF-8 to Python, but
    record_name wrote them as such) is looked up as its UTF-8 bytes."""
    try:
        try:
            posix.lstat(path)
        except UnicodeEncodeError:
            posix.lstat(path.encode("utf-8", "surrogateescape"))
    except (FileNotFoundError, NotADirectoryError):
        return True
    except (OSError, ValueError):
        return False
    return False


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _unescape(text):
    """A part of a record name as it was before record_name escaped it, as
    urllib.parse.unquote(text, errors="surrogateescape") reads it: each run
    of %XX escapes is UTF-8 (undecodable bytes as surrogates), a "%" not
    followed by two hex digits stays as it is."""
    if "%" not in text:
        return text
    parts = text.split("%")
    out = [parts[0]]
    run = bytearray()
    for part in parts[1:]:
        if len(part) >= 2 and _HEX_DIGITS.issuperset(part[:2]):
            run.append(int(part[:2], 16))
            rest = part[2:]
        else:
            rest = "%" + part
        if rest:
            out.append(run.decode("utf-8", "surrogateescape"))
            out.append(rest)
            run = bytearray()
    out.append(run.decode("utf-8", "surrogateescape"))
    return "".join(out)
# [end on-demand: records-gc]


# ---------------------------------------------------------------------------
# 9. Reporting: errors to stderr and the runtime's --log; debug output
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


def format_log_line(message, log_format, level="error"):
    """A line as runc itself writes to its --log file."""
    quoted = _string_encoders()[1](message)
    if log_format == "json":
        return '{"level":"%s","msg":%s,"time":"%s"}\n' % (level, quoted, _utc_timestamp())
    return 'time="%s" level=%s msg=%s\n' % (_utc_timestamp(), level, quoted)


def report_error(message, call):
    """One line to stderr and, when the runtime was given --log, to that file."""
    _report("%s: %s" % (PROG, _one_line(message)), call, "error")


_warned = set()


def report_warning(message, call=None):
    """One line to stderr (and to the runtime's --log when call is given);
    the same warning only once per call."""
    if message in _warned:
        return
    _warned.add(message)
    _report("%s: warning: %s" % (PROG, _one_line(message)), call, "warning")


def _report(line, call, level):
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    if call is None or not call.log_path:
        return
    try:
        fd = posix.open(call.log_path, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | getattr(posix, "O_CLOEXEC", 0),
                        0o644)
    except OSError:
        return
    try:
        if not _same_file_as_stderr(fd):
            posix.write(fd, format_log_line(line, call.log_format, level).encode("utf-8", "backslashreplace"))
    except OSError:
        pass
    finally:
        posix.close(fd)


def _same_file_as_stderr(fd):
    try:
        a, b = posix.fstat(fd), posix.fstat(2)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


_SAFE_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def debug_file_stem(hostname, container_id):
    """A file name stem that can never leave the debug directory:
    HOSTNAME_ID (either alone when the other is empty), each part's
    characters outside [A-Za-z0-9._-] made "_" and cut to 128, so two
    containers of one hostname never share debug files."""
    parts = [p for p in (hostname if isinstance(hostname, str) else None, container_id) if p] or ["unknown"]
    name = "_".join("".join(c if c in _SAFE_NAME_CHARS else "_" for c in part)[:128] for part in parts)
    if name.startswith("."):
        name = "_" + name[1:]
    return name


# [on-demand: debug-output]
def _open_debug_dir(directory):
    """An fd of the debug directory, created 0700 if missing. Never through a
    symlink, and only a directory of our own that no one else can write:
    another user's directory could hold FIFOs or links in our names."""
    import errno
    try:
        os.makedirs(directory, 0o700)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(directory, flags)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise OSError(exc.errno, "it is a symlink or not a directory")
        raise
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        os.close(fd)
        raise OSError(errno.EPERM, "refusing it: owner uid %d, mode %04o (it must be ours and "
                                   "writable by no one else)" % (st.st_uid, st.st_mode & 0o7777))
    return fd


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
        # O_NONBLOCK: a FIFO in that name fails at once instead of blocking.
        flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
                 | getattr(os, "O_CLOEXEC", 0))
        fd = os.open("runtime_calls.log", flags, 0o600, dir_fd=dir_fd)
        try:
            st = os.fstat(fd)
            if (st.st_mode & _S_IFMT) != 0o100000:
                raise OSError(0, "runtime_calls.log is not a regular file")
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


# The audit log: one JSON line per create, run and restore, written with one
# write() to a file opened O_APPEND (so the lines of concurrent calls never
# interleave), or sent to syslog as one datagram. It can never refuse or
# strand a container: a log that cannot be written is a warning.

# [end on-demand: debug-output]


# The audit log (the audit-log setting): a line per create, run or restore.
# [on-demand: audit]
SYSLOG_SOCKET = "/dev/log"
SYSLOG_DAEMON = 3          # facility daemon; severities warning (4) and info (6)


def audit_call(policy, call, result=None, error=None):
    """Log what this create, run or restore came to: the container, the
    rules that matched with their mode (and what a warn or audit rule would
    have done), each change, the verdict and the message of a refusal.
    error: the InterceptorError that refused the container, if any (a
    Denied carries the EditResult). Called only when the policy has an
    audit log (so that no other call loads this block)."""
    result = getattr(error, "result", None) or result
    try:
        bundle = path_abspath(call.bundle or ".")
    except (OSError, ValueError):
        bundle = call.bundle
    rules = []
    if result is not None:
        notes = dict((note.rule.name, note) for note in result.notes)
        for rule in result.rules:
            entry = {"name": rule.name, "mode": rule.mode}
            note = notes.get(rule.name)
            if note is not None and note.refusal is not None:
                entry["would-deny"] = note.refusal
            elif note is not None:
                entry["would-change"] = note.changes
            rules.append(entry)
    if error is None:
        verdict = result.verdict
    else:
        verdict = "denied" if isinstance(error, Denied) else "error"
    record = {"time": _utc_timestamp(fraction=True), "id": call.container_id, "root": call.root,
              "bundle": bundle, "command": call.command, "rules": rules,
              "changes": result.changes if result is not None and error is None else [],
              "verdict": verdict}
    if error is not None:
        record["message"] = _one_line(error)
        if isinstance(error, Denied):
            record["denied-by"] = error.rule
    line = serialize_config(record, Layout(None, ",", ":")) + b"\n"
    try:
        if policy.audit_log == AUDIT_SYSLOG:
            _send_to_syslog(line, verdict in ("denied", "error"))
        else:
            _append_line(policy.audit_log, line)
    except OSError as exc:
        report_warning("audit log %s: %s" % (policy.audit_log, exc.strerror or exc), call)


def _append_line(path, line):
    """One write() of the whole line to a regular file of ours opened
    O_APPEND (created 0600): concurrent writers never interleave."""
    flags = (posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT | posix.O_NOFOLLOW | posix.O_NONBLOCK
             | getattr(posix, "O_CLOEXEC", 0))
    fd = posix.open(path, flags, 0o600)
    try:
        st = posix.fstat(fd)
        if (st.st_mode & _S_IFMT) != 0o100000:
            raise OSError(0, "not a regular file")
        if st.st_uid != posix.geteuid():
            raise OSError(0, "it belongs to uid %d, not to us" % st.st_uid)
        written = posix.write(fd, line)
        if written != len(line):
            raise OSError(0, "only %d of %d bytes written" % (written, len(line)))
    finally:
        posix.close(fd)


def _send_to_syslog(line, refused):
    """One datagram to /dev/log, tagged oci-interceptor, as syslog(3) sends
    it (journald and rsyslog read it)."""
    import socket
    priority = SYSLOG_DAEMON * 8 + (4 if refused else 6)
    message = ("<%d>%s[%d]: " % (priority, PROG, posix.getpid())).encode("ascii") + line.rstrip(b"\n")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(SYSLOG_SOCKET)
        sock.send(message)
    finally:
        sock.close()
# [end on-demand: audit]


# [on-demand: debug-output]
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
# [end on-demand: debug-output]



# ---------------------------------------------------------------------------
# 10. Exec and main: lifecycle calls, dry run, config check, exec
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


# [on-demand: register]
def register(opts, argv0):
    """--oi-register ENGINE, or --oi-unregister ENGINE (opts.register names
    the engine for both): returns the text to print."""
    program = os.path.abspath(opts.register_path or argv0 or PROG)
    name = opts.register_name or _runtime_name(program)
    words = _policy_words(opts)
    if opts.unregister:
        if words:
            raise UsageError("%s: --oi-unregister takes no policy flags" % words[0].partition("=")[0])
        if opts.register == "docker":
            return unregister_docker(name, opts.daemon_json or DOCKER_DAEMON_JSON)
        if opts.register == "podman":
            return unregister_podman(name, opts.podman_conf_dir or PODMAN_CONF_DIR)
        return unregister_containerd(name, opts.containerd_config or CONTAINERD_CONFIG)
    if not _is_executable_file(program):
        raise UsageError("--oi-register: %s is not an executable file; register the installed program "
                         "(or the .pyz), or name it with --oi-register-path" % _quote_for_message(program))
    default = bool(opts.register_default)
    if opts.register == "docker":
        return register_docker(program, name, default, opts.daemon_json or DOCKER_DAEMON_JSON, words)
    if opts.register == "podman":
        return register_podman(program, name, default, opts.podman_conf_dir or PODMAN_CONF_DIR, words,
                               bool(opts.write))
    return register_containerd(program, name, default, opts.containerd_config or CONTAINERD_CONFIG, words,
                               bool(opts.write))


def _runtime_name(program):
    """The runtime name a program registers under by default: its file name
    (a profile symlink's own), without .pyz or .py."""
    base = program.rpartition("/")[2]
    for suffix in (".pyz", ".py"):
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[:-len(suffix)]
    return base or PROG


# Flags whose value is a file or directory: registered as absolute paths
# (the engine runs the program in the bundle, not where it was registered).
_PATH_FLAG_DESTS = ("config", "hook_config_path", "hooks_dir", "debug_output_dir", "runtime_path")


def _policy_words(opts):
    """The policy flags given with --oi-register, each as one --oi-x=VALUE
    word (switches as --oi-x or --oi-x=false), relative paths made absolute."""
    words = []
    for flag in FLAGS:
        if not (flag.key or flag.dest in ("config", "profile")):
            continue
        value = getattr(opts, flag.dest)
        if value is None or value == []:
            continue
        if flag.kind == "switch":
            words.append(flag.name if value else flag.name + "=false")
            continue
        for item in (value if flag.kind == "list" else [value]):
            if flag.dest in _PATH_FLAG_DESTS and item and (flag.dest != "runtime_path" or "/" in item):
                item = os.path.abspath(item)
            words.append("%s=%s" % (flag.name, item))
    return words


PODMAN_SNIPPET = """\
# Add to /etc/containers/containers.conf, or let --oi-write put it in a file of
# its own, {conf_dir}/{name}.conf:
[engine]
{default}runtime = "{name}"
{conmon}
[engine.runtimes]
{name} = [{path}]

# Then: podman --runtime {name} run ... (or every container, with runtime = "{name}").
# Policy comes from {config}.
"""

# conmon passes the runtime only the variables listed here (a list set in a
# drop-in replaces the whole list: Podman's default PATH is kept).
PODMAN_CONMON_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

CONTAINERD_SNIPPET = """\
# Add to /etc/containerd/config.toml (version = 2), then restart containerd
# (or let --oi-write append it, marked, to config.toml):
[plugins."io.containerd.grpc.v1.cri".containerd]
  {default}default_runtime_name = "{name}"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{name}.options]
    BinaryName = {path}

# For Kubernetes, a RuntimeClass whose handler is this runtime:
# apiVersion: node.k8s.io/v1
# kind: RuntimeClass
# metadata:
#   name: {name}
# handler: {name}
# Policy comes from /etc/oci-interceptor/config.json (containerd passes the
# runtime no arguments; OCI_INTERCEPTOR_CONFIG in containerd's environment
# names another file).
"""


def _toml_string(text):
    """A TOML basic string (JSON's escapes are TOML's)."""
    return _full_json_text(text)


def _config_words(words, engine):
    """The --oi-config value among the policy words (Podman passes it as a
    variable); any other policy flag cannot be registered with this engine."""
    config = None
    for word in words:
        flag, _, value = word.partition("=")
        if flag == "--oi-config" and engine == "podman":
            config = value
            continue
        raise UsageError("%s: %s passes no flags of ours from its configuration; put it in the config "
                         "file (a profile named like the program applies to it alone)%s"
                         % (flag, "Podman" if engine == "podman" else "containerd",
                            "" if engine == "podman" else "; containerd passes the runtime its own "
                            "environment, so set %s on containerd.service" % CONFIG_ENV))
    return config


def register_podman(program, name, make_default, conf_dir, words, write):
    config = _config_words(words, "podman")
    conmon = ""
    if config is not None:
        conmon = "conmon_env_vars = [%s, %s]\n" % (_toml_string(PODMAN_CONMON_PATH),
                                                   _toml_string("%s=%s" % (CONFIG_ENV, config)))
    snippet = PODMAN_SNIPPET.format(
        name=name, path=_toml_string(program), default="" if make_default else "# ", conmon=conmon,
        conf_dir=conf_dir, config=(config or "no file (--oi-config=)") if config is not None else DEFAULT_CONFIG)
    if not write:
        return snippet
    body = snippet.split("\n", 2)[2].rpartition("\n# Then:")[0].rstrip("\n") + "\n"
    if not make_default:
        body = body.replace('# runtime = "%s"\n' % name, "")
    content = ("# Written by oci-interceptor --oi-register podman --oi-write;\n"
               "# oci-interceptor --oi-unregister podman --oi-register-name %s removes it.\n" % name) + body
    path = "%s/%s.conf" % (conf_dir.rstrip("/"), name)
    lines = _replace_file(path, content.encode("utf-8"), create_dirs=True)
    if lines is None:
        return "%s: runtime %s is already registered; nothing changed\n" % (path, name)
    lines.append("  runtime %s: %s%s" % (name, program, " (the default runtime)" if make_default else ""))
    if config is not None:
        lines.append("  conmon_env_vars: %s=%s (replaces conmon_env_vars set elsewhere)" % (CONFIG_ENV, config))
    lines.append("Podman reads it on its next command; nothing to restart.")
    if not make_default:
        lines.append("Then: podman --runtime %s run ...  (or register with --oi-register-default)" % name)
    return "\n".join(lines) + "\n"


def unregister_podman(name, conf_dir):
    path = "%s/%s.conf" % (conf_dir.rstrip("/"), name)
    return _remove_file(path, "runtime %s" % name,
                        "Podman reads its configuration on its next command; nothing to restart.")


_CONTAINERD_BEGIN = "# BEGIN oci-interceptor runtime %s (oci-interceptor --oi-unregister containerd removes this block)"
_CONTAINERD_END = "# END oci-interceptor runtime %s"
_CONTAINERD_DEFAULT_MARK = "  # oci-interceptor runtime %s; before: "
_CRI_CONTAINERD_TABLE = '[plugins."io.containerd.grpc.v1.cri".containerd]'


def register_containerd(program, name, make_default, config_toml, words, write):
    """Print the runtime handler, or (write) append it to config.toml as a
    marked block. containerd 1.6 does read drop-in files (`imports`), but an
    imported file's plugin table replaces the main file's whole table, so a
    drop-in holding the handler would undo config.toml's CRI settings."""
    _config_words(words, "containerd")
    if not write:
        return CONTAINERD_SNIPPET.format(name=name, path=_toml_string(program),
                                         default="" if make_default else "# ")
    raw, st = _read_optional(config_toml)
    text = raw.decode("utf-8") if raw is not None else "version = 2\n"
    lines = text.splitlines()
    if not any(line.replace(" ", "") == "version=2" for line in lines):
        raise InterceptorError("%s: not a version 2 containerd configuration (no \"version = 2\" line)"
                               % config_toml)
    text = _without_containerd_block(text, name)
    if (".runtimes.%s]" % name) in text or ('.runtimes."%s"]' % name) in text:
        raise InterceptorError("%s: has a runtime %s of its own; edit it by hand or choose another "
                               "--oi-register-name" % (config_toml, name))
    block = [_CONTAINERD_BEGIN % name]
    previous = None
    if make_default:
        text, added, previous = _set_containerd_default(text, name)
        if added:
            block += [_CRI_CONTAINERD_TABLE, '  default_runtime_name = "%s"' % name]
    block += ['[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s]' % name,
              '  runtime_type = "io.containerd.runc.v2"',
              '  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.%s.options]' % name,
              "    BinaryName = %s" % _toml_string(program),
              _CONTAINERD_END % name]
    new_text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    out = _replace_file(config_toml, new_text.encode("utf-8"), create_dirs=True)
    if out is None:
        return "%s: runtime %s is already registered; nothing changed\n" % (config_toml, name)
    out.append("  runtime %s: BinaryName %s%s" % (name, program, " (the default runtime)" if make_default else ""))
    if make_default:
        out.append("  default_runtime_name: %s -> %s (pods without a RuntimeClass now run with %s)"
                   % (previous or "(runc)", name, name))
    out.append("Restart containerd to apply: systemctl restart containerd (running containers keep running: "
               "their shims stay)")
    return "\n".join(out) + "\n"


def _set_containerd_default(text, name):
    """Make name the CRI default runtime in config.toml's own table when it
    has one (the old line kept in a comment, for --oi-unregister); returns
    (text, whether the block must carry the table, the previous default)."""
    lines = text.split("\n")
    try:
        start = [line.strip() for line in lines].index(_CRI_CONTAINERD_TABLE)
    except ValueError:
        return text, True, None
    end = start + 1
    while end < len(lines) and not lines[end].strip().startswith("["):
        end += 1
    line = 'default_runtime_name = "%s"' % name + (_CONTAINERD_DEFAULT_MARK % name)
    for index in range(start + 1, end):
        old = lines[index]
        if old.strip().replace(" ", "").startswith("default_runtime_name="):
            previous = old.partition("=")[2].partition("#")[0].strip().strip("\"'")
            lines[index] = old[:len(old) - len(old.lstrip())] + line + old
            return "\n".join(lines), False, previous
    header = lines[start]
    lines.insert(start + 1, header[:len(header) - len(header.lstrip())] + "  " + line + "(none)")
    return "\n".join(lines), False, None


def _without_containerd_block(text, name):
    """config.toml without what register_containerd added for name."""
    lines = text.split("\n")
    out, skipping = [], False
    for line in lines:
        if line == _CONTAINERD_BEGIN % name:
            skipping = True
            if out and out[-1] == "":
                out.pop()
            continue
        if skipping:
            skipping = line != _CONTAINERD_END % name
            continue
        mark = _CONTAINERD_DEFAULT_MARK % name
        if mark in line:
            before = line.partition(mark)[2]
            if before != "(none)":
                out.append(before)
            continue
        out.append(line)
    return "\n".join(out)


def unregister_containerd(name, config_toml):
    raw, _ = _read_optional(config_toml)
    if raw is None:
        return "%s: does not exist; nothing changed\n" % config_toml
    text = raw.decode("utf-8")
    new_text = _without_containerd_block(text, name)
    if new_text == text:
        return "%s: runtime %s is not registered by oci-interceptor; nothing changed\n" % (config_toml, name)
    out = _replace_file(config_toml, new_text.encode("utf-8"))
    out.append("  removed runtime %s" % name)
    out.append("Restart containerd to apply: systemctl restart containerd")
    return "\n".join(out) + "\n"


def _read_optional(path):
    """(raw, stat) of a file, following symlinks; (None, None) if it does not exist."""
    import errno
    try:
        return read_config(path, follow_symlinks=True)
    except ReadError as exc:
        if exc.errno != errno.ENOENT:
            raise
        return None, None


def _replace_file(path, new_raw, create_dirs=False):
    """Write an engine's configuration file: a symlink stays a symlink (its
    target is written), the old file is backed up next to the one written,
    the write is atomic. Returns the lines saying so, or None when the file
    holds new_raw already."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    raw, st = _read_optional(target)
    if raw == new_raw:
        return None
    lines = []
    if st is None:
        directory = os.path.dirname(target)
        if directory and create_dirs:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        write_atomically(target, new_raw, mode=0o644)
        lines.append("%s: created" % path)
    else:
        backup = _write_backup(target, raw)
        write_atomically(target, new_raw, st)
        lines.append("%s: updated (backup: %s)" % (path, backup))
    if target != path:
        lines.append("  %s is a symlink: its target %s was written, the link kept" % (path, target))
    return lines


def _remove_file(path, what, apply):
    raw, _ = _read_optional(path)
    if raw is None:
        return "%s: %s is not registered; nothing changed\n" % (path, what)
    backup = _write_backup(path, raw)
    os.unlink(path)
    return "%s: removed (backup: %s)\n  removed %s\n%s\n" % (path, backup, what, apply)


def _write_backup(path, raw):
    """A copy of raw next to path, named path.bak-TIMESTAMP (engines read
    only *.json, *.conf, *.toml files there); returns its name."""
    import time
    stamp = "%s.bak-%s" % (path, time.strftime("%Y%m%d%H%M%S"))
    for attempt in range(100):
        backup = stamp if attempt == 0 else "%s.%d" % (stamp, attempt)
        try:
            fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
            break
        except FileExistsError:
            continue
    else:
        raise InterceptorError("cannot write a backup of %s" % path)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    return backup


DOCKER_RESERVED_NAMES = ("runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux")


def register_docker(program, name, make_default, daemon_json, runtime_args=()):
    """Merge a runtime entry (path, and runtimeArgs for the policy flags
    given) into daemon.json: everything else is kept, the old file is backed
    up, and a second run changes nothing."""
    if name in DOCKER_RESERVED_NAMES:
        raise UsageError("--oi-register-name %s: Docker reserves that name" % name)
    for word in runtime_args:
        if shell_quote(word) != word:
            raise UsageError("%s: Docker runs runtimeArgs through /bin/sh without quoting them; put a "
                             "value with spaces or shell characters in the config file" % shell_quote(word))
    raw, data = _read_daemon_json(daemon_json)
    changes = []
    runtimes = data.setdefault("runtimes", {})
    entry = runtimes.get(name)
    args = list(runtime_args)
    if not isinstance(entry, dict):
        runtimes[name] = entry = {"path": program}
        if args:
            entry["runtimeArgs"] = args
        changes.append("added runtime %s: %s" % (name, " ".join([program] + args)))
    else:
        if entry.get("path") != program:
            changes.append("runtime %s: path %s -> %s" % (name, entry.get("path"), program))
            entry["path"] = program
        if (entry.get("runtimeArgs") or []) != args:
            changes.append("runtime %s: runtimeArgs %s -> %s" % (
                name, " ".join(entry.get("runtimeArgs") or []) or "(none)", " ".join(args) or "(none)"))
            if args:
                entry["runtimeArgs"] = args
            else:
                del entry["runtimeArgs"]
    previous = data.get("default-runtime")
    if make_default and previous != name:
        changes.append("default-runtime: %s -> %s" % (previous or "(runc)", name))
        if previous and previous != "runc":
            old = runtimes.get(previous)
            old_path = old.get("path") if isinstance(old, dict) else None
            changes.append("  %s was the default runtime: it stays registered, but containers started without "
                           "--runtime now run with %s%s" % (
                               previous, name, "; to keep %s underneath, register again with "
                               "--oi-runtime-path=%s" % (previous, old_path) if old_path else ""))
        data["default-runtime"] = name
    if not changes:
        return "%s: runtime %s is already registered; nothing changed\n" % (daemon_json, name)
    layout = Layout.of(raw) if raw and raw.strip() else Layout("    ", ",", ": ", True)
    lines = _replace_file(daemon_json, serialize_config(data, layout), create_dirs=True)
    lines.extend("  " + change for change in changes)
    lines.append(DOCKER_APPLY)
    if data.get("default-runtime") == name:
        lines.append("New containers run with %s unless docker run --runtime names another." % name)
    else:
        lines.append("Then: docker run --runtime %s ...  (or register with --oi-register-default)" % name)
    return "\n".join(lines) + "\n"


DOCKER_APPLY = ("Apply: systemctl reload docker (dockerd re-reads its runtimes on SIGHUP; running "
                "containers keep running)")


def _read_daemon_json(daemon_json):
    raw, _ = _read_optional(daemon_json)
    data = {}
    if raw is not None and raw.strip():
        try:
            data = parse_json(raw)
        except ValueError as exc:
            raise InterceptorError("cannot parse %s: %s" % (daemon_json, exc))
    if not isinstance(data, dict) or not isinstance(data.get("runtimes", {}), dict):
        raise InterceptorError("%s: expected an object with a \"runtimes\" object" % daemon_json)
    return raw, data


def unregister_docker(name, daemon_json):
    raw, data = _read_daemon_json(daemon_json)
    runtimes = data.get("runtimes", {})
    changes = []
    if name in runtimes:
        del runtimes[name]
        changes.append("removed runtime %s" % name)
    if data.get("default-runtime") == name:
        # Named, not left out: on SIGHUP, dockerd 20.10 keeps a default it
        # is not given, and a default naming no runtime makes it panic.
        data["default-runtime"] = "runc"
        changes.append("default-runtime: %s -> runc" % name)
    if not changes:
        return "%s: runtime %s is not registered; nothing changed\n" % (daemon_json, name)
    lines = _replace_file(daemon_json, serialize_config(data, Layout.of(raw)))
    lines.extend("  " + change for change in changes)
    lines.append(DOCKER_APPLY)
    return "\n".join(lines) + "\n"
# [end on-demand: register]


# [on-demand: lifecycle]
def remember_passthrough(argv0, opts, call, policy, clocks):
    """As root, record in STATE_DIR what this call, which edits nothing, made
    of the config file: the runtime to exec, as passthrough-NAME, whose
    modification time is set to the file's as it was read (the stat of the
    descriptor the policy came from), and whose last line, for Python
    alone, is that stat's identity. The .pyz's shell preamble then execs
    that runtime for such calls without starting Python while the file and
    its directory are root's, the file's modification time is the record's
    (an edit sets it to the time of the edit) and the trust window lasts
    (expires-NAME: PASSTHROUGH_WINDOW seconds from here, or from a create
    with the file unchanged). What the shell cannot see without a process
    (a mode, a directory above, a file that came with the same
    modification time) is checked here again when the window ends.

    Nothing is recorded unless the file, and its directory, still are
    exactly as they were when the file was read (a rename or an edit in
    between would pair another file with this file's decision), or when
    the file's modification time is in the current second: a shell that
    compares whole seconds (bash before 5, busybox) would then miss an
    edit made in that second (this takes times from this machine's clock,
    as local file systems do; the window bounds any other case). Flags that
    only matter to create (passthrough "ignored": the policy of Docker's
    runtimeArgs, say) change nothing such a call does, so the record holds
    for calls with them too; a call with any other flag of ours records
    nothing. Best effort: a failure here never fails the call."""
    path = policy.config_path
    name = (argv0 or "").rpartition("/")[2]
    if (posix.geteuid() != 0 or not path or not path.startswith("/") or path_normpath(path) != path
            or call.edits_config
            or policy.write_debug_output or policy.uses_systemd
            or any(getattr(opts, f.dest) not in (None, []) for f in FLAGS
                   if f.kind != "action" and f.passthrough != "ignored")
            or "\n" in path or "\n" in policy.runtime_path or policy.runtime_path.strip() != policy.runtime_path
            or not name or debug_file_stem(name, "") != name or len(name) > 128
            or policy.config_stat is None or policy.config_dir_stat is None):
        return
    # The clocks were read before the file was opened: an edit after that
    # has a time of at least then, less the kernel's coarse clock's lag, so
    # a later whole second than the file's (as the rule below requires),
    # which even a file system of whole-second times tells apart.
    now, since = clocks[0] - 0.1, clocks[1]
    try:
        st = policy.config_stat
        identity = passthrough_identity(st)
        if passthrough_identity(posix.lstat(path)) != identity:
            return          # a symlink, or changed since it was read
        if (passthrough_identity(posix.stat(path.rpartition("/")[0] or "/"))
                != passthrough_identity(policy.config_dir_stat)):
            return          # changed while the file was read (a rename over it, perhaps)
        if st.st_mtime_ns // 10 ** 9 >= int(now):
            return
        if _untrusted_step(path, st) is not None:
            return
        content = passthrough_record(policy, identity).encode("utf-8", "surrogateescape")
        if not _trusted_record_dir(state_dir(), create=True):
            return
        record, expires = passthrough_paths(name)
        # Calls that name a container must reach the runtime its record names.
        try:
            runtime = find_runtime(policy.runtime_path)
        except InterceptorError:
            runtime = None              # agrees with no record
        if not records_agree(runtime):
            return
        found = read_passthrough_record(record)
        if not (found and found[1] == content and found[0].st_mtime_ns == st.st_mtime_ns
                and found[0].st_mode & 0o7777 == 0o600):
            write_atomically(record, content, mode=0o600, mtime_ns=st.st_mtime_ns)
        if not records_agree(runtime):      # a create recorded another runtime meanwhile
            posix.unlink(record)
            return
        open_passthrough_window(expires, since)
    except (OSError, InterceptorError):
        pass
# [end on-demand: lifecycle]


# [on-demand: check-config]
def check_config_report(policy):
    """The --oi-check-config summary: where the policy comes from (resolved
    paths), and every rule's conditions and actions in full. When the
    configuration cannot work (no runtime; a hook program missing or not
    executable), the summary is written to stdout and ConfigError raised,
    naming every problem in one line."""
    problems = []
    lines = []
    if policy.config_path:
        lines.append("config file: %s" % policy.config_path)
    else:
        lines.append("config file: (none: %s)" % _no_config_file_reason(*(policy.config_sought or (None, "none"))))
    lines.append("profile: %s" % (policy.profile or "(none)"))
    try:
        runtime = find_runtime(policy.runtime_path)
    except InterceptorError as exc:
        runtime = "NOT FOUND"
        problems.append(str(exc))
    lines.append("runtime: %s -> %s" % (policy.runtime_path, runtime))
    lines.append("debug output: %s" % (policy.debug_output_dir if policy.write_debug_output else "off"))
    lines.append("audit log: %s" % (policy.audit_log or "off"))
    if policy.audit_log and policy.audit_log != AUDIT_SYSLOG:
        directory = os.path.dirname(policy.audit_log) or "."
        if not os.path.isdir(directory):
            problems.append("audit log %s: directory %s does not exist" % (policy.audit_log, directory))
    for path in policy.files[1 if policy.config_path else 0:]:
        lines.append("hook file: %s" % path)
    for directory in policy.hooks_dirs:
        lines.append("hooks dir: %s" % directory)
    lines.append("cdi spec dirs: %s" % (", ".join(policy.cdi_spec_dirs) or "(none)"))
    lines.append("cdi requests: rules (cdi-devices), annotations %s* (%s), env variable %s" % (
        CDI_ANNOTATION_PREFIX, "on" if policy.cdi_annotations else "off", policy.cdi_env or "(none)"))
    cache = read_cdi_specs(policy.cdi_spec_dirs, warn=False)
    lines.extend(cdi_report_lines(cache, [(name, found[0].path) for name, found in sorted(cache.devices.items())]))
    lines.append("rules: %d" % len(policy.rules))
    for rule in policy.rules:
        lines.append("  %s (%s)" % (rule.name, rule.source))
        lines.append("    when: %s" % ("always" if rule.when is None else _condition_text(rule.when)))
        for action, value in actions_in_order(rule.actions):
            lines.append("    %s: %s" % (action.key, _full_json_text(value)))
        for name in rule.actions.get("cdi-devices", []):
            try:
                cache.device(name)
            except InterceptorError as exc:
                lines.append("    not available now: %s" % exc)
        if "preset" in rule.actions:
            for level, controls in preset_levels():
                if level == rule.actions["preset"]:
                    lines.append("    controls: %s" % ", ".join(c.name for c in controls))
        lines.append("    mode: %s" % rule.mode)
        for key in ("prepend-hooks", "hooks"):
            for stage, hooks in sorted(rule.actions.get(key, {}).items()):
                for hook in hooks:
                    problem = _hook_program_problem(hook["path"])
                    if problem:
                        problems.append("rule %s: %s %s: hook program %s %s"
                                        % (rule.name, key, stage, hook["path"], problem))
    verdict = "configuration cannot work" if problems else "configuration is valid"
    lines.insert(0, "%s %s: %s" % (PROG, __version__, verdict))
    lines.extend("problem: " + problem for problem in problems)
    text = "\n".join(lines) + "\n"
    if problems:
        sys.stdout.write(text)
        sys.stdout.flush()
        raise ConfigError("configuration cannot work: " + "; ".join(problems))
    return text


def _hook_program_problem(path):
    """Why a hook program could not run, or None."""
    try:
        st = os.stat(path)
    except OSError as exc:
        import errno
        return "does not exist" if exc.errno == errno.ENOENT else "cannot be used: %s" % exc.strerror
    if (st.st_mode & _S_IFMT) != 0o100000:
        return "is not a regular file"
    if not os.access(path, os.X_OK):
        return "is not executable"
    return None


def _condition_text(cond):
    """A Condition as the JSON `when` object it was read from."""
    data = []
    if cond.always is not None:
        data.append(("always", cond.always))
    if cond.annotations:
        data.append(("annotations", dict((k.pattern, v.pattern) for k, v in cond.annotations)))
    if cond.commands:
        data.append(("commands", [p.pattern for p in cond.commands]))
    if cond.has_bind_mounts is not None:
        data.append(("hasBindMounts", cond.has_bind_mounts))
    if cond.hostname is not None:
        data.append(("hostname", cond.hostname.pattern))
    if cond.env:
        data.append(("env", dict((name, v.pattern) for name, v in cond.env)))
    for key, _, raw in cond.guards or ():
        data.append((key, raw))
    return _full_json_text(dict(data))


def _full_json_text(value):
    return serialize_config(value, Layout(None, ", ", ": ")).decode("utf-8", "replace")
# [end on-demand: check-config]


# [on-demand: dry-run]
def dry_run_report(call, policy, runtime, runtime_args):
    """The --oi-dry-run report: what this call would do."""
    lines = ["%s dry run: nothing is written or executed" % PROG]
    if call.edits_config:
        result = plan_edit(call, policy, keep_parsed=True)
        lines.append("config: %s" % result.path)
        lines.append("rules matched: %s" % (", ".join(
            r.name if r.mode == "enforce" else "%s (%s)" % (r.name, r.mode) for r in result.rules) or "(none)"))
        lines.extend(cdi_report_lines(result.context.cdi_cache, result.context.cdi_resolved))
        for change in result.changes:
            lines.append("  " + change)
        for note in result.notes:
            lines.append("  " + note.text())
        if result.denied is not None:
            lines.append("verdict: would deny: %s" % result.denied)
            lines.append("would not exec the runtime: the container is refused")
            return "\n".join(lines) + "\n"
        lines.append("verdict: %s" % ("would change the config" if result.changes else "would allow it unchanged"))
        if result.context.runtime_path is not None:
            runtime = find_runtime(result.context.runtime_path)
            lines.append("runtime chosen by a rule: %s" % runtime)
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
# [end on-demand: dry-run]


def run(argv0, args):
    """Handle one call. Returns an exit status only when the runtime is not
    executed (help, version, check, dry run, errors)."""
    call = None
    try:
        args = adapt_drop_in(argv0, args)
        flag_error = None
        try:
            opts, runtime_args = split_command_line(args)
        except UsageError as exc:
            call = parse_runtime_call(getattr(exc, "runtime_args", []))
            if call.edits_config or call.command is None or exc.opts.action or exc.opts.register:
                raise
            # A call of an existing container goes through even so.
            opts, runtime_args, flag_error = exc.opts, exc.runtime_args, exc
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
        if call.edits_config or opts.dry_run or opts.action == "check-config":
            policy = load_policy(opts, argv0, complete=True)
            if opts.action == "check-config":
                sys.stdout.write(check_config_report(policy))
                return 0
            if opts.dry_run:
                runtime = find_runtime(policy.runtime_path)
                sys.stdout.write(dry_run_report(call, policy, runtime, runtime_args))
                return 0
            runtime = create_container(call, opts, policy)
            refresh_passthrough_window(argv0, policy)
        else:
            runtime, runtime_args, status = lifecycle_call(argv0, opts, call, runtime_args, flag_error)
            if status is not None:
                return status
            policy = None
        if policy is not None and policy.write_debug_output:
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


def create_container(call, opts, policy):
    """create, run, restore: edit the config (any problem refuses the
    container), audit it, record what later calls must know; return the
    runtime."""
    try:
        result, runtime = edit_bundle(call, policy)
    except InterceptorError as exc:
        if policy.audit_log:
            audit_call(policy, call, error=exc)
        raise
    if policy.audit_log:
        audit_call(policy, call, result)
    record = None
    # Later calls go where the policy says, or where the command line says
    # when the policy cannot be read: a record only where that is wrong
    # (the command line's runtime is looked up again only where the policy
    # named another).
    if (result.systemd or result.context.runtime_path is not None
            or (policy.runtime_path != (opts.runtime_path or DEFAULT_RUNTIME)
                and runtime != _command_line_runtime(opts))):
        record = ContainerRecord(runtime, result.systemd)
    write_record(call.root, call.container_id, record)
    return runtime


def _command_line_runtime(opts):
    """The runtime the command line alone names (flags, else runc), or None."""
    try:
        return find_runtime(opts.runtime_path or DEFAULT_RUNTIME)
    except InterceptorError:
        return None


# [on-demand: lifecycle]
def lifecycle_call(argv0, opts, call, runtime_args, flag_error=None):
    """Every call but create, run and restore: it reaches the runtime whatever
    state the policy is in. The runtime is the one the container's record
    names, else the policy's, else the command line's; a policy that cannot
    be read is a warning. Returns (runtime, runtime_args, None), or
    (runtime, args, exit status) when the call was run here (delete of a
    recorded container, to remove the record after it)."""
    if flag_error is not None:
        report_warning("%s; %s goes to the runtime all the same" % (flag_error, call.command), call)
    record = read_record(call.root, call.container_id)
    import time
    # The clocks before the config file is opened and its trust checked:
    # what a passthrough record of it may rest on (remember_passthrough).
    clocks = time.time(), _uptime()
    policy = None
    try:
        policy = load_policy(opts, argv0, complete=False)
    except InterceptorError as exc:
        problem = exc
    runtime = None
    if record is not None:
        if _is_executable_file(record.runtime):
            runtime = record.runtime
        else:
            report_warning("container %s was created by %s, which is no longer an executable file"
                           % (_quote_for_message(call.container_id), record.runtime), call)
    if runtime is None and call.container_id is None:
        runtime = runtime_of_root(call.root)          # list: the runtime of that root's containers
    if runtime is None and policy is not None:
        try:
            runtime = find_runtime(policy.runtime_path)
        except InterceptorError as exc:
            policy, problem = None, exc                 # a runtime-path that leads nowhere
    if runtime is None:
        runtime = find_runtime(opts.runtime_path or DEFAULT_RUNTIME)
    if policy is None:
        report_warning("%s; %s goes to %s all the same" % (_one_line(problem), call.command, runtime), call)
    if call.command == "kill":
        if record is not None:
            runtime_args = systemd_kill_args(call, runtime, runtime_args, record.systemd)
        elif policy is not None and policy.uses_systemd:
            runtime_args = systemd_kill_args(call, runtime, runtime_args)
    if policy is not None and policy.write_debug_output:
        log_runtime_call(policy.debug_output_dir, [runtime] + runtime_args)
    if call.command == "delete" and record is not None:
        return runtime, runtime_args, delete_and_forget(call, runtime, runtime_args)
    if policy is not None and record is None and flag_error is None:
        remember_passthrough(argv0, opts, call, policy, clocks)
    return runtime, runtime_args, None
# [end on-demand: lifecycle]


# [on-demand: record-delete]
def delete_and_forget(call, runtime, runtime_args):
    """delete of a recorded container: the runtime runs as our child (same
    stdio; the signals we get are passed on), and the record goes once the
    runtime has deleted the container. Returns the runtime's exit status."""
    import signal
    pid = os.fork()
    if pid == 0:
        try:
            for number in (signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(number, signal.SIG_DFL)
            os.execv(runtime, [runtime] + runtime_args)
        finally:
            os._exit(127)

    def forward(number, frame):
        try:
            os.kill(pid, number)
        except OSError:
            pass
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(number, forward)
    status = os.waitpid(pid, 0)[1]
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    code = os.WEXITSTATUS(status)
    if code == 0:
        write_record(call.root, call.container_id, None)
    return code
# [end on-demand: record-delete]


def main(argv0=None, args=None):
    if args is None:
        argv0, args = sys.argv[0], sys.argv[1:]
    return run(argv0, args)


if __name__ == "__main__":
    sys.exit(main())
