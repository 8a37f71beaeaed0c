"""Connecting to Ray (an existing cluster when an address is given, otherwise a private local one), and
keeping Ray's own chatter off a person's terminal."""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import IO

from raycolor import storage
from raycolor.config import DEFAULT_STORE, StorageConfig

AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray >= 2.52 token authentication
DEFAULT_LOGS_DIR = "/tmp/ray/session_latest/logs"

# Lines Ray writes straight to the process's stderr: its Python loggers below ERROR, and its C++ core's
# "[date time I|W pid tid] file.cc:line: ..." lines. They stay in Ray's log files either way.
_RAY_NOISE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+(DEBUG|INFO|WARNING)\s"
    r"|\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [DIW] \d+ \d+\]"
    # Ray Data always hands its actor pool's constructor an ObjectRef the driver owns for the whole run
    # (ray-project/ray#53727); it is lost only with the driver's node, so restarts do work (the killed-actor
    # test proves it). Ray's C++ core reports it at ERROR level with no switch of its own: known, dropped.
    r"|\[[^]]* E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: 'MapWorker.*has constructor arguments"
    # a task that failed while the driver was leaving (after its error was reported): the error it could not
    # push is the one already reported, so this says only that the driver is gone
    r"|\[[^]]* E \d+ \d+\] task_manager\.cc:\d+: Failed to push error to driver for task"
    r"|.*(A new progress UI is available|tqdm is not installed))"
)


def logs_dir() -> str:
    """Where this Ray session keeps its full logs (on the head node for a cluster)."""
    try:
        import ray

        return ray._private.worker._global_node.get_logs_dir_path()  # no public API for it
    except Exception:
        return DEFAULT_LOGS_DIR


def connect(
    address: str | None = None, *, num_cpus: int | None = None, store: StorageConfig = DEFAULT_STORE, verbose: bool = True
) -> str:
    """Start or join Ray; returns one line saying which, for the CLI to print first.

    Local mode starts no dashboard and relies on Ray's token authentication (on by default for a new local
    cluster): Ray's own services listen on the machine's address (Ray refuses a loopback node IP), so the
    token is what keeps other machines out. An explicit RAY_AUTH_MODE=disabled is respected but reported.
    ``store.s3_endpoint`` is exported to the workers (as AWS_ENDPOINT_URL). verbose=False: Ray logs below ERROR
    and the workers' output stay in Ray's log files, and Ray Data's own progress bars are off (the caller shows
    its own).
    """
    problem = storage.endpoint_problem(store.s3_endpoint)
    if problem:  # checked before it could reach Ray's runtime environment, which Ray shows to anyone who asks
        raise storage.InputError(f"--s3-endpoint {storage.redact(store.s3_endpoint)}: {problem}")
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    # the only variable exported: credentials reach workers through each node's own AWS chain, never through Ray
    runtime_env = {"env_vars": {"AWS_ENDPOINT_URL": store.s3_endpoint}} if store.s3_endpoint else None
    quiet = {} if verbose else {"logging_level": logging.ERROR, "log_to_driver": False}
    if not verbose:
        ctx = data_context()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        # Ray Data logs to its own file and to the console; only the console is turned down
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.ERROR)
    if ray.is_initialized():
        return "Using the Ray runtime already started in this process"
    if address:
        ray.init(address=address, runtime_env=runtime_env, **quiet)
        return f"Connected to Ray cluster at {address}"
    # Ray >= 2.52 turns token auth on for a new local cluster unless RAY_AUTH_MODE says otherwise
    # (setting the variable here would be too late: Ray reads its config when it is imported)
    # address="local": always a new private runtime, never a stray cluster that `ray start` (or a test's
    # ray.cluster_utils.Cluster) left registered on this machine
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, **quiet)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    auth = "token auth on" if os.environ.get(AUTH_MODE_ENV, "").lower() == "token" else "TOKEN AUTH OFF"
    return (
        f"Started a local Ray runtime ({cpus} CPUs, {gpus} GPUs; no dashboard, {auth}); "
        "set --address or RAY_ADDRESS to use a cluster"
    )


