#!/usr/bin/env python3
"""Benchmarks of oci-interceptor's per-call cost (not a test: run it by hand).

    python3 tests/benchmark.py [--pairs N] [--docker-pairs N] [--skip-docker]
                               [--go-peer PATH] [--json FILE]

Run as root with /usr/bin/python3 on a host prepared by tests/prepare-host.
It builds the .pyz, then measures, each round running every command of a
comparison once, in an order shuffled afresh each round (seeded), so that
drift in the machine's load, and what the previous command left in the
caches, fall on every side alike; it reports medians, and for each
ratio the median of the per-round ratios (paired), which a noisy machine
moves less. Each figure with a target also gets the interval in which 95 %
of the medians of its rounds resampled fall (a bootstrap): how far this
run's noise reaches. The verdicts at the end say, for each, met (the
interval is under the target), missed (over it) or at the line (it holds
the target: the run cannot tell):

  (a) passthrough: `state ID` of a live container through the .pyz, against
      runc itself and against a bare `python3 -I -S -c pass` (the floor of any
      Python program); the figure is the overhead (.pyz - runc) / floor; once
      with flags and no config file, once with a policy file (after the first
      call, the shell preamble passes the call by on Python's record); with a
      Go peer, also the same `state` through it and through the .pyz with its
      command line (oci-add-hooks --hook-config-path F --runtime-path R ...),
      with runc and with /bin/true as the runtime (the wrappers' own cost);
  (b) create: a real Docker config.json (captured from a private dockerd's
      own `docker run`, restored before each run), /bin/true as the runtime,
      against the floor: edited by a typical policy (read-only mounts, two
      env vars), and given the hooks of one hook file (the oci-add-hooks
      command line, which the .pyz takes too) -- with a Go peer, that one
      through the peer as well. The bundle is on a tmpfs (/run, or else
      /dev/shm), where Docker and containerd keep theirs; the hook-file
      create runs on disk too, where Podman keeps its bundles;
  (i) the module's load on the create path (as the preamble loads it: read,
      unmarshal, module body; no on-demand block), timed inside the
      interpreter;
  (c) scale: configs with 1k, 10k, 50k env entries and 200, 2k, 10k mounts;
  (d) end to end: `docker run --rm` of busybox `true` through the
      interceptor against runc, on a private dockerd: registered by path with
      the policy in its config file, and with the policy in runtimeArgs (the
      config file then activates none, as the packages install it); with
      runtimeArgs, runc itself behind the same wrapper script Docker writes
      for them is timed too, which shows that wrapper's own share;
  (e) peak memory (max RSS) of (b) and (c);
  (f) guardrails: the create of (b) with its policy in a config file, and
      the same file with 20 guardrail rules added (both presets, refusals on
      host paths, capabilities, namespaces, confinement, clamps), once
      more with an audit log; the figure is what the rules add (median of
      the paired differences), in wall time and in CPU time, which the
      machine's other load moves less. Its policy names a runtime, so each
      create writes a container record: in a state directory of its own on
      the tmpfs, as /run/oci-interceptor is on a host (left in the shared
      one, such a record would keep the passthrough records of (d) from
      being written, as a host's container of another runtime does).

The Go peer (awslabs/oci-add-hooks, a static binary; --go-peer PATH or
$OCI_INTERCEPTOR_GO_PEER) is a yardstick only: its rows are left out without
it. It runs the runtime as its child; the .pyz execs it.

Targets: (a) <= 1.25 of the floor and <= 0.6x the Go peer; (b) <= 1.3x the
floor (the hook-file create then about <= 1.9x the Go peer); (i) <= 1.5 ms;
(c) 10k env + 2k mounts under 100 ms and linear growth; (d) <= 1.04x;
(f) <= 1 ms.
"""

import argparse
import functools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import build_zipapp  # noqa: E402

PYTHON = "/usr/bin/python3"
# The hook file of the hook-file create: two hooks, as a GPU or monitoring
# agent's oci-add-hooks file has.
HOOK_FILE = {"hooks": {
    "prestart": [{"path": "/usr/local/bin/oci-hook", "args": ["oci-hook", "prestart"], "env": ["HOOK=1"]}],
    "poststop": [{"path": "/usr/local/bin/oci-hook", "args": ["oci-hook", "poststop"], "timeout": 10}]}}


def spawn(argv, env=None, before=None, cpu=None):
    """Run argv with stdio on /dev/null; return (seconds, max RSS in KiB, which
    for a child of this process is not argv's own: see peak_rss_kib). cpu, if
    a list, receives the CPU seconds (user + system) argv used."""
    if before:
        before()
    devnull = os.open(os.devnull, os.O_RDWR)
    start = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env if env is not None else os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0), (os.POSIX_SPAWN_DUP2, devnull, 1),
                                       (os.POSIX_SPAWN_DUP2, devnull, 2)])
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - start
    os.close(devnull)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError("failed: %s" % " ".join(argv))
    if cpu is not None:
        cpu.append(usage.ru_utime + usage.ru_stime)
    return elapsed, usage.ru_maxrss


