"""The searched knobs: one row each, and everything the sweep does with a knob is built from its row.

A row says how `sweep.search.<name>` gives the knob (a `[low, high]` range or a list of choices), which
field of the training run it sets, and how it is read back and shown. From this table come the search
space's fields and checks (`sweeps.config.SearchSpace`, `Point`), Tune's param space and the references'
values (`sweeps.search`), a trial's run config (`sweeps.trial`), the result tables' columns (`sweeps.ranking`),
the progress lines and run names (`sweeps.progress`, `sweeps.tracking`: the knob's label and format), and the
report's params, labels and importance distributions (`sweeps.report`). Adding a knob is adding a row
(tests/test_knobs.py adds one).

Values of `sweep.search.<name>`: `[]` the knob is not searched (the run config's value, and it is absent
from the trials' params); one value (a choice) or `[v, v]` (a range): fixed at it; otherwise searched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from trainers.config import TrainRunConfig

RANGES = ("uniform", "log")  # a [low, high] range, sampled uniformly or log-uniformly
CHOICE = "choice"


@dataclass(frozen=True)
class Knob:
    name: str  # sweep.search.<name>, the trial's param, the MLflow param and the report's column
    field: str  # "section.key": the field of the training run it sets
    kind: str  # "uniform" | "log" | "choice"
    cast: type  # float | int | bool | str: the values' type
    default: tuple = ()  # sweep.search.<name> when the preset says nothing
    label: str = ""  # its short name wherever people read it (progress lines, run names, the report); `name` if ""
    fmt: str = ""  # a value's format in those lines (a format spec: ".2f")
    shown_always: bool = False  # in every progress line, not only where it differs from the base run
    # A field that is not the knob's value itself: (field value, knob value) -> field value, and back.
    to_field: Callable[[Any, Any], Any] | None = None
    from_field: Callable[[Any], Any] | None = None

    @property
    def is_range(self) -> bool:
        return self.kind in RANGES

    def base_value(self, run: Any) -> Any:
        """The knob's value in a training run config (`trainers.config.TrainRunConfig`)."""
        section, key = self.field.split(".")
        value = getattr(getattr(run, section), key)
        return self.from_field(value) if self.from_field else value

    def apply(self, run: Any, value: Any) -> Any:
        """`run` with this knob set to `value` (the section re-validated)."""
        section, key = self.field.split(".")
        part = getattr(run, section)
        new = self.to_field(getattr(part, key), value) if self.to_field else value
        return replace(run, **{section: replace(part, **{key: new})})

    @property
    def short(self) -> str:
        return self.label or self.name

    def text(self, value: Any) -> str:
        """ "tau 0.050": the knob's label and value, as progress lines and run names show it."""
        return f"{self.short} {format(value, self.fmt)}"

    def check(self, values: tuple, where: str) -> None:
        """`sweep.search.<name>` as given: a range is [] or [low, high]; every value one that the field's own
        config class accepts (its check, on the default training run): the knob restates no rule."""
        if self.is_range and len(values) not in (0, 2):
            raise ValueError(
                f"{where}: expected a list of 2 values, got {list(values)!r}: give [low, high], "
                "or [] to leave it unsearched."
            )
        if self.is_range and values and values[0] > values[1]:
            raise ValueError(f"{where}={list(values)}: low must be <= high.")
        for value in values:
            try:
                self.apply(TrainRunConfig(), value)
            except ValueError as e:
                raise ValueError(f"{where}={list(values)!r}: {value!r} is refused: {e}") from None

    def searched(self, values: tuple) -> bool:
        """Values that Optuna samples from (not fixed, not absent)."""
        return len(set(values)) > 1


def same_value(a: Any, b: Any) -> bool:
    """Two values of a knob are the same: equal, or floats equal to rounding (a value read back from a
    table against the one a point gave). Text and flags compare as they are."""
    return a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and bool(np.isclose(a, b)))


def _first_k(languages: tuple[str, ...], k: int) -> tuple[str, ...]:
    return languages[:k]


KNOBS: tuple[Knob, ...] = (
    Knob("mono_ratio", "method.mono_ratio", "uniform", float, (0.0, 1.0), "alpha", ".2f", shown_always=True),
    Knob("temperature", "method.temperature", "log", float, (0.01, 0.2), "tau", ".3f", shown_always=True),
    Knob("lang_temperature", "method.lang_temperature", CHOICE, float, (math.inf,), "T", "g"),
    Knob("lr", "optim.lr", "log", float, (), "lr", ".2g"),
    Knob(
        "num_train_languages",
        "data.train_languages",
        CHOICE,
        int,
        (),
        "languages",
        "d",
        to_field=_first_k,
        from_field=len,
    ),
    Knob("hard_negatives", "data.hard_negatives", CHOICE, bool, (), "hard negatives"),
    Knob("alpha_schedule", "method.alpha_schedule", CHOICE, str, (), "schedule"),
)
BY_NAME = {knob.name: knob for knob in KNOBS}
NAMES = tuple(BY_NAME)
ALPHA = BY_NAME["mono_ratio"]  # the references are its two ends
MERGE_WEIGHT = "merge_weight"  # not a knob: a merge of the references' param, the alpha = 1 model's share