def connected() -> bool:
    """Whether this process is connected to Ray already (without importing Ray when it is not loaded)."""
    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def disconnect() -> None:
    """Leave Ray now (stop the local runtime, or detach from a cluster); a no-op when not connected.

    The CLI calls it before its last line on a handled failure, inside runtime.quiet_stderr, when it made the
    connection itself: Ray's core otherwise logs from its own threads until the process exits, after that line
    and past the filter. A connection the caller made (a job script, a test driving the CLI in-process) is the
    caller's to keep."""
    if connected():
        import ray

        ray.shutdown()


def ensure_ray() -> None:
    """Start a plain local Ray unless this process is connected already (library use: the CLI connects first),
    and make Ray Data's context (see data_context)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    data_context()


def data_context():
    """Ray Data's DataContext for this process, made quietly the first time: Ray 2.60's own constructor assigns
    its deprecated fields (use_push_based_shuffle, use_polars, use_arrow_tensor_v2) and so warns about each,
    though nothing sets them. We never set them either; the warnings would only say that a context was made."""
    from ray.data import DataContext

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context$")
        return DataContext.get_current()


@contextlib.contextmanager
def dataset_limits(*, block_bytes: int, object_store_bytes: int | None = None) -> Iterator[None]:
    """Datasets made inside this block cut their blocks at about `block_bytes` (Ray Data's target_max_block_size)
    and, if set, keep at most `object_store_bytes` of blocks in the object store at once (its resource limit;
    the default is half the store, which a queue of big scans fills). A dataset keeps the context it was made
    with, so this process's defaults stay as they were."""
    ctx = data_context()
    old = ctx.target_max_block_size, ctx.execution_options.resource_limits
    ctx.target_max_block_size = block_bytes
    if object_store_bytes is not None:
        ctx.execution_options.resource_limits = old[1].copy(object_store_memory=object_store_bytes)
    try:
        yield
    finally:
        ctx.target_max_block_size, ctx.execution_options.resource_limits = old


_HANDLED = [0]  # full-resolution bytes handled since the heap was last trimmed, in this process

# Heap handed back at most once per this many bytes of full-resolution data handled: malloc_trim walks the
# whole heap (~1.5 ms in a worker with torch loaded), worth it after a big scan, not after every thumbnail.
TRIM_AFTER_BYTES = 256 << 20


def trim_heap(handled: int) -> None:
    """Hand the memory this process has freed back to the OS, once `handled` bytes of full-resolution data
    (added up over calls) reach TRIM_AFTER_BYTES. glibc keeps freed heap for reuse, so a worker that has just
    finished a 39 MP scan would go on holding its peak while idle, or while it works on thumbnails. A no-op
    where the C library is not glibc."""
    _HANDLED[0] += handled
    if _HANDLED[0] < TRIM_AFTER_BYTES:
        return
    _HANDLED[0] = 0
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def ray_get(refs, *, cancel=()):
    """``ray.get(refs)``, with a failed task's error raised as the error the task raised (Ray's RayTaskError
    unwrapped: an InputError in a planning task is an InputError on the driver,
    which the CLI reports in one line); the refs in ``cancel`` (e.g. the tasks still pending) are cancelled
    first, their workers killed. The one place the drivers unwrap a task's error."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        for ref in cancel:
            # force: Ray's plain cancel interrupts a task only between bytecodes, so a listing task blocked in a
            # long object-store call runs on, and it is best effort even then (a running task's cancel was lost
            # under load here, ray-project/ray#32954); killing the worker frees its slot now, and Ray does not
            # retry a cancelled task
            ray.cancel(ref, force=True)
        # the task's own exception, whose message alone is the CLI's one error line (as_instanceof_cause()'s
        # wrapper is an InputError too, but its message is Ray's whole remote traceback); chained to Ray's error,
        # so an unexpected failure shown in full still shows where in the task it happened
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, Exception) else e.as_instanceof_cause()) from e


def check_memory_request(per_task: int | None) -> None:
    """Refuse a per-task memory request that no node can grant: Ray would queue those tasks for ever."""
    if not per_task:
        return
    import ray

    largest = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    if per_task > largest:
        raise ValueError(
            f"--memory-per-cpu {per_task / 1e9:.3g} GB is more than the largest node's memory for tasks "
            f"({largest / 1e9:.3g} GB): no decode or finish task could ever be scheduled"
        )


def cluster_cpus() -> int:
    """CPUs of the connected cluster (at least 1): what CPU task pools and block sizes are sized by."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


# Item rows per block: 128 rows cost a decode task ~0.3 s of 640x480 JPEGs, enough to amortise Ray Data's
# per-task overhead (colorize's task decodes them a batch at a time); 32-row blocks made bookkeeping-bound runs
# (2M manifest entries naming missing files) twice as slow to their first finished shard
# (bench/archive_scale.py: 88.6 s vs 43.6 s)
MAX_BLOCK_ROWS = 128


def rows_per_block(n: int, cpus: int | None = None, *, cap: int = MAX_BLOCK_ROWS) -> int:
    """The block-sizing rule of the pipelines' item rows (colorize's decode stage, training's): about four
    blocks per CPU, so that every stage has several tasks in flight and every CPU gets some on a small data
    set, but at most ``cap`` rows, so that per-task overhead does not dominate. ``n``: rows (or an
    estimate); ``cpus``: default the connected cluster's (:func:`cluster_cpus`)."""
    cpus = cluster_cpus() if cpus is None else max(1, cpus)
    return max(1, min(cap, math.ceil(max(0, n) / (4 * cpus))))


def node_count() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_output_reachable(output: str, *, shared: bool) -> None:
    """Refuse a local OUTPUT on a multi-node cluster: every node would write to its own disk and the results
    (and the resume ledger) would be scattered. `shared`: the path is the same shared storage on every node."""
    from raycolor import storage

    if shared or not storage.is_local(output):
        return
    nodes = node_count()
    if nodes > 1:
        raise ValueError(
            f"output {output} is a local path, but the Ray cluster has {nodes} nodes: each would write to its own "
            "disk. Use object storage (s3://bucket/prefix), or pass --shared-output if the path is shared storage "
            "mounted on every node"
        )


@contextlib.contextmanager
def quiet_stderr(enabled: bool = True) -> Iterator[IO[str]]:
    """Filter the process's stderr (file descriptor 2) while the block runs; yields a stream to the real one.

    Ray's C++ core and its loggers write to fd 2 directly, so a Python-level filter cannot catch them: fd 2
    becomes a pipe read by a thread that drops Ray's noise (see _RAY_NOISE) and passes everything else on —
    our messages, tracebacks, Ray's real errors. The yielded stream writes to the real stderr unfiltered
    (for a live progress bar, which must see the terminal). Disabled: fd 2 untouched, yields sys.stderr.

    Python warnings that Ray's own modules raise (e.g. Ray Data's "the operator only received 1 input(s)" on a
    small run) are Ray's chatter too: they are ignored in the block, as its INFO/WARNING logs are; ours and
    everyone else's still show. They go to Ray's log files no more than a UserWarning ever did.
    """
    if not enabled:
        yield sys.stderr
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        with _filtered_fd2() as real:
            yield real


@contextlib.contextmanager
def _filtered_fd2() -> Iterator[IO[str]]:
    """fd 2 through the _RAY_NOISE filter for the block; yields a stream to the real stderr."""
    sys.stderr.flush()
    real_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    real = os.fdopen(os.dup(real_fd), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8", errors="replace")

    drained = threading.Event()

    def pump() -> None:
        with os.fdopen(read_fd, "rb") as pipe:
            for raw in pipe:
                if raw == _DRAINED:
                    drained.set()
                elif not _RAY_NOISE.match(raw.decode("utf-8", "replace")):
                    os.write(real_fd, raw)

    threading.Thread(target=pump, name="raycolor-stderr-filter", daemon=True).start()
    try:
        yield real
    finally:
        sys.stderr.flush()
        real.flush()
        # Ray's processes started in the block inherited the pipe and keep it open after it (still filtered),
        # so the pump never sees EOF: a marker tells when everything written so far has passed through
        os.write(2, _DRAINED)
        os.dup2(real_fd, 2)
        drained.wait(timeout=5.0)
        real.close()


_DRAINED = b"\x00raycolor: stderr drained\n"
