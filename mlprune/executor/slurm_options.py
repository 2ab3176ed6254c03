"""The options of --scheduler slurm: `OPTIONS` (what each key checks and becomes in a job script),
`SlurmConfig` (the checked values), read from ``--slurm-opt KEY=VALUE`` and ``--slurm-config FILE``
(YAML or JSON data, never code). docs/cluster.md explains every key (tested). Imports neither dask
nor torch.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import SpecError
from ..reading import read_small_file
from ..spec.options import Option, Schema

DEFAULT_SIGNAL_S = 120  # the warning before the time limit (SLURM may send it up to 60 s early)
MAX_SIGNAL_S = 65535  # SLURM's limit for --signal's time
DEFAULT_LOG_DIR = "slurm-logs"
DEFAULT_TIME = "00:30:00"  # dask-jobqueue's own default, written out (docs/cluster.md)
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class SlurmConfig:
    """What every worker job asks of SLURM and how it starts (`OPTIONS` fill it)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str = DEFAULT_TIME
    cpus_per_task: int = 1
    mem: str | None = None
    gpus: str | None = None  # None, or one GPU: "1" or "TYPE:1"
    constraint: str | None = None
    reservation: str | None = None
    exclude: str | None = None
    signal: int = DEFAULT_SIGNAL_S
    job_name: str = "mlprune"
    log_dir: str = DEFAULT_LOG_DIR
    python: str = field(default_factory=lambda: sys.executable)
    prologue: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()
    interface: str | None = None


def _attribute(option: Option) -> str:
    """The SlurmConfig field of `option`."""
    return option.name.replace("-", "_")


# ---- checks of one value: (value, option name) -> checked value, or a one-line SpecError ---------------
# Every value lands in a job script: directive values are SLURM's own formats (no blanks, quotes or shell
# characters), the shell lines are quoted where mlprune writes them (the Python, the interface).
_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,128}$")  # partition, account, qos, reservation, job name
_FEATURES = re.compile(r"^[A-Za-z0-9_.:,&|*!\[\]()-]{1,512}$")  # a constraint: features with & | [ ] ( ) * !
_HOSTLIST = re.compile(r"^[A-Za-z0-9_.,\[\]-]{1,1024}$")  # node[01-04],gpu7
_TIME = re.compile(r"^(?:(\d{1,4})-)?(\d{1,7})(?::(\d{1,2}))?(?::(\d{1,2}))?$")
_MEM = re.compile(r"^(\d{1,12})([KMGT]?)B?$", re.IGNORECASE)
_GPUS = re.compile(r"^(?:([A-Za-z0-9_.-]{1,64}):)?(\d{1,4})$")
_DIRECTIVE = re.compile(r"^(--?[A-Za-z][A-Za-z0-9-]*)(?:=([^\s'\"\\`$;#]+))?$")
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+~@%,:=-]{1,1024}$")
MAX_TIME_S = 366 * 24 * 3600  # a year: beyond any partition's MaxTime
MAX_CPUS = 4096
MAX_MEM_BYTES = 1 << 50


def _named(what: str, pattern: re.Pattern):
    def check(value, name: str) -> str:
        text = str(value).strip()
        if isinstance(value, bool) or not pattern.match(text):
            raise SpecError(f"SLURM option {name} must be {what}, got {value!r}")
        return text

    check.doc = what
    return check


_word = _named("a SLURM name (letters, digits, _ . + -)", _NAME)
_features = _named("node features (letters, digits, _ . : , and & | * ! [ ] ( ))", _FEATURES)
_hostlist = _named("a SLURM host list (e.g. node[01-04],gpu7)", _HOSTLIST)


def _line(value, name: str) -> str:
    text = str(value)
    if not text.strip() or any(c in text for c in "\r\n\0"):
        raise SpecError(f"SLURM option {name} must be one non-empty line, got {value!r}")
    return text.strip()


