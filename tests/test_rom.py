"""Weight ROM words and the Verilog ROM modules the core's weights live in (co-simulation of
the whole core: tests/test_cosim.py, tests/test_conv_hw.py)."""

import re

import numpy as np
import pytest

from hw.dense import memory_words, pack_lanes, rom_module, rom_module_name
from hw.top import generate_verilog
from nsm_export.testing import random_conv_ir, random_ir
from tests.support import verilog_modules


def _reference_words(layer):
    """One word per (group, input) by :func:`pack_lanes`, lane by lane (the definition)."""
    w2 = layer.weights.reshape(layer.weights.shape[0], -1)
    out = []
    for g in range(-(-w2.shape[0] // layer.pe)):
        for j in range(w2.shape[1]):
            lanes = [w2[i, j] if i < w2.shape[0] else 0
                     for i in range(g * layer.pe, (g + 1) * layer.pe)]
            if layer.weight_bits == 1:
                lanes = [1 if w > 0 else 0 for w in lanes]
            out.append(pack_lanes(lanes, layer.weight_bits))
    return out


@pytest.mark.parametrize("wb", [1, 2, 3, 5, 8])
def test_memory_words_pack_every_lane(wb):
    rng = np.random.default_rng(wb)
    # pe x wb from a few bits to well past 64 (several numpy chunks), pe not dividing n_out
    for pe in ([1, 3, 10], [21, 33, 10], [64, 70, 10]):
        ir = random_ir(rng, sizes=[12, 70, 70, 10], pe=pe, weight_bits=wb)
        for layer in ir.layers:
            assert memory_words(layer)[0] == _reference_words(layer)
    conv = random_conv_ir(rng)
    for layer in conv.layers:
        if layer.kind in ("dense", "conv2d"):
            assert memory_words(layer)[0] == _reference_words(layer)


def test_rom_module_holds_every_word_zero_padded():
    text = rom_module("core_wrom3", 7, [0x53, 0x7f, 0x01])
    assert text.count("module core_wrom3 #(parameter ABITS = 2) (") == 1
    init = re.findall(r"mem\[(\d+)\] = 7'h([0-9a-f]{2});", text)
    assert init == [("0", "53"), ("1", "7f"), ("2", "01")]
    assert "reg [6:0] mem [2:0];" in text and "data <= mem[addr];" in text
    one = rom_module("r", 70, [(1 << 70) - 1])             # one word: depth 2, 18 hex digits
    assert "mem[0] = 70'h3fffffffffffffffff;" in one and "mem[1] = 70'h000000000000000000;" in one


def test_core_has_one_rom_module_per_rom_layer():
    ir = random_ir(np.random.default_rng(3), sizes=[20, 16, 10], pe=[4, 10], weight_bits=2)
    ir.layers[1].weight_store = "ram"
    text = generate_verilog(ir)
    names = verilog_modules(text)
    assert rom_module_name(ir.name, 0) in names and rom_module_name(ir.name, 1) not in names
    assert "nsm_ram16" in names
    words = memory_words(ir.layers[0])[0]
    rom = text[text.index(f"module {rom_module_name(ir.name, 0)} "):]
    rom = rom[:rom.index("endmodule")]
    got = [int(v, 16) for v in re.findall(r"mem\[\d+\] = \d+'h([0-9a-f]+);", rom)]
    assert got[:len(words)] == words and not any(got[len(words):])
