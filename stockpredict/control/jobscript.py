"""Render sbatch scripts: validated job parameters + a site profile -> the text of one batch script.

The pure core is `render_job(spec) -> str`. Every value is validated here and every value that lands in a
shell line is quoted here (shlex.quote); the Jinja templates in templates/ only place the pieces:
directives, a setup section, one launch line, an error trap. Output is deterministic: directives are
sorted and the body holds no timestamps, so golden files can pin it (tests/golden/).

Scheduler directives (`#SBATCH ...`) and the launcher prefix (`srun --mpi=pmix ...`, `mpirun ...`) are
built by separate functions so a site can change one without touching the other (as ReFrame does).

Profiles (slurm/profiles/<name>.toml) hold a site's defaults (partition, account, setup lines, launcher);
keys are a subset of `JobSpec`'s fields, anything else fails listing the valid keys.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import jinja2

from stockpredict.common import rundir
from stockpredict.common.checkout import ENGINE_VENVS, PACKAGE_DIR, REPO
from stockpredict.common.errors import UserError
from stockpredict.common.signals import (
    DEFAULT_REQUEUE_SIGNAL,
    REQUEUE_SIGNAL_ENV,
    REQUEUE_SIGNALS,
    requeue_signal_name,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.9/3.10
    import tomli as tomllib

# Package data, so that a non-editable install renders the same scripts as the checkout. In the checkout
# these are symbolic links to the top-level templates/ and slurm/profiles/ (where users read and add
# them); a wheel holds copies (pyproject.toml, [tool.setuptools.package-data]).
TEMPLATE_DIR = PACKAGE_DIR / "templates"
PROFILE_DIR = PACKAGE_DIR / "profiles"

JOB_KINDS = ("train", "allreduce", "preprocess", "report", "gpu-check")
# Kinds that run p ranks in a run directory (results/runs/<id>/) through the train template and launcher:
# the trainer, and the allreduce microbenchmark (stockpredict/job/allreduce_bench.py), recorded like a run.
RUN_KINDS = ("train", "allreduce")
# How ranks are started. srun-* use Slurm's PMI plugins (no ssh, no host file); mpirun reads the
# allocation from Slurm; horovodrun-gloo starts ranks itself (multi-node needs passwordless ssh);
# srun (plain, no MPI) is the tf engine's: each task builds TF_CONFIG from the step (tfcluster.py).
LAUNCHERS = ("srun-pmix", "srun-pmi2", "mpirun", "horovodrun-gloo", "srun", "none")
# Per engine: the launchers that can start its ranks (the first is the default); the environment
# `{venv}` in a profile's setup lines names is checkout.ENGINE_VENVS.
ENGINE_LAUNCHERS = {"horovod": tuple(launcher for launcher in LAUNCHERS if launcher != "srun"),
                    "tf": ("srun",)}
# The warning signal Slurm sends before the time limit: JobSpec.requeue_signal (profile key, make
# SIGNAL=), one of common/signals.REQUEUE_SIGNALS. USR2 by default, because MPICH and one NCCL release
# catch USR1 (why, and why no other signal: common/signals.py and docs/training.md).
REQUEUE_SIGNAL = DEFAULT_REQUEUE_SIGNAL
# The trainer saves the final model at the very end (stockpredict.train): a train job counts as finished
# only if it exists, since srun may exit 0 when its step failed to start.
# The allreduce benchmark's last file (rundir.ALLREDUCE_SUMMARY) is its done marker, for the same check.


@dataclass(frozen=True)
class RunProgram:
    """What a run-directory job's script says about its program and checks it wrote."""

    activity: str          # "training finished", "training FAILED"
    program: str           # "the trainer wrote its last file"
    done_marker: str       # in the run directory; the run counts as finished only when it exists
    log: str | None        # the program's own log in the run directory, named on failure (None: none)


