"""The stream ports every NSM core has (:class:`hw.top.NsmCore`, :class:`hw.ptop.PopcountCore`):
the weight image in where a layer keeps its weights in RAM, pixels in, the class and scores out,
the run seed."""

from __future__ import annotations

from amaranth.lib.wiring import In, Out

__all__ = ["core_ports", "samples_bits"]


def samples_bits(ir) -> int:
    """Bits of the samples-used field above the scores in ``m_axis_tuser`` (only with an
    early-exit rule: 0 otherwise)."""
    return ir.samples.bit_length() if ir.early_exit.active else 0


def core_ports(ir) -> dict:
    """``{name: In/Out(width)}`` of the ``w_axis`` (only where some layer has ``ram``
    weights), pixel, result and seed ports for ``ir``. ``m_axis_tuser`` holds the class scores
    (score ``c`` at bits ``c*score_bits``), and with an early-exit rule the samples the image
    used above them (:func:`samples_bits`)."""
    wload = {"w_axis_tvalid": In(1), "w_axis_tready": Out(1), "w_axis_tdata": In(16),
             "w_axis_tlast": In(1)} if any(layer.weight_store == "ram"
                                           for layer in ir.layers) else {}
    return {**wload, "s_axis_tvalid": In(1), "s_axis_tready": Out(1),
            "s_axis_tdata": In(ir.input.pixel_bits), "s_axis_tlast": In(1),
            "m_axis_tvalid": Out(1), "m_axis_tready": In(1),
            "m_axis_tdata": Out(ir.class_bits),
            "m_axis_tuser": Out(ir.n_classes * ir.score_bits + samples_bits(ir)),
            "seed_valid": In(1), "seed_ready": Out(1), "seed": In(32)}
