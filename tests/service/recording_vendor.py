"""An honest-but-curious vendor: ASGI middleware that reads every forward body it is sent, whether or not the
service reads it (a retry of the pending step is answered from the cache unread, a forward refused from its step
header too), and hands the decoded message to a callback before the service sees the request.

Run as a script it is a vendor service process that appends, for every forward, the session, the step and a hash
of each sequence's real-token vectors to a JSON-lines file, fsynced before the request goes on (so a line in the
file was received even if the process is then killed with SIGKILL; tests/service/test_service_kill.py does):

    python tests/service/recording_vendor.py --state-dir DIR --port P --record FILE
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os

import torch

from splitpriv.contract import decode


class CuriousRecorder:
    def __init__(self, app, on_forward):
        self.app, self.state, self.on_forward = app, app.state, on_forward

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith("/forward"):
            return await self.app(scope, receive, send)
        body, more = bytearray(), True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.on_forward(decode(bytes(body)))
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


def sequence_hashes(hidden: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """One sha256 per sequence of its real-token rows (the mask's 1 positions), as float32 bytes."""
    out = []
    for row, keep in zip(hidden, mask):
        real = row[keep.bool()].detach().to(torch.float32).contiguous()
        out.append(hashlib.sha256(real.numpy().tobytes()).hexdigest())
    return out


def main() -> None:
    import uvicorn

    from splitpriv.roles.vendor import Vendor
    from splitpriv.service import create_app

    ap = argparse.ArgumentParser()
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--record", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)

    def record(req) -> None:
        line = {"session": req.session_id, "step": req.step,
                "sequences": sequence_hashes(req.hidden, req.attention_mask)}
        with open(a.record, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    app = CuriousRecorder(create_app(Vendor(state_dir=a.state_dir, checkpoint_every=1)), record)
    uvicorn.run(app, host="127.0.0.1", port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
