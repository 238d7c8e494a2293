"""The conv layer kind: a 2-d convolution on a spike map and its event-driven engine
(``hw.conv``), which also computes the OR pooling after it."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .. import estimate as E
from ..devices import blocks
from ..plan import BUILD_FLUSH, GROUP_OVERHEAD
from ..schema import LANES, MAX_KERNEL, POP_SIMD, WEIGHT_STORES, IRError, LfsrSpec, beat_bits, \
    check_array, check_fields, check_int, spec
from .base import Weighted, memory
from .dense import SEARCH_MAX_LANES, SEARCH_MAX_POP_LANES, _combine, _pe_choices, \
    _pop_pe_choices, pop_cost

__all__ = ["ConvLayer", "conv_out", "DRAW_ORDERS"]

#: The order a conv layer draws its blank-out bits in, per sample: ``chw`` (channel-major, the
#: flattened input order; the kept-list engine) or ``hwc`` (pixel-major, a pixel's channels in
#: a row; the popcount engine, whose beats read ``simd`` channels of one pixel).
DRAW_ORDERS = ("chw", "hwc")

_LUTS_PER_GATHER_BIT = 1.5   # a conv window's kept-input compaction, per lane x entry bit
# A conv engine's own control whatever its folding (position and window counters, address
# sums, bounds checks, mask draws, pooling and hand-over): fitted on the Fashion-MNIST
# 16c5-p2-32c5-p2-128-10 net on the UP5K (yosys 4,461 LUT4s and 2,989 FFs against 3,219 and
# 2,538 estimated without it), so a rough figure.
_CONV_FIXED_LUTS = 620
_CONV_FIXED_FFS = 225
# The popcount conv engine (hw.pconv), fitted on two synthesized Fashion-MNIST conv nets
# 16c5-p2-32c5-p2-128-10 (benchmarks/hardware.py, design nsm-popcount): on the UP5K at T' 2,
# 3,783 LUT4s; on the ECP5-25F at T' 16, 16,603 LUTs. Per conv engine its popcount terms cost
# 0.93 of a dense engine's and its own control (position, window and pooled-pixel counters,
# the running address, the pooling register's logic) about 30 LUTs beyond them; yosys shares
# much of a conv engine's control with its drawer and store logic. Two builds, two
# coefficients: a calibration, checked on the ECP5-85F build of the larger net.
_POP_CONV_SYNAPSE_SCALE = 0.93
_POP_CONV_LUTS = 30
_POP_CONV_FFS = 120


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output rows (or columns) of a convolution: ``(size + 2 padding - kernel) // stride + 1``."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class ConvLayer(Weighted):
    """A hidden 2-d convolution on a spike map (IR version 2; semantics in
    :mod:`nsm_export.ir`). ``weights`` is ``(c_out, c_in, kernel, kernel)``, ``offsets`` the
    per-filter thresholds."""
    c_in: int = spec(1, 1 << 16)
    h_in: int = spec(1, 1 << 16)
    w_in: int = spec(1, 1 << 16)
    c_out: int = spec(1, 1 << 16)
    kernel: int = spec(1, MAX_KERNEL)
    stride: int = spec(1, MAX_KERNEL)
    padding: int = spec(0, lambda s: s.kernel - 1)
    weights: np.ndarray = spec(write="npz")      # int64, (c_out, c_in, kernel, kernel)
    offsets: np.ndarray = spec(write="npz")      # int64, (c_out,): thresholds
    weight_bits: int = spec()
    p_num: int = spec()
    p_bits: int = spec()
    rng: LfsrSpec | None = spec(parse=LfsrSpec.parse)
    acc_bits: int = spec()
    offset_bits: int = spec()
    pe: int = spec(1, lambda s: s.c_out, default=1)      # filters in parallel (schedule only)
    lanes: int = spec(choices=LANES, default=1)  # window channels tested a clock (schedule)
    weight_store: str = spec(choices=WEIGHT_STORES, default="rom")
    line_rows: int = spec(0, lambda s: s.h_in, default=0, write="if-set")
    # 0: the whole input map, double-buffered; R: a ring of R rows (:func:`min_line_rows`)
    # popcount engine (hw.pconv): window channels a beat reads, T' samples a weight read, and
    # the draw order it needs (``hwc``); all three written only when not the default
    simd: int = spec(choices=POP_SIMD, default=1, write="if-set")
    pass_samples: int = spec(0, 1 << 16, default=0, write="if-set")
    draw_order: str = spec(choices=DRAW_ORDERS, default="chw", write="if-set")
    output = False                 # a conv layer is never the output layer
    kind = "conv2d"
    DERIVED = ("h_out", "w_out", "n_in", "n_out", "output", "p", "p_realized")
    WEIGHT_DIMS = ("c_out", "c_in", "kernel", "kernel")
    JSON_ORDER = ("kind", "c_in", "h_in", "w_in", "c_out", "kernel", "stride", "padding",
                  "h_out", "w_out", "n_in", "n_out", "output", "weight_bits", "p_num",
                  "p_bits", "p", "p_realized", "rng", "acc_bits", "offset_bits", "pe", "lanes",
                  "weight_store", "line_rows", "simd", "pass_samples", "draw_order")

    @property
    def h_out(self) -> int:
        return conv_out(self.h_in, self.kernel, self.stride, self.padding)

    @property
    def w_out(self) -> int:
        return conv_out(self.w_in, self.kernel, self.stride, self.padding)

    @property
    def n_in(self) -> int:
        return self.c_in * self.h_in * self.w_in

    @property
    def n_out(self) -> int:
        return self.c_out * self.h_out * self.w_out

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.c_in, self.h_in, self.w_in)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.c_out, self.h_out, self.w_out)

    @property
    def groups(self) -> int:
        """Filter groups of ``pe`` filters the engine works through at each position."""
        return -(-self.c_out // self.pe)

    @property
    def popcount(self) -> bool:
        """Built by the sample-parallel popcount engine (``pass_samples`` > 0)."""
        return self.pass_samples > 0

    @property
    def chunks(self) -> int:
        """Popcount engine: beats per window pixel, ``c_in / simd``."""
        return -(-self.c_in // self.simd)

    @property
    def words(self) -> int:
        """Popcount engine: beats per position and filter group, ``k² · c_in / simd``."""
        return self.kernel ** 2 * self.chunks

    def beat_weights(self) -> np.ndarray:
        """The weights as the popcount engine reads them, ``(c_out, k·k·c_in)``: column
        ``(i·k + j)·c_in + c`` is window pixel ``(i, j)``, channel ``c``."""
        return self.weights.transpose(0, 2, 3, 1).reshape(self.c_out, -1)

    def keep_in_order(self, keep: np.ndarray) -> np.ndarray:
        """Keep bits ``(N, T, n_in)`` in draw order → the input order (channel-major)."""
        if self.draw_order == "chw":
            return keep
        n, t = keep.shape[:2]
        return keep.reshape(n, t, self.h_in, self.w_in, self.c_in).transpose(
            0, 1, 4, 2, 3).reshape(n, t, self.n_in)

    def on_pass_samples(self, tp: int) -> "ConvLayer":
        """This layer for the popcount engine at ``T' = tp`` (its ``hwc`` draw order), or, at
        0, for the kept-list engine (``chw``, ``simd`` 1)."""
        if tp:
            return replace(self, pass_samples=tp, draw_order="hwc")
        return replace(self, pass_samples=0, draw_order="chw", simd=1)

    @classmethod
    def record(cls, i: int, m: dict, arrays: dict):
        if m.get("output") is True:
            raise IRError(f"layers[{i}]: a conv2d layer cannot be the output layer")
        return super().record(i, m, arrays)

    def validate(self, where: str) -> None:
        check_fields(self, where, ("c_in", "h_in", "w_in", "c_out", "kernel", "stride",
                                   "padding"))
        if self.h_out < 1 or self.w_out < 1:
            raise IRError(f"{where}: a {self.kernel}x{self.kernel} kernel does not fit the "
                          f"{self.h_in}x{self.w_in} map (padding {self.padding})")
        check_int(f"{where}.n_in", self.n_in, 1, 1 << 20)
        check_int(f"{where}.n_out", self.n_out, 1, 1 << 22)
        check_array(f"{where}.weights", self.weights,
                    (self.c_out, self.c_in, self.kernel, self.kernel))
        check_array(f"{where}.threshold", self.offsets, (self.c_out,))
        check_fields(self, where, ("pe", "weight_store", "lanes", "line_rows", "simd",
                                   "pass_samples", "draw_order"))
        if not self.popcount and self.simd != 1:
            raise IRError(f"{where}.simd {self.simd} needs pass_samples: the kept-list conv "
                          f"engine tests window channels by lanes")
        if self.popcount and self.sampling and self.lanes > self.simd:
            raise IRError(f"{where}.lanes {self.lanes} exceeds simd {self.simd}: the popcount "
                          f"engine's mask drawer fills one word of simd inputs at a time")
        self.check_weighted(where)

    # --- golden model ----------------------------------------------------------------------
    def execute(self, z: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Output spikes ``(N, T, n_out)``: ``acc[o, y, x] >= threshold[o]``.

        ``acc`` is computed in float64 with BLAS: every product and partial sum is an integer
        far below 2**53, so the result is exact; it is cast back to int64."""
        x = np.where(mask, np.where(z, 1, -1), 0)
        n, t = x.shape[:2]
        k, s, pad = self.kernel, self.stride, self.padding
        ho, wo = self.h_out, self.w_out
        xm = x.reshape(n * t, self.c_in, self.h_in, self.w_in).astype(np.float64)
        if pad:
            xm = np.pad(xm, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        w = self.weights.astype(np.float64)
        acc = np.zeros((n * t, self.c_out, ho, wo))
        for i in range(k):
            for j in range(k):
                patch = xm[:, :, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
                acc += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j], optimize=True)
        acc = acc.astype(np.int64).reshape(n, t, self.n_out)
        return acc >= np.repeat(self.offsets, ho * wo)[None, None, :]

    def synaptic_ops(self) -> int:
        return self.n_out * self.c_in * self.kernel * self.kernel

    # --- cycle model -----------------------------------------------------------------------
    def positions(self, engine) -> int:
        """Conv output positions the engine visits per sample: those some pooling window
        covers."""
        P = engine.pool.size if engine.pool else 1
        return (self.h_out // P * P) * (self.w_out // P * P)

    def pre_cycles(self) -> int:
        """``IDLE`` and, for a sampling layer, ``MASK`` + ``MFLUSH``: before the first row."""
        return 1 + (self.n_in + 1 if self.sampling else 0)

    def tail_cycles(self) -> int:
        """``TAIL``: with a line buffer in, the engine waits (one cycle at least) after its
        last row for the producer to end the sample."""
        return 1 if self.line_rows else 0

    def row_cycles(self, engine, kept) -> tuple[int, np.ndarray]:
        """A sample split into rows, for the line-buffer schedule: the cycles before the first
        pooled row (:meth:`pre_cycles`), and per pooled output row ``(..., hp)`` the cycles
        from its first ``BUILD`` to its last ``OUT`` (``ROW`` waits and ``FIN`` not counted).
        ``kept``: the keep bits ``(..., n_in)`` in the IR's channel-major order (bool, or the
        keep probability as a float for the mean)."""
        k, s, pad = self.kernel, self.stride, self.padding
        P = engine.pool.size if engine.pool else 1
        hp, wp = self.h_out // P, self.w_out // P
        kept = np.asarray(kept, dtype=np.float64)
        lead = kept.shape[:-1]
        per_pixel = kept.reshape(-1, self.c_in, self.h_in, self.w_in).sum(axis=1)
        padded = np.pad(per_pixel, ((0, 0), (pad, pad), (pad, pad)))
        rows, cols = hp * P, wp * P
        window = np.zeros((per_pixel.shape[0], rows, cols))
        for i in range(k):
            for j in range(k):
                window += padded[:, i:i + s * (rows - 1) + 1:s, j:j + s * (cols - 1) + 1:s]
        row_kept = window.sum(axis=2).reshape(-1, hp, P).sum(axis=2)
        groups = -(-self.c_out // self.pe)
        chunks = -(-self.c_in // self.lanes)
        out = 1 if engine.consumer == "map" else self.c_out
        fixed = wp * P * P * (k * k * chunks + BUILD_FLUSH + groups * GROUP_OVERHEAD) + wp * out
        return self.pre_cycles(), (fixed + groups * row_kept).reshape(*lead, hp)

    def pool_size(self, engine) -> int:
        return engine.pool.size if engine.pool else 1

    def write_cycles(self, engine) -> int:
        """Popcount engine: cycles a filter group hands a pooled pixel on: into a conv
        engine's store ``next_simd`` filters a cycle (one bank each); into a dense engine's,
        whose inputs are channel-major, one filter a cycle."""
        if engine.consumer == "map":
            return max(1, self.pe // engine.next_simd)
        return self.pe

    def pass_cycles(self, engine) -> int:
        """Popcount engine: cycles of one pass, whatever its sample count and draws: the go
        cycle, then per pooled pixel and filter group the beats of its ``P²`` conv positions
        back to back, the drain and the hand-over."""
        P = self.pool_size(engine)
        pooled = (self.h_out // P) * (self.w_out // P)
        return 1 + pooled * self.groups * (P * P * self.words + engine.pop_drain
                                           + self.write_cycles(engine))

    def pop_acc_bits(self, samples: int) -> int:
        """Popcount engine: accumulator width; it starts at ``-threshold`` (a spike is its sign
        bit)."""
        return max(self.signed_acc_bits(), beat_bits(self.simd, self.weight_bits))

    def cycles(self, engine, mask):
        """Cycles of one sample per sample; the popcount engine spends the same on every
        sample whatever is kept: its image's cycles over ``T``."""
        if self.popcount:
            return np.full(np.shape(mask)[:-1], engine.image_cycles() / engine.samples)
        return self._cycles(engine, mask)

    def _cycles(self, engine, mask):
        """Cycles of one sample per sample (kept-list engine). Positions that no pooling window
        covers are not computed. A gated engine (line buffers) spends one ``ROW`` cycle more
        per pooled row, and one ``TAIL`` cycle with a line buffer in, when it need not wait."""
        pre, rows = self.row_cycles(engine, mask)
        gated = rows.shape[-1] + self.tail_cycles() if engine.gated else 0
        return pre + rows.sum(axis=-1) + 1 + gated

    def dense_walk(self, engine) -> int:
        """Cycles of a walk over every window input with nothing skipped: positions × groups ×
        window inputs."""
        return self.groups * self.positions(engine) * self.c_in * self.kernel ** 2

    def mean_cycles(self, engine, opt: tuple) -> float:
        folded = self.folded(opt)
        if self.popcount:
            return replace(engine, layer=folded).image_cycles()
        return float(folded.cycles(replace(engine, layer=folded), np.full(self.n_in, self.p)))

    # --- folding and resources -------------------------------------------------------------
    def folded(self, opt: tuple) -> "ConvLayer":
        pe, lanes, simd, store = opt
        return replace(self, pe=pe, lanes=lanes, weight_store=store,
                       simd=simd if self.popcount else 1)

    def _pop_simds(self) -> list[int]:
        """Popcount engine: ``simd`` divides ``c_in`` (a beat reads channels of one pixel)."""
        return [s for s in POP_SIMD if s <= self.c_in and self.c_in % s == 0]

    def options(self, target) -> list[tuple]:
        if self.popcount:
            stores = ["rom", "ram"] if target.capacity["spram"] or self.weight_store == "ram" \
                else ["rom"]
            pes = [p for p in sorted({max(1, self.pe >> k) for k in range(self.pe.bit_length())},
                                     reverse=True) if p & (p - 1) == 0 or p == self.pe]
            simds = [s for s in self._pop_simds() if s <= self.simd][::-1]
            return [(p, d, s, st) for p in pes for s in simds
                    for d in ([x for x in LANES if x <= min(s, self.lanes)] or [1])
                    for st in stores]
        pes = sorted({max(1, self.pe >> k) for k in range(self.pe.bit_length())}, reverse=True)
        stores = ["rom", "ram"] if target.capacity["spram"] or self.weight_store == "ram" \
            else ["rom"]
        return [(p, d, 1, st) for p in pes for d in LANES[::-1] if d <= self.lanes
                for st in stores]

    def free_options(self, target, fixed: dict) -> list[tuple]:
        """``pe`` over the filters, ``lanes`` window channels a clock, simd 1; popcount
        engine: ``pe`` a power of two, ``simd`` dividing ``c_in``, up to ``simd`` draws a
        clock."""
        if self.popcount:
            pick = dict(pe=_pop_pe_choices(self.c_out, False), lanes=list(LANES),
                        simd=self._pop_simds(),
                        weight_store=["rom", "ram"] if target.capacity["spram"] else ["rom"])
            return [o for o in _combine(pick, fixed)
                    if (o[1] <= min(o[2], SEARCH_MAX_POP_LANES) if self.sampling
                        else o[1] == 1)]
        return _combine(dict(pe=_pe_choices(self.c_out),
                             lanes=[d for d in LANES if d <= SEARCH_MAX_LANES], simd=[1],
                             weight_store=["rom", "ram"] if target.capacity["spram"]
                             else ["rom"]), fixed)

    def cost(self, target, pe: int, lanes: int, simd: int, store: str) -> dict:
        """What the engine costs at ``pe`` filter lanes, ``lanes`` window channels a clock and
        weight store ``store`` (the parts that change with them; ``simd`` is always 1).
        Popcount engine: :func:`nsm_export.layers.dense.pop_cost` with its position counters
        and pooling registers; the spike store it reads is
        :func:`nsm_export.estimate.read_store_blocks`'s."""
        if self.popcount:
            cost = pop_cost(self, target, pe, lanes, simd, store,
                            beats=self.kernel ** 2 * -(-self.c_in // simd),
                            synapse_scale=_POP_CONV_SYNAPSE_SCALE, engine_luts=_POP_CONV_LUTS)
            cost["ffs"] += _POP_CONV_FFS + pe * self.pass_samples
            return cost
        q = self.c_in * self.kernel ** 2
        width, depth = pe * self.weight_bits, -(-self.c_out // pe) * q
        scale = E.LANE_LUT_SCALE[target.family]
        cost = E.lane_cost(self, target, pe)
        cost["ffs"] += -(-self.c_out // pe) * pe
        cost["luts"] += _CONV_FIXED_LUTS
        cost["ffs"] += _CONV_FIXED_FFS
        E.weight_store_cost(cost, target, width, depth, store)
        qbits = (max(2, q) - 1).bit_length() + 1
        cost["luts"] += scale * _LUTS_PER_GATHER_BIT * lanes * lanes * qbits
        cost["bram"] += lanes * blocks(qbits, -(-q // lanes), target)
        pixels = self.h_in * self.w_in
        # the spike map (a ring of line_rows rows with a line buffer) and the whole-map mask
        spikes = self.line_rows * self.w_in if self.line_rows else pixels
        cost["bram"] += blocks(self.c_in, spikes, target) \
            + (blocks(self.c_in, pixels, target) if self.sampling else 0)
        return cost

    # --- hardware and report ---------------------------------------------------------------
    def map_depth(self, double: bool) -> int:
        """Pixel words (``c_in`` bits each) of the input map memory: one per pixel, or, when
        ``double`` (a conv engine writes the map), two halves selected by the top address bit,
        each as deep as the pixel address reaches (a power of two), or, with a line buffer
        (``line_rows`` R > 0), a ring of R rows (``R * W`` words, whatever ``double``)."""
        n_pix = self.h_in * self.w_in
        if self.line_rows:
            return max(2, self.line_rows * self.w_in)
        return 2 << (max(2, n_pix) - 1).bit_length() if double else max(2, n_pix)

    def memories(self, engine) -> dict:
        """Weights (one ``pe``-lane word per filter group and window input), thresholds (one
        word per group), the input map (double-buffered when a conv engine writes it) and the
        blank-out mask (same shape, sampling layers)."""
        if self.popcount:
            tp = min(self.pass_samples, engine.samples)
            chunks, pixels = self.chunks, self.h_in * self.w_in
            mems = {"weights": memory(self.pe * self.simd * self.weight_bits,
                                      max(2, self.groups * self.words)),
                    "thresholds": memory(self.pe * self.offset_bits, max(2, self.groups))}
            if self.sampling:
                mems["keep bits"] = memory(tp * self.simd, 2 * pixels * chunks)
            mems["spikes in"] = memory(self.c_in, 2 * pixels) if engine.index == 0 else \
                memory(tp * self.simd, 2 * pixels * chunks)
            return mems
        q = self.c_in * self.kernel ** 2
        mems = {"weights": memory(self.pe * self.weight_bits, max(2, self.groups * q)),
                "thresholds": memory(self.pe * self.offset_bits, max(2, self.groups)),
                "map": memory(self.c_in, self.map_depth(engine.fed))}
        if self.sampling:
            mems["mask"] = memory(self.c_in, max(2, self.h_in * self.w_in))
        return mems

    def report_row(self, i: int, engine) -> dict:
        mems = self.memories(engine)
        return {"layer": i, "n_in": self.n_in, "n_out": self.n_out, "kind": "conv2d",
                "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
                "kernel": self.kernel, "stride": self.stride, "padding": self.padding,
                "double_buffered": engine.fed, "draw_lanes": self.lanes if self.popcount
                else 1, "channel_lanes": self.lanes, "simd": self.simd,
                "pass_samples": self.pass_samples, "draw_order": self.draw_order,
                **self.report_common(), "memories": mems,
                "memory_bits": sum(m["bits"] for m in mems.values())}

    def engine(self, engine, ir, rom_name: str | None):
        if self.popcount:
            from hw.pconv import PopcountConvEngine
            return PopcountConvEngine(self, ir, engine, rom_name=rom_name)
        from hw.conv import ConvEngine
        return ConvEngine(self, engine.pool, engine.consumer, double=engine.fed,
                          ring_out=engine.ring_out, rom_name=rom_name)

    def hw_unsupported(self, i: int, ir) -> str | None:
        prev = ir.layers[i - 1].kind if i else None
        if prev not in (None, "conv2d", "pool"):
            return f"layers[{i}] (conv2d) follows a dense layer; the hardware cannot"
        if self.draw_order != "chw":
            return (f"layers[{i}].draw_order {self.draw_order}: the kept-list conv engine "
                    f"draws channel-major (chw); the popcount engine draws hwc")
        return None
