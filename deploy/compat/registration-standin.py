"""A kubelet's Registration service on a unix socket, with grpcio (raw
protobuf bytes, no generated code): prints each RegisterRequest's endpoint
and resource name, answers Empty. For deploy/compat/prove-dropin.

Usage: registration-standin.py SOCKET SECONDS
"""
import sys
import time
from concurrent import futures

import grpc


def fields(buf):
    """The length-delimited fields of a protobuf message: {number: bytes}."""
    out, i = {}, 0
    while i < len(buf):
        key = buf[i]
        i += 1
        number, wire = key >> 3, key & 7
        if wire != 2:
            break
        length, shift = 0, 0
        while True:
            b = buf[i]
            i += 1
            length |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                break
        out[number] = buf[i:i + length]
        i += length
    return out


def register(request, _context):
    f = fields(request)
    print("REGISTER endpoint=%s resource=%s" % (f.get(2, b"").decode(), f.get(3, b"").decode()),
          flush=True)
    return b""


def main():
    path, seconds = sys.argv[1], float(sys.argv[2])
    raw = dict(request_deserializer=lambda b: b, response_serializer=lambda b: b)
    handler = grpc.method_handlers_generic_handler(
        "v1beta1.Registration",
        {"Register": grpc.unary_unary_rpc_method_handler(register, **raw)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("unix:" + path)
    server.start()
    print("LISTENING", path, flush=True)
    time.sleep(seconds)
    server.stop(0)


main()
