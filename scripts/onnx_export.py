#!/usr/bin/env python3
"""Builds an ONNX graph of EfficientNet-Lite0/Lite2 from our safetensors weights.

Usage (in the bench venv, see scripts/setup-bench-env.sh):

    py=$(scripts/setup-bench-env.sh | tail -n1)
    "$py" scripts/onnx_export.py models/efficientnet-lite0.safetensors /tmp/lite0.onnx
    "$py" scripts/onnx_export.py models/efficientnet-lite2.safetensors /tmp/lite2.onnx --size 260

The graph is written with the `onnx` helpers only (no torch). It is the network
the Rust code runs (see models/README.md):

- BatchNorm (eps 1e-3) is folded into each convolution's weight and a bias.
- ReLU6 is Clip(0, 6): after the stem BN, the expand BN, the depthwise BN and
  the head BN; none after the project BN. No squeeze-excite.
- Depthwise convolutions are Conv with group = channels.
- TF "SAME" padding as explicit, possibly asymmetric, Conv `pads`, computed
  from the static spatial size given by --size: total = max((ceil(i/s)-1)*s +
  k - i, 0), total//2 top/left, the rest bottom/right. The graph is therefore
  only valid for that input size.
- Stride 2 on the stem and on the depthwise conv of the first block of stages
  1, 2, 3 and 5, a stage being a run of blocks with equal output channels.
  Identity skip where stride 1 and in_ch == out_ch.
- Head: GlobalAveragePool + Flatten of relu6(bn1(conv_head(x))).

Input `input`: float32 (N, 3, S, S), RGB scaled (v - 127) / 128, N dynamic.
Outputs: `features` (N, 1280), the pooled head, NOT L2-normalised, and
`logits` (N, 1000) = _fc(features). The model is checked with onnx.checker.
"""
import argparse
import json
import math
import struct
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-3
OPSET = 17
STRIDE2_STAGES = (1, 2, 3, 5)


def load_safetensors(path):
    """Reads a float32 safetensors file with numpy alone."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            raise SystemExit(f"{name}: dtype {info['dtype']}, expected F32")
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype="<f4").reshape(info["shape"]).astype(np.float32)
    return out


def same_pads(size, k, s):
    """TF SAME padding for one spatial axis: (begin, end, output size)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2, out


class Builder:
    def __init__(self, weights):
        self.w = weights
        self.nodes = []
        self.inits = []
        self.n = 0
        for name, value in (("relu6_min", 0.0), ("relu6_max", 6.0)):
            self.inits.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))

    def fresh(self, hint):
        self.n += 1
        return f"{hint}_{self.n}"

    def conv_bn(self, x, conv, bn, size, stride=1, groups=1, relu6=True):
        """Conv (bias-free in the weights) + folded BN [+ Clip(0,6)]; returns (name, out size)."""
        w = self.w[f"{conv}.weight"]
        gamma, beta = self.w[f"{bn}.weight"], self.w[f"{bn}.bias"]
        mean, var = self.w[f"{bn}.running_mean"], self.w[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + np.float32(BN_EPS))
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        k = w.shape[2]
        assert w.shape[2] == w.shape[3], conv
        begin, end, out = same_pads(size, k, stride)
        wn, bn_ = f"{conv}.weight_folded", f"{conv}.bias_folded"
        self.inits += [numpy_helper.from_array(wf, wn), numpy_helper.from_array(bf, bn_)]
        y = self.fresh(conv.replace(".", "_").lstrip("_"))
        self.nodes.append(helper.make_node(
            "Conv", [x, wn, bn_], [y], name=y,
            kernel_shape=[k, k], strides=[stride, stride], group=groups,
            pads=[begin, begin, end, end], dilations=[1, 1]))
        if relu6:
            r = self.fresh("relu6")
            self.nodes.append(helper.make_node("Clip", [y, "relu6_min", "relu6_max"], [r], name=r))
            y = r
        return y, out


def block_count(w):
    return 1 + max(int(k.split(".")[1]) for k in w if k.startswith("_blocks."))


def block_strides(w, nblocks):
    """Stride of each block: 2 on the first block of stages 1, 2, 3 and 5."""
    outs = [w[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(nblocks)]
    strides, stage = [], -1
    for i, c in enumerate(outs):
        first = i == 0 or c != outs[i - 1]
        if first:
            stage += 1
        strides.append(2 if first and stage in STRIDE2_STAGES else 1)
    return strides


def build(weights, size):
    b = Builder(weights)
    x, s = b.conv_bn("input", "_conv_stem", "_bn0", size, stride=2)
    nblocks = block_count(weights)
    strides = block_strides(weights, nblocks)
    layout = []
    for i in range(nblocks):
        p = f"_blocks.{i}"
        in_ch = weights[f"{p}._depthwise_conv.weight"].shape[0]
        if f"{p}._expand_conv.weight" in weights:
            in_ch = weights[f"{p}._expand_conv.weight"].shape[1]
        if any(k.startswith(f"{p}._se_") for k in weights):
            raise SystemExit(f"{p} has squeeze-excite tensors: not an EfficientNet-Lite")
        block_in = x
        if f"{p}._expand_conv.weight" in weights:
            x, s = b.conv_bn(x, f"{p}._expand_conv", f"{p}._bn0", s)
        ch = weights[f"{p}._depthwise_conv.weight"].shape[0]
        x, s = b.conv_bn(x, f"{p}._depthwise_conv", f"{p}._bn1", s, stride=strides[i], groups=ch)
        x, s = b.conv_bn(x, f"{p}._project_conv", f"{p}._bn2", s, relu6=False)
        out_ch = weights[f"{p}._project_conv.weight"].shape[0]
        if strides[i] == 1 and in_ch == out_ch:
            y = b.fresh("residual")
            b.nodes.append(helper.make_node("Add", [x, block_in], [y], name=y))
            x = y
        layout.append((i, in_ch, out_ch, strides[i], s))
    x, s = b.conv_bn(x, "_conv_head", "_bn1", s)
    pooled = b.fresh("pool")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled], name=pooled))
    b.nodes.append(helper.make_node("Flatten", [pooled], ["features"], name="flatten", axis=1))
    b.inits += [numpy_helper.from_array(weights["_fc.weight"], "_fc.weight"),
                numpy_helper.from_array(weights["_fc.bias"], "_fc.bias")]
    b.nodes.append(helper.make_node("Gemm", ["features", "_fc.weight", "_fc.bias"], ["logits"],
                                    name="fc", transB=1))
    feat_dim = weights["_conv_head.weight"].shape[0]
    classes = weights["_fc.weight"].shape[0]
    graph = helper.make_graph(
        b.nodes, "efficientnet_lite",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", feat_dim]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        initializer=b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lookalike scripts/onnx_export.py")
    model.ir_version = 8  # opset 17 needs IR 8; keeps older runtimes able to load it
    return model, layout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("safetensors")
    ap.add_argument("out")
    ap.add_argument("--size", type=int, default=224,
                    help="input side in pixels (224 for Lite0, 260 for Lite2); the pads depend on it")
    args = ap.parse_args()
    weights = load_safetensors(args.safetensors)
    model, layout = build(weights, args.size)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.out)
    down = [i for i, _, _, st, _ in layout if st == 2]
    print(f"{args.out}: {len(layout)} blocks, stride-2 blocks {down}, "
          f"final {layout[-1][4]}x{layout[-1][4]}, input {args.size}, "
          f"{len(model.graph.node)} nodes", file=sys.stderr)


if __name__ == "__main__":
    main()
