"""The real server, started and asked as a client would: ``mlflow models serve`` on 127.0.0.1.

Used by the ``serve_check`` stage (the champion over HTTP must reproduce predictions.csv), the
tests and ``benchmarks/serving_load.py``: one way to start it, wait for it, ask it and stop it.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

# The server is on 127.0.0.1: never through an http_proxy the environment names (urllib's default
# honours it where no_proxy does not list 127.0.0.1).
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_request(images: Sequence[bytes]) -> bytes:
    """The JSON body of one request: the image files' bytes, base64-encoded."""
    rows = [[base64.b64encode(image).decode()] for image in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


class ModelServer:
    """``mlflow models serve -m <uri>`` in its own process group; a context manager."""

    def __init__(
        self, model_uri: str, *, cwd: str | os.PathLike = ".", env: Mapping[str, str] | None = None,
        env_manager: str = "local", log: str | os.PathLike | None = None, timeout: float = 300,
    ) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
                   "-h", "127.0.0.1", "-p", str(self.port), "--env-manager", env_manager,
                   "--workers", "1"]  # fmt: skip
        env = dict(env or os.environ)  # mlflow starts `uvicorn` by name: this Python's own
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.log = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(command, cwd=cwd, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip
        try:
            self.wait_ready(timeout, log)
        except BaseException:  # its own process group: nothing else would stop it
            self.stop()
            raise

    def wait_ready(self, timeout: float, log) -> None:
        deadline = time.time() + timeout
        while not self.alive():
            if self.process.poll() is not None:
                self.stop()
                tail = Path(log).read_text()[-2000:] if log else ""
                raise RuntimeError(f"mlflow models serve exited with {self.process.returncode}"
                                   f"{': ' + tail if tail else ''}")  # fmt: skip
            if time.time() > deadline:
                raise TimeoutError(f"the model server did not answer /ping within {timeout:g} s")
            time.sleep(0.5)

    def alive(self) -> bool:
        try:
            with DIRECT.open(f"{self.url}/ping", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def post(self, body: bytes, timeout: float = 120) -> tuple[int, dict]:
        """POST ``body`` to /invocations: the HTTP status and the parsed JSON answer."""
        request = urllib.request.Request(f"{self.url}/invocations", body,
                                         {"Content-Type": "application/json"})  # fmt: skip
        try:
            with DIRECT.open(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                return error.code, json.loads(text)
            except json.JSONDecodeError:
                return error.code, {"message": text}

    def predict(self, images: Sequence[bytes]) -> list[dict]:
        """The served top-5 of image files' bytes; raises on any answer but 200."""
        status, answer = self.post(image_request(images))
        if status != 200:
            raise RuntimeError(f"the server answered {status}: {answer.get('message', answer)}")
        return answer["predictions"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self) -> ModelServer:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
