"""The comparability key: which runs may share a median, a ratio or an axis.

Two runs are comparable only if they trained on the same dataset (content fingerprint), with the same
model configuration, on the same engine. Every table and plot is computed within one key; nothing
takes a ratio or a median across keys. Logs written before `run_start` carried `dataset_id` are keyed
by the recorded dataset path and window counts instead (users reuse paths, so the report says so).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from stockpredict.common import timing
from stockpredict.common.errors import UserError
from stockpredict.report.registry import KEY_COLUMNS

FINGERPRINT_SHOWN = 12  # hex digits of the fingerprint shown in headings and labels
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetKey:
    """A dataset as far as the logs can tell. Equal keys = the same data; `name` is only a label."""

    fingerprint: str                        # "" for a log without dataset_id (keyed by path)
    path: str                               # compared only when fingerprint is ""
    windows: tuple[tuple[str, int], ...]    # (split, windows), train/val/test first
    name: str = field(default="", compare=False)

    @property
    def by_path(self) -> bool:
        return not self.fingerprint

    @property
    def prefix(self) -> str:
        return self.fingerprint[:FINGERPRINT_SHOWN]

    @property
    def windows_text(self) -> str:
        """Window counts as train/val/test, e.g. 4096/512/512."""
        return "/".join(str(n) for _, n in self.windows) if self.windows else "?"

    def label(self) -> str:
        """The name with what tells it apart: the fingerprint prefix, or (old logs) the window counts."""
        if self.fingerprint:
            return f"{self.name} ({self.prefix})"
        return f"{self.name} ({self.windows_text} windows, by path)"

    def sort_key(self) -> tuple:
        return (self.by_path, self.name, self.fingerprint, self.path, self.windows)

    def matches(self, query: str) -> bool:
        """The --dataset filter: the name, a fingerprint prefix, or (old logs) the recorded path."""
        if query == self.name:
            return True
        if self.fingerprint:
            return self.fingerprint.startswith(query.lower())
        return query == self.path


@dataclass(frozen=True)
class ComparabilityKey:
    dataset: DatasetKey
    model: tuple[tuple[str, Any], ...]  # (field, value), MODEL_FIELDS order, then seq_len, n_features, ...
    engine: str

    @property
    def model_text(self) -> str:
        """e.g. "lstm_units=50 dropout=0.3 dense_units=32 seq_len=60 n_features=2"; "" if unknown."""
        return " ".join(f"{k}={v}" for k, v in self.model)

    def sort_key(self) -> tuple:
        # Numbers sort as numbers: lstm_units=50 before lstm_units=128.
        model = tuple((k, (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))
                      for k, v in self.model)
        return (self.dataset.sort_key(), model, self.engine)

    def columns(self) -> dict[str, str]:
        """The key columns every CSV row carries (registry.KEY_COLUMNS, after the table's own)."""
        values = (self.dataset.name, self.dataset.fingerprint, self.dataset.windows_text, self.model_text,
                  self.engine)
        return dict(zip(KEY_COLUMNS, values))


def _windows(value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, Mapping):
        return ()
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    items = [(str(k), v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)]
    return tuple(sorted(items, key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def _hashable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return json.dumps(value, sort_keys=True)


def _model(values: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    known = [k for k in timing.MODEL_FIELDS if values.get(k) is not None]
    shape = [k for k in ("seq_len", "n_features") if values.get(k) is not None]
    rest = sorted(k for k in values if k not in known and k not in shape and values[k] is not None)
    return tuple((k, _hashable(values[k])) for k in (*known, *shape, *rest))


def run_start_key(start: Mapping[str, Any]) -> ComparabilityKey:
    """The key of a run from its (first) run_start. Raises ValueError for a malformed new field."""
    dataset_id, model, engine = start.get("dataset_id"), start.get("model"), start.get("engine")
    path = str(start.get("dataset") or "")
    if dataset_id is None:
        dataset = DatasetKey("", path, _windows(start.get("windows")), name=path or "(dataset not recorded)")
    else:
        fingerprint = dataset_id.get("fingerprint") if isinstance(dataset_id, Mapping) else None
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ValueError(f"dataset_id={dataset_id!r}, expected an object with a fingerprint string")
        name = dataset_id.get("name") or (Path(path).stem if path else fingerprint[:FINGERPRINT_SHOWN])
        windows = _windows(dataset_id.get("windows") or start.get("windows"))
        dataset = DatasetKey(fingerprint.lower(), "", windows, name=str(name))
    if model is None:  # older logs: the model settings are in the trainer's config
        config = start.get("config")
        model = {k: config.get(k) for k in timing.MODEL_FIELDS} if isinstance(config, Mapping) else {}
    elif not isinstance(model, Mapping):
        raise ValueError(f"model={model!r}, expected an object")
    if engine is None:
        engine = timing.DEFAULT_ENGINE
    elif not isinstance(engine, str) or not engine:
        raise ValueError(f"engine={engine!r}, expected a non-empty string")
    return ComparabilityKey(dataset, _model(model), engine)


def select_dataset(keys: Iterable[ComparabilityKey], query: str) -> DatasetKey:
    """The one dataset `query` names (name, fingerprint prefix, or old logs' path); UserError if none
    or several match."""
    datasets = sorted({k.dataset for k in keys}, key=DatasetKey.sort_key)
    matched = [d for d in datasets if d.matches(query)]
    if len(matched) == 1:
        return matched[0]
    known = ", ".join(d.label() for d in datasets)
    if not matched:
        raise UserError(f"--dataset {query!r} matches no dataset in the logs; known: {known}")
    raise UserError(f"--dataset {query!r} is ambiguous, it matches {', '.join(d.label() for d in matched)}; "
                    "give a longer fingerprint prefix")


def section_labels(keys: Iterable[ComparabilityKey]) -> dict[ComparabilityKey, str]:
    """Short labels that tell the keys of one report apart (plot legends): the dataset name, plus the
    fingerprint prefix, model and engine only where two keys would otherwise share a label."""
    keys = sorted(set(keys), key=ComparabilityKey.sort_key)
    names = {}
    for k in keys:
        names.setdefault(k.dataset.name, set()).add(k.dataset)
    labels = {}
    for k in keys:
        parts = [k.dataset.label() if len(names[k.dataset.name]) > 1 else k.dataset.name]
        same_data = [o for o in keys if o.dataset == k.dataset]
        if len({o.model for o in same_data}) > 1:  # name only the model fields that differ
            models = [dict(o.model) for o in same_data]
            fields = [f for f in dict.fromkeys(f for m in models for f in m)
                      if len({repr(m.get(f)) for m in models}) > 1]
            mine = dict(k.model)
            parts.append(" ".join(f"{f}={mine.get(f)}" for f in fields))
        if len({o.engine for o in same_data}) > 1:
            parts.append(k.engine)
        labels[k] = ", ".join(parts)
    return labels


def dataset_labels(datasets: Iterable[DatasetKey]) -> dict[DatasetKey, str]:
    """A label per dataset: its name, with the fingerprint prefix when two datasets share a name."""
    datasets = set(datasets)
    names: dict[str, int] = {}
    for d in datasets:
        names[d.name] = names.get(d.name, 0) + 1
    return {d: d.label() if names[d.name] > 1 else d.name for d in datasets}
