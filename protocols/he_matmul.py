"""Matmul triples' cross products from BFV homomorphic encryption (Microsoft SEAL, through
TenSEAL's ``sealapi``), two parties, no dealer: traffic grows with m k n_w + m n k_w (the
Cheetah packing below), not with m k n as the Gilboa products' does.

For shares of A0 @ B1 + A1 @ B0 over Z_2^64, each party encrypts its A under its own keys; the
peer multiplies by its plaintext B, adds a mask and noise, and sends the result back.

* One plaintext modulus t = 2^59 (SEAL's largest power of two; it needs no batching), the
  products split at the low 5 bits: A = a + 2^5 A', B = b + 2^5 B' (a, b centered in [-16, 16)),
  A B = a b + 2^5 (A' B + a B') mod 2^64. The bracket is needed only mod 2^59 (2^5 2^59 = 2^64):
  one output ciphertext, masked by R1 uniform mod t, exactly. a b (|a b| <= 256 per term) is
  small: a second output, its entries shifted to [0, 496 k] and masked by R2 uniform in
  [0, t - 496 k - 1], so the decryptor learns a b + 240 k + R2 < t over the integers (statistical
  distance to R2 alone below 2^-(50 - ceil(log2 k)) per entry; plan() keeps it within
  2^-MASK_SIGMA: k up to 1,057).
  Two encrypted operands (A', a) and two outputs per block where the 60-bit CRT took three and
  three: a third less of SEAL's encryption, output and decryption work, and bytes.
* Packing (coefficient encoding, Cheetah): a block A[i, j] (m_w x k_w) is the polynomial
  sum A[i, j] X^(i k_w n_w + j), a block B[j, l] (k_w x n_w) is sum B[j, l] X^(l k_w + k_w - 1 - j);
  with m_w k_w n_w <= N their product holds (A B)[i, l] at X^(i k_w n_w + l k_w + k_w - 1), and
  the other terms land elsewhere (or wrap, negated, below k_w - 1).
* Circuit privacy: the returned ciphertext's noise would depend on B, so the peer adds a
  flooding term E uniform in [-F, F) to c0 (F >= N V 2^FLOOD_SIGMA for the worst-case noise V
  after the products: statistical distance at most 2^-FLOOD_SIGMA per ciphertext) and a fresh
  public-key encryption of zero (c1, otherwise a known combination of the operands' c1 with
  B's blocks, then is an RLWE sample of the peer's, pseudorandom). Every coefficient other
  than the products' holds sums A[i, j] B[j', l] (j != j') and is masked uniformly mod t.
* Parameters: N = 8192, coefficient modulus 218 bits (the HE standard's bound for 128-bit
  security with a ternary secret at N = 8192; SEAL checks it, sec_level TC128), t = 2^59 (t
  does not enter the security level); products whose noise bound does not fit raise
  UnsupportedTuple (the caller falls back to Gilboa).
* Wire: ciphertexts and public keys in SEAL's own serialization (zstd-compressed, checked on
  load by SEAL: sizes, parameters, every coefficient below its modulus); a message is an int64
  header (exchange, item count, byte count), the items' lengths, then the bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import secrets
import tempfile
from typing import Any, Generator, Iterator, Sequence

import numpy as np
import tenseal.sealapi as seal
import torch

from protocols.base_ot import OtError
from protocols.ot_extension import lockstep
from protocols.parts import UnsupportedTuple

N = 8192
# 218 bits; the last is SEAL's special prime: no key switching here, only public-key encryption
# runs at that level and is divided down
COEFF_BITS = [50, 50, 50, 50, 18]
PLAIN_BITS = 59  # t = 2^59
LOW_BITS = 5  # the split A = a + 2^LOW_BITS A' (a centered)
HALF_LOW = 1 << (LOW_BITS - 1)
# a b's terms lie in [-(HALF_LOW - 1) HALF_LOW, HALF_LOW^2]: a sum of k of them, shifted by
# LOW_SHIFT k, in [0, LOW_SPAN k]
LOW_SHIFT, LOW_SPAN = (HALF_LOW - 1) * HALF_LOW, (2 * HALF_LOW - 1) * HALF_LOW
OUTPUTS = 2  # output ciphertexts per block: A' B + a B' mod t, and a b
MASK_SIGMA = 40  # at least, per entry of a b (what t leaves: 41 for k = 512, 45 for k = 32)
FLOOD_SIGMA = 41  # F >= 2^41 N V: statistical distance N V / (2F) <= 2^-42 per ciphertext
# a fresh encryption's noise: SEAL's public-key encryption leaves -e u + e1 + e2 s before its
# division by the special prime, each term's coefficients at most N 6 sigma (sigma 3.2): < 2^19
FRESH_NOISE = 1 << 19
# the encrypted operands': SEAL's symmetric encryption at the data level, |e| <= 6 sigma = 19.2, and rounding
OPERAND_NOISE = 1 << 5
# big integers as 10-bit chunks: up to 16 chunks times residues below 2^50 sum below 2^64, so
# a residue takes one reduction, not one per chunk
CHUNK_BITS, MAX_CHUNKS = 10, 16
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None
SPARSE_TERMS = 64  # plaintexts of at most this many terms are written in SEAL's polynomial syntax
MAX_ITEM_BYTES = 1 << 21  # a serialized ciphertext is 524,401 bytes uncompressed
# measured sizes of SEAL's zstd-compressed ciphertexts: a seeded (fresh, symmetric) one, a full one
SEEDED_BYTES, CIPHERTEXT_BYTES = 236_000, 471_000


class HeError(OtError):
    """A malformed or invalid message from the peer of the HE matmul."""


@dataclasses.dataclass(frozen=True)
class Blocking:
    """How an (m x k) @ (k x n) product is cut into blocks of m_w x k_w and k_w x n_w."""

    m: int
    k: int
    n: int
    m_w: int
    k_w: int
    n_w: int

    @property
    def blocks(self) -> tuple[int, int, int]:
        return -(-self.m // self.m_w), -(-self.k // self.k_w), -(-self.n // self.n_w)

    def cost(self) -> int:
        """Bytes each party sends for one of a product's two parts: seeded inputs, full outputs."""
        mb, kb, nb = self.blocks
        return mb * kb * SEEDED_BYTES + mb * nb * CIPHERTEXT_BYTES


