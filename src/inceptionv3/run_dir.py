"""A training run's folder: ``config.json`` (what was asked, resolved), ``log.jsonl`` (one record per line),
``state.pt`` (everything a resume needs, written atomically), and ``last``/``best.safetensors`` (the weights in
this package's canonical format, loadable by every command)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoints import save_canonical
from .errors import InputError
from .files import atomic_path
from .model import InceptionV3

STATE_FILE = "state.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """All or nothing, with the permissions any new file gets here (the umask's, usually 0644)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


class RunDir:
    """The files of one run. Only rank 0 writes; every method is safe to call on any rank."""

    def __init__(self, path: str | os.PathLike, rank: int = 0) -> None:
        self.path, self.rank = Path(path), rank

    @property
    def has_state(self) -> bool:
        return (self.path / STATE_FILE).exists()

    def refuse_existing(self) -> None:
        """A new run never overwrites another: resuming is a separate, explicit choice."""
        if self.rank == 0 and self.has_state:
            raise FileExistsError(f"{self.path} already holds a run; use --resume {self.path} or another --out")

    def start(self, config: dict) -> None:
        """A fresh run: the resolved configuration, and an empty log."""
        if self.rank == 0:
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            (self.path / "log.jsonl").write_text("")

    def config(self) -> dict:
        try:
            return json.loads((self.path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"--resume {self.path}: no readable config.json ({exc})") from None

    def log(self, record: dict) -> None:
        if self.rank == 0:
            with open(self.path / "log.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        return [json.loads(line) for line in (self.path / "log.jsonl").read_text().splitlines() if line]

    def cut_log(self, step: int) -> None:
        """Drop the records after ``step``: a resumed run writes them again, bit for bit."""
        if self.rank == 0:
            log = self.path / "log.jsonl"
            kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            log.write_text("".join(line + "\n" for line in kept))

    def save_state(self, state: dict) -> None:
        if self.rank == 0:
            atomic_torch_save(state, self.path / STATE_FILE)

    def load_state(self, device: torch.device) -> dict:
        return torch.load(self.path / STATE_FILE, weights_only=True, map_location=device)

    def save_weights(self, model: InceptionV3, name: str, class_names: list[str], preset: str) -> None:
        """``name`` (``last`` or ``best``) as a canonical safetensors file: the plain network, whatever wraps it."""
        if self.rank != 0:
            return
        plain = InceptionV3(num_classes=model.num_classes, aux_logits=model.aux_logits, dropout=model.dropout.p,
                            count_include_pad=model.count_include_pad, init_weights=False)
        plain.load_state_dict(model.state_dict())
        save_canonical(plain, self.path / f"{name}.safetensors", source="inceptionv3", class_names=class_names,
                       preprocess=preset)


__all__ = ["STATE_FILE", "RunDir", "atomic_torch_save"]
