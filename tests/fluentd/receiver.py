"""A minimal Fluentd Forward receiver built on the reference msgpack implementation (PyPI `msgpack`), used to
check kvvm's encoder independently. Prints the listening port, then one JSON line per message received, and
acknowledges each chunk. Exits after --count messages or --timeout seconds."""
import argparse, json, socket, sys, time
import msgpack


def ext_hook(code, data):
    if code == 0 and len(data) == 8:
        return {"event_time": [int.from_bytes(data[:4], "big"), int.from_bytes(data[4:], "big")]}
    raise ValueError(f"unexpected ext type {code}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=30)
    ap.add_argument("--drop-first", type=int, default=0, help="close the first N connections without acking")
    args = ap.parse_args()
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(args.timeout)
    print(srv.getsockname()[1], flush=True)
    deadline = time.time() + args.timeout
    got, dropped = 0, 0
    while got < args.count and time.time() < deadline:
        conn, _ = srv.accept()
        conn.settimeout(max(0.1, deadline - time.time()))
        unpacker = msgpack.Unpacker(ext_hook=ext_hook, raw=False, strict_map_key=False)
        try:
            while got < args.count:
                data = conn.recv(65536)
                if not data:
                    break
                unpacker.feed(data)
                for msg in unpacker:
                    if dropped < args.drop_first:
                        dropped += 1
                        raise ConnectionAbortedError
                    tag, when, record, option = msg  # Message mode: exactly four elements
                    conn.sendall(msgpack.packb({"ack": option["chunk"]}))
                    print(json.dumps({"tag": tag, "time": when, "record": record, "option": option}), flush=True)
                    got += 1
        except (ConnectionAbortedError, socket.timeout):
            pass
        finally:
            conn.close()
    sys.exit(0 if got >= args.count else 1)


main()
