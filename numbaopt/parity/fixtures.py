"""The golden fixtures: find them, read them (h5py only), one ``Fixture`` per recorded case.

Two families: the Keras 2.0 fixtures (``fixtures/*.h5``, a ``Fixture`` per case) and the
Keras 3 ones (``fixtures/keras3/*.h5``, a ``Keras3Fixture`` per case). The layout of the
files is ``docs/fixtures.md``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

#: Highest fixture format this module reads.
FORMAT_VERSION = 1


@dataclass
class Fixture:
    """One recorded case, read into memory."""

    file: str
    group: str
    optimizer: str
    case: str
    dtype: str
    steps: int
    keras2_config: dict[str, Any]
    keras_config: dict[str, Any]
    clipping: str
    param_names: list[str]
    param_shapes: list[tuple[int, ...]]
    slot_names: list[str]
    params: npt.NDArray[Any]  # (steps + 1, P): initial, then after each step, flattened
    grads: npt.NDArray[Any]  # (steps, P): unclipped
    applied_grads: npt.NDArray[Any] | None  # (steps, P): what Keras's optimizer received, if composed
    slots: npt.NDArray[Any]  # (steps, n_slots, P)
    iterations: npt.NDArray[Any]  # (steps,)
    m_schedule: npt.NDArray[Any] | None  # (steps,), Nadam only
    versions: dict[str, Any] = field(default_factory=dict)

    family = "keras2"

    @property
    def label(self) -> str:
        return f"{self.optimizer}/{self.case}/{self.dtype}"

    def unflatten(self, flat: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """A list of C-contiguous arrays, one per parameter, copied out of a flat vector."""
        return _unflatten(flat, self.param_shapes, self.dtype)


@dataclass
class Keras3Fixture:
    """One recorded Keras 3 case (``fixtures/keras3/``), read into memory."""

    file: str
    group: str
    optimizer: str
    case: str
    description: str
    dtype: str
    steps: int
    serialized: dict[str, Any]  # keras.optimizers.serialize(opt) before the first step
    exclude_from_weight_decay: list[str] | None  # the var_names given, if any
    param_names: list[str]  # Keras variable paths
    param_shapes: list[tuple[int, ...]]
    params: npt.NDArray[Any]  # (steps + 1, P): initial, then after each step, flattened
    grads: npt.NDArray[Any]  # (steps, P): what apply_gradients received
    learning_rate: npt.NDArray[Any]  # (steps,): float(opt.learning_rate) after each step
    iterations: npt.NDArray[Any]  # (steps,): opt.iterations after each step
    variables: list[tuple[str, npt.NDArray[Any]]]  # optimizer.variables after the last step
    finalized: npt.NDArray[Any] | None  # (P,): use_ema only, after finalize_variable_values
    versions: dict[str, Any] = field(default_factory=dict)

    family = "keras3"

    @property
    def label(self) -> str:
        return f"keras3 {self.optimizer}/{self.case}/{self.dtype}"

    def unflatten(self, flat: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
        """A list of C-contiguous arrays, one per parameter, copied out of a flat vector."""
        return _unflatten(flat, self.param_shapes, self.dtype)


def _unflatten(flat: npt.NDArray[Any], shapes: list[tuple[int, ...]], dtype: str) -> list[npt.NDArray[Any]]:
    out, offset = [], 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        out.append(np.array(flat[offset:offset + size].reshape(shape), dtype=dtype, order="C"))
        offset += size
    return out


def default_fixture_dir() -> Path:
    """The shipped fixtures: ``$NUMBAOPT_FIXTURES``; else ``fixtures/`` inside the package,
    beside it (a source checkout or an editable install), or in the working directory."""
    env = os.environ.get("NUMBAOPT_FIXTURES")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent.parent
    candidates = (package / "fixtures", package.parent / "fixtures", Path.cwd() / "fixtures")
    for candidate in candidates:
        if any(candidate.glob("*.h5")):
            return candidate
    return candidates[1]


def fixture_files(path: str | os.PathLike[str] | None = None) -> list[Path]:
    """The ``.h5`` files at ``path`` (a file, or a folder and its ``keras3/`` folder; default
    the shipped fixtures)."""
    path = Path(path) if path is not None else default_fixture_dir()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.h5")) + sorted(path.glob("keras3/*.h5"))
        if files:
            return files
    raise FileNotFoundError(f"no fixture files (*.h5) at {path}")


def _attr(v: object) -> Any:
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_fixtures(path: str | os.PathLike[str] | None = None) -> list[Fixture | Keras3Fixture]:
    """Every case in the fixture files at ``path``, as ``Fixture`` (Keras 2.0) and
    ``Keras3Fixture`` objects, in file order."""
    import h5py

    fixtures: list[Fixture | Keras3Fixture] = []
    for file in fixture_files(path):
        try:
            fixtures += _read_fixture_file(h5py, file)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: not a numbaopt fixture file (missing or bad {exc})") from None
    return fixtures


def _read_fixture_file(h5py: Any, file: Path) -> list[Fixture | Keras3Fixture]:
    """The cases of one fixture file (a ValueError when it is not one)."""
    fixtures: list[Fixture | Keras3Fixture] = []
    with h5py.File(file, "r") as f:
        meta = {k: _attr(v) for k, v in f.attrs.items()}
        if "capture_script" not in meta or "format_version" not in meta:
            raise ValueError(f"{file}: not a numbaopt fixture file (no capture_script and format_version attributes)")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{file}: fixture format {meta['format_version']} is newer than "
                             f"this numbaopt reads ({FORMAT_VERSION})")
        versions = {k: v for k, v in meta.items() if k.endswith("_version")}
        if meta.get("family") == "keras3":
            return [_keras3_case(file, name, grp, versions) for name, grp in f.items()]
        for name, grp in f.items():
            a = {k: _attr(v) for k, v in grp.attrs.items()}
            d = {k: ds[()] for k, ds in grp.items()}
            fixtures.append(Fixture(
                file=str(file), group=name, optimizer=a["optimizer"], case=a["case"],
                dtype=a["dtype"], steps=int(a["steps"]),
                keras2_config=json.loads(a["keras2_config"]),
                keras_config=json.loads(a["keras_config"]),
                clipping=a["clipping"],
                param_names=json.loads(a["param_names"]),
                param_shapes=[tuple(s) for s in json.loads(a["param_shapes"])],
                slot_names=json.loads(a["slot_names"]),
                params=d["params"], grads=d["grads"], applied_grads=d.get("applied_grads"),
                slots=d["slots"], iterations=d["iterations"], m_schedule=d.get("m_schedule"),
                versions=versions,
            ))
    return fixtures


def _keras3_case(file: Path, name: str, grp: Any, versions: dict[str, Any]) -> Keras3Fixture:
    a = {k: _attr(v) for k, v in grp.attrs.items()}
    variables = grp["variables"]
    return Keras3Fixture(
        file=str(file), group=name, optimizer=a["optimizer"], case=a["case"],
        description=a["description"], dtype=a["dtype"], steps=int(a["steps"]),
        serialized=json.loads(a["serialized"]),
        exclude_from_weight_decay=json.loads(a["exclude_from_weight_decay"]),
        param_names=json.loads(a["param_names"]),
        param_shapes=[tuple(s) for s in json.loads(a["param_shapes"])],
        params=grp["params"][()], grads=grp["grads"][()],
        learning_rate=grp["learning_rate"][()], iterations=grp["iterations"][()],
        variables=[(_attr(variables[k].attrs["path"]), variables[k][()]) for k in sorted(variables)],
        finalized=grp["finalized"][()] if "finalized" in grp else None,
        versions=versions,
    )