RUN_PROGRAMS = {
    "train": RunProgram("training", "trainer", rundir.MODEL, rundir.TRAIN_LOG),
    "allreduce": RunProgram("allreduce benchmark", "benchmark", rundir.ALLREDUCE_SUMMARY, None),
}
# With JobSpec.timeline, Horovod's rank 0 records every collective here (in the run directory); the
# report reads it into the step-time breakdown (stockpredict/report/timeline.py, docs/scaling.md).

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_NAME_LIST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(,[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9_.,&|:*\[\]()!-]+$")
_MEM_RE = re.compile(r"^[1-9][0-9]*[KMGT]?$")
# Slurm --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME_RE = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}"
                      r"|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2})$")
_EXTRA_DIRECTIVE_RE = re.compile(r"^--[a-z][a-z0-9-]*(=[^\s\"'`$\\;]+)?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ArrayTask:
    """One task of a job array: the run directory it trains in and its program's argv."""

    run_dir: str
    command: tuple[str, ...]


@dataclass(frozen=True)
class JobSpec:
    """Everything one batch script depends on. Defaults are the local test cluster's; profiles override."""

    kind: str = "train"                      # one of JOB_KINDS: picks templates/<kind>.sbatch.j2
    job_name: str = "stockpredict-train"     # [A-Za-z0-9._-] only: it lands in squeue and file names
    nodes: int = 1
    gpus_per_node: int = 0                   # 0 = CPU only (no --gpus-per-node directive)
    tasks_per_node: int | None = None        # None = one rank per GPU, or one per node when CPU only
    cpus_per_task: int = 1                   # also the trainer's --threads (TF intra-op threads per rank)
    time: str = "00:30:00"                   # Slurm time limit: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S
    partition: str | None = None             # None = the cluster's default partition
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None            # node features, e.g. "a100|v100"
    mem: str | None = None                   # per node, e.g. "32G"; None = the site default
    output: str = rundir.SLURM_OUTPUT             # Slurm stdout (+stderr) path; %j = job id
    error: str | None = None                 # None = stderr goes with stdout
    launcher: str = "srun-pmix"              # one of LAUNCHERS
    setup: tuple[str, ...] = ()              # shell lines run before launch (module load, venv, env vars)
    extra_directives: tuple[str, ...] = ()   # passthrough, e.g. ("--exclusive", "--reservation=gpu")
    requeue: bool = False                    # train jobs: requeueable, resume from the checkpoint
                                             # (allreduce jobs are not: a benchmark has nothing to resume)
    signal_seconds: int = 120                # train jobs: the requeue signal this long before the limit
    requeue_signal: str = REQUEUE_SIGNAL     # train jobs: USR2 or USR1 (common/signals.py says why USR2)
    max_requeues_without_progress: int = 3   # train jobs: requeues in a row without a newer checkpoint
    #                                          before the job fails instead (a crash loop; docs/training.md)
    stall_timeout: int | None = None         # train jobs: the trainer's --stall-timeout (seconds; 0: off);
    #                                          None: the trainer's default, 300 (stockpredict/job/watchdog.py)
    run_dir: str | None = None               # train and allreduce jobs: the program's --run-dir (absolute)
    command: tuple[str, ...] = ()            # the program's argv (quoted here; run after setup)
    timeline: bool = False                   # train jobs: export HOROVOD_TIMELINE=<run_dir>/timeline.json
    profile: str = "custom"                  # profile name, recorded in the script's header
    array_tasks: tuple[ArrayTask, ...] = ()  # train jobs: a job array, task i runs array_tasks[i] (its
    #                                          run_dir and command); run_dir is then the array's folder
    array_max: int | None = None             # array jobs: at most this many tasks at once (--array=..%K)

    @property
    def ranks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1

    @property
    def ranks(self) -> int:
        return self.nodes * self.ranks_per_node


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(JobSpec))
# Keys a profile may set: site defaults, not per-job facts like the command or the run directory.
PROFILE_KEYS = tuple(k for k in SPEC_FIELDS if k not in {"kind", "command", "run_dir", "output", "error",
                                                         "profile", "job_name", "requeue", "timeline",
                                                         "array_tasks"})
