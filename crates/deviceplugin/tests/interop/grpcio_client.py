"""The kubelet's three calls to a device plugin, made by the official gRPC
C-core client (Python grpcio) with its default options.

Usage: grpcio_client.py TARGET ALLOCATE_REQUEST_HEX
TARGET is a grpcio target such as unix:/path/to/x.sock. Messages go as raw
protobuf bytes (no generated code): the Rust test encodes the request and
decodes the answers. Prints one JSON object per call:
{"call": ..., "ok": true, "response": HEX} or {"call": ..., "ok": false,
"code": ..., "details": ...}; exits 0 when every call succeeded.
"""
import json
import sys

import grpc


def main():
    target, allocate_hex = sys.argv[1], sys.argv[2]
    ident = lambda b: b  # noqa: E731 - raw bytes in and out
    failed = False
    with grpc.insecure_channel(target) as channel:
        calls = [
            ("GetDevicePluginOptions", "unary_unary", b""),
            ("ListAndWatch", "unary_stream", b""),
            ("Allocate", "unary_unary", bytes.fromhex(allocate_hex)),
        ]
        for name, kind, request in calls:
            method = getattr(channel, kind)(
                f"/v1beta1.DevicePlugin/{name}",
                request_serializer=ident,
                response_deserializer=ident,
            )
            try:
                if kind == "unary_stream":
                    stream = method(request, timeout=5)
                    response = next(stream)
                    stream.cancel()
                else:
                    response = method(request, timeout=5)
                print(json.dumps({"call": name, "ok": True, "response": response.hex()}))
            except grpc.RpcError as e:
                failed = True
                print(json.dumps({"call": name, "ok": False, "code": str(e.code()),
                                  "details": e.details()}))
    print(json.dumps({"grpcio": grpc.__version__}))
    sys.exit(1 if failed else 0)


main()
