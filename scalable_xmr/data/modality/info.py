"""The content of ``dataset.json``: a dataset's name, classes and modalities (docs/data.md)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from scalable_xmr.errors import InputError

SPLITS = ("train", "val", "test")
_INFO_KEYS = ("name", "n_classes", "multi_label", "class_names", "modalities")
_MODALITY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class ModalityInfo:
    """One modality of a dataset: its name (= table file stem), feature dimension and kind."""

    name: str
    dim: int
    kind: str = "dense"


@dataclass(frozen=True)
class DatasetInfo:
    """The content of ``dataset.json``; checked on construction (raises ``InputError``)."""

    name: str
    n_classes: int
    multi_label: bool
    class_names: tuple[str, ...]
    modalities: dict[str, ModalityInfo] = field(hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        problem = _info_problem(self)
        if problem:
            raise InputError(f"DatasetInfo: {problem}")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "n_classes": self.n_classes,
            "multi_label": self.multi_label,
            "class_names": list(self.class_names),
            "modalities": {
                m.name: {"dim": m.dim, "kind": m.kind} for m in self.modalities.values()
            },
        }

    @classmethod
    def from_json(cls, d: dict, source: str) -> DatasetInfo:
        """Build from a parsed ``dataset.json``; unknown or missing keys raise naming ``source``."""
        if not isinstance(d, dict):
            raise InputError(f"{source}: expected a JSON object, got {type(d).__name__}")
        _check_keys(d, _INFO_KEYS, (), source)
        mods = d["modalities"]
        if not isinstance(mods, dict) or not mods:
            raise InputError(f"{source}: 'modalities' must be a non-empty object, got {mods!r}")
        modalities = {}
        for name, m in mods.items():
            where = f"{source}: modalities[{name!r}]"
            if not isinstance(m, dict):
                raise InputError(f"{where}: expected an object, got {m!r}")
            _check_keys(m, ("dim",), ("kind",), where)
            modalities[name] = ModalityInfo(name, m["dim"], m.get("kind", "dense"))
        names = d["class_names"]
        if not isinstance(names, list):
            raise InputError(f"{source}: 'class_names' must be a list, got {names!r}")
        try:
            return cls(d["name"], d["n_classes"], d["multi_label"], tuple(names), modalities)
        except InputError as e:
            raise InputError(f"{source}: {str(e).removeprefix('DatasetInfo: ')}") from None


def _check_keys(d: dict, required: Sequence[str], optional: Sequence[str], source: str) -> None:
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise InputError(
            f"{source}: unknown key(s) {unknown}; allowed: {list(required + optional)}"
        )
    missing = [k for k in required if k not in d]
    if missing:
        raise InputError(f"{source}: missing key(s) {missing}")


def _info_problem(info: DatasetInfo) -> str | None:
    """Why ``info`` is inconsistent, or None."""
    if not isinstance(info.name, str) or not info.name:
        return f"'name' must be a non-empty string, got {info.name!r}"
    if type(info.n_classes) is not int or info.n_classes < 1:
        return f"'n_classes' must be a positive integer, got {info.n_classes!r}"
    if not isinstance(info.multi_label, bool):
        return f"'multi_label' must be true or false, got {info.multi_label!r}"
    if len(info.class_names) != info.n_classes:
        return f"n_classes={info.n_classes} but class_names has {len(info.class_names)} entries"
    if not all(isinstance(c, str) for c in info.class_names) or len(set(info.class_names)) != len(
        info.class_names
    ):
        return f"'class_names' must be distinct strings, got {list(info.class_names)!r}"
    if not isinstance(info.modalities, dict) or not info.modalities:
        return "'modalities' must be a non-empty dict"
    for key, m in info.modalities.items():
        if not isinstance(m, ModalityInfo) or m.name != key:
            return f"modalities[{key!r}] must be a ModalityInfo named {key!r}, got {m!r}"
        if not isinstance(key, str) or not _MODALITY_RE.match(key):
            return f"modality name {key!r} must match {_MODALITY_RE.pattern}"
        if type(m.dim) is not int or m.dim < 1:
            return f"modality {key!r}: 'dim' must be a positive integer, got {m.dim!r}"
        if m.kind != "dense":
            return f"modality {key!r}: 'kind' must be 'dense', got {m.kind!r}"
    return None