# Keys a profile may hold for the report (cost columns of the scaling model), ignored by job rendering.
REPORT_PROFILE_KEYS = ("price_per_gpu_hour", "price_per_node_hour")
# Directives this module writes itself; passing them through extra_directives would silently conflict.
_MANAGED_DIRECTIVES = {"nodes", "ntasks-per-node", "ntasks", "cpus-per-task", "gpus-per-node", "time",
                       "partition", "account", "qos", "constraint", "mem", "job-name", "output", "error",
                       "requeue", "signal", "open-mode", "array"}


# The type of each JobSpec field a profile, a flag or a record can set (validate() then checks the values).
_INT_FIELDS = {"nodes", "gpus_per_node", "cpus_per_task", "signal_seconds", "max_requeues_without_progress"}
_OPTIONAL_INT_FIELDS = {"tasks_per_node", "array_max", "stall_timeout"}
_BOOL_FIELDS = {"requeue", "timeline"}
_OPTIONAL_STR_FIELDS = {"partition", "account", "qos", "constraint", "mem", "error", "run_dir"}
_STR_LIST_FIELDS = {"setup", "extra_directives", "command"}


def check_types(values: Mapping[str, Any], where: str = "job parameter") -> None:
    """A one-line UserError for a value of the wrong type (a TOML list where a number belongs, a number
    where a string does), before anything compares or iterates it."""
    for key, value in values.items():
        if key in _INT_FIELDS or (key in _OPTIONAL_INT_FIELDS and value is not None):
            ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
        elif key in _BOOL_FIELDS:
            ok, want = isinstance(value, bool), "true or false"
        elif key in _OPTIONAL_STR_FIELDS:
            ok, want = value is None or isinstance(value, str), "a string"
        elif key in _STR_LIST_FIELDS:
            ok, want = (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value),
                        "a list of strings")
        elif key in ("array_tasks", "requeue_signal"):  # checked where they are parsed (make_spec)
            continue
        elif key in SPEC_FIELDS:
            ok, want = isinstance(value, str), "a string"
        else:
            continue
        if not ok:
            raise UserError(f"{where} {key} must be {want}, got {value!r}"[:300])


def make_spec(values: Mapping[str, Any]) -> JobSpec:
    """Build a JobSpec from a mapping; unknown keys fail listing the valid ones. Lists become tuples."""
    unknown = sorted(set(values) - set(SPEC_FIELDS))
    if unknown:
        raise UserError(f"unknown job parameter(s) {', '.join(unknown)}; valid: {', '.join(SPEC_FIELDS)}")
    check_types(values)
    cleaned = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    if "array_tasks" in cleaned:  # from a mapping (submit.json, a test) or already ArrayTask
        cleaned["array_tasks"] = tuple(
            task if isinstance(task, ArrayTask) else ArrayTask(str(task["run_dir"]), tuple(task["command"]))
            for task in cleaned["array_tasks"])
    if "requeue_signal" in cleaned:  # "usr2" and "SIGUSR2" mean USR2; anything not allowed fails here
        cleaned["requeue_signal"] = requeue_signal_name(cleaned["requeue_signal"])
    return JobSpec(**cleaned)


def _positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _matches(name: str, value: Any, pattern: re.Pattern, what: str) -> None:
    if not isinstance(value, str) or not pattern.match(value):
        raise UserError(f"{name} {value!r} is not valid: {what}")


def _path(name: str, value: Any) -> None:
    # Directive lines are read by sbatch, not bash: a double-quoted value may hold spaces but no quote.
    if not isinstance(value, str) or not value or _CONTROL_RE.search(value) or '"' in value:
        raise UserError(f"{name} {value!r} is not a usable path: no newlines, control characters or "
                        f"double quotes allowed")