def _positive_int(value, name: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_CPUS:
        raise SpecError(f"SLURM option {name} must be an integer in 1..{MAX_CPUS}, got {value!r}")
    return int(text)


def time_seconds(text: str) -> int:
    """Seconds of a SLURM time (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS)."""
    days, first, second, third = _TIME.match(text).groups()
    parts = [int(p) for p in (first, second, third) if p is not None]
    if days is not None:  # D-HH[:MM[:SS]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def _time_fields_ok(text: str) -> bool:
    """SLURM's ranges: minutes and seconds after the first field < 60, hours after a day < 24."""
    days, first, second, third = _TIME.match(text).groups()
    later = [int(p) for p in (second, third) if p is not None]
    if days is not None:
        return int(first) < 24 and all(p < 60 for p in later)
    return all(p < 60 for p in later)


def _time(value, name: str) -> str:
    text = str(value).strip()
    if (
        isinstance(value, bool)
        or not _TIME.match(text)
        or not _time_fields_ok(text)
        or not 0 < time_seconds(text) <= MAX_TIME_S
    ):
        raise SpecError(
            f"SLURM option {name} must be a time limit of at most 366 days: minutes, MM:SS, HH:MM:SS, "
            f"D-HH, D-HH:MM or D-HH:MM:SS (e.g. 04:00:00), got {value!r}"
        )
    return text


def _mem(value, name: str) -> str:
    match = _MEM.match(str(value).strip())
    if isinstance(value, bool) or not match or not 1 <= memory_bytes(str(value).strip()) <= MAX_MEM_BYTES:
        raise SpecError(
            f"SLURM option {name} must be a size like 8G, 500M or 16000 (megabytes), at most 1024T, got {value!r}"
        )
    return f"{match.group(1)}{match.group(2).upper()}"


def _gpus(value, name: str) -> str | None:
    match = _GPUS.match(str(value).strip())
    if isinstance(value, bool) or not match:
        raise SpecError(f"SLURM option {name} must be 1 or TYPE:1 (e.g. a100:1), got {value!r}")
    count = int(match.group(2))
    if count == 0:
        return None
    if count != 1:
        raise SpecError(
            f"SLURM option {name} must be 1 or TYPE:1, got {value!r}: a job trains one state at a "
            f"time on one GPU; ask for more jobs (--workers) to use more GPUs"
        )
    return str(value).strip()


def _signal(value, name: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not (text.isascii() and text.isdigit()) or int(text) > MAX_SIGNAL_S:
        raise SpecError(
            f"SLURM option {name} must be the seconds before the time limit at which a worker is "
            f"told to checkpoint and leave (0 to {MAX_SIGNAL_S}; 0 = no warning), got {value!r}"
        )
    return int(text)


def _sbatch_option(value, name: str) -> str:
    text = _line(value, name)
    if not _DIRECTIVE.match(text):
        raise SpecError(
            f"SLURM option {name} must be one sbatch option, --NAME or --NAME=VALUE without blanks, "
            f"quotes or shell characters (e.g. --exclusive), got {value!r}"
        )
    return text


def _path(value, name: str) -> str:
    text = str(Path(_line(value, name)).expanduser())
    if not _SAFE_PATH.match(text):
        raise SpecError(
            f"SLURM option {name} must be a path of letters, digits and _ . / + ~ @ % , : = - "
            f"(no blanks, quotes or shell characters: it is written into the job script), got {value!r}"
        )
    return text


def _interface(value, name: str) -> str:
    import socket

    text = str(value).strip()
    here = sorted(n for _, n in socket.if_nameindex())
    if text not in here:
        raise SpecError(
            f"SLURM option {name} must be a network interface of this host, got {value!r}; allowed: {', '.join(here)}"
        )
    return text


# Each key of --slurm-opt / --slurm-config is a `spec.options.Option`, never keyed. Its `meta` says where the value
# goes: "sbatch", the #SBATCH directive it becomes ("{}" = the value), or "jobqueue", the SLURMCluster parameter
# that writes it (neither: mlprune uses it itself); "repeatable": given several times (or a list in a file), every
# value is kept, in order.
OPTIONS = Schema(
    "SLURM option",
    tuple(
        Option(
            name,
            default=None,
            check=check,
            help=help,
            key="never",
            aliases=(name.replace("-", "_"),) if "-" in name else (),
            meta={"sbatch": None, "jobqueue": None, "repeatable": False, **where},
        )
        for name, help, check, where in (
            ("partition", "the partition (queue) of the worker jobs", _word, dict(jobqueue="queue")),
            ("account", "the account the jobs are charged to", _word, dict(jobqueue="account")),
            ("qos", "the quality of service", _word, dict(sbatch="--qos={}")),
            (
                "time",
                f"each job's time limit (HH:MM:SS, D-HH:MM:SS, minutes; default {DEFAULT_TIME})",
                _time,
                dict(jobqueue="walltime"),
            ),
            (
                "cpus-per-task",
                "CPUs of each job: the torch threads of the state it computes (default 1)",
                _positive_int,
                dict(jobqueue="job_cpu"),
            ),
            ("mem", "memory of each job (8G, 500M; default: the partition's)", _mem, dict(jobqueue="job_mem")),
            (
                "gpus",
                "1 (or TYPE:1): each job has one GPU and trains one state at a time on it",
                _gpus,
                dict(sbatch="--gpus={}"),
            ),
            ("constraint", "node features the jobs need", _features, dict(sbatch="--constraint={}")),
            ("reservation", "a reservation to run in", _word, dict(sbatch="--reservation={}")),
            ("exclude", "nodes not to run on", _hostlist, dict(sbatch="--exclude={}")),
            (
                "signal",
                f"seconds before the time limit at which a worker checkpoints and leaves "
                f"(--signal=B:USR1@N; default {DEFAULT_SIGNAL_S}, 0 = none)",
                _signal,
                {},
            ),
            ("job-name", "the jobs' name in squeue (default mlprune)", _word, dict(jobqueue="job_name")),
            ("log-dir", f"where each job's output goes (default ./{DEFAULT_LOG_DIR})", _path, {}),
            (
                "python",
                "the Python that runs the workers (default: this one; the same environment on a shared filesystem)",
                _path,
                {},
            ),
            (
                "prologue",
                "a shell line run before the worker starts (repeatable), e.g. 'module load cuda'",
                _line,
                dict(repeatable=True),
            ),
            ("extra", "any other sbatch option (repeatable), e.g. --exclusive", _sbatch_option, dict(repeatable=True)),
            ("interface", "the network interface the dask scheduler and workers talk on (e.g. ib0)", _interface, {}),
        )
    ),
)


def _option(name) -> Option:
    key = str(name).strip()
    if key not in OPTIONS:
        raise SpecError(f"unknown SLURM option {key!r}; allowed: {', '.join(sorted(OPTIONS.names))}")
    return OPTIONS[key]


def _set(values: dict, name, raw, where: str) -> None:
    option = _option(name)
    repeatable, attribute = option.meta["repeatable"], _attribute(option)
    items = raw if isinstance(raw, (list, tuple)) and repeatable else [raw]
    for item in items:
        if isinstance(item, (dict, list, tuple)) or item is None:
            raise SpecError(f"SLURM option {option.name}{where} must be a single value, got {item!r}")
        value = option.check(item, option.name)
        if repeatable:
            values[attribute] = (*values.get(attribute, ()), value)
        else:
            values[attribute] = value


def read_config_file(path) -> dict:
    """The mapping of a --slurm-config file (YAML or JSON data: keys of `OPTIONS`)."""
    import yaml

    path = Path(path)
    raw = read_small_file(path, MAX_CONFIG_BYTES, "--slurm-config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SpecError(f"--slurm-config {path}: not UTF-8 text (byte {error.start})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise SpecError(
            f"--slurm-config {path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
            f"{' '.join(str(error).split())[:200]}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(f"--slurm-config {path} must be a mapping of SLURM options, got {type(data).__name__}")
    return data


def slurm_config(pairs=(), config_file=None, base: SlurmConfig | None = None) -> SlurmConfig:
    """The checked options: `base` (defaults), then the file's, then each KEY=VALUE of `pairs`."""
    values: dict = {}
    if config_file:
        for name, raw in read_config_file(config_file).items():
            _set(values, name, raw, f" in {config_file}")
    from_pairs: dict = {}
    for pair in pairs:
        name, sep, raw = str(pair).partition("=")
        if not sep or not name.strip():
            raise SpecError(f"--slurm-opt {pair!r} must be KEY=VALUE (e.g. partition=gpu)")
        _set(from_pairs, name, raw, "")
    for attribute, value in from_pairs.items():  # repeatable ones given on the command line add to the file's
        values[attribute] = (*values.get(attribute, ()), *value) if isinstance(value, tuple) else value
    config = replace(base or SlurmConfig(), **values)
    if config.time is not None and config.signal and config.signal >= time_seconds(config.time):
        raise SpecError(
            f"SLURM option signal ({config.signal} s) must be shorter than the time limit "
            f"{config.time} ({time_seconds(config.time)} s)"
        )
    return config


def config_from(options) -> SlurmConfig:
    """A SlurmConfig from a SlurmConfig, a {name: value} mapping (Python API) or None."""
    if options is None or isinstance(options, SlurmConfig):
        return options or SlurmConfig()
    if not isinstance(options, dict):
        raise SpecError(f"SLURM options must be a mapping of {', '.join(OPTIONS.names)}, got {type(options).__name__}")
    return slurm_config(
        [f"{k}={v}" for k, v in options.items() if not isinstance(v, (list, tuple))]
        + [f"{k}={item}" for k, v in options.items() if isinstance(v, (list, tuple)) for item in v]
    )


def jobqueue_parameters(config: SlurmConfig) -> dict:
    """SLURMCluster's parameters for the options it writes into the job script itself."""
    return {o.meta["jobqueue"]: getattr(config, _attribute(o)) for o in OPTIONS if o.meta["jobqueue"]}


def memory_bytes(mem: str) -> int:
    """Bytes of a SLURM size (a bare number is megabytes)."""
    number, unit = _MEM.match(mem).groups()
    return int(number) << {"K": 10, "": 20, "M": 20, "G": 30, "T": 40}[unit.upper()]


def directives(config: SlurmConfig) -> list[str]:
    """The #SBATCH options of a worker job beyond those SLURMCluster writes (-n 1, --cpus-per-task, --mem,
    -p, -A, -t, -J, -e/-o)."""
    lines = []
    for option in OPTIONS:
        value = getattr(config, _attribute(option))
        if option.meta["sbatch"] is not None and value is not None:
            lines.append(option.meta["sbatch"].format(value))
    if config.signal:
        lines.append(f"--signal=B:USR1@{config.signal}")  # B: the batch shell, which the worker replaces (exec)
    lines.append("--no-requeue")  # a job SLURM ends is replaced by SlurmJobs, never run twice
    lines.extend(config.extra)
    return lines


def time_limit_note(config: SlurmConfig) -> str:
    """The line printed before jobs are submitted: their time limit, and how to change the default."""
    if config.time == DEFAULT_TIME:
        return (
            f"SLURM jobs: time limit {config.time} each (the default; --slurm-opt time=HH:MM:SS sets it), "
            f"a job that reaches it is replaced"
        )
    return f"SLURM jobs: time limit {config.time} each"
