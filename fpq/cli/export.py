"""``fpq export MODEL.onnx [--out OUT.onnx]``: check and normalize a QONNX file."""
from __future__ import annotations


def cli_register(subparsers) -> None:
    """``fpq export MODEL.onnx --out OUT.onnx``: read a QONNX file, check it and write it back
    with fpq's transformations; prints the graph IR and the TypePlan."""
    p = subparsers.add_parser("export", help="normalize a QONNX file with fpq's transformations and "
                                             "print its graph IR and TypePlan")
    p.add_argument("model", help="QONNX file (.onnx)")
    p.add_argument("--out", help="write the normalized QONNX here")
    p.set_defaults(func=run)


def run(args) -> int:
    import onnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    from ..export import read_graph, typeplan_from_graph
    from ..export.transforms import RemoveFloatCasts, RemoveInitializersFromInputs

    g = read_graph(args.model)
    print(g.summary())
    print()
    print(typeplan_from_graph(g).table())
    if args.out:
        m = ModelWrapper(args.model).transform(RemoveInitializersFromInputs())
        m = m.transform(RemoveFloatCasts()).transform(InferShapes())
        onnx.checker.check_model(m.model)
        m.save(args.out)
        print(f"wrote {args.out}")
    return 0
