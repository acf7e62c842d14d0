"""Models of how runc and crun read a whole command line, as a test oracle.

Each model answers: does this call create a container, and from which
config file? They are written from how the real parsers work -- runc 1.1
(urfave/cli 1.22 over Go's flag package, with its reordering of a
subcommand's flags) and crun 1.8 (glibc argp) -- independently of how
oci_interceptor reads a call, and test_runtime_argv.py checks them against
the real binaries. A model may say "creates" where the runtime would still
fail later (an invalid container id, a missing bundle): that only makes the
property stronger.
"""

import os

CREATING = ("create", "run", "restore")

# --- runc --------------------------------------------------------------------

RUNC_GLOBALS = {"debug": "bool", "log": "string", "log-format": "string", "root": "string", "criu": "string",
                "systemd-cgroup": "bool", "rootless": "string", "help": "bool", "h": "bool",
                "version": "bool", "v": "bool"}
_RUNC_COMMON = [("bundle", "b", "string"), ("console-socket", None, "string"), ("pid-file", None, "string"),
                ("no-pivot", None, "bool"), ("preserve-fds", None, "string"), ("help", "h", "bool")]
RUNC_COMMANDS = {
    "create": _RUNC_COMMON + [("no-new-keyring", None, "bool")],
    "run": _RUNC_COMMON + [("detach", "d", "bool"), ("keep", None, "bool"), ("no-subreaper", None, "bool"),
                           ("no-new-keyring", None, "bool")],
    "restore": _RUNC_COMMON + [("image-path", None, "string"), ("work-path", None, "string"),
                               ("tcp-established", None, "bool"), ("ext-unix-sk", None, "bool"),
                               ("shell-job", None, "bool"), ("file-locks", None, "bool"),
                               ("manage-cgroups-mode", None, "string"), ("detach", "d", "bool"),
                               ("no-subreaper", None, "bool"), ("empty-ns", None, "string"),
                               ("auto-dedup", None, "bool"), ("lazy-pages", None, "bool"),
                               ("lsm-profile", None, "string"), ("lsm-mount-context", None, "string")],
}
_GO_BOOLS = ("1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False")


class Refused(Exception):
    """The runtime rejects the command line (or only prints help/version)."""


def go_flag_parse(args, kinds):
    """Go's flag.FlagSet.Parse: ({name: [values in order]}, positional args)."""
    seen = {}
    i = 0
    while i < len(args):
        s = args[i]
        if len(s) < 2 or s[0] != "-":
            break
        minuses = 2 if s[1] == "-" else 1
        if s == "--":
            i += 1
            break
        name = s[minuses:]
        if not name or name[0] in "-=":
            raise Refused("bad flag syntax: " + s)
        i += 1
        name, has_value, value = name.partition("=")
        if name not in kinds:
            raise Refused("flag provided but not defined: -" + name)
        if kinds[name] == "bool":
            if has_value and value not in _GO_BOOLS:
                raise Refused("invalid boolean value")
            value = value if has_value else "true"
        elif not has_value:
            if i >= len(args):
                raise Refused("flag needs an argument: -" + name)
            value = args[i]
            i += 1
        seen.setdefault(name, []).append(value)
    return seen, args[i:]


def _urfave_is_flag(names, arg):
    if arg in ("-", "--") or not arg.startswith("-"):
        return False
    if arg.startswith("--"):
        arg = arg.replace("-", "", 2)
    if arg.startswith("-"):
        arg = arg.replace("-", "", 1)
    return arg.split("=")[0] in names


def urfave_reorder(names, args):
    """urfave/cli 1.22's reorderArgs: a subcommand's flags (and the word after
    each, unless it is a flag) move before the other arguments; a "--"
    goes first among those, with everything after it."""
    reordered, remaining = [], []
    value_may_follow = False
    for i, arg in enumerate(args):
        if value_may_follow and not _urfave_is_flag(names, arg):
            value_may_follow = False
            reordered.append(arg)
        elif arg == "--":
            remaining = ["--"] + remaining + args[i + 1:]
            break
        elif _urfave_is_flag(names, arg):
            reordered.append(arg)
            value_may_follow = "=" not in arg
        else:
            remaining.append(arg)
    return reordered + remaining


def runc(args, cwd):
    """(command, config path) when runc 1.1 would create a container, else None."""
    try:
        seen, rest = go_flag_parse(list(args), RUNC_GLOBALS)
        if any(k in seen for k in ("help", "h", "version", "v")) or not rest or rest[0] not in RUNC_COMMANDS:
            return None
        command, options = rest[0], RUNC_COMMANDS[rest[0]]
        kinds = {}
        for long_name, short, kind in options:
            kinds[long_name] = kind
            if short:
                kinds[short] = kind
        seen, positional = go_flag_parse(urfave_reorder(set(kinds), list(rest[1:])), kinds)
        if "b" in seen and "bundle" in seen:
            raise Refused("Cannot use two forms of the same flag: b bundle")
        if "help" in seen or "h" in seen or len(positional) != 1:
            return None
        bundle = (seen.get("bundle") or seen.get("b") or [""])[-1]
        return command, os.path.join(os.path.join(cwd, bundle) if bundle else cwd, "config.json")
    except Refused:
        return None


