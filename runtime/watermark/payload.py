"""Payload coding: an ID + CRC-16, convolutional code (K=9, rate 1/6), soft Viterbi and list Viterbi.

The code's six generators (473, 517, 711, 755, 553, 675 octal; free distance 37) were picked by a search
for the largest free distance with the fewest paths at that distance. The trellis is terminated with eight
zero tail bits, so decoding ends in state 0. Soft decoding gains about 2 dB over hard decisions and a
rate-1/6 code beats a rate-1/3 code repeated twice by about 0.5 dB. When the best path fails its CRC, a
list Viterbi decoder (the LIST_SIZE best paths) gains about another 0.5 dB; every word whose CRC is
checked is counted by the detector's false-positive probability (each passes by chance with p = 2^-16).

Two ID lengths use the same code (``PayloadCode``): 64 bits (codec v1 and v2; ``ID64``, and the module-level
names below, which are its) and 40 bits (v3, ``ID40``: a 56-bit word instead of 80, for marks whose channel
carries too few bits for the longer word, see docs/watermark.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CRC_BITS = 16
CONSTRAINT_LENGTH = 9
GENERATORS = (0o473, 0o517, 0o711, 0o755, 0o553, 0o675)
RATE_INVERSE = len(GENERATORS)
TAIL_BITS = CONSTRAINT_LENGTH - 1
LIST_SIZE = 16

_STATES = 1 << (CONSTRAINT_LENGTH - 1)
_CRC_POLY = 0x1021  # CRC-16/CCITT
_CRC_INIT = 0xFFFF


def crc16(bits: np.ndarray) -> int:
    """CRC-16/CCITT-FALSE of a bit sequence (MSB first)."""
    crc = _CRC_INIT
    for bit in np.asarray(bits, dtype=np.uint8).tolist():
        top = ((crc >> 15) & 1) ^ bit
        crc = ((crc << 1) & 0xFFFF) ^ (_CRC_POLY if top else 0)
    return crc


def int_to_bits(value: int, width: int) -> np.ndarray:
    """``width`` bits of ``value``, most significant first."""
    return np.array([(value >> (width - 1 - i)) & 1 for i in range(width)], dtype=np.uint8)


def bits_to_int(bits: np.ndarray) -> int:
    value = 0
    for bit in np.asarray(bits, dtype=np.uint8).tolist():
        value = (value << 1) | bit
    return value


def _register_outputs() -> np.ndarray:
    """Output signs (+1 for bit 0, -1 for bit 1) of each register value, shape [2^K, RATE_INVERSE]."""
    registers = np.arange(1 << CONSTRAINT_LENGTH)
    out = np.zeros((registers.size, RATE_INVERSE), dtype=np.float32)
    for k, gen in enumerate(GENERATORS):
        parity = np.array([bin(int(r) & gen).count("1") & 1 for r in registers])
        out[:, k] = 1.0 - 2.0 * parity
    return out


_OUTPUT_SIGNS = _register_outputs()
_NEXT = np.arange(_STATES)
_PRED_LOW = _NEXT >> 1                      # predecessor whose oldest bit was 0
_PRED_HIGH = _PRED_LOW | (_STATES >> 1)     # predecessor whose oldest bit was 1
_REG_LOW = (_PRED_LOW << 1) | (_NEXT & 1)   # register value on each transition
_REG_HIGH = (_PRED_HIGH << 1) | (_NEXT & 1)


@dataclass(frozen=True)
class PayloadCode:
    """The code for a ``payload_bits``-bit ID: ID + CRC-16 + tail, every step coded into RATE_INVERSE bits."""

    payload_bits: int

    @property
    def info_bits(self) -> int:
        return self.payload_bits + CRC_BITS

    @property
    def steps(self) -> int:
        return self.info_bits + TAIL_BITS

    @property
    def coded_bits(self) -> int:
        return self.steps * RATE_INVERSE

    def encode(self, payload: int) -> np.ndarray:
        """The ``coded_bits`` coded bits (0/1) carrying ``payload`` (0 <= payload < 2**payload_bits) and its CRC."""
        info = int_to_bits(payload, self.payload_bits)
        word = np.concatenate([info, int_to_bits(crc16(info), CRC_BITS), np.zeros(TAIL_BITS, np.uint8)])
        coded = np.empty((word.size, RATE_INVERSE), dtype=np.uint8)
        state = 0
        for t, bit in enumerate(word.tolist()):
            register = (state << 1) | bit
            coded[t] = (_OUTPUT_SIGNS[register] < 0).astype(np.uint8)
            state = register & (_STATES - 1)
        return coded.reshape(-1)

    def viterbi_decode(self, soft: np.ndarray) -> np.ndarray:
        """Most likely information word (``info_bits`` bits) for soft coded values (positive = bit 0)."""
        branch = _branches(soft)
        metric = np.full(_STATES, -np.inf, dtype=np.float32)
        metric[0] = 0.0
        decisions = np.empty((branch.shape[0], _STATES), dtype=bool)
        for t in range(branch.shape[0]):
            low = metric[_PRED_LOW] + branch[t, _REG_LOW]
            high = metric[_PRED_HIGH] + branch[t, _REG_HIGH]
            decisions[t] = high > low
            metric = np.maximum(low, high)
        state = 0
        bits = np.empty(branch.shape[0], dtype=np.uint8)
        for t in range(branch.shape[0] - 1, -1, -1):
            bits[t] = state & 1
            state = int(_PRED_HIGH[state] if decisions[t, state] else _PRED_LOW[state])
        return bits[:self.info_bits]

    def list_viterbi_decode(self, soft: np.ndarray, size: int = LIST_SIZE) -> np.ndarray:
        """The ``size`` most likely information words, best first: [size, info_bits] (parallel list Viterbi)."""
        branch = _branches(soft)
        steps = branch.shape[0]
        metric = np.full((_STATES, size), -np.inf, dtype=np.float32)
        metric[0, 0] = 0.0
        back = np.empty((steps, _STATES, size), dtype=np.uint8)  # index into [low paths, high paths]
        candidates = np.empty((_STATES, 2 * size), dtype=np.float32)
        for t in range(steps):
            np.add(metric[_PRED_LOW], branch[t, _REG_LOW][:, None], out=candidates[:, :size])
            np.add(metric[_PRED_HIGH], branch[t, _REG_HIGH][:, None], out=candidates[:, size:])
            keep = np.argpartition(candidates, size, axis=1)[:, size:]  # the best ``size``, in any order
            metric = np.take_along_axis(candidates, keep, axis=1)
            back[t] = keep
        order = np.argsort(-metric[0], kind="stable")
        states = np.zeros(size, dtype=np.int64)
        ranks = order
        words = np.empty((size, steps), dtype=np.uint8)
        for t in range(steps - 1, -1, -1):
            choice = back[t, states, ranks].astype(np.int64)
            words[:, t] = states & 1
            states = np.where(choice >= size, _PRED_HIGH[states], _PRED_LOW[states])
            ranks = choice % size
        return words[np.isfinite(metric[0, order]), :self.info_bits]

    def check(self, info: np.ndarray) -> int | None:
        """The payload of an information word whose CRC matches, else None."""
        payload_bits, crc_bits = info[:self.payload_bits], info[self.payload_bits:self.info_bits]
        return bits_to_int(payload_bits) if crc16(payload_bits) == bits_to_int(crc_bits) else None

    def decode(self, soft: np.ndarray) -> tuple[int | None, np.ndarray]:
        """(payload or None when the CRC fails, the decoded payload bits) from the single best path."""
        info = self.viterbi_decode(soft)
        return self.check(info), info[:self.payload_bits]

    def list_decode(self, soft: np.ndarray, size: int = LIST_SIZE) -> int | None:
        """Payload of the best of the ``size`` best paths whose CRC matches, or None."""
        for word in self.list_viterbi_decode(soft, size):
            value = self.check(word)
            if value is not None:
                return value
        return None


def _branches(soft: np.ndarray) -> np.ndarray:
    """Correlation of every register's output with the soft input, per step: [steps, 2^K]."""
    return np.asarray(soft, dtype=np.float32).reshape(-1, RATE_INVERSE) @ _OUTPUT_SIGNS.T


ID64 = PayloadCode(64)  # codec v1 and v2
ID40 = PayloadCode(40)  # codec v3
CODES: dict[int, PayloadCode] = {1: ID64, 2: ID64, 3: ID40}  # the payload code of each codec version

# v1/v2's code under its historical module-level names
PAYLOAD_BITS = ID64.payload_bits
INFO_BITS = ID64.info_bits
STEPS = ID64.steps
CODED_BITS = ID64.coded_bits  # 528
encode = ID64.encode
viterbi_decode = ID64.viterbi_decode
list_viterbi_decode = ID64.list_viterbi_decode
check = ID64.check
decode = ID64.decode
list_decode = ID64.list_decode
