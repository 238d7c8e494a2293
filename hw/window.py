"""The window streamer of the popcount conv engine (:mod:`hw.pconv`): which weight word, which
spike-store word and which window pixel each beat of a pass reads.

Order of a pass (:func:`walk_model`): for each pooled pixel ``(py, px)`` (row-major), for each
filter group ``g``, for each conv position ``(a, b)`` of its ``P x P`` pooling window
(row-major), for each window pixel ``(i, j)`` (row-major) and each chunk ``ch`` of ``simd``
channels, one beat:

* ``word = (y*W + x) * chunks + ch``, the pixel-chunk word of input pixel ``(y, x) =
  ((py*P + a)*s - pad + i, (px*P + b)*s - pad + j)`` (a word of the zero padding where that
  pixel lies outside the map: ``inside`` is 0 and the engine gates it);
* ``waddr = g * B + (i*k + j) * chunks + ch``, the weight word (``B = k² · chunks``);
* flags: ``first`` (the position's first beat), ``last`` (its last), ``pool_first`` (the
  position is ``(0, 0)``), ``group_last`` (the group's last beat) and ``pass_last`` (the
  pass's).

The hardware (:class:`WindowWalk`) forms ``word`` as a running sum with no multiplier: ``+1`` a
beat, ``+(W - k)·chunks`` more at the end of a window row, and at a position's end the next
position's first word from a base kept per pooled pixel and a table of the ``P x P`` offsets.
The model computes each value from its formula, so the test of one against the other checks
the running sums.
"""

from __future__ import annotations

from amaranth.hdl import Array, Const, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["WindowWalk", "walk_model"]

FLAGS = ("first", "last", "pool_first", "group_last", "pass_last")


def walk_model(layer, pool: int) -> list[dict]:
    """Every beat of one pass of conv ``layer`` (pooling ``pool``), in order, as a dict of
    ``word``, ``waddr``, ``inside`` and the :data:`FLAGS` (module docstring)."""
    k, s, pad, P = layer.kernel, layer.stride, layer.padding, pool
    H, W, chunks, G = layer.h_in, layer.w_in, layer.chunks, layer.groups
    hp, wp = layer.h_out // P, layer.w_out // P
    B = k * k * chunks
    beats = []
    for py in range(hp):
        for px in range(wp):
            for g in range(G):
                for a in range(P):
                    for b in range(P):
                        for i in range(k):
                            for j in range(k):
                                for ch in range(chunks):
                                    y = (py * P + a) * s - pad + i
                                    x = (px * P + b) * s - pad + j
                                    q = (i * k + j) * chunks + ch
                                    beats.append({
                                        "word": (y * W + x) * chunks + ch,
                                        "waddr": g * B + q,
                                        "inside": int(0 <= y < H and 0 <= x < W),
                                        "first": int(q == 0), "last": int(q == B - 1),
                                        "pool_first": int(a == 0 and b == 0),
                                        "group_last": int(q == B - 1 and a == P - 1
                                                          and b == P - 1),
                                        "pass_last": 0})
    beats[-1]["pass_last"] = 1
    return beats