@functools.lru_cache(maxsize=256)
def blocking(m: int, k: int, n: int) -> Blocking:
    """The blocking with the fewest ciphertexts (m_w k_w n_w <= N; both parties choose alike)."""
    best = None
    for k_w in range(1, min(k, N) + 1):
        for n_w in range(1, min(n, N // k_w) + 1):
            candidate = Blocking(m, k, n, min(m, N // (k_w * n_w)), k_w, n_w)
            if best is None or candidate.cost() < best.cost():
                best = candidate
    return best


def uniform_chunks(count: int, bits: int) -> np.ndarray:
    """``count`` uniform integers below 2^bits as (count, chunks) CHUNK_BITS-bit chunks, least significant first."""
    width = -(-bits // CHUNK_BITS)
    raw = np.frombuffer(secrets.token_bytes(2 * count * width), np.uint16).reshape(count, width)
    chunks = (raw & np.uint16((1 << CHUNK_BITS) - 1)).astype(np.uint64)
    chunks[:, -1] &= np.uint64((1 << (bits - CHUNK_BITS * (width - 1))) - 1)
    return chunks


def chunk_residues(chunks: np.ndarray, moduli: Sequence[int]) -> np.ndarray:
    """The integers of ``chunks`` mod each of ``moduli`` (each < 2^50): (len(moduli), count)."""
    if chunks.shape[1] > MAX_CHUNKS or max(moduli) >= 1 << 50:
        raise ValueError(f"{chunks.shape[1]} chunks mod {max(moduli).bit_length()}-bit moduli could overflow a word")
    powers = np.array([[pow(2, CHUNK_BITS * i, q) for q in moduli] for i in range(chunks.shape[1])], np.uint64)
    total = np.zeros((chunks.shape[0], len(moduli)), np.uint64)
    for i in range(chunks.shape[1]):
        total += chunks[:, i:i + 1] * powers[i]
    return (total % np.array(moduli, np.uint64)).T


def _uniform_below(count: int, modulus: int) -> np.ndarray:
    """``count`` integers uniform in [0, modulus) (modulus < 2^64): the low bits a word needs,
    those at or above ``modulus`` drawn again."""
    mask = np.uint64((1 << (modulus - 1).bit_length()) - 1)
    out = np.frombuffer(secrets.token_bytes(8 * count), np.uint64) & mask
    while (high := out >= np.uint64(modulus)).any():
        out = out.copy()
        out[high] = np.frombuffer(secrets.token_bytes(8 * int(high.sum())), np.uint64) & mask
    return out


def _polynomial(positions: np.ndarray, values: np.ndarray) -> str:
    """SEAL's syntax for the polynomial sum values[i] X^positions[i] (distinct positions): hex
    coefficients, terms by falling degree, zero terms left out ("0" for none)."""
    terms = sorted(((int(e), int(v)) for e, v in zip(positions, values) if v), reverse=True)
    return " + ".join(f"{v:X}x^{e}" if e else f"{v:X}" for e, v in terms) or "0"


@contextlib.contextmanager
def _scratch_file() -> Iterator[str]:
    """A fresh file in memory (/dev/shm where there is one), removed right after use: a party
    killed or leaving by os._exit leaves at most the one in use behind, not a folder per session."""
    handle, path = tempfile.mkstemp(prefix="cotrain-he-", dir=SCRATCH)
    os.close(handle)
    try:
        yield path
    finally:
        os.unlink(path)


def split_low(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``words`` (uint64) as (low, high): low centered in [-HALF_LOW, HALF_LOW) (int64), high =
    (words - low) / 2^LOW_BITS (uint64, below 2^59): words = low + 2^LOW_BITS high mod 2^64."""
    low = ((words + np.uint64(HALF_LOW)) & np.uint64(2 * HALF_LOW - 1)).astype(np.int64) - HALF_LOW
    return low, (words - low.astype(np.uint64)) >> np.uint64(LOW_BITS)


class _Keys:
    """The SEAL context (t = 2^59) with this party's keys and the peer's public key."""

    def __init__(self) -> None:
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
        parms.set_poly_modulus_degree(N)
        parms.set_coeff_modulus(seal.CoeffModulus.Create(N, COEFF_BITS))
        parms.set_plain_modulus(seal.Modulus(1 << PLAIN_BITS))
        self.context = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
        if self.context.parameters_error_name() != "success":
            raise RuntimeError(f"SEAL refuses the HE parameters: {self.context.parameters_error_message()}")
        self.t = 1 << PLAIN_BITS
        self.q = [modulus.value() for modulus in self.context.first_context_data().parms().coeff_modulus()]
        keys = seal.KeyGenerator(self.context)
        self.public_key = seal.PublicKey()
        keys.create_public_key(self.public_key)  # sent to the peer: it re-randomizes what it returns
        self.encryptor = seal.Encryptor(self.context, keys.secret_key())
        self.decryptor = seal.Decryptor(self.context, keys.secret_key())
        self.evaluator = seal.Evaluator(self.context)
        self.peer_encryptor: Any = None

    def reduced(self, values: np.ndarray) -> np.ndarray:
        """Integers (int64 or uint64) as plaintext coefficients mod t (uint64)."""
        return values.astype(np.uint64) & np.uint64(self.t - 1)


class HeMatmul:
    """Shares of A0 @ B1 + A1 @ B0 (uint64 matrices; party i holds A_i, B_i) from BFV."""

    def __init__(self, comm: Any, peer: int) -> None:
        self.comm, self.peer, self.exchanges = comm, peer, 0
        self.bfv = _Keys()
        self.every = np.arange(N)
        self.header = self._seal_header()
        (data,) = self._swap([self._save(self.bfv.public_key)], 1, "public key")
        self.bfv.peer_encryptor = seal.Encryptor(self.bfv.context, self._load(seal.PublicKey(), self.bfv.context,
                                                                              data, "public key"))

    # -- SEAL objects as bytes (SEAL reads and writes files only, through this binding) --------
    def _save(self, obj: Any) -> bytes:
        with _scratch_file() as path:
            obj.save(path)
            with open(path, "rb") as file:
                return file.read()

    def _load(self, obj: Any, context: Any, data: bytes, what: str) -> Any:
        with _scratch_file() as path:
            with open(path, "wb") as file:
                file.write(data)
            try:
                obj.load(context, path)
            except Exception as error:  # SEAL's checks: header, sizes, parameters, coefficients < q
                raise HeError(f"HE peer party {self.peer} sent an invalid {what}: {error}") from None
        return obj

    def _seal_header(self) -> bytes:
        """The first 8 bytes of SEAL's header (magic, size, version) with compression 'none'."""
        head = bytearray(self._save(self.bfv.public_key)[:8])
        head[5] = 0
        return bytes(head)

    def _serialized(self, body: bytes) -> bytes:
        return self.header + np.uint64(16 + len(body)).tobytes() + body

    def _words(self, words: np.ndarray) -> bytes:
        """A SEAL DynArray of uint64 words, uncompressed."""
        return self._serialized(np.uint64(words.size).tobytes() + words.tobytes())

    def _plaintext(self, positions: np.ndarray, values: np.ndarray) -> Any:
        """The plaintext with ``values`` (< t) at ``positions``, 0 elsewhere, written in SEAL's
        uncompressed format and loaded (SEAL checks every coefficient is below t); a sparse one
        (a B block: k_w n_w terms) in SEAL's polynomial syntax, parsed with no file (a sixth of
        the time; only this party's own values, reduced mod t, take this way). The written one
        stops at its highest position (a B block's k_w n_w, not N: a third of the time)."""
        if len(positions) <= SPARSE_TERMS:
            return seal.Plaintext(_polynomial(positions, values))
        coefficients = np.zeros(int(positions.max()) + 1 if len(positions) else 0, np.uint64)
        coefficients[positions] = values
        body = bytes(32) + np.uint64(coefficients.size).tobytes() + np.float64(1.0).tobytes() + self._words(coefficients)
        return self._load(seal.Plaintext(), self.bfv.context, self._serialized(body), "plaintext")

    def _flood(self, bound_bits: int) -> Any:
        """A ciphertext (E, 0), E uniform in [-2^(b-1), 2^(b-1)): added, it adds E to the noise
        (this binding gives no other way into c0)."""
        chunks = uniform_chunks(N, bound_bits)
        half = 1 << (bound_bits - 1)
        moduli = np.array(self.bfv.q, np.uint64)[:, None]
        shift = np.array([q - half % q for q in self.bfv.q], np.uint64)[:, None]  # -2^(b-1) mod q
        c0 = (chunk_residues(chunks, self.bfv.q) + shift) % moduli
        parms_id = np.array(self.bfv.context.first_parms_id(), np.uint64).tobytes()
        fields = np.array([2, N, len(self.bfv.q)], np.uint64).tobytes() + np.float64(1.0).tobytes() + np.uint64(1).tobytes()
        body = parms_id + b"\x00" + fields + self._words(np.concatenate([c0.reshape(-1), np.zeros(c0.size, np.uint64)]))
        return self._load(seal.Ciphertext(), self.bfv.context, self._serialized(body), "flooding term")

    # -- messages ------------------------------------------------------------------------------
    def _swap(self, items: list[bytes], expected: int, what: str) -> list[bytes]:
        """Send my items, receive the peer's ``expected`` items (each at most MAX_ITEM_BYTES)."""
        return self._take(self._post(items), expected, what)

    def _post(self, items: list[bytes]) -> list[Any]:
        """Send my items: a header (exchange, item count, byte count), their lengths, the bytes."""
        lengths = [len(item) for item in items]
        header = torch.tensor([self.exchanges, len(items), sum(lengths)], dtype=torch.int64)
        handles = [self.comm.isend(header, self.peer)]
        if items:
            body = np.concatenate([np.frombuffer(item, np.uint8) for item in items])
            handles += [self.comm.isend(torch.tensor(lengths, dtype=torch.int64), self.peer),
                        self.comm.isend(torch.from_numpy(body), self.peer)]
        return handles

    def _take(self, handles: list[Any], expected: int, what: str) -> list[bytes]:
        """The peer's ``expected`` items (then my sends ``handles`` are waited for)."""
        peer_header = torch.empty(3, dtype=torch.int64)
        self.comm.irecv(peer_header, self.peer).wait()
        exchange, count, total = (int(v) for v in peer_header)
        if exchange != self.exchanges or count != expected or not count <= total <= count * MAX_ITEM_BYTES:
            raise HeError(f"HE peer party {self.peer} sent a malformed {what} message: exchange {exchange}, {count} "
                          f"items of {total} bytes; expected exchange {self.exchanges}, {expected} items")
        received = []
        if count:
            peer_lengths = torch.empty(count, dtype=torch.int64)
            self.comm.irecv(peer_lengths, self.peer).wait()
            if int(peer_lengths.sum()) != total or bool((peer_lengths <= 0).any()):
                raise HeError(f"HE peer party {self.peer} sent a malformed {what} message: item lengths do not add up")
            data = torch.empty(total, dtype=torch.uint8)
            self.comm.irecv(data, self.peer).wait()
            raw, offsets = data.numpy(), np.concatenate([[0], np.cumsum(peer_lengths.numpy())])
            received = [raw[offsets[i]:offsets[i + 1]].tobytes() for i in range(count)]
        for handle in handles:
            handle.wait()
        self.exchanges += 1
        return received

    # -- the protocol --------------------------------------------------------------------------
    def plan(self, m: int, k: int, n: int) -> Blocking:
        """The blocking of an (m x k) @ (k x n) product; UnsupportedTuple if it does not fit."""
        shape = blocking(m, k, n)
        if (LOW_SPAN * k + 1) << MASK_SIGMA > self.bfv.t - LOW_SPAN * k:
            raise UnsupportedTuple(f"HE matmul triples' inner dimension {k} is beyond their mask range")
        if 4 * self.bfv.t * self._noise(shape)[1] >= math.prod(self.bfv.q):
            raise UnsupportedTuple(f"HE matmul noise for {m}x{k}x{n} exceeds the parameters")
        return shape

    def bytes_sent(self, shape: Blocking) -> int:
        """About the bytes each party sends for one product of ``shape``."""
        return OUTPUTS * shape.cost()

    def _noise(self, shape: Blocking) -> tuple[int, int]:
        """(flooding bits b, a bound on the decrypted noise) for a product of ``shape``: the
        A' B + a B' output's (2 kb products of k_w n_w terms, |B| <= t/2), above a b's."""
        product_noise = 2 * shape.blocks[1] * shape.k_w * shape.n_w * (self.bfv.t // 2 + 1) * (OPERAND_NOISE + 1)
        bits = (N * product_noise).bit_length() + FLOOD_SIGMA + 1
        return bits, product_noise + (1 << (bits - 1)) + FRESH_NOISE

    def cross(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """My shares of A0 @ B1 + A1 @ B0 for each (A, B) of mine (the peer's the same shapes)."""
        return lockstep(self.cross_steps(pairs))[0]

    def cross_steps(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> Generator[None, None, list[np.ndarray]]:
        """:meth:`cross` as a protocol run for :func:`protocols.ot_extension.lockstep` (it pauses
        after sending each of its two messages)."""
        shapes = [self.plan(a.shape[0], a.shape[1], b.shape[1]) for a, b in pairs]
        mine = [self._encrypt(a, shape) for (a, _), shape in zip(pairs, shapes)]
        counts = [len(items) for items in mine]
        handles = self._post([item for items in mine for item in items])
        yield
        theirs = self._take(handles, sum(counts), "encrypted operands")
        replies, shares, start = [], [], 0
        for (_, b), shape, count in zip(pairs, shapes, counts):
            items, share = self._multiply(theirs[start:start + count], b, shape)
            replies.append(items)
            shares.append(share)
            start += count
        handles = self._post([item for items in replies for item in items])
        yield
        answers = self._take(handles, sum(map(len, replies)), "masked products")
        out, start = [], 0
        for shape, share, items in zip(shapes, shares, replies):
            out.append(self._decrypt(answers[start:start + len(items)], shape) + share)
            start += len(items)
        return out

    def _encrypt(self, a: np.ndarray, shape: Blocking) -> list[bytes]:
        """My A's blocks as serialized ciphertexts: A''s (mb, kb) blocks, then a's."""
        mb, kb, _ = shape.blocks
        padded = np.zeros((mb * shape.m_w, kb * shape.k_w), np.uint64)
        padded[:shape.m, :shape.k] = a
        low, high = split_low(padded)
        i, j = np.meshgrid(np.arange(shape.m_w), np.arange(shape.k_w), indexing="ij")
        positions = (i * shape.k_w * shape.n_w + j).reshape(-1)
        blocks = [self._blocks(self.bfv.reduced(part), shape.m_w, shape.k_w) for part in (high, low)]
        # under my secret key: SEAL then sends c1 as the seed it expands from (half the bytes)
        return [self._save(self.bfv.encryptor.encrypt_symmetric(self._plaintext(positions, block)))
                for part in blocks for block in part]

    @staticmethod
    def _blocks(matrix: np.ndarray, rows: int, columns: int) -> np.ndarray:
        """A padded matrix's (rows x columns) blocks, row-major, each flattened."""
        across = matrix.shape[1] // columns
        return matrix.reshape(-1, rows, across, columns).transpose(0, 2, 1, 3).reshape(-1, rows * columns)

    def _targets(self, shape: Blocking) -> np.ndarray:
        """The coefficient of output entry (i, l) of a block: i k_w n_w + l k_w + k_w - 1."""
        i, l = np.meshgrid(np.arange(shape.m_w), np.arange(shape.n_w), indexing="ij")
        return (i * shape.k_w * shape.n_w + l * shape.k_w + shape.k_w - 1).reshape(-1)

    def _operands(self, items: list[bytes]) -> list[Any]:
        """The peer's encrypted operands, checked and in NTT form."""
        bfv, parms_id, inputs = self.bfv, self.bfv.context.first_parms_id(), []
        for data in items:
            ciphertext = self._load(seal.Ciphertext(), bfv.context, data, "encrypted operand")
            if ciphertext.size() != 2 or ciphertext.is_ntt_form() or ciphertext.parms_id() != parms_id:
                raise HeError(f"HE peer party {self.peer} sent an encrypted operand of the wrong form")
            bfv.evaluator.transform_to_ntt_inplace(ciphertext)
            inputs.append(ciphertext)
        return inputs

    def _multiply(self, items: list[bytes], b: np.ndarray, shape: Blocking) -> tuple[list[bytes], np.ndarray]:
        """The peer's encrypted A', a times my B, B', b, masked and flooded; my share of its
        product: -(2^5 R1 + R2 + LOW_SHIFT k)."""
        mb, kb, nb = shape.blocks
        padded = np.zeros((kb * shape.k_w, nb * shape.n_w), np.uint64)
        padded[:shape.k, :shape.n] = b
        low, high = split_low(padded)
        j, l = np.meshgrid(np.arange(shape.k_w), np.arange(shape.n_w), indexing="ij")
        b_positions = (l * shape.k_w + shape.k_w - 1 - j).reshape(-1)
        # B mod t, B', b as (kb, nb, k_w n_w) blocks
        parts = [self._blocks(self.bfv.reduced(part), shape.k_w, shape.n_w).reshape(kb, nb, -1)
                 for part in (padded, high, low)]
        inputs = self._operands(items)
        high_in, low_in = inputs[:mb * kb], inputs[mb * kb:]
        targets, flood_bits = self._targets(shape), self._noise(shape)[0]
        span = self.bfv.t - LOW_SPAN * shape.k  # R2 below this: a b + shift + R2 < t
        wide, narrow = np.zeros((2, mb * nb, len(targets)), np.uint64)
        replies: list[bytes] = [b""] * (2 * mb * nb)  # the A' B + a B' outputs, then the a b ones
        for column in range(nb):
            # one column's plaintexts in NTT form at a time (each 256 KB), used by every row
            plains = [[self._ntt_plain(self._plaintext(b_positions, part[x, column])) for x in range(kb)]
                      for part in parts]
            for row in range(mb):
                block = row * nb + column
                # the other coefficients hold sums of A[i, j] B[j', l] (j != j'): masked uniformly
                # mod t (exactly); the targets by R1 mod t
                values = _uniform_below(N, self.bfv.t)
                wide[block] = values[targets]
                pairs = [(high_in[row * kb + x], plains[0][x]) for x in range(kb)] + \
                        [(low_in[row * kb + x], plains[1][x]) for x in range(kb)]
                replies[block] = self._masked(self._sum(pairs), values, flood_bits)
                values = _uniform_below(N, self.bfv.t)
                narrow[block] = _uniform_below(len(targets), span)
                values[targets] = narrow[block] + np.uint64(LOW_SHIFT * shape.k)
                pairs = [(low_in[row * kb + x], plains[2][x]) for x in range(kb)]
                replies[mb * nb + block] = self._masked(self._sum(pairs), values, flood_bits)
        share = np.uint64(0) - (wide << np.uint64(LOW_BITS)) - narrow - np.uint64(LOW_SHIFT * shape.k)
        return replies, self._gather(share.reshape(mb, nb, shape.m_w, shape.n_w), shape)

    def _sum(self, pairs: list[tuple[Any, Any]]) -> Any:
        """The sum of ciphertext times plaintext over ``pairs`` (NTT form), back in coefficients;
        zero plaintexts (SEAL refuses their transparent products) add nothing, and with none
        left the sum is a fresh encryption of zero."""
        ev, total = self.bfv.evaluator, None
        for ciphertext, plain in pairs:
            if plain.is_zero():
                continue
            product = seal.Ciphertext()
            ev.multiply_plain(ciphertext, plain, product)
            if total is None:
                total = product
            else:
                ev.add_inplace(total, product)
        if total is None:
            total = seal.Ciphertext()
            self.bfv.peer_encryptor.encrypt_zero(total)
            return total
        ev.transform_from_ntt_inplace(total)
        return total

    def _masked(self, total: Any, values: np.ndarray, flood_bits: int) -> bytes:
        """``total`` plus the plaintext ``values``, a flooding term and a fresh encryption of
        zero under the peer's key, serialized."""
        ev = self.bfv.evaluator
        ev.add_plain_inplace(total, self._plaintext(self.every, values))
        ev.add_inplace(total, self._flood(flood_bits))
        fresh = seal.Ciphertext()
        self.bfv.peer_encryptor.encrypt_zero(fresh)
        ev.add_inplace(total, fresh)
        return self._save(total)

    def _ntt_plain(self, plain: Any) -> Any:
        self.bfv.evaluator.transform_to_ntt_inplace(plain, self.bfv.context.first_parms_id())
        return plain

    def _gather(self, blocks: np.ndarray, shape: Blocking) -> np.ndarray:
        """(mb, nb, m_w, n_w) output blocks as the m x n matrix."""
        mb, _, nb = shape.blocks
        return blocks.transpose(0, 2, 1, 3).reshape(mb * shape.m_w, nb * shape.n_w)[:shape.m, :shape.n].copy()

    def _decrypt(self, items: list[bytes], shape: Blocking) -> np.ndarray:
        """My A times the peer's B plus its masks, from the peer's ciphertexts: 2^5 y1 + y2 mod 2^64."""
        mb, _, nb = shape.blocks
        targets = [int(e) for e in self._targets(shape)]
        last, first = max(targets), self.bfv.context.first_parms_id()
        values = np.zeros((OUTPUTS, mb * nb, len(targets)), np.uint64)
        for index, data in enumerate(items):
            ciphertext = self._load(seal.Ciphertext(), self.bfv.context, data, "masked product")
            if ciphertext.size() != 2 or ciphertext.is_ntt_form() or ciphertext.parms_id() != first:
                raise HeError(f"HE peer party {self.peer} sent a masked product of the wrong form")
            plain = seal.Plaintext()
            self.bfv.decryptor.decrypt(ciphertext, plain)
            count = plain.coeff_count()  # SEAL drops zero coefficients at the top
            values[divmod(index, mb * nb)] = list(map(plain.data, targets)) if last < count else \
                [plain.data(e) if e < count else 0 for e in targets]
        words = (values[0] << np.uint64(LOW_BITS)) + values[1]
        return self._gather(words.reshape(mb, nb, shape.m_w, shape.n_w), shape)
