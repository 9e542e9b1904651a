"""Cryptographic PRGs for every random value that protects a secret.

CrypTen draws share masks, zero sharings and tuples from ``torch.Generator`` (MT19937 with
64-bit seeds, predictable after 624 outputs). Here each generator is a stream cipher keyed
with a 128-bit seed: AES-128-CTR (``aes_ctr``, the default) or ChaCha20 (``chacha20``).
Bytes come straight from ``cryptography``'s cipher into a numpy buffer, so a draw of n ring
elements costs one cipher call, not n Python operations.

Seeds: ``prev``/``next`` are pairwise. Each party draws the seed it shares with its next
party from ``secrets`` and sends it to that party only (over the authenticated transport);
``local`` never leaves the party; ``global`` (public randomness all parties must share,
e.g. dropout masks) is agreed by commit-then-reveal (``protocols.coin``), so the last party
to speak cannot choose it.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocols import crypten_hooks
from protocols.coin import joint_random
from protocols.parts import ProtocolPart, metered
from protocols.registry import register_part
from protocols.share_tensors import on_device, to_device

SEED_BYTES = 16
log = logging.getLogger("cotrain.protocols")
ALGORITHMS = ("aes_ctr", "chacha20")
GENERATOR_KEYS = ("prev", "next", "local", "global")


TEST_SEED_VARIABLE = "COTRAIN_INSECURE_TEST_SEED"
# Set by tests/conftest.py to that file's own path. The test seed is honoured only when this
# names the conftest.py of the source tree this module was imported from, so an installed
# cotrain (which ships no tests/) can never honour it, and a stray COTRAIN_INSECURE_TEST_SEED
# in a production environment stops the run instead of making its secrets predictable.
TEST_SUITE_VARIABLE = "COTRAIN_TEST_SUITE"
_TEST_SUITE_CONFTEST = Path(__file__).resolve().parents[1] / "tests" / "conftest.py"


class InsecureSeedRefused(ValueError):
    """COTRAIN_INSECURE_TEST_SEED is set outside cotrain's own test suite."""


def insecure_test_seed() -> str | None:
    """The test-only seed, if the test suite set it; raises if it is set anywhere else."""
    seed = os.environ.get(TEST_SEED_VARIABLE)
    if not seed:
        return None
    marker = os.environ.get(TEST_SUITE_VARIABLE, "")
    if not marker or Path(marker).resolve() != _TEST_SUITE_CONFTEST or not _TEST_SUITE_CONFTEST.is_file():
        raise InsecureSeedRefused(
            f"{TEST_SEED_VARIABLE} is set, which would make every secret predictable; it is honoured only "
            f"inside cotrain's own test suite (tests/conftest.py sets {TEST_SUITE_VARIABLE}): unset it")
    return seed


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def _seed_drawer(rank: int) -> tuple[Callable[[], bytes], bool]:
    """``new_seed``, unless the test suite asks for reproducible seeds (which makes every secret
    predictable: the transport-equivalence test compares shares bit for bit); and whether it did."""
    test_seed = insecure_test_seed()
    if test_seed is None:
        return new_seed, False
    log.warning("%s is set: PRG seeds are predictable; for tests only", TEST_SEED_VARIABLE)
    counter = itertools.count()
    return lambda: hashlib.sha256(f"{test_seed}:{rank}:{next(counter)}".encode()).digest()[:SEED_BYTES], True


_ZEROS = bytearray(0)


def _zero_bytes(count: int) -> memoryview:
    """``count`` zero bytes to encrypt, from one buffer every stream shares (the OT extension reads
    hundreds of streams at a time: a buffer each would be as many cache misses and page faults)."""
    global _ZEROS
    if len(_ZEROS) < count:
        _ZEROS = bytearray(max(count, 2 * len(_ZEROS)))
    return memoryview(_ZEROS)[:count]


# keystream drawn at once for small reads (a training step makes about a hundred of a few KB
# each, and a cipher call costs more than the bytes): later ones are slices of it, handed out in
# order, so every read gets the same bytes as it would straight from the cipher. A stream draws
# ahead at most twice what it handed out since it started (or seeked), so a stream read once
# (a dealer answer's, a generator's seed word) draws no more than it reads
READ_AHEAD_BYTES = 1 << 15
_NO_KEYSTREAM = np.empty(0, dtype=np.uint8)


