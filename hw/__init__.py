"""Amaranth generators for the NSM datapath: adders, comparators and LFSRs, emitted as Verilog.

Everything here is built from an :class:`nsm_export.ir.IR`; the hardware never sees ONNX or
PyTorch. :func:`hw.top.generate_verilog` is the entry point.
"""
