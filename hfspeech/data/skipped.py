"""The bad-item report: what ``skip_bad=True`` skipped, reported in one summary at the end.

Every loader of :mod:`hfspeech.data` writes the items it skips into a :class:`SkippedItems`
report (pass your own with ``load_source(..., skipped=SkippedItems())`` or find the one a
dataset uses with :func:`skipped_items`). Nothing is dropped silently:

- map-style sources find every bad item while loading (with ``skip_bad=True`` every file is
  decoded once, so corrupt audio behind a valid header is found too) and log one summary
  when loading ends;
- streaming sources find bad audio while decoding; the first skip is logged when it happens,
  and every skipped item is logged in one summary at the end of each pass by
  :class:`~hfspeech.data.StreamingBucketBatcher`, by ``summarize_source`` / ``hfspeech data
  info``, or by ``with report.reporting(name): for example in stream: ...``.

The report keeps each (location, reason) once, in the order first seen, so a file skipped in
every epoch is listed once. It lives in the process that decodes: with DataLoader workers
each worker fills (and its batcher logs) its own copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadItem:
    """One item that could not be used: where it is (file or ``file:line``) and what was wrong."""

    location: str
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


@dataclass
class SkippedItems:
    """Report of the items skipped because of ``skip_bad=True``.

    Query it (``len(report)``, ``report.locations()``, ``report.as_dicts()``, iterate over
    :class:`BadItem`), or log it in one summary with :meth:`report`.
    """

    items: list[BadItem] = field(default_factory=list)

    def add(self, location: str, reason: str) -> bool:
        """Record a skipped item; returns False when it was already recorded."""
        item = BadItem(str(location), str(reason))
        if item in self.items:
            return False
        self.items.append(item)
        logger.debug("skipping %s", item)
        return True

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[BadItem]:
        return iter(self.items)

    def __contains__(self, location: object) -> bool:
        """True when some skipped item's location contains ``location`` (a file name or path)."""
        return any(str(location) in item.location for item in self.items)

    def locations(self) -> list[str]:
        """Locations of the skipped items, in the order they were first skipped."""
        return [item.location for item in self.items]

    def as_dicts(self) -> list[dict[str, str]]:
        """``[{"location": ..., "reason": ...}, ...]`` (JSON-ready)."""
        return [{"location": item.location, "reason": item.reason} for item in self.items]

    def summary(self, source: str) -> str:
        """One message listing every skipped item (empty string when nothing was skipped)."""
        if not self.items:
            return ""
        lines = "\n".join(f"  {item}" for item in self.items)
        return f"{source}: skipped {len(self.items)} bad item(s):\n{lines}"

    def report(self, source: str) -> None:
        """Log :meth:`summary` as one warning (nothing when no item was skipped)."""
        if self.items:
            logger.warning("%s", self.summary(source))

    @contextmanager
    def reporting(self, source: str) -> Iterator[SkippedItems]:
        """``with report.reporting(name): ...`` logs the summary when the block ends (also on error)."""
        try:
            yield self
        finally:
            self.report(source)


def skipped_items(dataset: Any) -> SkippedItems | None:
    """The :class:`SkippedItems` report a dataset from :func:`hfspeech.data.load_source` fills.

    Works on the returned dataset and on what ``select``/``shuffle``/``map``/
    ``split_dataset_by_node`` make of it; None for datasets that did not come from
    ``load_source``.
    """
    format_kwargs = (getattr(dataset, "format", None) or {}).get("format_kwargs") or {}
    found = getattr(format_kwargs.get("transform"), "skipped", None)
    if isinstance(found, SkippedItems):
        return found
    # streaming: the decoding ``map`` function holds the report somewhere down the chain
    examples = getattr(dataset, "_ex_iterable", None)
    for _ in range(64):
        if examples is None:
            break
        found = getattr(getattr(examples, "function", None), "skipped", None)
        if isinstance(found, SkippedItems):
            return found
        examples = getattr(examples, "ex_iterable", None)
    return None