class CipherStream:
    """A keystream: AES-128-CTR or ChaCha20 over zero bytes, read in order."""

    def __init__(self, seed: bytes, algorithm: str = "aes_ctr") -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"a PRG seed is {SEED_BYTES} bytes, got {len(seed)}")
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown PRG algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        self.algorithm = algorithm
        self._seed = seed
        self._encryptor = self._cipher(0).encryptor()
        self.bytes_drawn = 0  # keystream bytes handed out (the drawn-ahead ones not yet)
        self._ahead, self._ahead_at = _NO_KEYSTREAM, 0  # drawn ahead; handed out up to _ahead_at
        self._start = 0  # bytes_drawn when the stream started or last seeked

    def _cipher(self, block: int) -> Cipher:
        """The cipher whose keystream starts at keystream block ``block``."""
        if self.algorithm == "aes_ctr":
            return Cipher(algorithms.AES(self._seed), modes.CTR(block.to_bytes(16, "big")))
        key = hashlib.sha256(b"cotrain-chacha20-key" + self._seed).digest()
        # the 16-byte nonce starts with the little-endian block counter
        return Cipher(algorithms.ChaCha20(key, block.to_bytes(8, "little") + b"\x00" * 8), mode=None)

    def seek(self, position: int) -> None:
        """Skip ahead to keystream byte ``position`` (a stream never rewinds: reused keystream
        would mask two values with the same bytes)."""
        if position < self.bytes_drawn:
            raise ValueError(f"a PRG stream at byte {self.bytes_drawn} cannot go back to byte {position}")
        block_bytes = 16 if self.algorithm == "aes_ctr" else 64
        self._encryptor = self._cipher(position // block_bytes).encryptor()
        self._ahead, self._ahead_at = _NO_KEYSTREAM, 0
        self.bytes_drawn = self._start = position - position % block_bytes
        self.read(position % block_bytes)

    def _draw(self, nbytes: int, before: np.ndarray = _NO_KEYSTREAM) -> np.ndarray:
        """``before``, then the cipher's next ``nbytes`` (past what was drawn ahead), in one
        fresh array: the cipher writes into it, no second buffer joined by a copy."""
        out = np.empty(len(before) + nbytes + 15, dtype=np.uint8)  # update_into wants block_size-1 spare bytes
        out[:len(before)] = before
        # read_into's checks are for a caller's buffer: this one fits by construction
        self._encryptor.update_into(_zero_bytes(nbytes), out[len(before):])
        return out[:len(before) + nbytes]

    def read(self, nbytes: int) -> np.ndarray:
        """The next ``nbytes`` of keystream as a fresh uint8 array. Fresh, not a slice of the
        block drawn ahead: a tensor over it (a share made in place from a mask, later saved in
        a checkpoint, which writes a view's whole storage) holds no other keystream."""
        if nbytes <= 0:
            return np.empty(0, dtype=np.uint8)
        self.bytes_drawn += nbytes
        start, end = self._ahead_at, self._ahead_at + nbytes
        if end <= len(self._ahead):
            self._ahead_at = end
            return self._ahead[start:end].copy()
        rest = self._ahead[start:]
        need = nbytes - len(rest)
        ahead = min(READ_AHEAD_BYTES, 2 * (self.bytes_drawn - nbytes - self._start))
        if need >= ahead:  # nothing to keep: the rest and the new bytes in one array
            self._ahead, self._ahead_at = _NO_KEYSTREAM, 0
            return self._draw(need, rest)
        block = self._draw(ahead)
        self._ahead, self._ahead_at = block, need
        return np.concatenate([rest, block[:need]])

    def read_into(self, out: np.ndarray, nbytes: int, data: np.ndarray | None = None) -> None:
        """The next ``nbytes`` of keystream into ``out[:nbytes]``, XOR-ed with ``data[:nbytes]``
        (contiguous uint8) if given: the cipher applies it as it goes, so a keystream that is
        only ever used XOR-ed with something costs no pass of its own. ``out`` (contiguous
        uint8) has 15 bytes more, which the cipher may scribble on."""
        if len(out) < nbytes + 15:
            raise ValueError(f"a keystream read of {nbytes} bytes needs a buffer of {nbytes + 15}, got {len(out)}")
        if data is not None and len(data) < nbytes:
            raise ValueError(f"a keystream read of {nbytes} bytes XOR-ed with data needs {nbytes} bytes of it, "
                             f"got {len(data)}")
        ahead = min(nbytes, len(self._ahead) - self._ahead_at)
        if ahead:  # bytes a read drew ahead come first
            keys = self._ahead[self._ahead_at:self._ahead_at + ahead]
            self._ahead_at += ahead
            target = np.frombuffer(memoryview(out)[:ahead], np.uint8)
            if data is None:
                target[:] = keys
            else:
                np.bitwise_xor(keys, np.frombuffer(memoryview(data)[:ahead], np.uint8), out=target)
            self.bytes_drawn += ahead
            if ahead == nbytes:
                return
            out, nbytes = memoryview(out)[ahead:], nbytes - ahead
            data = None if data is None else memoryview(data)[ahead:]
        plain = _zero_bytes(nbytes) if data is None else memoryview(data)[:nbytes]
        written = self._encryptor.update_into(plain, out)
        assert written == nbytes
        self.bytes_drawn += nbytes

    def int64(self, count: int) -> np.ndarray:
        return self.read(8 * count).view(np.int64)


def _as_size(size: Any) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,)
    if isinstance(size, (torch.Size, tuple, list)):
        if len(size) == 1 and isinstance(size[0], (torch.Size, tuple, list)):
            return tuple(int(s) for s in size[0])
        return tuple(int(s) for s in size)
    raise TypeError(f"cannot read a tensor size from {size!r}")


