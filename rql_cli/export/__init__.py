"""`rql export`: a checkpoint's policy as one file that runs without rql, ONNX or a ``torch.export``
archive (pt2), with its F Euler steps unrolled.

policy.py   the traced module, writing it, running the file back, the check against ``act``
writer.py   what a checkpoint must be to export, its env's layout and bounds, FILE.json, the export
evaluate.py reading an exported file back and evaluating it in its env (``rql eval --checkpoint FILE``)

onnx, onnxscript and onnxruntime are optional (rql-cli's extra ``export``) and, like torch and
numpy, imported inside the functions that need them.
"""
