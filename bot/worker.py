"""The background work (inbox worker, outbox senders, scheduler, channel setup) in a process of its own.

With ``WORKER_PROCESS=true`` `hoctap serve` runs the web app (pages, API, webhooks) in its own process and
starts this one as a child (`hoctap worker --wake-fd N`): the two then use two cores instead of sharing one
interpreter lock, and a burst of webhook calls no longer waits behind a batch of flow steps.

The webhook routes store updates and commit, as always; then, instead of waking the worker inside the
process, they write one byte to a pipe whose other end the child watches (``PipeWake``). Nothing is lost if
a byte is: the worker also polls the inbox every few seconds, and the pipe is only a doorbell.

Lifetime: the child dies with its parent. On Linux the kernel sends it SIGKILL when the parent dies
(PR_SET_PDEATHSIG) — the same as a crash of the one-process serve, which the crash tests cover; elsewhere
(and as a second guard) the pipe's end of file tells it the parent is gone, and it stops. A child that dies
on its own is started again by the parent (after 1 s, doubling up to 30 s). SIGTERM/SIGINT stop it
gracefully: in-flight batches finish, unsent claims go back to the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import subprocess
import sys
import threading

from models.settings import Settings

log = logging.getLogger("hoctap.worker")

_PR_SET_PDEATHSIG = 1


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as environment variables, so that the child runs with exactly the parent's settings
    (environment variables win over .env in pydantic-settings)."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        key = name.upper()
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[key] = str(value)
    return env


class PipeWake:
    """The web process's end of the doorbell: ``wake_inbox()`` writes a byte, never blocks."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __call__(self) -> None:
        with contextlib.suppress(BlockingIOError, BrokenPipeError, OSError):
            os.write(self.fd, b"i")  # a full pipe means the worker has wake-ups pending already


class WorkerProcess:
    """Start, watch and stop the `hoctap worker` child of `hoctap serve`."""

    def __init__(self, settings: Settings, *, command: list[str] | None = None) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "webhook.cli", "worker"]
        self._read_fd, self._write_fd = os.pipe()  # both ends close-on-exec; the child gets the read end
        os.set_blocking(self._write_fd, False)
        self.wake = PipeWake(self._write_fd)
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self.starts = 0

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="worker-watch", daemon=True)
        self._watcher.start()

    def _spawn(self) -> None:
        env = {**os.environ, **settings_env(self.settings)}
        if self.settings.media_dir is None:
            env.pop("MEDIA_DIR", None)  # unset in the parent's settings: the child derives it from DATA_DIR
        with self._lock:
            if self._stopping.is_set():
                return
            self.proc = subprocess.Popen(
                [*self.command, "--wake-fd", str(self._read_fd), "--parent-pid", str(os.getpid())],
                pass_fds=(self._read_fd,),
                env=env,
            )
            self.starts += 1
        log.info("worker process started (pid %d)", self.proc.pid)

    def _watch(self) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("worker process exited (status %s); starting it again in %.0fs", code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self._spawn()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait for a graceful stop, SIGKILL after ``timeout``."""
        with self._lock:
            self._stopping.set()
            proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel for SIGKILL when the parent dies (Linux); exit now if it already has."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        raise SystemExit(0)  # the parent died before the request above took effect


def run_worker(settings: Settings, *, wake_fd: int | None = None, parent_pid: int | None = None) -> int:
    """`hoctap worker`: the runtime of `serve` without the web app, until SIGTERM/SIGINT or the parent ends."""
    from bot import zalo, zalo_oa
    from bot.runtime import Runtime
    from models.db import make_engine

    _die_with_parent(parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = make_engine(settings.db_url)
    runtime = Runtime(settings=settings, engine=engine)
    zalo.register(runtime)
    zalo_oa.register(runtime)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await runtime.start()
        if wake_fd is not None:
            os.set_blocking(wake_fd, False)

            def readable() -> None:
                try:
                    data = os.read(wake_fd, 4096)
                except BlockingIOError:
                    return
                if not data:  # every write end closed: the parent is gone
                    loop.remove_reader(wake_fd)
                    done.set()
                    return
                runtime.wake_inbox()

            loop.add_reader(wake_fd, readable)
        try:
            await done.wait()
        finally:
            if wake_fd is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(wake_fd)
            await runtime.stop()

    asyncio.run(main())
    engine.dispose()
    log.info("worker process stopped")
    return 0
