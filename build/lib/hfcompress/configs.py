"""`MethodConfig`: what every method's config dataclass shares (LoRA, low rank, pruning, quantization, vocabulary
trimming): its fields as a dict, built from any object holding them (a script's combined argument dataclass, a dict),
saved as JSON beside a model and read back with unknown keys refused. A config class names its file in
``config_name``; its fields (not those of subclasses such as `PruningArguments`) are what is read and written."""

from __future__ import annotations

import json
import os
from dataclasses import fields

from .errors import UserInputError


class MethodConfig:
    config_name: str = "config.json"  # set by each config class

    @classmethod
    def _config_class(cls) -> type:
        """The class that declared `config_name` (a script's subclass adds TrainingArguments fields: not saved)."""
        return next(k for k in cls.__mro__ if "config_name" in vars(k))

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls._config_class()) if not f.name.startswith("_")]

    @classmethod
    def from_any(cls, obj):
        """The config from the fields of any object (or dict) holding them; fields it lacks keep their defaults."""
        own = cls._config_class()
        if isinstance(obj, dict):
            return own(**{k: obj[k] for k in own.field_names() if k in obj})
        return own(**{k: getattr(obj, k) for k in own.field_names() if hasattr(obj, k)})

    def to_dict(self) -> dict:
        return {name: (list(v) if isinstance(v, (list, tuple)) else v)
                for name in self.field_names() for v in [getattr(self, name)]}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save_pretrained(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, self.config_name), "w") as fh:
            fh.write(self.to_json_string())

    @classmethod
    def from_pretrained(cls, directory: str):
        own = cls._config_class()
        path = os.path.join(directory, own.config_name)
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise UserInputError(f"{path} does not exist: no {own.__name__} was saved in {directory}") from None
        except json.JSONDecodeError as exc:
            raise UserInputError(f"{path} is not valid JSON: {exc}") from None
        unknown = sorted(set(data) - set(own.field_names()))
        if unknown:
            raise UserInputError(f"{path}: unknown keys {unknown} (known: {', '.join(own.field_names())})")
        return own(**data)
