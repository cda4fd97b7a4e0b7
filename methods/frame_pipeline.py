"""A scene's frames through preparation, in order, with the work around the masks overlapped.

A frame's preparation has a heavy middle, its masks (SAM on the accelerator, or a CPU segmenter), and work
on either side that does not need it to finish first: reading the next frame (decoding its image and depth)
and, once a frame's masks exist, its points and its teacher features. With ``overlap`` one worker thread
does that work while the calling thread makes the next frame's masks, so on a GPU the frames are decoded
and the teacher runs beside SAM instead of after it. Measured on a 2-core CPU (``--prepare``, classical
masks, one process): 0.93x the wall time at the paper's frame size (640 x 480), no change at the demo's
(120 x 160) or with both cores busy (two processes); on a GPU it is unmeasured. Each frame's result depends only on the frame (every
random draw is seeded by the frame's id), so the prepared frames are the same bytes with and without it.

At most two frames wait for their points and features, so memory stays a few frames whatever the scene: the
one worker takes its jobs in order, and the read of frame i + 1 is queued behind the finishing of frame
i - 1, which the calling thread waits for before it makes frame i + 1's masks.

A frame that cannot be prepared (``skippable`` errors from reading, masks, points or teacher) is reported in
its place in the order, as it would be without the overlap.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from infra import timing


def _run_here(fn: Callable, *args) -> Future:
    """``fn(*args)`` run in this thread, as a finished Future: the pipeline without a worker."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as e:  # handed on as a worker's error would be; Ctrl-C and exits are not held back
        future.set_exception(e)
    return future


def _timed(fn: Callable, *args) -> tuple:
    clock = timing.Stopwatch()
    result = fn(*args)
    return result, clock.lap()


def prepare_frames(frames: Sequence, scene_id: str, masks: Callable, finish: Callable, skippable: tuple,
                   overlap: bool, phases: dict[str, float]) -> tuple[list, dict[str, str]]:
    """Prepare every frame of a scene in order.

    Args:
      frames: the scene's frames (read lazily by indexing, e.g. ``LazyFrames``).
      scene_id: names a frame that could not be read (``<scene>#<position>``).
      masks: ``masks(frame, phases) -> label map``, always run in the calling thread.
      finish: ``finish(frame, label_map, phases) -> prepared frame``, in the worker with ``overlap``.
      skippable: the errors that skip one frame; any other error stops the scene.
      overlap: read ahead and finish frames in a worker thread while the next frame's masks are made.
      phases: seconds of work per phase, added to (with ``overlap`` they may sum to more than the wall time).

    Returns the prepared frames and {frame id: the first line of why it was skipped}, both in frame order.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-frames") if overlap else None
    submit = pool.submit if pool is not None else _run_here

    def finish_alone(frame, label_map) -> tuple:
        own: dict[str, float] = {}  # merged by the calling thread, in order
        return finish(frame, label_map, own), own

    outcomes: list[tuple[str, Future]] = []  # (frame id, future of (prepared frame, its phases)), in order
    try:
        ahead = submit(_timed, frames.__getitem__, 0) if len(frames) else None
        for position in range(len(frames)):
            frame_id = f"{scene_id}#{position}"
            reading, ahead = ahead, (submit(_timed, frames.__getitem__, position + 1)
                                     if position + 1 < len(frames) else None)
            try:
                frame, seconds = reading.result()  # frames are read lazily: a corrupt file fails here
                frame_id = frame.frame_id
                phases["read"] = phases.get("read", 0.0) + seconds
                label_map = masks(frame, phases)
            except skippable as e:
                outcomes.append((frame_id, _failed(e)))
                continue
            outcomes.append((frame_id, submit(finish_alone, frame, label_map)))
            del frame, label_map
        prepared, skipped = [], {}
        for frame_id, outcome in outcomes:
            try:
                frame, own = outcome.result()
            except skippable as e:
                skipped[frame_id] = (str(e).strip().splitlines() or [type(e).__name__])[0]
                print(f"warning: frame {frame_id} skipped: {skipped[frame_id]}", flush=True)
                continue
            prepared.append(frame)
            for phase, seconds in own.items():
                phases[phase] = phases.get(phase, 0.0) + seconds
        return prepared, skipped
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _failed(error: Exception) -> Future:
    future: Future = Future()
    future.set_exception(error)
    return future