def peak_rss_kib(argv, before=None, runs=3):
    """Max RSS of argv, measured by GNU time (a small forked parent, so the
    figure is argv's own, not this interpreter's)."""
    peak = 0
    with tempfile.NamedTemporaryFile("r") as out:
        for _ in range(runs):
            if before:
                before()
            subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out.name] + argv, check=True,
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            out.seek(0)
            peak = max(peak, int(out.read().split()[-1]))
    return peak


def alternate(sides, pairs, before=None, rounds=None, cpu=None):
    """{name: argv}: run each side once per round, in an order shuffled
    afresh each round (seeded: the same every run); medians. rounds, if a
    list, receives each round's {name: seconds}; cpu, if a dict, each
    side's CPU seconds of every round. (Not a rotation: with one, a side
    always runs right after the same other side, and (b)'s create always
    came right after the Go peer, which left it 2-3 % slower than
    anywhere else.)"""
    names = list(sides)
    times = {name: [] for name in names}
    rss = {name: [] for name in names}
    shuffle = random.Random(len(names) * 1000 + pairs).shuffle
    for round_ in range(pairs):
        order = list(names)
        shuffle(order)
        for name in order:
            seconds, kib = spawn(sides[name], before=before.get(name) if before else None,
                                 cpu=cpu.setdefault(name, []) if cpu is not None else None)
            times[name].append(seconds)
            rss[name].append(kib)
        if rounds is not None:
            rounds.append({name: times[name][-1] for name in names})
    return ({name: statistics.median(values) for name, values in times.items()},
            {name: max(values) for name, values in rss.items()})


def memory_filesystem():
    """/run when it is a tmpfs (where engines keep their bundles), else
    /dev/shm when that is one; None without either."""
    with open("/proc/self/mounts") as f:
        types = dict((line.split()[1], line.split()[2]) for line in f)
    for directory in ("/run", "/dev/shm"):
        if types.get(directory) == "tmpfs" and os.access(directory, os.W_OK):
            return directory
    return None


def paired(rounds, a, b):
    """The median of the per-round ratios a / b."""
    return statistics.median(r[a] / r[b] for r in rounds)


def median_interval(values, resamples=2000):
    """(low, high): where 95 % of the medians of resamples of values fall
    (a bootstrap, seeded: the same values give the same interval). How far
    the machine's noise moves a median of this many rounds: a target above
    high is met, one below low is missed, and between the two this run
    cannot tell."""
    draw = random.Random(len(values)).choices
    medians = sorted(statistics.median(draw(values, k=len(values))) for _ in range(resamples))
    return medians[resamples // 40], medians[resamples - 1 - resamples // 40]


def paired_interval(rounds, a, b):
    """median_interval of the per-round ratios a / b."""
    return median_interval([r[a] / r[b] for r in rounds])


VERDICTS = []


def judge(row, value, interval, target, unit="x"):
    """Note a targeted figure (at most target) for the verdicts printed at
    the end, and return its interval as text."""
    low, high = interval
    verdict = "met" if high <= target else "missed" if low > target else "at the line"
    VERDICTS.append((row, value, interval, target, unit, verdict))
    return "[95 %%: %s]" % span(interval, unit)


def number(value, unit):
    return ms(value) if unit == "ms" else "%.3f x" % value


def span(interval, unit):
    if unit == "ms":
        return "%.2f-%.2f ms" % (interval[0] * 1000, interval[1] * 1000)
    return "%.3f-%.3f x" % interval


def spread(values):
    """(10th, 90th) percentile."""
    ordered = sorted(values)
    return ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]


def ms(seconds):
    return "%.2f ms" % (seconds * 1000)


def module_load_seconds(pyz, runs):
    """Seconds to load the module as the preamble does (zipimport, unmarshal,
    module body), timed inside fresh interpreters: the median, (10th, 90th)
    percentiles, the median's interval, and the on-demand blocks loaded
    (none, or the load would not be the create path's)."""
    code = ("import time\nt=time.perf_counter()\n" + build_zipapp.load_code(pyz) +
            "\nt=time.perf_counter()-t\nprint(t, *getattr(m, '_ON_DEMAND_LOADED', ['(no-blocks)']))")
    times, blocks = [], set()
    for _ in range(runs):
        out = subprocess.run([PYTHON] + build_zipapp.PYTHON_FLAGS.split() + ["-c", code, pyz], stdout=subprocess.PIPE,
                             check=True, universal_newlines=True).stdout.split()
        times.append(float(out[0]))
        blocks.update(out[1:])
    return statistics.median(times), spread(times), median_interval(times), sorted(blocks)


