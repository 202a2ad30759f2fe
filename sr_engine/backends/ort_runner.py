"""A torch module exported to ONNX (in memory) and run by ONNX Runtime's CPU execution provider."""
from __future__ import annotations

import io
import warnings

import numpy as np
import torch

# Graph input/output names; batch, height and width are dynamic so every tile size reuses one session.
_IN, _OUT = "lr", "sr"
_DYNAMIC = {_IN: {0: "batch", 2: "height", 3: "width"}, _OUT: {0: "batch", 2: "out_height", 3: "out_width"}}


def export_onnx(module: torch.nn.Module, channels: int, size: int = 64) -> bytes:
    """The ONNX model (opset 17, dynamic batch/height/width) of `module`, traced on a [1, C, size, size] input."""
    example = torch.rand(1, channels, size, size)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns about its deprecation and about traced shape arithmetic;
        # the export is checked against eager output in tests/sr_engine/test_backends.py.
        warnings.simplefilter("ignore")
        torch.onnx.export(  # torch's stub names paths only; the exporter writes to a file object too
            module, (example,), buf,  # type: ignore[arg-type]
            dynamo=False, opset_version=17,
            input_names=[_IN], output_names=[_OUT], dynamic_axes=_DYNAMIC,
        )
    return buf.getvalue()


class OrtRunner(torch.nn.Module):
    """A module whose forward runs the ONNX export of `source` ([B, C, h, w] float32 in and out).

    `source` stays a submodule so that callers can still inspect parameters (dtype, count); the
    session holds its own copy of the weights, taken at construction.
    """

    def __init__(self, module: torch.nn.Module, channels: int, threads: int) -> None:
        import onnxruntime as ort

        super().__init__()
        self.source = module

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        # No busy-waiting between runs: ORT's idle threads otherwise spin on the cores the worker
        # needs right after inference (deriving, writing and sending the slices).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.log_severity_level = 3  # errors only: ORT's info lines are noise in the worker log
        # No CPU memory arena: the arena keeps its largest size for the life of the session, so a
        # worker idled at its biggest job's peak (2.1 GB more after one 256² RRDB-6 chunk); with
        # plain malloc, sr_engine.memory.release_memory() gives it back (BENCHMARKS.md, "Memory").
        opts.enable_cpu_mem_arena = False
        self.session = ort.InferenceSession(export_onnx(module.cpu().eval(), channels), opts,
                                            providers=["CPUExecutionProvider"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the session on `x` (moved to CPU float32)."""
        arr = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run([_OUT], {_IN: arr})[0])
