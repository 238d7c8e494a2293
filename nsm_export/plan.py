"""The hardware plan: from an IR, the engines the core is built from and how they are linked.

:func:`plan` is pure Python: which IR layers get an engine (a pooling layer is computed by the
conv engine before it), how each engine hands its output on (into the next engine's memory, or
a register the next one latches), which memories are double-buffered or line-buffer rings, the
memory shapes, and the pipeline depths. :class:`hw.top.NsmCore` builds exactly this plan; the
cycle model (:mod:`nsm_export.schedule`), the resource estimate (:mod:`nsm_export.estimate`)
and the report (:mod:`nsm.report`) read it.

The pipeline depths below are the one definition of the engines' fixed stages: the Amaranth
engines build that many states, and the cycle model counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Engine", "Plan", "plan", "unsupported", "MASK_FLUSH", "DRAIN", "TREE_STAGE", "WRITE",
           "GROUP_OVERHEAD", "BUILD_FLUSH", "ENCODE_FLUSH", "SPIKE_WORD", "MEMORY_LINK_PE",
           "group_overhead", "POP_DRAIN", "pop_unsupported", "images_in_flight",
           "store_wbits", "decide_cycles"]

#: A sampling dense layer's draw-lookup-write pipeline empties (``FLUSH1..3``).
MASK_FLUSH = 3
#: A neuron group's accumulate pipeline empties (``DRAIN1..3``), dense and conv engines.
DRAIN = 3
#: ``simd > 1``: the registered adder tree adds one drain cycle (``DRAIN4``).
TREE_STAGE = 1
#: A neuron group's compare-and-write cycle (``WRITE``).
WRITE = 1
GROUP_OVERHEAD = DRAIN + WRITE
#: A conv position's address-read-select-write pipeline empties (``BFLUSH1..4``).
BUILD_FLUSH = 4
#: The stochastic encoder's three-stage pipeline (pixel address, probability address, draw).
ENCODE_FLUSH = 3
#: Popcount engine: a neuron group's last beat reaches the accumulators (memory read, input
#: register, popcount stage) while nothing is issued (``DRAIN1..3``); its hand-over follows.
POP_DRAIN = 3
#: Spikes per word of a dense engine's spike memory.
SPIKE_WORD = 16
#: Neuron lanes for which a hidden dense layer writes its spikes straight into the next
#: engine's spike memory (each group's spikes fall inside one spike word).
MEMORY_LINK_PE = (1, 2, 4, 8, 16)


def images_in_flight(engines: int) -> int:
    """A bound on the images a popcount core of ``engines`` engines holds at once (two in the
    input store, at most two per engine's passes in flight, with room to spare): the width of
    its image counters (the top's results owed, each mask drawer's first batches owed)."""
    return 2 * engines + 8


def store_wbits(words: int) -> int:
    """Address bits of one half of a popcount engine's spike store of ``words`` words (the half
    is the bit above them): the store is ``(1 << store_wbits(words)) + words`` deep
    (``hw.pdense.spike_store``; the estimate's :func:`nsm_export.estimate.read_store_blocks`)."""
    return max(1, (words - 1).bit_length())


def group_overhead(simd: int) -> int:
    """Drain and write cycles per neuron group."""
    return GROUP_OVERHEAD + (TREE_STAGE if simd > 1 else 0)


@dataclass(frozen=True)
class Engine:
    """One hardware engine of the plan.

    ``index``: its IR layer (dense or conv); ``pool``: the OR pooling layer after a conv layer,
    computed by the same engine; ``consumer``: how a conv engine hands its output on (``map``:
    pixel words to the next conv engine; ``bits``: one spike a cycle into the next dense
    engine's spike memory); ``ring_out``: the rows of the next conv engine's line buffer that
    this engine writes (0: none); ``linked``: the engine writes its output into the next
    engine's memory (else the next one latches a register); ``fed``: the engine reads a
    memory that the engine before it writes (double-buffered, or a ring of rows)."""
    index: int
    layer: object
    pool: object = None
    consumer: str | None = None
    ring_out: int = 0
    linked: bool = False
    fed: bool = False
    next_simd: int = 1
    samples: int = 1
    input_stage: bool = False

    @property
    def pop_drain(self) -> int:
        """Popcount engine: drain cycles per neuron group, :data:`POP_DRAIN`, one more where
        the accumulator registers its inputs (the IR's ``input_stage``)."""
        return POP_DRAIN + self.input_stage

    @property
    def popcount(self) -> bool:
        """Built by the sample-parallel popcount engine (``hw.pdense``)."""
        return bool(getattr(self.layer, "pass_samples", 0))

    def pass_cycles(self) -> int:
        """Popcount engine: cycles of one pass (the same for every pass and draw)."""
        return self.layer.pass_cycles(self)

    def image_cycles(self) -> int:
        """Popcount engine: cycles it is busy per image, back to back: each pass, or its mask
        drawer's batch where that takes longer (a pass waits for its keep bits)."""
        layer = self.layer
        total = 0
        for count in layer.pass_counts(self.samples):
            d = self.pass_cycles()
            if layer.sampling:
                d = max(d, 3 + count * -(-layer.n_in // layer.lanes))
            total += d
        return total

    @property
    def gated(self) -> bool:
        """A conv engine that hands rows over through a line buffer (in or out): it waits in
        ``ROW`` (one cycle at least) before every pooled output row."""
        return self.layer.kind == "conv2d" and bool(self.layer.line_rows or self.ring_out)

    @property
    def streams(self) -> bool:
        """The next engine reads this one's rows from a line buffer, on the same sample."""
        return bool(self.ring_out)

    @property
    def spike_memory(self) -> bool:
        """A dense engine reads its input from a spike memory (the first engine, or one fed by
        a linked engine), not from a latched register."""
        return self.index == 0 or self.fed

    @property
    def double(self) -> bool:
        """The input memory has two halves: the engine before writes one while this one reads
        the other (a line buffer replaces them)."""
        return self.fed and not getattr(self.layer, "line_rows", 0)

    @property
    def out_memory(self) -> bool:
        """A hidden dense engine writes its spikes into the next engine's spike memory."""
        return self.linked and not self.layer.output

    def memories(self) -> dict:
        """The memories of this engine that grow with the network (:meth:`memories` of its
        layer kind), as ``{name: {"width", "depth", "copies", "bits"}}``."""
        return self.layer.memories(self)

    def cycles(self, mask):
        """Cycles of one sample per sample for the layer's keep bits ``mask`` (``(..., n_in)``)."""
        return self.layer.cycles(self, mask)


@dataclass(frozen=True)
class Plan:
    """The engines in pipeline order and whether the input code is drawn anew per sample."""
    engines: tuple
    stochastic: bool

    @property
    def popcount(self) -> bool:
        """The core is the pass pipeline of popcount engines (``hw.ptop``)."""
        return bool(self.engines) and self.engines[0].popcount

    def __iter__(self):
        return iter(self.engines)

    def __len__(self):
        return len(self.engines)

    def __getitem__(self, k):
        return self.engines[k]

    @property
    def gated(self) -> bool:
        return any(e.gated for e in self.engines)


def plan(ir, debug: bool = False) -> Plan:
    """The engines :class:`hw.top.NsmCore` builds for ``ir`` (``debug``: with the ports that
    expose every hidden spike vector, where no dense engine writes into the next one's
    memory)."""
    layers = ir.layers
    engines = []
    for i, layer in enumerate(layers):
        if layer.kind == "pool":
            continue
        pool = consumer = None
        ring = 0
        if layer.kind == "conv2d":
            nxt = i + 1
            if layers[nxt].kind == "pool":
                pool = layers[nxt]
                nxt += 1
            consumer = "map" if layers[nxt].kind == "conv2d" else "bits"
            ring = layers[nxt].line_rows if consumer == "map" else 0
        linked = layer.kind == "conv2d" or (
            not debug and not layer.output and layer.pe in MEMORY_LINK_PE)
        fed = bool(engines) and engines[-1].linked
        nxt = [la for la in layers[i + 1:] if la.kind != "pool"][:1]
        engines.append(Engine(i, layer, pool, consumer, ring, linked, fed,
                              getattr(nxt[0], "simd", 1) if nxt else 1, ir.samples,
                              ir.input_stage))
    return Plan(tuple(engines), ir.input.encoding == "bernoulli")


def unsupported(ir) -> str | None:
    """Why no engine of this plan builds ``ir`` (one line naming the first such part), or None:
    the input code (:meth:`InputSpec.hw_unsupported`), then each layer's
    (``hw_unsupported`` of its kind)."""
    if any(getattr(layer, "pass_samples", 0) for layer in ir.layers):
        return pop_unsupported(ir)
    if ir.early_exit.active:
        return (f"early_exit {ir.early_exit.rule}: only the popcount core stops early "
                f"(compile with --pass-samples)")
    why = ir.input.hw_unsupported(ir)
    for i, layer in enumerate(ir.layers):
        why = why or layer.hw_unsupported(i, ir)
    return why


def pop_unsupported(ir, folding: bool = True) -> str | None:
    """Why the popcount core (``hw.ptop``) cannot build ``ir``, or None. It builds dense
    networks, and conv networks (conv layers, each with an OR pooling or none, then dense
    layers) with a threshold or thermometer input code. At their folding (``folding=False``
    leaves it out: what the folding search may still choose) every weighted layer has the
    same ``pass_samples`` (T'); a conv layer draws in ``hwc`` order, its ``simd`` divides its
    channels and it has no line buffer; the code's levels divide a dense first layer's
    ``simd``; and each hidden layer's ``pe`` and the next one's ``simd`` divide one another
    (a group's spikes go into the next spike store's banks without a rotation; a conv layer
    before a dense one writes a filter a cycle, any ``pe``)."""
    layers = ir.layers
    weighted = [i for i, la in enumerate(layers) if la.kind != "pool"]
    for i, layer in enumerate(layers):
        where = f"layers[{i}]"
        if layer.kind == "pool":
            if i == 0 or layers[i - 1].kind != "conv2d":
                return f"{where}: the popcount core pools only right after a conv2d layer"
            if layer.mode != "or":
                return (f"{where} ({layer.mode} pooling): the popcount conv engine computes "
                        f"OR pooling only")
            continue
        if layer.kind not in ("dense", "conv2d"):
            return f"{where}: the popcount core has no engine for a {layer.kind} layer"
        if layer.kind == "conv2d" and i and layers[i - 1].kind == "dense":
            return f"{where} (conv2d) follows a dense layer; the hardware cannot"
        if not folding:
            continue
        first = layers[weighted[0]]
        if layer.pass_samples != first.pass_samples:
            return (f"{where}.pass_samples {layer.pass_samples} differs from layers[0]'s "
                    f"{first.pass_samples}: the popcount core runs one T' in every layer")
        if layer.kind == "conv2d":
            if layer.draw_order != "hwc":
                return (f"{where}.draw_order {layer.draw_order}: the popcount conv engine "
                        f"draws a pixel's channels in a row (hwc)")
            if layer.c_in % layer.simd:
                return (f"{where}.simd {layer.simd} must divide its {layer.c_in} channels "
                        f"(a beat reads channels of one pixel)")
            if layer.line_rows:
                return (f"{where}.line_rows {layer.line_rows}: the popcount core double-"
                        f"buffers whole maps")
        nxt = [j for j in weighted if j > i][:1]
        if nxt and not (layer.kind == "conv2d" and layers[nxt[0]].kind == "dense"):
            sn, pe = layers[nxt[0]].simd, layer.pe
            if pe % sn and sn % pe:
                return (f"{where}.pe {pe} and layers[{nxt[0]}].simd {sn} must divide one "
                        f"another (the spike store's banks)")
    spec = ir.input
    if spec.encoding == "bernoulli":
        return "input.encoding bernoulli: the popcount core encodes pixels once per image"
    first = layers[0]
    if first.kind == "conv2d":
        if spec.encoding == "thermometer" and spec.levels > 1 and spec.layout != "level-major":
            return "input: a conv net's thermometer levels must be its channels (level-major)"
        if first.c_in != spec.levels:
            return (f"input: {first.c_in // spec.levels} image channels; the popcount core's "
                    f"conv input takes one (its channels are the {spec.levels} levels)")
        if folding and first.simd != first.c_in:
            return (f"layers[0].simd {first.simd} must be its {first.c_in} channels (the "
                    f"first conv layer reads a whole pixel a beat)")
    elif folding and first.simd % spec.levels:
        return (f"input: {spec.levels} thermometer levels must divide layers[0].simd "
                f"{first.simd} (a pixel's spikes go into one input word)")
    return None


def decide_cycles(n_classes: int) -> int:
    """Early exit (:class:`hw.exitrule.ExitRule`): from the output engine's last cycle of a
    pass to the verdict's cycle: the scan (``C + 1``), the leader's score (1), the checks
    (``C``), two to flush them, one to start."""
    return 2 * n_classes + 5