# --- crun --------------------------------------------------------------------

# Long options: name -> "none", "required" or "optional" (argp's own included).
_ARGP_OWN = {"help": "none", "usage": "none", "program-name": "required", "HANG": "optional"}
CRUN_GLOBALS = dict(_ARGP_OWN, **{"debug": "none", "cgroup-manager": "required", "systemd-cgroup": "none",
                                  "log": "required", "log-format": "required", "root": "required",
                                  "rootless": "required", "version": "none"})
CRUN_GLOBAL_SHORTS = {"v": "version", "V": "version", "?": "help"}
# Options that share one argp key, so a prefix of both is not ambiguous
# (crun 1.8.1 reads --rootless X as --root X).
CRUN_SAME_KEY = ({"root", "rootless"},)
_CRUN_COMMON = {"bundle": "required", "config": "required", "console-socket": "required",
                "preserve-fds": "required", "no-pivot": "none", "pid-file": "required",
                "no-subreaper": "none", "no-new-keyring": "none"}
CRUN_COMMANDS = {
    # name: (long options, short options, (min, max) arguments)
    "create": (dict(_ARGP_OWN, **_CRUN_COMMON), {"b": "bundle", "f": "config", "?": "help"}, (1, 1)),
    "run": (dict(_ARGP_OWN, detach="none", **_CRUN_COMMON), {"b": "bundle", "f": "config", "d": "detach",
                                                              "?": "help"}, (1, 1)),
    # As in crun's source (this build has no CRIU): no -f; a second argument is ignored.
    "restore": (dict(_ARGP_OWN, **{"bundle": "required", "image-path": "required", "work-path": "required",
                                   "tcp-established": "none", "ext-unix-sk": "none", "shell-job": "none",
                                   "detach": "none", "pid-file": "required", "console-socket": "required",
                                   "file-locks": "none", "manage-cgroups-mode": "required"}),
                {"b": "bundle", "d": "detach", "?": "help"}, (1, 2)),
}


def argp_parse(args, longs, shorts):
    """glibc argp with ARGP_IN_ORDER, stopping at the first non-option:
    ([(option, value)], index of the first argument left)."""
    found = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return found, i + 1
        if not arg.startswith("-") or arg == "-":
            return found, i
        i += 1
        if arg.startswith("--"):
            name, has_value, value = arg[2:].partition("=")
            if name in longs:
                matches = [name]
            else:
                matches = [n for n in longs if n.startswith(name)]
                if len(matches) > 1 and not any(set(matches) <= same for same in CRUN_SAME_KEY):
                    raise Refused("option '--%s' is ambiguous" % name)
                matches = sorted(matches)[:1]
            if not name or not matches:
                raise Refused("unrecognized option")
            option = matches[0]
            kind = longs[option]
            if kind == "none" and has_value:
                raise Refused("option doesn't allow an argument")
            if kind == "required" and not has_value:
                if i >= len(args):
                    raise Refused("option requires an argument")
                value, i = args[i], i + 1
            found.append((option, value if has_value or kind == "required" else None))
            continue
        letters = arg[1:]
        for index, letter in enumerate(letters):
            if letter not in shorts:
                raise Refused("invalid option")
            option = shorts[letter]
            if longs.get(option, "none") == "required":
                value = letters[index + 1:]
                if not value:
                    if i >= len(args):
                        raise Refused("option requires an argument")
                    value, i = args[i], i + 1
                found.append((option, value))
                break
            found.append((option, None))
            if option in ("help", "version"):
                break           # printed, exited
    return found, i


def crun(args, cwd):
    """(command, config path) when crun 1.8 would create a container, else None."""
    try:
        found, first = argp_parse(list(args), CRUN_GLOBALS, CRUN_GLOBAL_SHORTS)
        if any(option in ("help", "usage", "version") for option, _ in found):
            return None
        if first >= len(args) or args[first] not in CRUN_COMMANDS:
            return None
        command = args[first]
        longs, shorts, (least, most) = CRUN_COMMANDS[command]
        rest = list(args[first + 1:])
        found, first = argp_parse(rest, longs, shorts)
        if any(option in ("help", "usage") for option, _ in found):
            return None
        if not least <= len(rest) - first <= most:
            return None
        bundle = config = None
        for option, value in found:
            if option == "bundle":
                bundle = value
            elif option == "config":
                config = value
        if bundle == "":
            return None                                 # realpath("") fails
        bundle_dir = os.path.join(cwd, bundle) if bundle is not None else cwd
        if config is None or config == "config.json":
            return command, os.path.join(bundle_dir, "config.json")
        if config == "":
            return None
        return command, os.path.join(cwd, config)
    except Refused:
        return None


MODELS = {"runc": runc, "crun": crun}
