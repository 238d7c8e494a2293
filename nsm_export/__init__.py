"""ONNX export, the ONNX → integer IR compiler, and the bit-exact golden model.

The IR (:mod:`nsm_export.ir`) is the single source of truth after export; every other stage of
the toolchain reads it and nothing writes it but the compiler.
"""
