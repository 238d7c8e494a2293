"""Hardware benchmark: NSM cores and int8 multiply-accumulate cores of the same MLPs, on iCE40 UP5K
and ECP5, synthesized, placed and routed with YoWASP (``nsm synth``'s flow, ``hw.synth``).

One record per (network, target, design) in ``benchmarks/results/hardware.json``:

* ``design: nsm``: the NSM core (``hw.top``) at the folding below; ``cycles_per_inference`` is
  the cycle model's mean over the blank-out draws (``schedule.expected_cycles_per_inference``,
  which tests check against simulation image by image); ``adder_bound_ratio`` and
  ``weight_bound_ratio`` are that over the folding's adder and weight-bandwidth bounds
  (``schedule.bounds``: the slowest engine's additions over its adds a clock, and its weight
  words read over one a clock).
* ``design: nsm-simd``: the same NSM core with parallel inputs (``simd``) at the folding in
  ``NETWORKS[...]["nsm-simd"]``: as many adds per clock as ``nsm`` with fewer neuron lanes
  (iCE40, where the SPRAM's width caps ``pe x simd``), or twice as many (ECP5).
* ``design: nsm-popcount`` (MLPs): the popcount core (``hw.ptop``, ``--pass-samples``) at the
  folding in ``NETWORKS[...]["nsm-popcount"]``: each weight read serves ``T'`` samples, images
  overlap; its cycles do not depend on the draws (the steady state of ``schedule.pop_events``).
* ``design: nsm-linebuf`` (conv nets): the ``nsm`` core with a line buffer of the fewest rows
  (``nsm compile --line-buffer``, ``ir.use_line_buffers``) between the two conv engines: a ring of
  ``line_rows`` rows replaces the second engine's double-buffered input map, at the cost of
  less overlap between samples (``cycles_per_inference`` is still the exact model's mean).
* ``design: mac``: the int8 MAC reference (``hw.baseline_mac``): same layer sizes, int8 weights,
  8-bit pixels and 8-bit ReLU activations, one deterministic pass (``samples: 1``), ``pe``
  multipliers shared by the layers; ``cycles_per_inference`` is exact
  (``mac_cycles_per_inference``) and ``dense_bound_ratio`` is it over ``multiplies / pe``.

``luts``, ``ffs``, ``dsps``, ``ebr``, ``spram`` are yosys's mapped counts, ``fmax_mhz`` nextpnr's
post-route estimate, ``inferences_per_s`` = Fmax / cycles. Weights are random: resources and
cycle counts depend on widths and folding only. A design that does not fit gets ``fits: false``
and the fit check's one-line ``error``. The conv nets (``CONV_SPEC``) run on the conv engine
(``hw.conv``); their MAC versions are the same conv nets on 8-bit pixels (one channel), with
8-bit ReLU activations and 2x2 max pooling, on the MAC core's conv layers.

    python benchmarks/hardware.py                     # everything (about 15 min on 2 cores)
    python benchmarks/hardware.py --network fmnist-mlp-784-128-10-binary --target ice40-up5k
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._common import provenance, write_results   # noqa: E402
from hw import baseline_mac as mac                         # noqa: E402
from hw import synth                                       # noqa: E402
from nsm_export.folding import choose_folding              # noqa: E402
from hw.top import generate_verilog                        # noqa: E402
from nsm_export import schedule                            # noqa: E402
from nsm_export.build import IntLayer, build_ir            # noqa: E402
from nsm_export.ir import use_line_buffers                 # noqa: E402

TARGETS = ["ice40-up5k", "ecp5-25k"]

# NSM: sizes, weight bits, keep p, pe, lanes (draws per clock), weight store, per layer.
# MAC: per target, pe (multipliers; iCE40 UP5K has 8 SB_MAC16) and the weight store per layer.
# The MAC's layer-0 int8 weights (131 kbit digits, 784 kbit Fashion-MNIST) exceed the UP5K's
# 120 kbit of EBR, so they go to SPRAM, loaded on w_axis like the NSM core's; on the ECP5-25F
# the 784 kbit need 50 of its 56 EBR at pe 8 (64-bit words), which is why pe stays 8 there.
NETWORKS = {
    "digits-mlp-64-256-10": {
        "sizes": [64, 256, 10], "weight_bits": 4, "p": [0.75, 0.75], "pe": [16, 10],
        "lanes": [4, 4], "weight_store": {"ice40-up5k": ["rom", "rom"], "ecp5-25k": ["rom", "rom"]},
        "mac": {"ice40-up5k": (8, ["ram", "rom"]), "ecp5-25k": (16, ["rom", "rom"])},
        "nsm-popcount": {
            "ice40-up5k": {"pe": [8, 2], "simd": [4, 4], "lanes": [4, 4], "pass_samples": 4,
                           "weight_store": ["rom", "rom"]},
            "ecp5-25k": {"pe": [16, 2], "simd": [8, 8], "lanes": [8, 8], "pass_samples": 8,
                         "weight_store": ["rom", "rom"]}},
    },
    "fmnist-mlp-784-128-10-binary": {
        "sizes": [784, 128, 10], "weight_bits": 1, "p": [0.75, 0.75], "pe": [64, 10],
        "lanes": [4, 4], "weight_store": {"ice40-up5k": ["ram", "rom"], "ecp5-25k": ["ram", "rom"]},
        "mac": {"ice40-up5k": (8, ["ram", "rom"]), "ecp5-25k": (8, ["rom", "rom"])},
        # Layer 0's weights take all 4 SPRAM at pe 64 (64-bit words): simd 2 halves pe there.
        "nsm-simd": {"ice40-up5k": {"pe": [32, 10], "simd": [2, 1]},
                     "ecp5-25k": {"pe": [64, 10], "simd": [2, 1]}},
        # The popcount engine: layer 0's 8 x 8 weights (64-bit words, the 4 SPRAMs' width) for
        # 8 samples at once on the UP5K; 16 x 8 for all 16 on the ECP5-25F.
        "nsm-popcount": {
            "ice40-up5k": {"pe": [8, 1], "simd": [8, 2], "lanes": [4, 2], "pass_samples": 8,
                           "weight_store": ["ram", "rom"]},
            "ecp5-25k": {"pe": [16, 2], "simd": [8, 4], "lanes": [8, 4], "pass_samples": 16,
                         "weight_store": ["rom", "rom"]}},
    },
}
# The conv nets: a 4-level thermometer input (the levels are the 4 input channels, as training
# makes it), binary weights (2-bit ones would need 1 Mbit for the 1024 x 512 layer alone: more
# than the UP5K's four SPRAMs or the ECP5-25F's 56 EBR hold), keep p = 0.75 everywhere.
# Per layer (conv, pool, conv, pool, dense, dense): pe, lanes (conv: window channels tested a
# clock), weight store. On the UP5K every kept-input list bank costs an EBR, so lanes stay low,
# and the second conv layer's 51 kbit of filters and the dense layer's 512 kbit go to SPRAM.
# Its 512 kbit dense layer and the rest need 63 of the ECP5-25F's 56 EBR, so it is also built
# for the ECP5-85F. The smaller net is folded by `choose_folding` (what `nsm compile --target`
# does): the fastest design its estimate fits.
CONV_SPEC = {"levels": [48, 96, 144, 192], "p": 0.75, "weight_bits": 1}
CONVS = {
    "fmnist-conv-32c5-p2-64c5-p2-512-10": {
        "channels": (32, 64), "hidden": 512,
        "fold": {"ice40-up5k": dict(pe=[16, 1, 16, 1, 8, 10], lanes=[2, 1, 2, 1, 1, 1],
                                    weight_store=["rom", "rom", "ram", "rom", "ram", "rom"]),
                 "ecp5-25k": dict(pe=[32, 1, 64, 1, 32, 10], lanes=[4, 1, 8, 1, 4, 4],
                                  weight_store=["rom"] * 6),
                 "ecp5-85k": dict(pe=[32, 1, 64, 1, 32, 10], lanes=[4, 1, 8, 1, 4, 4],
                                  weight_store=["rom"] * 6)}},
    "fmnist-conv-16c5-p2-32c5-p2-128-10": {
        "channels": (16, 32), "hidden": 128,
        "fold": {"ice40-up5k": "auto", "ecp5-25k": "auto"}},
}
# The MAC versions: per target, pe and the weight store of (conv, conv, dense, dense). On the
# UP5K each ram layer's pe x 8-bit words take pe / 2 of the 4 SPRAMs, so pe 4 puts the second
# conv layer and the first dense layer there (the rest and the activations in EBR). The big
# net's int8 weights (4.2 Mbit in its 1024 x 512 layer) exceed every part's block RAM: those
# records say by how much.
# The popcount core (``design: nsm-popcount``): per target, per layer (conv, pool, conv, pool,
# dense, dense) pe, simd (conv: channels a beat), lanes (draws a clock), weight store, and T'.
# On the UP5K block RAM sets T' (the keep-bit and spike stores grow with it) and the logic sets
# pe x simd; the ECP5s take T' 16 (25F) and 8 (85F, the larger net).
CONVS["fmnist-conv-16c5-p2-32c5-p2-128-10"]["popcount"] = {
    "ice40-up5k": dict(pe=[16, 1, 8, 1, 1, 1], simd=[4, 1, 8, 1, 8, 1], lanes=[2, 1, 4, 1, 1, 1],
                       weight_store=["rom", "rom", "rom", "rom", "ram", "rom"], pass_samples=2),
    "ecp5-25k": dict(pe=[16, 1, 4, 1, 1, 1], simd=[4, 1, 16, 1, 8, 1], lanes=[4, 1, 4, 1, 1, 1],
                     weight_store=["rom"] * 6, pass_samples=16)}
CONVS["fmnist-conv-32c5-p2-64c5-p2-512-10"]["popcount"] = {
    "ecp5-85k": dict(pe=[32, 1, 8, 1, 4, 1], simd=[4, 1, 32, 1, 16, 1], lanes=[4, 1, 8, 1, 2, 1],
                     weight_store=["rom"] * 6, pass_samples=8)}
for _name, _mac in (("fmnist-conv-32c5-p2-64c5-p2-512-10",
                     {"ice40-up5k": (4, ["rom", "ram", "ram", "rom"]),
                      "ecp5-25k": (8, ["rom"] * 4), "ecp5-85k": (8, ["rom"] * 4)}),
                    ("fmnist-conv-16c5-p2-32c5-p2-128-10",
                     {"ice40-up5k": (4, ["rom", "ram", "ram", "rom"]),
                      "ecp5-25k": (8, ["rom"] * 4)})):
    CONVS[_name]["mac"] = _mac


def mac_conv_net(name: str, target: str, seed: int = 0) -> mac.MacNet:
    """The MAC version of conv net ``name`` for ``target``: random int8 weights."""
    c1, c2 = CONVS[name]["channels"]
    pe, stores = CONVS[name]["mac"][target]
    return mac.random_mac_conv_net(np.random.default_rng(seed), (1, 28, 28),
                                   [(c1, 5, 1, 0, 2), (c2, 5, 1, 0, 2)],
                                   [CONVS[name]["hidden"], 10], pe, weight_bits=8,
                                   weight_store=stores)


def nsm_ir(spec: dict, target: str, T: int, seed: int = 0, variant: str = "nsm"):
    rng = np.random.default_rng(seed)
    sizes, wb = spec["sizes"], spec["weight_bits"]
    layers = []
    for n_in, n_out, p in zip(sizes, sizes[1:], spec["p"]):
        q = 1 if wb == 1 else (1 << (wb - 1)) - 1
        w = (rng.choice([-1, 1], (n_out, n_in)) if wb == 1
             else rng.integers(-q, q + 1, (n_out, n_in)))
        layers.append(IntLayer(w, rng.integers(-8, 9, n_out), p, wb))
    fold = spec[variant][target] if variant != "nsm" else {}
    return build_ir(layers, input_size=sizes[0], input_threshold=128, samples=T,
                    pe=fold.get("pe", spec["pe"]), lanes=fold.get("lanes", spec["lanes"]),
                    simd=fold.get("simd", 1),
                    weight_store=fold.get("weight_store", spec["weight_store"][target]),
                    pass_samples=fold.get("pass_samples", 0))


def conv_ir(name: str, target: str, T: int, seed: int = 0, variant: str = "nsm"):
    """A Fashion-MNIST conv net of ``CONVS`` with random binary weights, folded for ``target``
    (by :func:`nsm_export.folding.choose_folding` among the kept-list engines where the table
    says ``auto``); ``variant`` ``nsm-popcount``: on the popcount core, folded as the
    ``popcount`` table says."""
    from nsm_export.build import IntConv, IntPool
    rng = np.random.default_rng(seed)
    net, levels, p = CONVS[name], len(CONV_SPEC["levels"]), CONV_SPEC["p"]
    c1, c2 = net["channels"]
    hidden = net["hidden"]

    def sign(*shape):
        return rng.choice([-1, 1], shape)

    layers = [IntConv(sign(c1, levels, 5, 5), rng.integers(-6, 7, c1), p, 1, h_in=28, w_in=28,
                      stride=1, padding=0),
              IntPool(c1, 24, 24, 2, "or"),
              IntConv(sign(c2, c1, 5, 5), rng.integers(-20, 21, c2), p, 1, h_in=12, w_in=12,
                      stride=1, padding=0),
              IntPool(c2, 8, 8, 2, "or"),
              IntLayer(sign(hidden, c2 * 16), rng.integers(-20, 21, hidden), p, 1),
              IntLayer(sign(10, hidden), rng.integers(-8, 9, 10), p, 1)]
    fold = net["popcount"][target] if variant == "nsm-popcount" else net["fold"][target]
    ir = build_ir(layers, input_size=28 * 28, input_threshold=0, samples=T,
                  thresholds=CONV_SPEC["levels"], layout="level-major",
                  **({} if fold == "auto" else fold))
    if fold == "auto":
        chosen = choose_folding(ir, target, pass_samples=0).layers
        ir.layers = [layer.folded(choice) for layer, choice in zip(ir.layers, chosen)]
        ir.validate()
    return ir


def _map_bits(ir) -> int:
    """Bits of the conv engines' spike maps (input maps, rings or double buffers; the blank-out
    masks not counted), as ``ConvLayer.map_depth`` sizes them. Conv layers come before
    every dense layer, so each conv layer but the first is written by a conv engine (double
    buffered, or a ring)."""
    convs = [layer for layer in ir.layers if layer.kind == "conv2d"]
    return sum(layer.c_in * layer.map_depth(double=i > 0)
               for i, layer in enumerate(convs))


def _rom_exceeds_ebr(net: mac.MacNet, target: str) -> str | None:
    """One line when the ROM weights alone exceed the device's EBR bits (checked before
    synthesis: yosys spends the better part of an hour on a ROM of 65,536 init words only to
    report that it does not fit), else None."""
    tg = synth.TARGETS[target]
    rom = sum(np.asarray(lay.weights).size * 8 for lay in net.layers if lay.weight_store == "rom")
    ebr = tg.capacity["bram"] * max(w * d for w, d in tg.bram_shapes)
    if rom <= ebr:
        return None
    return (f"{target}: does not fit: the int8 ROM weights alone are {rom / 1024:,.0f} kbit, the "
            f"device's {tg.capacity['bram']} EBR hold {ebr / 1024:,.0f} kbit (checked before "
            f"synthesis)")


def _mac_record(rec: dict, net: mac.MacNet, folding: tuple, target: str, work: Path,
                **fields) -> None:
    """Write the MAC core ``net`` (``folding`` = (pe, weight stores)) to ``work``, fill ``rec``
    with its figures and synthesize it, unless its ROM weights alone exceed the EBR."""
    work.mkdir(parents=True, exist_ok=True)
    vfile = work / f"mac-{target}.v"
    vfile.write_text(mac.generate_mac_verilog(net))
    cycles = mac.mac_cycles_per_inference(net)
    pe, stores = folding
    rec.update(samples=1, **fields, weight_bits=8, pe=pe, weight_store=stores,
               weight_kbit=round(sum(np.asarray(lay.weights).size
                                     for lay in net.layers) * 8 / 1024, 1),
               cycles_per_inference=cycles,
               dense_bound_ratio=round(cycles / mac.mac_dense_bound(net), 3))
    too_big = _rom_exceeds_ebr(net, target)
    if too_big:
        rec.update(fits=False, error=too_big)
    else:
        _synth(rec, vfile, net.name, target, work / target)


def _bound_ratios(ir, cycles: float) -> dict:
    """The cycle model's cycles per inference over the folding's bounds
    (:func:`nsm_export.schedule.bounds`): the adder bound and the weight-bandwidth bound."""
    b = schedule.bounds(ir)
    return {**b, "adder_bound_ratio": round(cycles / b["adder_bound_cycles"], 3),
            "weight_bound_ratio": round(cycles / b["weight_bound_cycles"], 3)}


def _synth(rec: dict, vfile: Path, top: str, target: str, work: Path, ir=None) -> None:
    try:
        r = synth.synthesize(vfile, top, target, work, ir=ir,
                             log=lambda m: print(m, file=sys.stderr))
    except synth.SynthError as e:
        rec.update(fits=False, error=str(e))
        return
    fmax = r.get("fmax_mhz")
    rec.update(fits=r["fits"], luts=r["luts"]["used"], ffs=r["ffs"]["used"],
               dsps=r["dsps"]["used"], ebr=r["bram"]["used"], spram=r["spram"]["used"],
               logic_cells=(r["logic_cells"] or {}).get("used"), fmax_mhz=fmax,
               meets_timing=r["meets_timing"],
               inferences_per_s=round(fmax * 1e6 / rec["cycles_per_inference"], 1)
               if fmax else None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", "-T", type=int, default=16)
    ap.add_argument("--network", action="append", choices=[*NETWORKS, *CONVS],
                    help="Only this network (repeatable); default: all.")
    ap.add_argument("--target", action="append", choices=[*TARGETS, "ecp5-85k"],
                    help="Only this target (repeatable); default: all.")
    ap.add_argument("--design", action="append",
                    choices=["nsm", "nsm-simd", "nsm-popcount", "nsm-linebuf", "mac"],
                    help="Only this design (repeatable); default: all.")
    ap.add_argument("--work", type=Path, default=ROOT / "out" / "bench-hardware")
    ap.add_argument("--output", type=Path,
                    default=ROOT / "benchmarks" / "results" / "hardware.json")
    a = ap.parse_args(argv)
    nets = a.network or [*NETWORKS, *CONVS]
    targets = a.target or [*TARGETS, "ecp5-85k"]
    designs = a.design or ["nsm", "nsm-simd", "nsm-popcount", "nsm-linebuf", "mac"]
    records = []
    for name in nets:
        for target in targets:
            if target not in (CONVS[name]["fold"] if name in CONVS else TARGETS):
                continue                  # the ECP5-85F only for the conv net that needs it
            for design in designs:
                rec = {"network": name, "target": target, "design": design}
                if design in ("nsm-simd", "nsm-popcount") and design not in NETWORKS.get(name, {}) \
                        and target not in CONVS.get(name, {}).get("popcount", {}):
                    continue
                if design == "nsm-linebuf" and name not in CONVS:
                    continue
                arch = name.split("-", 2)[2] if name in CONVS else None
                if name in CONVS and design == "mac":
                    _mac_record(rec, mac_conv_net(name, target), CONVS[name]["mac"][target],
                                target, a.work / name / design, layers=arch,
                                input="8-bit pixels, 1 channel")
                elif name in CONVS:
                    work = a.work / name / design
                    work.mkdir(parents=True, exist_ok=True)
                    ir = conv_ir(name, target, a.samples, variant=design)
                    if design == "nsm-linebuf":
                        use_line_buffers(ir)
                        ir.validate()
                    vfile = work / f"nsm-{target}.v"
                    vfile.write_text(generate_verilog(ir))
                    cycles = schedule.expected_cycles_per_inference(ir)
                    rec.update(samples=ir.samples, layers=arch,
                               input="thermometer, 4 levels as channels", weight_bits=1,
                               folding=("choose_folding" if CONVS[name]["fold"][target] == "auto"
                                        and design != "nsm-popcount" else "by hand"),
                               pe=[getattr(la, "pe", None) for la in ir.layers],
                               lanes=[getattr(la, "lanes", None) for la in ir.layers],
                               simd=[getattr(la, "simd", None) for la in ir.layers],
                               pass_samples=ir.layers[0].pass_samples,
                               weight_store=[la.weight_store for la in ir.layers],
                               line_rows=[getattr(la, "line_rows", None) for la in ir.layers],
                               map_kbit=round(_map_bits(ir) / 1024, 1),
                               cycles_per_inference=round(cycles, 1), **_bound_ratios(ir, cycles))
                    _synth(rec, vfile, ir.name, target, work / target, ir=ir)
                else:
                    spec = NETWORKS[name]
                    work = a.work / name / design
                    work.mkdir(parents=True, exist_ok=True)
                    if design.startswith("nsm"):
                        ir = nsm_ir(spec, target, a.samples, variant=design)
                        vfile = work / f"{design}-{target}.v"
                        vfile.write_text(generate_verilog(ir))
                        cycles = schedule.expected_cycles_per_inference(ir)
                        rec.update(samples=ir.samples, layers=spec["sizes"],
                                   weight_bits=spec["weight_bits"],
                                   pe=[lay.pe for lay in ir.layers],
                                   lanes=[lay.lanes for lay in ir.layers],
                                   simd=[lay.simd for lay in ir.layers],
                                   weight_store=[lay.weight_store for lay in ir.layers],
                                   pass_samples=ir.layers[0].pass_samples,
                                   cycles_per_inference=round(cycles, 1),
                                   **_bound_ratios(ir, cycles))
                        _synth(rec, vfile, ir.name, target, work / target, ir=ir)
                    else:
                        pe, stores = spec["mac"][target]
                        net = mac.random_mac_net(np.random.default_rng(0), spec["sizes"], pe,
                                                 weight_bits=8, weight_store=stores)
                        _mac_record(rec, net, spec["mac"][target], target, work,
                                    layers=spec["sizes"])
                rec.update(provenance("hardware.py", argv))
                print(json.dumps({k: rec.get(k) for k in (
                    "network", "target", "design", "fits", "luts", "ffs", "dsps", "ebr", "spram",
                    "fmax_mhz", "cycles_per_inference", "inferences_per_s")}), flush=True)
                records.append(rec)
    # A partial run (--network/--target/--design) replaces its own records and keeps the rest.
    key = lambda r: (r["network"], r["target"], r["design"])      # noqa: E731
    done = {key(r) for r in records}
    if a.output.exists() and (a.network or a.target or a.design):
        kept = [r for r in json.loads(a.output.read_text()) if key(r) not in done]
        order = [*NETWORKS, *CONVS]
        records = sorted(kept + records, key=lambda r: order.index(r["network"])
                         if r["network"] in order else len(order))
    write_results(a.output, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
