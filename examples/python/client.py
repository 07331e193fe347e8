"""A lookalike client in Python: insert images, query with one, compare two.

Usage:
    python examples/python/client.py --server 127.0.0.1:50051 [--api-key KEY] IMAGE...

Needs `pip install grpcio grpcio-tools`. The stubs are generated from
proto/lookalike/v1/lookalike.proto at start (into a temporary folder), so the
example always matches the proto it sits beside; in an application, generate
them once at build time with the same `grpc_tools.protoc` call.
"""

import argparse
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_stubs():
    out = tempfile.mkdtemp(prefix="lookalike-stubs-")
    proto_dir = os.path.join(ROOT, "proto")
    status = protoc.main(
        [
            "protoc",
            f"-I{proto_dir}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.join(proto_dir, "lookalike", "v1", "lookalike.proto"),
        ]
    )
    if status != 0:
        sys.exit(f"protoc failed ({status})")
    sys.path.insert(0, out)
    from lookalike.v1 import lookalike_pb2, lookalike_pb2_grpc  # noqa: E402

    return lookalike_pb2, lookalike_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051")
    parser.add_argument("--api-key", default=os.environ.get("LOOKALIKE_API_KEY"))
    parser.add_argument("images", nargs="+")
    args = parser.parse_args()
    pb, rpc = load_stubs()
    metadata = [("authorization", f"Bearer {args.api_key}")] if args.api_key else []

    with grpc.insecure_channel(args.server) as channel:
        client = rpc.LookalikeStub(channel)
        for path in args.images:
            with open(path, "rb") as f:
                reply = client.Insert(
                    pb.InsertRequest(
                        id=os.path.basename(path),
                        image=f.read(),
                        metadata={"path": path},
                        upsert=True,
                    ),
                    metadata=metadata,
                )
            dups = ", ".join(f"{d.id} ({d.similarity:.3f})" for d in reply.duplicates)
            print(f"inserted {reply.id}" + (f"; duplicates: {dups}" if dups else ""))

        with open(args.images[0], "rb") as f:
            first = f.read()
        matches = client.Query(
            pb.QueryRequest(image=pb.ImageRef(data=first), k=3), metadata=metadata
        ).matches
        for m in matches:
            distance = f"{m.distance:.4f}" if m.HasField("distance") else "n/a"
            print(f"match {m.id} similarity {m.similarity:.4f} distance {distance}"
                  f" duplicate {m.duplicate}")

        if len(args.images) >= 2:
            a, b = (os.path.basename(p) for p in args.images[:2])
            c = client.Compare(
                pb.CompareRequest(a=pb.ImageRef(id=a), b=pb.ImageRef(id=b)),
                metadata=metadata,
            )
            distance = f"{c.distance:.4f}" if c.HasField("distance") else "n/a"
            print(f"compare {a} {b}: similarity {c.similarity:.4f} distance {distance}"
                  f" duplicate {c.duplicate}")

        try:
            client.Stats(pb.StatsRequest())
            print("stats without a key: allowed (the daemon has no key)")
        except grpc.RpcError as e:
            print(f"stats without a key: {e.code().name}")


if __name__ == "__main__":
    main()
