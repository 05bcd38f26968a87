"""The background work (inbox worker, outbox senders, scheduler, channel setup) in processes of its own.

With ``WORKER_PROCESSES=1`` `hoctap serve` runs the web app (pages, API, webhooks) in its own process and starts
one child (`hoctap worker --role all`) for the rest; with ``2``, two children: the inbox worker with the
channels' setup and polling (``--role inbox``), and the senders with the scheduler (``--role outbox``). The
processes then use several cores instead of sharing one interpreter lock, and a burst of webhook calls no
longer waits behind a batch of flow steps.

The webhook routes store updates and commit, as always; then, instead of waking the worker inside the
process, they write one byte to a pipe whose other end the inbox child watches (``PipeWake``); the inbox
child rings the sender child the same way when it has queued replies. Nothing is lost if a byte is: the
workers also poll the database every few seconds, and the pipes are only doorbells. On SQLite the processes
take turns on writes through an flock next to the database (bot.outbox.write_lock).

Lifetime: the children die with their parent. On Linux the kernel sends them SIGKILL when the parent dies
(PR_SET_PDEATHSIG) — the same as a crash of the one-process serve, which the crash tests cover; elsewhere
(and as a second guard) the pipe's end of file tells a child the parent is gone, and it stops. A child that
dies on its own is started again by the parent (after 1 s, doubling up to 30 s). SIGTERM/SIGINT stop them
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
from collections.abc import Callable

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


class _Child:
    """One child process: its role, the fds it is given, and the command line that says so."""

    def __init__(self, role: str, wake_fd: int, outbox_wake_fd: int | None) -> None:
        self.role, self.wake_fd, self.outbox_wake_fd = role, wake_fd, outbox_wake_fd
        self.proc: subprocess.Popen[bytes] | None = None
        self.watcher: threading.Thread | None = None

    def args(self) -> list[str]:
        out = ["--role", self.role, "--wake-fd", str(self.wake_fd)]
        if self.outbox_wake_fd is not None:
            out += ["--outbox-wake-fd", str(self.outbox_wake_fd)]
        return out

    def fds(self) -> tuple[int, ...]:
        return (self.wake_fd,) if self.outbox_wake_fd is None else (self.wake_fd, self.outbox_wake_fd)


class WorkerProcess:
    """Start, watch and stop the `hoctap worker` children of `hoctap serve`.

    ``processes=1``: one child runs everything in the background (role "all"). ``processes=2``: one child runs
    the inbox worker with the channels' setup and polling (role "inbox"), the other the senders and the
    scheduler (role "outbox"); the first rings the second through a second pipe when it has queued replies."""

    def __init__(self, settings: Settings, *, processes: int = 1, command: list[str] | None = None) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "webhook.cli", "worker"]
        self._pipes: list[int] = []
        inbox_read, inbox_write = self._pipe()  # close-on-exec: each child is given its ends
        self.wake = PipeWake(inbox_write)
        if processes >= 2:
            outbox_read, outbox_write = self._pipe()
            self.children = [_Child("inbox", inbox_read, outbox_write), _Child("outbox", outbox_read, None)]
        else:
            self.children = [_Child("all", inbox_read, None)]
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.starts = 0

    def _pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._pipes += [read, write]
        return read, write

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)
            child.watcher = threading.Thread(target=self._watch, args=(child,), name=f"worker-{child.role}",
                                             daemon=True)
            child.watcher.start()

    def _spawn(self, child: _Child) -> None:
        env = {**os.environ, **settings_env(self.settings)}
        if self.settings.media_dir is None:
            env.pop("MEDIA_DIR", None)  # unset in the parent's settings: the child derives it from DATA_DIR
        with self._lock:
            if self._stopping.is_set():
                return
            child.proc = subprocess.Popen([*self.command, *child.args(), "--parent-pid", str(os.getpid())],
                                          pass_fds=child.fds(), env=env)
            self.starts += 1
        log.info("worker process %s started (pid %d)", child.role, child.proc.pid)

    def _watch(self, child: _Child) -> None:
        delay = 1.0
        while not self._stopping.is_set():
            proc = child.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("worker process %s exited (status %s); starting it again in %.0fs", child.role, code, delay)
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, 30.0)
            self._spawn(child)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, wait for a graceful stop, SIGKILL after ``timeout``."""
        with self._lock:
            self._stopping.set()
        running = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in self.children:
            if child.watcher is not None:
                child.watcher.join(timeout=5)
        for fd in self._pipes:
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


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop where it is installed (it comes with uvicorn[standard], and `serve`'s web process runs on it
    through uvicorn), else asyncio's own loop. The inbox worker hands every batch to a thread and back:
    40-s runs of bench/inbound.py, 3 processes, SQLite, two pairs: 908 → 1,002 and 1,001 → 1,040 updates/s
    end to end."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        return asyncio.new_event_loop
    return uvloop.new_event_loop


ROLES = {"all": ("inbox", "outbox"), "inbox": ("inbox",), "outbox": ("outbox",)}


def run_worker(settings: Settings, *, role: str = "all", wake_fd: int | None = None,
               outbox_wake_fd: int | None = None, parent_pid: int | None = None) -> int:
    """`hoctap worker`: the runtime of `serve` without the web app (or the ``role`` part of it), until
    SIGTERM/SIGINT or the parent ends. A byte on ``wake_fd`` wakes the inbox worker (roles all, inbox) or the
    senders (role outbox); queued replies ring ``outbox_wake_fd`` when the senders run elsewhere."""
    from bot import zalo, zalo_oa
    from bot.runtime import Runtime, settle_heap
    from models.db import make_engine

    _die_with_parent(parent_pid)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = make_engine(settings.db_url)
    parts = ROLES[role]
    runtime = Runtime(settings=settings, engine=engine, worker_process=True,
                      external_outbox_wake=PipeWake(outbox_wake_fd) if outbox_wake_fd is not None else None)
    ring = runtime.wake_inbox if "inbox" in parts else runtime.wake_outbox
    zalo.register(runtime)
    zalo_oa.register(runtime)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, done.set)
        await runtime.start(parts)
        settle_heap()
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
                ring()

            loop.add_reader(wake_fd, readable)
        try:
            await done.wait()
        finally:
            if wake_fd is not None:
                with contextlib.suppress(Exception):
                    loop.remove_reader(wake_fd)
            await runtime.stop()

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())
    engine.dispose()
    log.info("worker process %s stopped", role)
    return 0
