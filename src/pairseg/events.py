"""Progress events: one JSON object per line for programs, a progress bar for people.

Every long-running engine function takes an ``events`` callable ``events(name, **fields)``.
``JsonEvents`` prints ``{"event": name, ...}`` lines to stdout (the Slicer modules read them);
``HumanEvents`` draws a progress bar and readable lines on stderr.
"""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable, TextIO

EventSink = Callable[..., None]


def jsonable(value: Any) -> Any:
    """``value`` with JSON types only: numpy/torch scalars and arrays as numbers and lists, paths as
    strings, and non-finite floats as None (null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if getattr(value, "ndim", 0) and hasattr(value, "tolist"):  # numpy arrays, tensors
        return jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item):
        return jsonable(value.item())
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


class JsonEvents:
    """``{"event": ..., "time": ...}`` per line, flushed at once."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stdout

    def __call__(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": round(time.time(), 3), **jsonable(fields)}
        self.stream.write(json.dumps(record) + "\n")
        self.stream.flush()


def format_duration(seconds: Any) -> str:
    """The one duration format of the engine and the Slicer modules: ``75`` -> ``1m15s``,
    ``7300`` -> ``2h01m``, ``42`` -> ``42s`` (seconds, rounded); ``None``, a non-number or a
    non-finite value -> ``?``."""
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(value):
        return "?"
    seconds = int(round(value))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class HumanEvents:
    """A one-line progress bar plus readable messages, on stderr."""

    width = 28

    def __init__(self, stream: TextIO | None = None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self._bar_open = False
        self._last_draw = 0.0

    def _line(self, text: str) -> None:
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: str, **fields: Any) -> None:
        if event == "progress":
            if self.quiet:
                return
            now = time.monotonic()
            fraction = float(fields.get("fraction") or 0.0)
            if now - self._last_draw < 0.2 and fraction < 1.0:
                return
            self._last_draw = now
            filled = int(self.width * min(max(fraction, 0.0), 1.0))
            parts = [f"{fields.get('stage', '')}".ljust(8),
                     "[" + "#" * filled + "." * (self.width - filled) + "]", f"{100 * fraction:5.1f}%"]
            if "step" in fields and "total" in fields:
                parts.append(f"{fields['step']}/{fields['total']}")
            if fields.get("loss") is not None:
                parts.append(f"loss {fields['loss']:.4f}")
            if fields.get("eta_s") is not None:
                parts.append(f"ETA {format_duration(fields['eta_s'])}")
            self.stream.write("\r" + " ".join(parts))
            self.stream.flush()
            self._bar_open = True
        elif event == "validation":
            dice = ", ".join(f"{k} {v:.3f}" for k, v in (fields.get("dice") or {}).items() if v is not None)
            mean = fields.get("mean_dice")
            mean_text = f"{mean:.3f}" if isinstance(mean, (int, float)) else "?"
            self._line(f"epoch {fields.get('epoch')}: validation Dice {mean_text} ({dice})")
        elif event == "error":
            self._line(f"error: {fields.get('message')}")
        elif event == "message":
            self._line(str(fields.get("text", "")))
        elif event == "uncertainty":
            slices = ", ".join(str(s["slice"]) for s in fields.get("check_slices") or [])
            self._line(f"check these slices first: {slices or 'none (the model is certain everywhere)'}")
        elif event == "done":
            outputs = fields.get("outputs") or []
            self._line("done" + (": " + ", ".join(str(o) for o in outputs) if outputs else ""))
        elif event in ("start", "checkpoint", "stopped") and not self.quiet:
            if event == "start":
                self._line(" ".join(f"{k}={v}" for k, v in fields.items() if not isinstance(v, (dict, list))))
            elif event == "stopped":
                self._line(f"stopped; resume with --resume ({fields.get('checkpoint')})")


def null_events(event: str, **fields: Any) -> None:
    """Discard events."""