class CipherGenerator(torch.Generator):
    """A ``torch.Generator`` whose ring elements come from a keyed cipher stream.

    CrypTen passes generators around and sometimes hands them to torch's own samplers
    (dropout); those see an MT state seeded from this stream, which is fine for public
    randomness. Everything that masks a secret goes through :meth:`ring` / :meth:`bits`.
    """

    def __new__(cls, seed: bytes, algorithm: str = "aes_ctr", counters: Any = None) -> "CipherGenerator":
        return super().__new__(cls, device="cpu")

    def __init__(self, seed: bytes, algorithm: str = "aes_ctr", counters: Any = None) -> None:
        self.stream = CipherStream(seed, algorithm)
        self.counters = counters
        self.manual_seed(int(self.stream.int64(1)[0]) & ((1 << 63) - 1))

    def _count(self, elements: int) -> None:
        if self.counters is not None:
            self.counters.calls += 1
            self.counters.tuples += elements

    def ring(self, size: Any, device: Any = None) -> torch.Tensor:
        """Uniform elements of Z_2^64 as int64 (every value, both signs)."""
        shape = size if type(size) is torch.Size else _as_size(size)  # a Size holds ints already
        count = math.prod(shape)  # 1 for a scalar
        self._count(count)
        # the stream's int64, inlined, and no device move for the CPU: a training step draws
        # about a hundred times, each a few Python calls for a few KB
        values = torch.from_numpy(self.stream.read(8 * count).view(np.int64)).reshape(shape)
        if device is None or (type(device) is torch.device and device.type == "cpu"):
            return values
        return to_device(values, device)

    def fill(self, out: torch.Tensor) -> torch.Tensor:
        """``out`` (contiguous CPU int64) overwritten with the elements ``ring(out.shape)`` would
        return: a draw into memory the caller already holds, not a fresh 8 MB per million."""
        count = out.numel()
        self._count(count)
        words = out.view(-1).numpy().view(np.uint8)
        head = max(0, 8 * count - 16)  # the cipher's write wants 15 bytes past its end: the rest by a read
        if head:
            self.stream.read_into(words, head)
        words[head:] = self.stream.read(8 * count - head)
        return out

    def bits(self, size: Any, bitlength: int, device: Any = None) -> torch.Tensor:
        """Uniform ``bitlength``-bit non-negative integers as int64."""
        values = self.ring(size)
        if bitlength < 64:
            values &= (1 << bitlength) - 1
        return values if device is None else to_device(values, device)


class NonCryptographicGenerator(RuntimeError):
    """A sampler that masks secrets was handed a generator that is not a cipher stream."""


def _cipher_generator(crypten: Any, generator: Any, kwargs: dict) -> CipherGenerator:
    """The generator a sampler was handed, or this party's local one for the device."""
    if generator is None:
        device = kwargs.get("device") or torch.device("cpu")
        device = torch.device(device) if isinstance(device, str) else device
        local = crypten.generators["local"]
        generator = local.get(device, local.get(torch.device("cpu")))
    if not isinstance(generator, CipherGenerator):
        # never fall back to torch's MT19937: its output is predictable from 624 draws
        handed = "no generator" if generator is None else f"a {type(generator).__name__}"
        raise NonCryptographicGenerator(
            f"a CrypTen sampler was handed {handed}, not a cipher PRG generator; every value that "
            "masks a secret must come from the cipher PRG (seeded when the secure session starts)")
    return generator


