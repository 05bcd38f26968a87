"""The baseline of bench/inbound.py: a bare FastAPI endpoint that only parses the webhook's JSON.

    python bench/bare_app.py --port 8082

Same path and uvicorn settings as `hoctap serve` (uvicorn.run, log level info, access log off as there);
no secret check, no database, no worker: the ceiling of this stack on this machine.
"""

from __future__ import annotations

import argparse
import json

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

app = FastAPI()


@app.get("/healthz")
def healthz() -> dict[str, bool]:
    return {"ok": True}


@app.post("/webhooks/telegram")
async def webhook(request: Request) -> Response:
    update = json.loads(await request.body())
    if not isinstance(update, dict) or type(update.get("update_id")) is not int:
        return JSONResponse({"ok": False}, status_code=400)
    return JSONResponse({"ok": True})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info", access_log=False, timeout_keep_alive=65)