def busybox_rootfs(directory):
    busybox = shutil.which("busybox")
    os.makedirs(os.path.join(directory, "bin"))
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(directory, d))
    shutil.copy2(busybox, os.path.join(directory, "bin", "busybox"))
    for applet in subprocess.run([busybox, "--list"], stdout=subprocess.PIPE, check=True,
                                 universal_newlines=True).stdout.split():
        if applet != "busybox":
            os.symlink("busybox", os.path.join(directory, "bin", applet))
    for name in ("hosts", "hostname", "resolv.conf"):
        open(os.path.join(directory, "etc", name), "w").close()
    return directory


def guardrail_rules():
    """20 guardrail rules, as a shared Docker host might have them."""
    return [
        {"preset": "baseline", "mode": "enforce"},
        {"preset": "restricted", "mode": "warn"},
        {"name": "no-sockets", "when": {"hostPaths": ["/var/run/docker.sock", "/run/containerd/containerd.sock"]},
         "deny": "engine sockets are not for containers"},
        {"name": "no-privileged", "when": {"privileged": True}, "deny": "no privileged containers"},
        {"name": "no-admin-caps", "when": {"capabilities": ["SYS_ADMIN", "SYS_MODULE", "SYS_PTRACE"]},
         "deny": "no admin capabilities"},
        {"name": "no-host-ns", "when": {"hostNamespaces": ["pid", "ipc", "uts"]}, "deny": "no host namespaces"},
        {"name": "host-network", "when": {"hostNamespaces": ["network"]}, "deny": "host network", "mode": "warn"},
        {"name": "seccomp", "when": {"unconfined": ["seccomp"]}, "deny": "seccomp required"},
        {"name": "lsm", "when": {"unconfined": ["apparmor", "selinux", "systempaths"]}, "deny": "confinement required"},
        {"name": "root", "when": {"rootUser": True}, "deny": "runs as root", "mode": "audit"},
        {"name": "net-admin", "when": {"anyOf": [{"privileged": True}, {"capabilities": ["NET_ADMIN"]}]},
         "deny": "no network administration"},
        {"name": "odd", "when": {"not": {"capabilities": ["CHOWN"]}, "rootUser": True}, "deny": "odd capabilities"},
        {"name": "drop-raw", "capabilities": {"drop": ["NET_RAW", "MKNOD"]}},
        {"name": "limits", "limits": {"pids": 1024, "memory": "2g", "cpus": 2}},
        {"name": "nnp", "no-new-privileges": True},
        {"name": "ro-non-root", "when": {"not": {"rootUser": True}}, "readonly-rootfs": True},
        {"name": "no-etc", "when": {"hostPaths": ["/etc", "/root", "/boot"]}, "deny": "host system directories"},
        {"name": "home", "when": {"hostPaths": ["/home"]}, "deny": "home directories", "mode": "warn"},
        {"name": "non-root-caps", "when": {"rootUser": False}, "capabilities": {"allow": ["NET_BIND_SERVICE"]}},
        {"name": "shared-pid", "when": {"anyOf": [{"hostNamespaces": ["pid"]}, {"privileged": True}]},
         "limits": {"pids": 256}},
    ]


