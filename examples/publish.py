"""Publishing to pyhasses from Python.

With pyhasses installed in your backend's environment, use its helper:

    from pyhasses.publish import publish
    publish("room1", "hello")                                  # TCP 127.0.0.1:8085
    ack = publish("room1", "a;b\\nc", event="chat", ack=True)   # ack["delivered"]

Without it, this file needs only the standard library: copy ``publish``.
Run it to try:  python3 publish.py room1 'hello from Python'
(PYHASSES_PORT overrides the control port 8085).
"""

import json
import os
import socket
import sys


def publish(token, data, event=None, host="127.0.0.1", port=8085, timeout=2.0):
    """Send ``data`` to the subscribers of ``token``; return how many got it.
    The JSON form keeps the message intact whatever it holds."""
    message = {"to": token, "data": data, "ack": True}
    if event is not None:
        message["event"] = event
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(json.dumps(message).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)  # "that was all": pyhasses answers and closes
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    ack = json.loads(reply or b"{}")
    if not ack.get("ok"):
        raise RuntimeError(f"pyhasses refused the message: {ack.get('error', reply)}")
    return ack["delivered"]


if __name__ == "__main__":
    token = sys.argv[1] if len(sys.argv) > 1 else "room1"
    text = sys.argv[2] if len(sys.argv) > 2 else "hello from Python"
    port = int(os.environ.get("PYHASSES_PORT", "8085"))
    try:
        count = publish(token, text, port=port)
    except OSError as exc:
        sys.exit(f"publish.py: cannot reach pyhasses on 127.0.0.1:{port}: {exc.strerror or exc}")
    except RuntimeError as exc:
        sys.exit(f"publish.py: {exc}")
    print(f"delivered to {count} client(s)")
