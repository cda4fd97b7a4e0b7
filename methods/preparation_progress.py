"""What a preparation says while it runs and after: progress lines, the cost of a frame per phase, the frames
it skipped."""
from __future__ import annotations

import pathlib

from infra import progress, timing
from infra.io import atomic_write_text

# Where a frame's seconds go, recorded per scene; a mask source may add its own parts of "masks" (SAM's
# "masks_encoder", "masks_decoder", "masks_post").
PHASES = ("read", "masks", "teacher", "points")


def write_skipped(folder: pathlib.Path, manifests: list[tuple[str, dict]]) -> None:
    """``skipped_frames.txt``: every frame the preparation skipped and why (one line each), when there are any."""
    lines = [f"{frame}\t{why}" for _, done in manifests for frame, why in done.get("skipped", {}).items()]
    if lines:
        atomic_write_text(folder / "skipped_frames.txt", "\n".join(lines) + "\n")
        progress.note_once(f"{len(lines)} frames of {folder.name} could not be prepared and were skipped "
                           f"(listed in {folder / 'skipped_frames.txt'})")


class PreparationProgress:
    """One line every 30 s or so while a split is prepared: scenes done of those to do, frames, frames per
    second, time left (this process; every process prints its own); the phases' costs at the end."""

    def __init__(self, name: str, total: int):
        self.name, self.total, self.scenes, self.frames, self.bytes = name, total, 0, 0, 0
        self.phases = dict.fromkeys(PHASES, 0.0)
        self.clock, self._last = timing.Stopwatch(), 0.0

    def done(self, manifest: dict) -> dict:
        """Count a scene this process prepared (``_prepare_scene``'s manifest), which it returns."""
        self.scenes += 1
        self.frames += len(manifest["frames"])
        self.bytes += manifest["bytes"]
        for phase, seconds in manifest["phases"].items():
            self.phases[phase] = self.phases.get(phase, 0.0) + seconds
        elapsed = self.clock.seconds
        if elapsed - self._last >= 30 and self.scenes < self.total:
            self._last = elapsed
            left = elapsed / self.scenes * (self.total - self.scenes)
            print(f"prepare {self.name}: {self.scenes} of {self.total} scenes, {self.frames} frames, "
                  f"{self.frames / elapsed:.2f} frames/s, about {progress.duration(left)} left", flush=True)
        return manifest

    def summary(self, by_others: int) -> None:
        frames = max(1, self.frames)
        costs = ", ".join(f"{phase} {seconds / frames:.3f}" for phase, seconds in self.phases.items())
        progress.step(f"preparation {self.name}",
                      f"{self.scenes} of {self.total} scenes ({self.frames} frames) prepared in "
                      f"{progress.duration(self.clock.seconds)}" + (f", {by_others} by another process" if by_others
                                                                     else "")
                      + (f"; seconds a frame: {costs}; {self.bytes / frames / 1e6:.2f} MB a frame" if self.frames
                         else ""))


def preparation_cost(manifests: list[tuple[str, dict]]) -> dict[str, float]:
    """Seconds a frame per phase (the sub-phases a mask source reports included), bytes a frame and frames
    skipped, over every scene's manifest, whichever process prepared it."""
    frames = max(1, sum(len(done["frames"]) for _, done in manifests))
    phases = dict.fromkeys(PHASES, 0.0)
    for _, done in manifests:
        for phase, seconds in done.get("phases", {}).items():
            phases[phase] = phases.get(phase, 0.0) + seconds
    out = {f"prepare/seconds_per_frame/{phase}": seconds / frames for phase, seconds in phases.items()}
    out["prepare/bytes_per_frame"] = sum(done.get("bytes", 0) for _, done in manifests) / frames
    out["prepare/skipped_frames"] = float(sum(len(done.get("skipped", {})) for _, done in manifests))
    return out
