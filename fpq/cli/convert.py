"""`fpq convert`: a float PyTorch model on disk -> a calibrated, exported QONNX file.

The model is named as ``path/to/file.py:Factory`` or ``package.module:attr`` (a class or function
returning an ``nn.Module``), optionally with ``--state weights.pt`` (a state dict). Calibration
data is an ``.npz`` / ``.npy`` array (``--calib``), or ``digits`` for scikit-learn's bundled set.
The output is the QONNX file that ``fpq hls``, ``fpq verify`` and ``fpq cost`` read.
"""
from __future__ import annotations

import os


def load_model(spec: str, state: str | None = None):
    """The model a spec names (``fpq.userfiles.load_spec``: ``file.py:Name`` or ``module:Name``, a
    module or a zero-argument factory), with ``state`` (a state dict file) loaded into it."""
    import torch

    from ..userfiles import is_torch_module, load_spec

    model = load_spec(spec)
    if not is_torch_module(model):
        raise ValueError(f"{spec} did not give a torch.nn.Module (got {type(model).__name__})")
    if state:
        model.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
    return model.eval()


def load_calibration(source: str, input_shape):
    """Calibration inputs as a float32 tensor: 'digits', an .npy file, or an .npz (first array)."""
    import numpy as np
    import torch

    if source == "digits":
        from ..data import load_digits_split
        x = load_digits_split(seed=0).x_train
    else:
        if not os.path.exists(source):
            raise ValueError(f"calibration data {source!r} does not exist (give an .npy/.npz file or 'digits')")
        arr = np.load(source)
        if hasattr(arr, "files"):
            arr = arr[arr.files[0]]
        x = torch.as_tensor(np.asarray(arr, dtype=np.float32))
    if input_shape is not None:
        x = x.reshape((-1, *input_shape))
    return x


def _parse_overrides(items):
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--override {item!r}: expected NAME_OR_GLOB=FORMAT")
        k, v = item.split("=", 1)
        out[k] = v
    return out


def cli_register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="quantize a float PyTorch model, calibrate it and export QONNX",
                              description=__doc__)
    p.add_argument("model", help="path/to/file.py:Factory or package.module:Factory")
    p.add_argument("--fmt", help="one format for weights and activations (e.g. e2m1, int8, fixed<8,3>)")
    p.add_argument("--weights", help="weight format")
    p.add_argument("--activations", help="activation format")
    p.add_argument("--override", action="append", metavar="NAME=FORMAT",
                   help="per-module format by name or glob, e.g. 'fc3=int8' (repeatable)")
    p.add_argument("--bias", help="bias format (default int16 with its own scale)")
    p.add_argument("--accumulator-bits", type=int, metavar="N",
                   help="narrow every Linear/Conv accumulator to N bits at its exact LSB, wrapping on overflow")
    p.add_argument("--scale", choices=("po2", "float"), default="po2")
    p.add_argument("--granularity", choices=("tensor", "channel"), default="tensor")
    p.add_argument("--batchnorm", choices=("fold", "keep"), default="fold",
                   help="fold each BatchNorm into the Conv/Linear before it where possible, or keep all element-wise")
    p.add_argument("--state", help="state dict (.pt) to load into the model")
    p.add_argument("--calib", default="digits", help="calibration data: .npy/.npz file or 'digits'")
    p.add_argument("--method", choices=("max", "percentile", "mse"), default="max")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,8,8")
    p.add_argument("--out", required=True, help="output QONNX file")
    p.set_defaults(func=run)


def run(args) -> int:
    import fpq

    from ..userfiles import check_input_file

    # every input is checked before the model's code runs or any file is written
    shape = None
    if args.input_shape:
        try:
            shape = tuple(int(s) for s in args.input_shape.split(","))
        except ValueError:
            raise ValueError(f"--input-shape {args.input_shape!r}: give positive integers like 1,8,8") from None
        if not shape or min(shape) < 1:
            raise ValueError(f"--input-shape {args.input_shape!r}: give positive integers like 1,8,8")
    if args.state:
        check_input_file(args.state, "--state file")
    if args.calib != "digits":
        check_input_file(args.calib, "calibration data")
    model = load_model(args.model, args.state)
    q = fpq.convert(model, args.fmt, weights=args.weights, activations=args.activations,
                    overrides=_parse_overrides(args.override), scale=args.scale,
                    granularity=args.granularity, batchnorm=args.batchnorm, bias=args.bias,
                    accumulator_bits=args.accumulator_bits)
    x = load_calibration(args.calib, shape)
    fpq.calibrate(q, [x[i:i + 256] for i in range(0, len(x), 256)], method=args.method)
    fpq.export_qonnx(q, args.out, x[:1])
    print(fpq.plan(args.out))   # the same plan as fpq.plan(q), without a second export
    print(f"wrote {args.out}")
    return 0
