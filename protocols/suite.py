"""A protocol suite: one registered implementation per part kind, chosen by config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import protocols.check  # noqa: F401  (the built-in parts register themselves on import)
import protocols.comparison  # noqa: F401
import protocols.prg  # noqa: F401
import protocols.tfp  # noqa: F401
import protocols.truncation  # noqa: F401
from protocols.malicious.dealer import ANSWER_ELEMENTS
from protocols.parts import ProtocolPart, TripleSource
from protocols.registry import PART_KINDS, part_class


@dataclass
class ProtocolConfig:
    """``protocol.*``: the suite's name and its parts (``conf/protocol/<name>.yaml``)."""

    name: str = "dealer"
    triple_source: str = "dealer"
    prg: str = "aes_ctr"
    truncation: str = "topbits"
    comparison: str = "packed"
    check: str = "none"
    # modules imported before the parts are looked up: where a researcher's own parts
    # register themselves (``protocol.plugins=[my_parts]``)
    plugins: list[str] = field(default_factory=list)
    # a testing-only part (tfp: party 0 sees every secret) with the parties' own data files
    allow_insecure: bool = False
    # protocol=malicious: the most elements (companions and random bits included) one dealer
    # answer deals; a training step's tuples come as several checked answers of this size
    answer_elements: int = ANSWER_ELEMENTS


def load_plugins(config: ProtocolConfig) -> None:
    import importlib

    for module in config.plugins:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ValueError(f"protocol.plugins: cannot import {module!r}: {error}") from None


def needs_dealer(config: ProtocolConfig) -> bool:
    """Whether this suite's triple source needs a dealer process (rank = num_parties)."""
    load_plugins(config)
    return bool(getattr(part_class("triple_source", config.triple_source), "needs_dealer", False))


def check_party_count(config: ProtocolConfig, num_parties: int) -> None:
    """Raise ValueError naming the part if the suite cannot serve ``num_parties`` parties."""
    load_plugins(config)
    for kind in PART_KINDS:
        part = part_class(kind, getattr(config, kind))
        limit = getattr(part, "max_parties", None)
        if limit is not None and num_parties > limit:
            raise ValueError(f"protocol.{kind}={part.part_name} is a {limit}-party protocol; "
                             f"num_parties={num_parties} needs another suite (e.g. protocol=dealer)")


def check_parts_fit(config: ProtocolConfig) -> None:
    """Raise ValueError naming the settings if one part needs a tuple the source does not deal."""
    load_plugins(config)
    source = part_class("triple_source", config.triple_source)
    if config.comparison == "packed" and source.sign_mask is TripleSource.sign_mask:
        raise ValueError(f"protocol.comparison=packed opens x + r against sign masks, which "
                         f"protocol.triple_source={config.triple_source} does not deal; "
                         "set protocol.comparison=crypten")


def testing_only_parts(config: ProtocolConfig) -> list[str]:
    """``kind=name`` of each part that is for testing only (a trusted party sees secrets)."""
    load_plugins(config)
    return [f"{kind}={getattr(config, kind)}" for kind in PART_KINDS
            if part_class(kind, getattr(config, kind)).testing_only]


class ProtocolSuite:
    """The parts of one suite, instantiated from the registry and installed into CrypTen.

    Install order matters only in that randomness comes first: every other part may draw
    from the PRG, and the triple source installs before truncation, which asks it for pairs.
    """

    def __init__(self, config: ProtocolConfig) -> None:
        self.config = config
        load_plugins(config)
        self.parts: dict[str, ProtocolPart] = {}
        for kind in ("prg", "triple_source", "truncation", "comparison", "check"):
            part = part_class(kind, getattr(config, kind))()
            part.suite = self
            self.parts[kind] = part
        assert set(self.parts) == set(PART_KINDS)

    @property
    def testing_only(self) -> bool:
        return any(part.testing_only for part in self.parts.values())

    @property
    def insecure_test_seed(self) -> bool:
        """Whether the PRG used the test suite's reproducible seeds (every secret predictable)."""
        return bool(getattr(self.parts["prg"], "insecure_test_seed", False))

    @property
    def triple_source(self) -> Any:
        return self.parts["triple_source"]

    @property
    def needs_dealer(self) -> bool:
        return bool(getattr(self.triple_source, "needs_dealer", False))

    def install(self, crypten: Any, comm: Any) -> None:
        """Give every part the parties' transport ``comm``, then wire it into CrypTen."""
        for part in self.parts.values():
            part.connect(comm)
            part.install(crypten)

    def start(self, crypten: Any) -> None:
        for part in self.parts.values():
            part.start(crypten)

    def stop(self, crypten: Any) -> None:
        for part in reversed(list(self.parts.values())):
            part.stop(crypten)

    def uninstall(self, crypten: Any) -> None:
        for part in reversed(list(self.parts.values())):
            part.uninstall(crypten)

    def describe(self) -> dict[str, str]:
        return {kind: part.describe() for kind, part in self.parts.items()}

    def counters(self) -> dict[str, dict]:
        return {kind: part.counters.as_dict() for kind, part in self.parts.items()}