def guardrails_row(pyz, work, target, pristine, restore, pairs):
    """(f): create of the config in target (restored to pristine before each
    run) with a policy file, without and with 20 guardrail rules, and with
    an audit log too; wall and CPU time, medians and medians of the paired
    differences (each round runs every side, in a shuffled order)."""
    plain_policy = {"version": 1, "runtime-path": "/bin/true", "readonly-networking-mounts": True,
                    "env": ["TZ=UTC"], "env-force": ["HTTP_PROXY=http://proxy:3128"]}
    rules = guardrail_rules()
    assert len(rules) == 20
    policies = {"plain": plain_policy, "guarded": dict(plain_policy, rules=rules),
                "audited": dict(plain_policy, rules=rules, **{"audit-log": os.path.join(work, "audit.log")})}
    spec = json.loads(pristine.decode())
    if not isinstance(spec.get("linux", {}).get("seccomp"), dict):
        # runc spec's config (--skip-docker) has no seccomp profile, which the baseline preset refuses,
        # and fewer capabilities than an engine gives: made like Docker's.
        spec.setdefault("linux", {})["seccomp"] = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]}
        docker_capabilities = ["CAP_" + name for name in (
            "CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE "
            "SYS_CHROOT KILL AUDIT_WRITE").split()]
        spec["process"]["capabilities"] = dict((kind, list(docker_capabilities)) for kind in (
            "bounding", "effective", "permitted"))
        pristine = json.dumps(spec).encode()
        restore = functools.partial(restore, pristine)
    cgroups_path = spec.get("linux", {}).get("cgroupsPath", "")
    container_id = cgroups_path.rpartition("/")[2] or "bench"     # Docker's own files are under its id
    # The container records these creates write (their policy names a runtime) go to a state
    # directory of their own: in the shared one they would keep the passthrough records of
    # later rows from being written, as a host's container of another runtime would.
    state = os.environ["OCI_INTERCEPTOR_STATE_DIR"] + "-f"
    sides, envs = {}, {}
    for name, data in policies.items():
        path = os.path.join(work, "policy-%s.json" % name)
        with open(path, "w") as f:
            json.dump(data, f)
        os.chmod(path, 0o644)
        envs[name] = {"OCI_INTERCEPTOR_CONFIG": path, "OCI_INTERCEPTOR_STATE_DIR": state}
        sides[name] = (["/usr/bin/env"] + ["%s=%s" % item for item in sorted(envs[name].items())]
                       + [pyz, "create", "--bundle", target, container_id])
    restore()
    probe = subprocess.run(sides["guarded"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if probe.returncode != 0:
        raise RuntimeError("the guarded create failed: " + probe.stderr.decode())
    cpu, rounds = {}, []
    medians, _ = alternate(sides, pairs, before={name: restore for name in sides}, cpu=cpu, rounds=rounds)
    row = dict(medians)

    def paired(values, side):
        return statistics.median(v[side] - v["plain"] for v in values)
    cpu_rounds = [{name: cpu[name][i] for name in sides} for i in range(pairs)]
    row.update(added=paired(rounds, "guarded"), added_with_audit_log=paired(rounds, "audited"),
               added_interval=median_interval([r["guarded"] - r["plain"] for r in rounds]),
               cpu_plain=statistics.median(cpu["plain"]), cpu_added=paired(cpu_rounds, "guarded"),
               cpu_added_with_audit_log=paired(cpu_rounds, "audited"))
    print("(f) create with 20 guardrail rules: %s, without: %s -> median of paired differences %s added %s "
          "(target <= 1 ms), %s with an audit log too; CPU time (user + system) %s without, %s added (%s with "
          "the audit log)" % (ms(medians["guarded"]), ms(medians["plain"]), ms(row["added"]),
                              judge("(f) 20 guardrail rules, added", row["added"], row["added_interval"], 0.001,
                                    "ms"),
                              ms(row["added_with_audit_log"]), ms(row["cpu_plain"]), ms(row["cpu_added"]),
                              ms(row["cpu_added_with_audit_log"])))
    if shutil.which("valgrind"):
        # Instructions, which no other load moves: the Python part of each side under callgrind
        # (the same interpreter and archive; counted up to the exec of the runtime).
        counts = {}
        for name in ("plain", "guarded"):
            restore()
            out = os.path.join(work, "callgrind-%s.out" % name)
            subprocess.run(["valgrind", "--tool=callgrind", "--dump-before=execv", "--callgrind-out-file=" + out,
                            PYTHON] + build_zipapp.PYTHON_FLAGS.split() + sides[name][1 + len(envs[name]):],
                           env=dict(os.environ, **envs[name]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            counts[name] = sum(int(line.split()[1]) for part in os.listdir(work) if part.startswith(
                os.path.basename(out)) for line in open(os.path.join(work, part), errors="replace")
                if line.startswith("summary:"))
        row.update(instructions_plain=counts["plain"], instructions_added=counts["guarded"] - counts["plain"])
        print("(f) instructions (callgrind): %.1f M without, %.2f M added (%.1f %%)" % (
            counts["plain"] / 1e6, row["instructions_added"] / 1e6, 100.0 * row["instructions_added"] / counts["plain"]))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="rounds for (a), (b) (default 200)")
    parser.add_argument("--docker-pairs", type=int, default=20, help="rounds for (d) (default 20)")
    parser.add_argument("--skip-docker", action="store_true", help="skip (d); (b) then uses runc spec's config")
    parser.add_argument("--go-peer", default=os.environ.get("OCI_INTERCEPTOR_GO_PEER"), metavar="PATH",
                        help="oci-add-hooks (Go) to compare with (default: $OCI_INTERCEPTOR_GO_PEER; none: no such rows)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    go_peer = os.path.abspath(args.go_peer) if args.go_peer else None
    os.environ["OCI_INTERCEPTOR_CONFIG"] = ""
    work = tempfile.mkdtemp(prefix="oi-bench-")
    cleanup = [work]
    # Records (written by (f)'s creates, whose policy names a runtime) are kept
    # where they are by default: /run, a tmpfs, on which their fsync is cheap.
    memory = memory_filesystem()
    state = tempfile.mkdtemp(prefix="oi-bench-state-", dir=memory) if memory else os.path.join(work, "state")
    cleanup.append(state)
    os.environ["OCI_INTERCEPTOR_STATE_DIR"] = os.path.join(state, "state-dir")
    results = {"machine": "%s, %d cores, %s, Python %s, load average %s before" % (
        platform.machine(), os.cpu_count(), platform.release(), platform.python_version(),
        " ".join("%.1f" % x for x in os.getloadavg()))}
    try:
        pyz = build_zipapp.build(os.path.join(work, "oci-interceptor.pyz"), PYTHON)
        runc = shutil.which("runc")
        rootfs = busybox_rootfs(os.path.join(work, "rootfs"))
        floor = [PYTHON, "-I", "-S", "-c", "pass"]

        # (a) passthrough
        bundle = os.path.join(work, "bundle")
        os.makedirs(bundle)
        subprocess.run([runc, "spec", "--bundle", bundle], check=True)
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        spec["root"] = {"path": rootfs, "readonly": True}
        spec["process"]["terminal"] = False
        spec["process"]["args"] = ["sleep", "1000"]
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        state = os.path.join(work, "state")
        cid = "oi-bench-%d" % os.getpid()
        with open(os.devnull, "w") as null:
            subprocess.run([runc, "--root", state, "run", "-d", "--bundle", bundle, cid],
                           stdin=subprocess.DEVNULL, stdout=null, stderr=null, check=True)
        # The same call with a policy file present takes the Python path.
        policy_file = os.path.join(work, "policy.json")
        with open(policy_file, "w") as f:
            json.dump({"version": 1, "readonly-networking-mounts": True, "env": ["TZ=UTC"]}, f)
        os.chmod(policy_file, 0o644)
        env_args = ["/usr/bin/env", "OCI_INTERCEPTOR_CONFIG=" + policy_file]
        hook_file = os.path.join(work, "hooks.json")
        with open(hook_file, "w") as f:
            json.dump(HOOK_FILE, f)
        os.chmod(hook_file, 0o644)
        sides = {
            "pyz": ["/usr/bin/env", "OCI_INTERCEPTOR_CONFIG=", pyz, "--oi-readonly-networking-mounts",
                    "--root", state, "state", cid],
            "pyz-config": env_args + [pyz, "--root", state, "state", cid],
            "runc": ["/usr/bin/env", runc, "--root", state, "state", cid],
            "floor": floor,
        }
        peer_args = ["--hook-config-path", hook_file, "--runtime-path", runc, "--root", state, "state", cid]
        # The wrappers' own cost: the same call with /bin/true as the runtime.
        true_args = ["--hook-config-path", hook_file, "--runtime-path", "/bin/true", "--root", state, "state", cid]
        if go_peer:
            sides["pyz-peer-args"] = ["/usr/bin/env", "OCI_INTERCEPTOR_CONFIG=", pyz] + peer_args
            sides["go"] = ["/usr/bin/env", go_peer] + peer_args
            sides["pyz-true"] = ["/usr/bin/env", "OCI_INTERCEPTOR_CONFIG=", pyz] + true_args
            sides["go-true"] = ["/usr/bin/env", go_peer] + true_args
        rounds = []
        try:
            medians, _ = alternate(sides, args.pairs, rounds=rounds)
        finally:
            subprocess.run([runc, "--root", state, "delete", "--force", cid])
        results["a"] = {"pyz_fast_path": medians["pyz"], "pyz_with_config": medians["pyz-config"],
                        "runc": medians["runc"], "floor": medians["floor"],
                        "floor_spread": spread([r["floor"] for r in rounds])}
        print("floor (python3 -I -S -c pass): median %s, 10th-90th percentile %s-%s" % (
            ms(medians["floor"]), ms(results["a"]["floor_spread"][0]), ms(results["a"]["floor_spread"][1])))
        for name, label in (("pyz", "flags, no config file"),
                            ("pyz-config", "policy in a config file")):
            overhead = medians[name] - medians["runc"]
            results["a"][name + "_overhead_vs_floor"] = overhead / medians["floor"]
            print("(a) passthrough `state`, %s: .pyz %s, runc %s, floor %s -> overhead %s = %.2f x floor "
                  "(target <= 1.25)" % (label, ms(medians[name]), ms(medians["runc"]), ms(medians["floor"]),
                                        ms(overhead), overhead / medians["floor"]))
        if go_peer:
            results["a"].update({"go": medians["go"], "pyz_peer_args": medians["pyz-peer-args"],
                                 "pyz_vs_go_paired": paired(rounds, "pyz-peer-args", "go"),
                                 "go_true": medians["go-true"], "pyz_true": medians["pyz-true"],
                                 "pyz_vs_go_true_paired": paired(rounds, "pyz-true", "go-true"),
                                 "pyz_vs_go_true_interval": paired_interval(rounds, "pyz-true", "go-true")})
            print("(a) passthrough `state` with the Go peer's command line and /bin/true as the runtime (the "
                  "wrappers' own cost): .pyz %s, Go peer %s -> %.2f x, paired %.2f x %s (target <= 0.6)"
                  % (ms(medians["pyz-true"]), ms(medians["go-true"]), medians["pyz-true"] / medians["go-true"],
                     results["a"]["pyz_vs_go_true_paired"],
                     judge("(a'') passthrough vs the Go peer", results["a"]["pyz_vs_go_true_paired"],
                           results["a"]["pyz_vs_go_true_interval"], 0.6)))
            print("(a) passthrough `state` with the Go peer's command line: .pyz %s, Go peer %s -> %.2f x, paired "
                  "%.2f x (runc's own 'state' is most of both)" % (ms(medians["pyz-peer-args"]), ms(medians["go"]),
                                              medians["pyz-peer-args"] / medians["go"],
                                              results["a"]["pyz_vs_go_paired"]))

        # A docker config.json, captured from a real `docker run` (d needs the daemon too).
        docker = None
        docker_config = None
        if not args.skip_docker:
            import engines
            import images
            capture = os.path.join(work, "capture")
            tar = images.rootfs_tarball(rootfs, os.path.join(work, "rootfs.tar"))
            docker = engines.Docker({"runtimes": {
                "oi": {"path": pyz},
                "oi-args": {"path": pyz, "runtimeArgs": ["--oi-readonly-networking-mounts", "--oi-env=TZ=UTC",
                                                         "--oi-env-force=HTTP_PROXY=http://proxy:3128"]},
                "oi-capture": {"path": pyz, "runtimeArgs": ["--oi-write-debug-output",
                                                            "--oi-debug-output-dir=" + capture]},
                # runc itself behind Docker's runtimeArgs wrapper (an argument Docker's own
                # --log-format json overrides): what that wrapper costs without us.
                "runc-args": {"path": shutil.which("runc"), "runtimeArgs": ["--log-format=json"]}}}, tar)
            # The capture (and (d) through "oi") runs with a real policy file.
            docker.write_policy({"version": 1, "readonly-networking-mounts": True, "env": ["TZ=UTC"],
                                 "env-force": ["HTTP_PROXY=http://proxy:3128"]})
        try:
            if docker is not None:
                docker.run("--runtime", "oi-capture", "--hostname", "captured", docker.image, "true")
                # Debug files are named HOSTNAME_ID_original.json.
                docker_config = os.path.join(capture, [name for name in os.listdir(capture)
                                                       if name.startswith("captured_")
                                                       and name.endswith("_original.json")][0])
            else:
                docker_config = os.path.join(bundle, "config.json")
            with open(docker_config, "rb") as f:
                pristine = f.read()

            # (b) create with a typical policy, and with a hook file's hooks; /bin/true as the runtime
            # The bundle where Docker and containerd keep theirs: under /run, a tmpfs on a host (here a
            # tmpfs of the machine's, when /run is not one); Podman keeps its bundles on disk, the
            # hook-file create runs there too.
            target = tempfile.mkdtemp(prefix="oi-bench-", dir=memory) if memory else os.path.join(work, "create")
            cleanup.append(target)
            os.makedirs(target, exist_ok=True)
            config_path = os.path.join(target, "config.json")
            on_disk = os.path.join(work, "create-on-disk")
            os.makedirs(on_disk)

            def restore(data=pristine, directory=target):
                with open(os.path.join(directory, "config.json"), "wb") as f:
                    f.write(data)
            policy = ["--oi-runtime-path", "/bin/true", "--oi-readonly-networking-mounts",
                      "--oi-env", "TZ=UTC", "--oi-env-force", "HTTP_PROXY=http://proxy:3128"]
            create = [pyz] + policy + ["create", "--bundle", target, "bench"]
            hook_args = ["--hook-config-path", hook_file, "--runtime-path", "/bin/true",
                         "create", "--bundle", target, "bench"]
            disk_args = hook_args[:-3] + ["create", "--bundle", on_disk, "bench"]
            sides = {"create": create, "hooks": [pyz] + hook_args, "floor": floor, "hooks-disk": [pyz] + disk_args}
            if go_peer:
                sides["go-hooks"] = [go_peer] + hook_args
                sides["go-hooks-disk"] = [go_peer] + disk_args
            rounds = []
            restore_on_disk = functools.partial(restore, directory=on_disk)
            medians, _ = alternate(sides, args.pairs, rounds=rounds, before=dict(
                (name, restore_on_disk if name.endswith("-disk") else restore) for name in sides if name != "floor"))
            rss = {"create": peak_rss_kib(create, restore), "floor": peak_rss_kib(floor)}
            results["b"] = {"create": medians["create"], "floor": medians["floor"],
                            "ratio": medians["create"] / medians["floor"],
                            "paired_ratio": paired(rounds, "create", "floor"),
                            "paired_interval": paired_interval(rounds, "create", "floor"),
                            "hooks": medians["hooks"], "hooks_paired_ratio": paired(rounds, "hooks", "floor"),
                            "hooks_paired_interval": paired_interval(rounds, "hooks", "floor"),
                            "floor_spread": spread([r["floor"] for r in rounds]),
                            "max_rss_kib": rss["create"], "floor_max_rss_kib": rss["floor"],
                            "config_bytes": len(pristine), "bundle_filesystem": memory or "disk",
                            "hooks_disk": medians["hooks-disk"],
                            "hooks_disk_paired_ratio": paired(rounds, "hooks-disk", "floor")}
            print("(b) bundle on %s" % (memory + " (tmpfs)" if memory else "the work directory's filesystem (no tmpfs)"))
            print("(b) create (Docker config, %d bytes), typical policy: %s, floor %s (10th-90th %s-%s) -> %.2f x "
                  "floor, paired %.2f x %s (target <= 1.3); max RSS %d KiB (floor %d KiB)"
                  % (len(pristine), ms(medians["create"]), ms(medians["floor"]), ms(results["b"]["floor_spread"][0]),
                     ms(results["b"]["floor_spread"][1]), medians["create"] / medians["floor"],
                     results["b"]["paired_ratio"],
                     judge("(b) typical create vs the floor", results["b"]["paired_ratio"],
                           results["b"]["paired_interval"], 1.3), rss["create"], rss["floor"]))
            print("(b) create, the hooks of one hook file: %s -> %.2f x floor, paired %.2f x %s (target <= 1.3)"
                  % (ms(medians["hooks"]), medians["hooks"] / medians["floor"], results["b"]["hooks_paired_ratio"],
                     judge("(b') hook-file create vs the floor", results["b"]["hooks_paired_ratio"],
                           results["b"]["hooks_paired_interval"], 1.3)))
            if go_peer:
                results["b"].update({"go_hooks": medians["go-hooks"],
                                     "hooks_vs_go_paired": paired(rounds, "hooks", "go-hooks"),
                                     "hooks_vs_go_interval": paired_interval(rounds, "hooks", "go-hooks"),
                                     "go_vs_floor_paired": paired(rounds, "go-hooks", "floor")})
                print("(b) the same create through the Go peer: %s = %.2f x floor (paired); .pyz / Go peer %.2f x, "
                      "paired %.2f x %s (target about <= 1.9)"
                      % (ms(medians["go-hooks"]), results["b"]["go_vs_floor_paired"],
                         medians["hooks"] / medians["go-hooks"], results["b"]["hooks_vs_go_paired"],
                         judge("(b') hook-file create vs the Go peer", results["b"]["hooks_vs_go_paired"],
                               results["b"]["hooks_vs_go_interval"], 1.9)))
            print("(b) the hook-file create with the bundle on disk (as Podman keeps it): %s -> %.2f x floor, paired "
                  "%.2f x" % (ms(medians["hooks-disk"]), medians["hooks-disk"] / medians["floor"],
                              results["b"]["hooks_disk_paired_ratio"]))
            if go_peer:
                results["b"].update({"go_hooks_disk": medians["go-hooks-disk"],
                                     "hooks_disk_vs_go_paired": paired(rounds, "hooks-disk", "go-hooks-disk")})
                print("(b) the same on disk through the Go peer: %s; .pyz / Go peer %.2f x, paired %.2f x"
                      % (ms(medians["go-hooks-disk"]), medians["hooks-disk"] / medians["go-hooks-disk"],
                         results["b"]["hooks_disk_vs_go_paired"]))

            # (i) the module's load on the create path
            median, (low, high), interval, blocks = module_load_seconds(pyz, max(20, args.pairs // 2))
            results["i"] = {"median": median, "spread": (low, high), "interval": interval, "blocks_loaded": blocks}
            print("(i) module load (read, unmarshal, body): median %s %s, 10th-90th %s-%s (target <= 1.5 ms); "
                  "on-demand blocks loaded: %s" % (ms(median), judge("(i) module load", median, interval, 0.0015, "ms"),
                                                   ms(low), ms(high), ", ".join(blocks) or "none"))

            # (f) guardrails: the same create, policy in a file, with and without 20 guardrail rules
            results["f"] = guardrails_row(pyz, work, target, pristine, restore, args.pairs)

            # (c) scale
            base = json.loads(pristine.decode())
            results["c"] = []
            for env_count, mount_count in ((1000, 200), (10000, 2000), (50000, 10000)):
                big = json.loads(json.dumps(base))
                big["process"]["env"] = ["VAR_%d=value-%d" % (i, i) for i in range(env_count)]
                big["mounts"] = [{"destination": "/data/%d" % i, "type": "bind", "source": "/srv/%d" % i,
                                  "options": ["rbind", "rw"]} for i in range(mount_count - 3)] + [
                    {"destination": d, "type": "bind", "source": "/x" + d, "options": ["rbind", "rw"]}
                    for d in ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")]
                data = json.dumps(big).encode()
                rounds = max(5, args.pairs // 10)
                medians, _ = alternate({"create": create, "floor": floor}, rounds,
                                       before={"create": lambda data=data: restore(data)})
                rss = {"create": peak_rss_kib(create, lambda data=data: restore(data))}
                row = {"env": env_count, "mounts": mount_count, "bytes": len(data), "seconds": medians["create"],
                       "above_floor": medians["create"] - medians["floor"], "max_rss_kib": rss["create"]}
                results["c"].append(row)
                print("(c) %6d env + %5d mounts (%5.1f MB): %s (%s above the floor), max RSS %d KiB"
                      % (env_count, mount_count, len(data) / 1e6, ms(medians["create"]),
                         ms(row["above_floor"]), rss["create"]))

            # (d) docker run --rm through the interceptor vs runc
            if docker is not None:
                def docker_run(runtime):
                    return ["/usr/bin/env", "DOCKER_HOST=unix://" + docker.socket,
                            "DOCKER_CONFIG=" + os.path.join(docker.base, "cli"), shutil.which("docker"),
                            "run", "--rm", "--network", "none", "--runtime", runtime, docker.image, "true"]
                results["d"] = {}
                for runtime, label in (("oi", "policy in the config file"),
                                       ("oi-args", "policy in runtimeArgs, a config file that activates none")):
                    if runtime == "oi":
                        docker.write_policy({"version": 1, "readonly-networking-mounts": True, "env": ["TZ=UTC"],
                                             "env-force": ["HTTP_PROXY=http://proxy:3128"]})
                    else:
                        # What the packages install: dockerd names the file, which must exist.
                        docker.write_policy({"version": 1, "rules": []})
                    rounds = []
                    sides = {"interceptor": docker_run(runtime), "runc": docker_run("runc")}
                    if runtime == "oi-args":
                        sides["runc-args"] = docker_run("runc-args")
                    medians, _ = alternate(sides, args.docker_pairs, rounds=rounds)
                    ratio = paired(rounds, "interceptor", "runc")
                    interval = paired_interval(rounds, "interceptor", "runc")
                    verdict_row = "(d') docker run, runtimeArgs" if runtime == "oi-args" else "(d) docker run, config file"
                    results["d"][runtime] = {"interceptor": medians["interceptor"], "runc": medians["runc"],
                                             "ratio": medians["interceptor"] / medians["runc"],
                                             "paired_ratio": ratio, "paired_interval": interval}
                    print("(d) docker run --rm true, %s: interceptor %s, runc %s -> %.3f x; median of the %d "
                          "paired ratios %.3f x %s (target <= 1.04)"
                          % (label, ms(medians["interceptor"]), ms(medians["runc"]),
                             medians["interceptor"] / medians["runc"], len(rounds), ratio,
                             judge(verdict_row, ratio, interval, 1.04)))
                    if "runc-args" in sides:
                        wrapper = paired(rounds, "runc-args", "runc")
                        results["d"][runtime].update(runc_args=medians["runc-args"], runc_args_paired_ratio=wrapper,
                                                     vs_runc_args_paired_ratio=paired(rounds, "interceptor",
                                                                                      "runc-args"))
                        print("(d) the same, runc itself behind Docker's runtimeArgs wrapper: %s, paired %.3f x "
                              "runc; the interceptor paired %.3f x that" % (
                                  ms(medians["runc-args"]), wrapper, results["d"][runtime]["vs_runc_args_paired_ratio"]))
        finally:
            if docker is not None:
                docker.stop()
        print("machine: " + results["machine"])
        print("verdicts (met: the 95 % interval of the median is under the target; missed: over it; at the line: "
              "it holds the target):")
        for row, value, interval, target, unit, verdict in VERDICTS:
            print("  %-40s %-11s %s [%s], target <= %s" % (row, verdict, number(value, unit), span(interval, unit),
                                                             number(target, unit)))
        results["verdicts"] = [{"row": row, "value": value, "interval": interval, "target": target,
                                "verdict": verdict} for row, value, interval, target, unit, verdict in VERDICTS]
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
    finally:
        for directory in cleanup:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