def validate(spec: JobSpec) -> JobSpec:
    """Check every field; raise UserError naming the field and the rule. Returns the spec unchanged."""
    if spec.kind not in JOB_KINDS:
        raise UserError(f"kind {spec.kind!r} is not one of {', '.join(JOB_KINDS)}")
    if spec.launcher not in LAUNCHERS:
        raise UserError(f"launcher {spec.launcher!r} is not one of {', '.join(LAUNCHERS)}")
    _matches("job name", spec.job_name, _NAME_RE, "use letters, digits, '.', '_' and '-' only")
    _matches("profile name", spec.profile, _NAME_RE, "use letters, digits, '.', '_' and '-' only")
    _positive_int("nodes", spec.nodes)
    _positive_int("gpus per node", spec.gpus_per_node, minimum=0)
    if spec.tasks_per_node is not None:
        _positive_int("tasks per node", spec.tasks_per_node)
    _positive_int("cpus per task", spec.cpus_per_task)
    _positive_int("signal seconds", spec.signal_seconds)
    if requeue_signal_name(spec.requeue_signal) != spec.requeue_signal:  # a JobSpec built by hand
        raise UserError(f"requeue signal {spec.requeue_signal!r}: write it as one of "
                        f"{', '.join(REQUEUE_SIGNALS)}")
    _positive_int("max_requeues_without_progress", spec.max_requeues_without_progress, minimum=0)
    if spec.stall_timeout is not None:
        _positive_int("stall_timeout (seconds; 0: off)", spec.stall_timeout, minimum=0)
    _matches("time limit", spec.time, _TIME_RE,
             "Slurm accepts M, M:S, H:M:S, D-H, D-H:M or D-H:M:S (e.g. 00:30:00 or 1-12:00:00)")
    if spec.partition is not None:
        _matches("partition", spec.partition, _NAME_LIST_RE,
                 "a name (or comma-separated names) of letters, digits, '.', '_' and '-'")
    for key in ("account", "qos"):
        if getattr(spec, key) is not None:
            _matches(key, getattr(spec, key), _NAME_RE, "use letters, digits, '.', '_' and '-' only")
    if spec.constraint is not None:
        _matches("constraint", spec.constraint, _CONSTRAINT_RE,
                 "Slurm feature syntax (names, & | , [ ] ( ) ! : *)")
    if spec.mem is not None:
        _matches("mem", spec.mem, _MEM_RE,
                 "a positive integer with an optional K, M, G or T suffix, e.g. 32G")
    _path("output path", spec.output)
    if spec.error is not None:
        _path("error path", spec.error)
    if spec.run_dir is not None:
        _path("run directory", spec.run_dir)
    for line in spec.setup:
        if not isinstance(line, str) or "\n" in line or "\r" in line or "\x00" in line:
            raise UserError(f"setup line {line!r} must be one line of shell")
    for directive in spec.extra_directives:
        _matches("extra directive", directive, _EXTRA_DIRECTIVE_RE,
                 "write it as --name or --name=value (no spaces, quotes, $, `, ; or \\)")
        name = directive[2:].split("=", 1)[0]
        if name in _MANAGED_DIRECTIVES:
            raise UserError(f"extra directive {directive!r} conflicts with a parameter set elsewhere; "
                            f"use the {name.replace('-', '_')} parameter instead")
    if spec.array_tasks and spec.kind != "train":
        raise UserError("only train jobs run as job arrays")
    if spec.array_max is not None:
        _positive_int("array max (ARRAY_MAX)", spec.array_max)
    for task in spec.array_tasks:
        _path("array task's run directory", task.run_dir)
    commands = [task.command for task in spec.array_tasks] or [spec.command]
    for command in commands:
        if not command:
            raise UserError("no command to run")
        for arg in command:
            if not isinstance(arg, str) or "\x00" in arg:
                raise UserError(f"command argument {arg!r} must be a string without NUL bytes")
    if not isinstance(spec.timeline, bool):
        raise UserError(f"timeline must be true or false, got {spec.timeline!r}")
    if spec.timeline and spec.kind != "train":
        raise UserError("a Horovod timeline is recorded by train jobs only")
    if spec.kind in RUN_KINDS and spec.run_dir is None:
        raise UserError(f"{spec.kind} jobs need a run directory")
    if spec.launcher == "horovodrun-gloo" and spec.kind not in RUN_KINDS:
        raise UserError("horovodrun-gloo only launches train and allreduce jobs")
    return spec


def _directive_value(value: str) -> str:
    return f'"{value}"' if any(c.isspace() for c in value) else value


