"""Checkpoints of a training run, so that a killed run resumes instead of starting over.

The Trainer saves ``OUT/checkpoints/checkpoint-N`` every ``save_steps`` steps (weights, optimizer
and scheduler state, RNG states: what ``trainer.train(resume_from_checkpoint=...)`` needs), keeping
the last ``save_total_limit``. ``OUT/checkpoints/training.json`` records what the run is made of
(base, data, settings), so a resume with other inputs is refused instead of mixing two runs.
Once the finished model is saved the checkpoints are deleted: the published folder holds
safetensors, never the checkpoints' pickles.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..store import read_json, stable_hash, write_json

log = logging.getLogger(__name__)

FOLDER = "checkpoints"
IDENTITY = "training.json"
# Settings that change where and how often a run is saved or logged, never its result.
NOT_IDENTITY = ("save_steps", "save_total_limit", "report_to")


def checkpoint_folder(out: Path) -> Path:
    return Path(out) / FOLDER


def identity(base: str, rows: list[dict], settings: dict[str, Any]) -> dict[str, Any]:
    """What a run is made of: the base, a hash of its training rows and its result-changing settings."""
    kept = {k: v for k, v in settings.items() if k not in NOT_IDENTITY}
    return {**kept, "base": str(base), "data": stable_hash(rows)}


def complete(folder: Path) -> list[Path]:
    """Checkpoints whose save finished (the Trainer writes trainer_state.json last), oldest first."""
    found = []
    for path in folder.glob("checkpoint-*"):
        step = path.name.split("-", 1)[1]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return [path for _, path in sorted(found)]


def resume_point(out: Path, ident: dict[str, Any], resume: bool, finished: bool) -> Path | None:
    """The checkpoint to resume from: the last complete one when ``resume``, else None.

    Refuses (UserError) to resume a ``finished`` run, checkpoints left without ``resume`` (so a
    forgotten flag never throws away hours of training) and checkpoints made from another base,
    other data or other settings. A finished run's leftover checkpoints (a kill between the last
    file and their deletion) are stale: ``start`` clears them.
    """
    folder = checkpoint_folder(out)
    if finished:
        if resume:
            raise UserError(f"{out} already holds a trained model: nothing to resume (drop --resume to train again)")
        return None
    done = complete(folder)
    if not done:
        if resume:
            log.info("no checkpoint in %s: training from the start", folder)
        return None
    if not resume:
        raise UserError(
            f"{out} holds {done[-1].name} of an unfinished training run: pass --resume to continue it, "
            f"or delete {folder} to start over"
        )
    if not (folder / IDENTITY).is_file():
        raise UserError(f"{folder} has no {IDENTITY} saying what it was made from; delete {folder} to start over")
    old = read_json(folder / IDENTITY)
    diff = sorted(key for key in set(ident) | set(old) if old.get(key) != ident.get(key))
    if diff:
        raise UserError(
            f"{folder} was made with a different {', '.join(diff)}; resume with the same settings, "
            f"or delete {folder} to start over"
        )
    log.info("resuming from %s", done[-1])
    return done[-1]


def start(out: Path, ident: dict[str, Any], is_main: bool) -> None:
    """A fresh run: clear what a run killed before its first checkpoint left, record the identity."""
    if not is_main:
        return
    folder = checkpoint_folder(out)
    if folder.exists():
        shutil.rmtree(folder)
    write_json(folder / IDENTITY, ident)


def finish(out: Path, is_main: bool) -> None:
    """Delete the checkpoints once the finished model is saved. What a ``report_to`` integration
    wrote there (tensorboard's ``runs/``) stays."""
    folder = checkpoint_folder(out)
    if not is_main or not folder.is_dir():
        return
    for path in folder.glob("checkpoint-*"):
        shutil.rmtree(path, ignore_errors=True)
    for name in (IDENTITY, "README.md"):  # README.md: TRL's draft card, written at each checkpoint
        (folder / name).unlink(missing_ok=True)
    if not any(folder.iterdir()):
        folder.rmdir()


def skip_final_checkpoint():
    """A callback that drops the Trainer's checkpoint at the last step: the finished model is
    saved right after, and the checkpoints deleted, so its optimizer state would be written for
    nothing (about 12 bytes per trained parameter)."""
    from transformers import TrainerCallback

    class SkipFinal(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return SkipFinal()


def report_to(value: str) -> list[str]:
    """TRL's ``report_to`` from a comma-separated string; an unknown or uninstalled integration is
    a UserError naming it, not a traceback from inside the Trainer.

    >>> report_to("none"), report_to(" none ")
    ([], [])
    >>> report_to("nope")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    psychocounsel.errors.UserError: report_to: unknown integration 'nope'; choose from none, all, azure_ml, ...
    """
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    names = [n.strip() for n in value.split(",") if n.strip() not in ("", "none")]
    if not names:
        return []
    if names == ["all"]:
        return get_available_reporting_integrations()
    available = get_available_reporting_integrations()
    for name in names:
        if name not in INTEGRATION_TO_CALLBACK:
            choices = ", ".join(["none", "all", *INTEGRATION_TO_CALLBACK])
            raise UserError(f"report_to: unknown integration {name!r}; choose from {choices}")
        if name not in available:
            raise UserError(f"report_to: {name} is not installed (pip install {name})")
    return names