def cipher_rng_functions(crypten: Any) -> dict[str, Any]:
    """Replacements for ``crypten.common.rng``'s two samplers that draw only from cipher generators."""

    def generate_random_ring_element(size, ring_size=(2**64), generator=None, **kwargs):
        if ring_size != 2**64:
            raise ValueError(f"ring_size={ring_size}: cotrain's PRG draws elements of Z_2^64 only")
        return on_device(_cipher_generator(crypten, generator, kwargs).ring(size, kwargs.get("device")))

    def generate_kbit_random_tensor(size, bitlength=None, generator=None, **kwargs):
        gen = _cipher_generator(crypten, generator, kwargs)
        return on_device(gen.bits(size, 64 if bitlength is None else bitlength, kwargs.get("device")))

    return {"generate_random_ring_element": generate_random_ring_element,
            "generate_kbit_random_tensor": generate_kbit_random_tensor}


def agree_seeds(comm: Any, draw: Callable[[], bytes] = new_seed) -> dict[str, bytes]:
    """The four CrypTen seeds, agreed over the transport; pairwise ones travel to one peer."""
    rank, world = comm.get_rank(), comm.get_world_size()
    local = draw()
    if world < 2:
        return {"prev": local, "next": local, "local": local, "global": draw()}
    next_rank, prev_rank = (rank + 1) % world, (rank - 1) % world
    next_seed = draw()
    # a chain, so blocking sends never wait on each other: 0 sends first, everyone else
    # receives from its predecessor before sending to its successor
    if rank == 0:
        comm.send_obj(next_seed, next_rank)
        prev_seed = comm.recv_obj(prev_rank)
    else:
        prev_seed = comm.recv_obj(prev_rank)
        comm.send_obj(next_seed, next_rank)
    global_seed = joint_random(comm, b"global PRG seed", draw())[:SEED_BYTES]  # commit, then reveal
    if not isinstance(prev_seed, bytes) or len(prev_seed) != SEED_BYTES:
        raise ValueError("the prev PRG seed from a peer is malformed")
    return {"prev": prev_seed, "next": next_seed, "local": local, "global": global_seed}


class CipherPrg(ProtocolPart):
    """Base of the cipher PRG parts: seeds agreed at ``crypten.init``, generators installed."""

    algorithm = "aes_ctr"
    insecure_test_seed = False  # set when the test suite's reproducible seeds were used

    def install(self, crypten: Any) -> None:
        crypten_hooks.install_prg(crypten, self, cipher_rng_functions(crypten))

    def uninstall(self, crypten: Any) -> None:
        crypten_hooks.uninstall_prg(crypten)

    def setup_generators(self, crypten: Any, devices: Sequence[torch.device]) -> None:
        draw, self.insecure_test_seed = _seed_drawer(self.comm.get_rank())
        with metered(self.counters, "offline"):
            seeds = agree_seeds(self.comm, draw)
        for key in GENERATOR_KEYS:
            generator = CipherGenerator(seeds[key], self.algorithm, self.counters)
            for device in devices:
                crypten.generators[key][device] = generator

    def describe(self) -> str:
        return f"{self.part_name} ({self.algorithm}, 128-bit pairwise seeds)"


@register_part("prg", "aes_ctr")
class AesCtrPrg(CipherPrg):
    algorithm = "aes_ctr"


@register_part("prg", "chacha20")
class ChaCha20Prg(CipherPrg):
    algorithm = "chacha20"


def generator_positions(crypten: Any) -> dict[str, torch.Tensor]:
    """Where each of this party's generators stands: keystream bytes drawn, and the state of
    the MT19937 it hands torch's samplers (public randomness such as dropout masks)."""
    positions = {}
    for key in GENERATOR_KEYS:
        generator = crypten.generators[key][torch.device("cpu")]
        positions[f"{key}.position"] = torch.tensor(generator.stream.bytes_drawn, dtype=torch.int64)
        positions[f"{key}.torch_state"] = generator.get_state()
    return positions


def seek_generators(crypten: Any, positions: dict[str, torch.Tensor]) -> None:
    """Move this party's generators forward to ``positions`` (from :func:`generator_positions`).
    Only the positions travel: the keys are this session's, so under the test suite's seeds
    the streams continue exactly, and otherwise they skip fresh keystream."""
    for key in GENERATOR_KEYS:
        generator = crypten.generators[key][torch.device("cpu")]
        generator.stream.seek(int(positions[f"{key}.position"]))
        generator.set_state(positions[f"{key}.torch_state"])
