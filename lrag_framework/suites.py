"""Prompt suites (``lrag run CONFIG --prompts FILE``): the items of a suite, their stable names
and noise keys.

A suite file is a text file (one prompt a line; blank lines and ``#`` comments skipped) or a
YAML/JSON list of items: a plain string (a prompt), or a mapping with one of ``conditioning``
(any raw conditioning item the backbone reads, e.g. the tiny world's ``{world, path}``),
``prompt`` or ``schedule`` (a list of ``{start, prompt}`` segments), optionally ``image`` (a
start image, relative to the suite file), ``name`` and ``seed``.

An item's identity is its name, never its position: a video's file names and its noise derive
from (name, sample), so adding or moving an item changes no other video. Names are derived from
the prompt (lower-case ASCII, ``_`` between words; over ``NAME_LIMIT`` characters, or derived
from structured data, they end in 8 hex digits of a hash of the item), repeated names get
``-2``, ``-3``, ... in order of occurrence; given names must already be safe file names.
The noise key of (name, sample) is 63 bits of a hash; an item with its own ``seed`` takes the
noise of a one-item ``lrag run`` with that seed instead (``stream_generator(seed, sample)``).
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

NAME_LIMIT = 48
SAFE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
ITEM_KEYS = {"conditioning", "prompt", "schedule", "image", "name", "seed"}
WHAT = ("conditioning", "prompt", "schedule")


@dataclass(frozen=True)
class SuiteItem:
    """One entry of a suite: ``position`` in the file, ``name`` (its identity), the raw
    ``conditioning``, an optional start ``image`` (absolute path) and ``seed``."""

    position: int
    name: str
    conditioning: Any
    image: str | None = None
    seed: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    def noise(self, sample: int, default_seed: int) -> tuple[int, int | None]:
        """(seed, noise key) of one sample: the key None means ``stream_generator(seed,
        sample)``, as a one-item ``lrag run``."""
        if self.seed is not None:
            return self.seed, None
        return default_seed, noise_key(self.name, sample)


def noise_key(name: str, sample: int) -> int:
    """A stable 63-bit key of (name, sample) for ``stream_generator``."""
    digest = hashlib.sha256(f"{name}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:8]


def slug(text: str) -> str:
    """Lower-case ASCII words joined by ``_`` (accents dropped, other characters removed)."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")


def derived_name(conditioning: Any, image: str | None) -> str:
    """A safe file name from an item: its prompt text when that says it all, else a label and
    a short hash of the whole item."""
    exact = isinstance(conditioning, str)
    if exact:
        label = conditioning
    elif isinstance(conditioning, list) and conditioning and isinstance(conditioning[0], dict):
        label = str(conditioning[0].get("prompt", "schedule"))  # a schedule: its first prompt
    elif isinstance(conditioning, dict):
        label = " ".join(f"{k} {v}" for k, v in conditioning.items())
    elif conditioning is None and image:
        label = Path(image).stem
    else:
        label = "item"
    name = slug(label)
    if not exact or image or not name or len(name) > NAME_LIMIT:
        name = f"{name[:NAME_LIMIT].rstrip('_') or 'item'}-{short_hash([conditioning, image])}"
    return name


def _item(raw: Any, where: str, base: Path, errors: list[str]) -> dict | None:
    """One raw entry -> {conditioning, image, name, seed}, or None (errors appended)."""
    if isinstance(raw, str):
        return {"conditioning": raw, "image": None, "name": None, "seed": None}
    if not isinstance(raw, dict):
        errors.append(f"{where}: an item is a prompt text or a mapping, got {raw!r:.80}")
        return None
    unknown = set(raw) - ITEM_KEYS
    given = [k for k in WHAT if k in raw]
    if unknown:
        errors.append(f"{where}: unknown keys {sorted(unknown)} (an item has "
                      f"{sorted(ITEM_KEYS)})")
    if len(given) > 1:
        errors.append(f"{where}: give one of conditioning, prompt, schedule, got {given}")
    if not given and "image" not in raw:
        errors.append(f"{where}: an item needs conditioning, prompt, schedule or image")
    if "prompt" in raw and not isinstance(raw["prompt"], str):
        errors.append(f"{where}: prompt must be a text, got {raw['prompt']!r:.80}")
    if "schedule" in raw and not (isinstance(raw["schedule"], list) and raw["schedule"]):
        errors.append(f"{where}: schedule must be a list of {{start, prompt}} segments")
    name, seed, image = raw.get("name"), raw.get("seed"), raw.get("image")
    if name is not None and not (isinstance(name, str) and SAFE_NAME.fullmatch(name)):
        errors.append(f"{where}: name {name!r} must be a file name of lower-case letters, "
                      f"digits, _ and - (at most 64, starting with a letter or digit)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        errors.append(f"{where}: seed must be an integer >= 0, got {seed!r}")
    if image is not None and not isinstance(image, str):
        errors.append(f"{where}: image must be a path, got {image!r:.80}")
        image = None
    if image is not None:
        image = str((base / image).resolve())  # relative to the suite file
    cond = raw[given[0]] if given else None
    return {"conditioning": cond, "image": image, "name": name, "seed": seed}


def read_entries(path: Path) -> list[Any]:
    """The raw entries of a suite file (text lines, or a YAML/JSON list)."""
    if not path.is_file():
        raise ConfigError([f"--prompts: {path} not found"])
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() not in (".yaml", ".yml", ".json"):
        return [line.strip() for line in text.splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise ConfigError([f"--prompts: {path}: cannot parse: {err}"]) from None
    if not isinstance(data, list):
        raise ConfigError([f"--prompts: {path}: expected a list of items, got "
                           f"{type(data).__name__}"])
    return data


def parse_suite(path: str | Path) -> list[SuiteItem]:
    """The items of a suite file, named; every error of the file in one ConfigError."""
    path = Path(path)
    entries, errors = read_entries(path), []
    parsed = [_item(raw, f"{path}: item {i + 1}", path.parent, errors)
              for i, raw in enumerate(entries)]
    if not entries:
        errors.append(f"--prompts: {path} holds no items")
    given = [p["name"] for p in parsed if p and p["name"]]
    repeated = sorted({n for n in given if given.count(n) > 1})
    if repeated:
        errors.append(f"{path}: names given twice: {repeated}")
    if errors:
        raise ConfigError(errors)
    return [SuiteItem(i, name, p["conditioning"], p["image"], p["seed"])
            for i, (p, name) in enumerate(zip(parsed, unique_names(parsed)))]


def unique_names(parsed: list[dict]) -> list[str]:
    """Given names as they are; derived ones made unique in order of occurrence."""
    taken = {p["name"] for p in parsed if p["name"]}
    names = []
    for p in parsed:
        if p["name"]:
            names.append(p["name"])
            continue
        base = name = derived_name(p["conditioning"], p["image"])
        k = 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def items_from_dicts(rows: list[dict]) -> list[SuiteItem]:
    """Items as stored in a suite run directory (``suite.json``)."""
    return [SuiteItem(**row) for row in rows]


def stem(item: SuiteItem, sample: int) -> str:
    """File stem of one video of an item: ``NAME.sSAMPLE``."""
    return f"{item.name}.s{sample}"