def sbatch_directives(spec: JobSpec) -> list[str]:
    """The `#SBATCH` options of `spec` (without the prefix), sorted so the script is deterministic."""
    options: dict[str, str | None] = {
        "job-name": spec.job_name,
        "nodes": str(spec.nodes),
        "ntasks-per-node": str(spec.ranks_per_node),
        "cpus-per-task": str(spec.cpus_per_task),
        "time": spec.time,
        "output": _directive_value(spec.output),
    }
    if spec.gpus_per_node > 0:
        options["gpus-per-node"] = str(spec.gpus_per_node)
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(spec, key) is not None:
            options[key] = getattr(spec, key)
    if spec.error is not None:
        options["error"] = _directive_value(spec.error)
    if spec.requeue:
        # Both attempts of a requeued job write one log: append instead of truncating it.
        options["requeue"] = None
        options["open-mode"] = "append"
        options["signal"] = f"B:{spec.requeue_signal}@{spec.signal_seconds}"
    if spec.array_tasks:
        # One task per run; %K caps how many run at once (many sites ask for a cap).
        cap = f"%{spec.array_max}" if spec.array_max is not None else ""
        options["array"] = f"0-{len(spec.array_tasks) - 1}{cap}"
    lines = [f"--{k}" if v is None else f"--{k}={v}" for k, v in options.items()]
    return sorted(lines + list(spec.extra_directives))


def launcher_prefix(spec: JobSpec) -> str:
    """The words before the program on the launch line (already shell-safe)."""
    if spec.launcher == "srun":
        # No MPI: the tf engine's workers find each other through TF_CONFIG; --kill-on-bad-exit as below.
        return "srun --kill-on-bad-exit=1"
    if spec.launcher in ("srun-pmix", "srun-pmi2"):
        plugin = spec.launcher.split("-", 1)[1]
        # --kill-on-bad-exit: one dead rank ends the step at once instead of leaving the others
        # blocked in an allreduce until the time limit.
        return f"srun --mpi={plugin} --kill-on-bad-exit=1"
    if spec.launcher == "mpirun":
        # Open MPI reads the node list and slots from the Slurm allocation; no host file needed.
        return f"mpirun -np {spec.ranks} --map-by ppr:{spec.ranks_per_node}:node --bind-to none"
    if spec.launcher == "horovodrun-gloo":
        # HOROVOD_HOSTS is computed by the setup section from the allocation (see the template).
        return f'horovodrun --gloo -np {spec.ranks} -H "$HOROVOD_HOSTS"'
    return ""


def launcher_setup(spec: JobSpec) -> list[str]:
    """Shell lines the launcher needs after the profile's setup (only horovodrun needs any)."""
    if spec.launcher != "horovodrun-gloo":
        return []
    if spec.nodes == 1:
        return [f"HOROVOD_HOSTS=localhost:{spec.ranks_per_node}"]
    # horovodrun reaches the other nodes over ssh: the site must allow passwordless ssh between nodes.
    return [f"HOROVOD_HOSTS=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" "
            f"| sed 's/$/:{spec.ranks_per_node}/' | paste -sd, -)"]


def launch_line(spec: JobSpec) -> str:
    """The one line that starts the job's program, every argument quoted. A job array's tasks run the
    program their task id picked (the bash array `program`, set by the template)."""
    program = '"${program[@]}"' if spec.array_tasks else shlex.join(spec.command)
    prefix = launcher_prefix(spec)
    return f"{prefix} {program}" if prefix else program


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