class WindowWalk(wiring.Component):
    """The beats of a pass (module docstring), one a cycle while ``en`` is high.

    Members
    -------
    start : In(1)
        Go back to the pass's first beat (taken in any cycle; ``en`` is ignored in it).
    en : In(1)
        The current beat is issued: step to the next (after the pass's last, to the first).
    word : Out(signed)
        The current beat's spike-store word (its low bits address the store; meaningless
        where ``inside`` is 0).
    waddr : Out
        Its weight word.
    inside : Out(1), first, last, pool_first, group_last, pass_last : Out(1)
        As in :func:`walk_model`, for the current beat (combinational from the counters).
    """

    def __init__(self, layer, pool: int):
        self._layer, self._pool = layer, int(pool)
        k, pad = layer.kernel, layer.padding
        span = (layer.h_in + 2 * pad + k) * layer.w_in * layer.chunks + layer.chunks
        self._abits = span.bit_length() + 1
        super().__init__({"start": In(1), "en": In(1), "word": Out(signed(self._abits)),
                          "waddr": Out(range(max(2, layer.groups * layer.words))),
                          "inside": Out(1), **{f: Out(1) for f in FLAGS}})

    def elaborate(self, platform):
        m = Module()
        layer, P = self._layer, self._pool
        k, s, pad = layer.kernel, layer.stride, layer.padding
        H, W, chunks, G, B = layer.h_in, layer.w_in, layer.chunks, layer.groups, layer.words
        hp, wp = layer.h_out // P, layer.w_out // P
        Wc = W * chunks                       # words a map row
        ab = self._abits

        ch = Signal(range(max(2, chunks)))
        j = Signal(range(max(2, k)))
        i = Signal(range(max(2, k)))
        b = Signal(range(max(2, P)))
        a = Signal(range(max(2, P)))
        g = Signal(range(max(2, G)))
        px = Signal(range(max(2, wp)))
        py = Signal(range(max(2, hp)))
        addr = Signal(signed(ab))             # the beat's word
        pbase = Signal(signed(ab))            # position (py*P, px*P)'s first word
        rowbase = Signal(signed(ab))          # position (py*P, 0)'s first word
        waddr = Signal(range(max(2, G * B)))
        start0 = -pad * Wc - pad * chunks
        offs = Array([Array([Const(aa * s * Wc + bb * s * chunks, signed(ab))
                             for bb in range(P)]) for aa in range(P)])

        last_ch = ch == chunks - 1
        last_j = last_ch & (j == k - 1)
        last_i = last_j & (i == k - 1)
        last_b = last_i & (b == P - 1)
        last_pos = last_b & (a == P - 1)
        last_g = last_pos & (g == G - 1)
        last_px = last_g & (px == wp - 1)
        m.d.comb += [self.word.eq(addr), self.waddr.eq(waddr),
                     self.first.eq((ch == 0) & (j == 0) & (i == 0)), self.last.eq(last_i),
                     self.pool_first.eq((a == 0) & (b == 0)), self.group_last.eq(last_pos),
                     self.pass_last.eq(last_px & (py == hp - 1))]
        if pad:
            yb = Signal(signed(16))           # py*P*s - pad
            xb = Signal(signed(16))
            ys = Array([Const(aa * s, 8) for aa in range(P)])
            y, x = Signal(signed(17)), Signal(signed(17))
            m.d.comb += [y.eq(yb + ys[a] + i), x.eq(xb + ys[b] + j),
                         self.inside.eq((y >= 0) & (y < H) & (x >= 0) & (x < W))]
        else:
            m.d.comb += self.inside.eq(1)

        with m.If(self.start):
            m.d.sync += [ch.eq(0), j.eq(0), i.eq(0), a.eq(0), b.eq(0), g.eq(0), px.eq(0),
                         py.eq(0), waddr.eq(0), addr.eq(start0), pbase.eq(start0),
                         rowbase.eq(start0)]
            if pad:
                m.d.sync += [yb.eq(-pad), xb.eq(-pad)]
        with m.Elif(self.en):
            m.d.sync += [ch.eq(ch + 1), waddr.eq(waddr + 1), addr.eq(addr + 1)]
            with m.If(last_ch):
                m.d.sync += [ch.eq(0), j.eq(j + 1)]
            with m.If(last_j):
                m.d.sync += [j.eq(0), i.eq(i + 1), addr.eq(addr + 1 + Wc - k * chunks)]
            with m.If(last_i):                # the next position of the pooling window
                nb = Mux(last_b, 0, b + 1)
                na = Mux(last_b, Mux(a == P - 1, 0, a + 1), a)
                m.d.sync += [i.eq(0), b.eq(nb), a.eq(na),
                             addr.eq(pbase + offs[na][nb] if P > 1 else pbase)]
                with m.If(~last_pos):
                    m.d.sync += waddr.eq(waddr - (B - 1))   # the group's words again
            with m.If(last_pos):
                m.d.sync += g.eq(g + 1)
            with m.If(last_g):                # the next pooled pixel
                m.d.sync += [g.eq(0), waddr.eq(0)]
                with m.If(px == wp - 1):
                    down = rowbase + P * s * Wc
                    m.d.sync += [px.eq(0), py.eq(Mux(py == hp - 1, 0, py + 1)),
                                 pbase.eq(down), rowbase.eq(down), addr.eq(down)]
                    if pad:
                        m.d.sync += [xb.eq(-pad), yb.eq(yb + P * s)]
                    with m.If(py == hp - 1):  # after the pass's last beat: its first again
                        m.d.sync += [py.eq(0), pbase.eq(start0), rowbase.eq(start0),
                                     addr.eq(start0)]
                        if pad:
                            m.d.sync += yb.eq(-pad)
                with m.Else():
                    right = pbase + P * s * chunks
                    m.d.sync += [px.eq(px + 1), pbase.eq(right), addr.eq(right)]
                    if pad:
                        m.d.sync += xb.eq(xb + P * s)
        return m
