"""A hostile server's words reach the terminal escaped: `mirakl-cancel status` against a
local server whose action status, error codes and messages carry terminal escape sequences.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from aiohttp import web
from conftest import serve

EVIL = "\x1b]0;owned\x07\x1b[2J\u202e"


def _app() -> web.Application:
    async def status(request: web.Request) -> web.Response:
        action_id = request.match_info["action_id"]
        if action_id == "gone":
            return web.json_response({"code": "DATA_NOT_FOUND", "message": "no " + EVIL},
                                     status=404)
        return web.json_response({"id": action_id, "status": "FAILED" + EVIL,
                                  "errors": [{"code": "E" + EVIL, "message": "m" + EVIL}]})

    app = web.Application()
    app.router.add_get("/v2/orders/actions/{action_id}", status)
    return app


async def _cli(root: str, tmp_path: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIRAKL_")}
    env.update(MIRAKL_CONNECT_TOKEN="t", MIRAKL_CONNECT_BASE_URL=root,
               XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirakl_cancel.cli", "status", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_output_escapes_what_the_server_says(tmp_path: Path) -> None:
    async with serve(_app()) as root:
        code, out, err = await _cli(root, tmp_path, "act-1", "gone")
        assert code == 1, err
        assert "\x1b" not in out + err and "\x07" not in out and "\u202e" not in out
        assert "FAILED\\x1b]0;owned\\x07\\x1b[2J\\u202e" in out
        assert "errors: E\\x1b]0;owned" in out
        # Another action: act-1 was read a moment ago, and the ceiling is kept on disk.
        code, out, _ = await _cli(root, tmp_path, "act-2", "--json")
    assert "\x1b" not in out
    assert json.loads(out)["state"] == "FAILED" + EVIL  # JSON keeps the value exactly