def render_job(spec: JobSpec) -> str:
    """The batch script for `spec` (validated first). Same spec, same text: no timestamps, sorted options."""
    validate(spec)
    template = _ENV.get_template(f"{spec.kind}.sbatch.j2")
    program = RUN_PROGRAMS.get(spec.kind, RUN_PROGRAMS["train"])
    return template.render(
        kind=spec.kind,
        profile=spec.profile,
        directives=sbatch_directives(spec),
        setup=list(spec.setup) + launcher_setup(spec),
        launch=launch_line(spec),
        launcher=spec.launcher,
        ranks_per_node=spec.ranks_per_node,
        run_dir=shlex.quote(spec.run_dir) if spec.run_dir is not None else "",
        signal=spec.requeue_signal,
        signal_env=REQUEUE_SIGNAL_ENV,
        done_marker=program.done_marker,
        activity=program.activity,
        program=program.program,
        program_log=program.log,
        requeue=spec.requeue,
        rerender="make allreduce-bench" if spec.kind == "allreduce" else "make submit",
        timeline=spec.timeline,
        timeline_file=rundir.TIMELINE,
        max_requeues_without_progress=spec.max_requeues_without_progress,
        array_tasks=[(i, shlex.quote(task.run_dir), shlex.join(task.command))
                     for i, task in enumerate(spec.array_tasks)],
        # What Slurm's commands (scontrol requeue, show job) are given: one task of an array is
        # <array id>_<task id>; its SLURM_JOB_ID alone may be the array's id, which names every task.
        job_ref="$JOB_REF" if spec.array_tasks else "$SLURM_JOB_ID",
        job_label="$JOB_REF" if spec.array_tasks else "${SLURM_JOB_ID:-}",
    )


# --- profiles ----------------------------------------------------------------------------------------

def available_profiles(profile_dir: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in profile_dir.glob("*.toml"))


def _read_profile(name: str, profile_dir: Path) -> tuple[Path, dict[str, Any]]:
    """The profile's file path and its parsed TOML (UserError if missing or not TOML)."""
    if "/" in name or name.endswith(".toml"):
        path = Path(name)
    else:
        _matches("profile", name, _NAME_RE,
                 f"available profiles: {', '.join(available_profiles(profile_dir))}")
        path = profile_dir / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"no profile {name!r} (looked for {path}); available: "
                        f"{', '.join(available_profiles(profile_dir))}")
    try:
        return path, tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:  # TOML is UTF-8 by definition
        raise UserError(f"profile {path} is not UTF-8 text (byte {err.start}): save it as UTF-8") from None
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"profile {path} is not valid TOML: {err}") from None


def profile_prices(name: str, profile_dir: Path = PROFILE_DIR) -> dict[str, Any]:
    """What the report's cost columns take from a profile: `price_per_gpu_hour` and/or
    `price_per_node_hour` (numbers >= 0, only those present) and `ranks_per_node` (the profile's ranks
    per node: tasks_per_node, else gpus_per_node, else 1)."""
    path, data = _read_profile(name, profile_dir)
    prices = {}
    for key in REPORT_PROFILE_KEYS:
        value = data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise UserError(f"profile {path}: {key} must be a number >= 0, got {value!r}")
        prices[key] = float(value)
    ranks = data.get("tasks_per_node") or data.get("gpus_per_node") or 1
    return {**prices, "ranks_per_node": ranks if isinstance(ranks, int) and ranks >= 1 else 1}


def load_profile(name: str, profile_dir: Path = PROFILE_DIR, engine: str = "horovod") -> dict[str, Any]:
    """A profile's settings as JobSpec keyword arguments. `{repo}` in setup lines becomes the repo path,
    `{venv}` the engine's environment in it (`.venv`, or `.venv-tf` for the tf engine: ENGINE_VENVS).

    A name containing '/' or ending in .toml is read as a file path, so a user can keep a site profile
    outside the repository.
    """
    path, data = _read_profile(name, profile_dir)
    data.pop("description", None)
    for key in REPORT_PROFILE_KEYS:  # read by the report (profile_prices), not part of the job
        data.pop(key, None)
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise UserError(f"profile {path}: unknown key(s) {', '.join(unknown)}; valid: "
                        f"description, {', '.join(PROFILE_KEYS + REPORT_PROFILE_KEYS)}")
    check_types(data, where=f"profile {path}:")
    repo = shlex.quote(str(REPO))
    venv = shlex.quote(str(REPO / ENGINE_VENVS[engine]))
    if "setup" in data:
        data["setup"] = [str(line).replace("{repo}", repo).replace("{venv}", venv)
                         for line in data["setup"]]
    data["profile"] = path.stem
    return data
