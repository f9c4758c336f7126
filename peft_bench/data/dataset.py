"""A dataset of video clips: sampling, decoding and augmentation, robust to broken videos.

A video that fails to decode is logged, counted and replaced by another (deterministically chosen) sample,
so one truncated file does not stop a training run; too many failures raise `DataError`, so a broken copy
of a dataset is not silently trained on. Counters live in shared memory, so they add up across DataLoader
workers and the trainer reads the total in the main process: decode attempts and failures, and one flag per
video (missing, unreadable, too short), so that each kind is counted once per video whichever worker met it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from peft_bench.data.annotations import Annotations, DirectoryListing, VideoSample
from peft_bench.data.check import clip_span
from peft_bench.data.decode import VideoDecodeError, read_clip
from peft_bench.data.sampling import dense_indices, segment_indices
from peft_bench.data.transforms import Recipe, test_views, train_transform

log = logging.getLogger(__name__)

# The failure rate is judged only after this many decode attempts (or the whole dataset, if smaller).
MIN_ATTEMPTS_BEFORE_JUDGING = 20
# Consecutive replacements tried for one item before giving up.
MAX_REPLACEMENTS = 10
# Counter slots: slot 0 for the main process, one per DataLoader worker after it. Each process writes only
# its own slot, so no lock is needed (a lock would tie the dataset to one multiprocessing start method).
_COUNTER_SLOTS = 1 + 256


# Every frame of the kept-decoded videos of this process, by (path, mtime, size): a rewritten file is
# decoded again. Only the synthetic suite keeps videos decoded (about 200 KB each, 250 MB for both).
DECODED: dict[tuple[str, int, int], np.ndarray] = {}


def _file_key(path: Path) -> tuple[str, int, int]:
    try:
        stat = os.stat(path)
    except OSError:  # missing: read_clip says so, as a decode failure
        return str(path), -1, -1
    return str(path), stat.st_mtime_ns, stat.st_size


class DataError(RuntimeError):
    """The data is unusable as given: too many unreadable or missing videos, or no videos at all."""

    def __init__(self, message: str = "") -> None:
        # Raised in a DataLoader worker, the loader raises it again as "Caught DataError in DataLoader worker
        # process 0. Original Traceback ...": the reason is the last line; the worker's traceback is noise.
        if "Original Traceback" in message:
            message = message.strip().splitlines()[-1].split("DataError: ", 1)[-1]
        super().__init__(message)


# Per-video problem flags (one byte per sample in shared memory).
_MISSING, _UNREADABLE, _SHORT = 1, 2, 3
PROBLEM_KINDS = {_MISSING: "missing", _UNREADABLE: "unreadable", _SHORT: "short"}


class VideoClipDataset(Dataset):
    """Items are dict(video=float32 (V, T, 3, S, S), label=int, index=int).

    V is 1 in training and `test_crops * test_clips` at test (clip-major: all crops of clip 0 first).
    `index` is the index of the sample actually returned (a replacement's, if the asked-for video failed).
    Randomness of an item depends only on (seed, epoch, index): call `set_epoch` before each epoch.
    """

    def __init__(
        self,
        annotations: Annotations,
        recipe: Recipe,
        *,
        train: bool,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        max_failure_fraction: float = 0.05,
        decoder: str = "auto",
        decode_device: str = "cpu",
        keep_decoded: bool = False,
    ) -> None:
        if not 0 <= max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be within [0, 1], got {max_failure_fraction}")
        self.recipe = recipe
        self.train = train
        self.input_size = input_size
        self.seed = seed
        self.max_failure_fraction = max_failure_fraction
        self.decoder = decoder
        self.decode_device = decode_device
        # Small datasets (the synthetic suite) decode each video once per process and keep its frames
        # (in DECODED, shared by every dataset of the process: a command's runs read the same files);
        # real datasets never do, they decode only the frames a clip needs.
        self.keep_decoded = keep_decoded
        self.class_names = list(annotations.class_names)
        self.num_classes = len(self.class_names)
        self.source_num_classes = annotations.source_num_classes or self.num_classes  # before a class subset
        self.samples, missing = _split_present_and_missing(annotations.samples)
        self.missing_count = len(missing)
        self.missing_paths = [sample.path for sample in missing]
        self._check_missing(missing, total=len(annotations.samples))
        self._check_labels()
        if train:
            self._transform = train_transform(recipe, input_size, mean, std)
        else:
            self._transform = test_views(recipe, input_size, mean, std)
        # Shared memory: the trainer sums the workers' counters and the workers see the epoch it set.
        self._attempt_slots = multiprocessing.RawArray("q", _COUNTER_SLOTS)
        self._failure_slots = multiprocessing.RawArray("q", _COUNTER_SLOTS)
        self._shared_epoch = multiprocessing.RawValue("q", 0)
        self._problems = multiprocessing.RawArray("b", max(1, len(self.samples)))
        self.min_frames = clip_span(recipe).frames  # fewer, and the sampler repeats frames: counted as short
        self._warned_paths: set[str] = set()

    # ------------------------------------------------------------------------------------------ counters

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self._shared_epoch.value = epoch

    @property
    def epoch(self) -> int:
        return int(self._shared_epoch.value)

    @property
    def failures(self) -> int:
        """Videos that failed to decode so far, over all DataLoader workers."""
        return int(sum(self._failure_slots))

    @property
    def failed_count(self) -> int:
        return self.failures

    @property
    def attempts(self) -> int:
        """Decode attempts so far, over all DataLoader workers."""
        return int(sum(self._attempt_slots))

    def problem_counts(self) -> dict[str, int]:
        """Distinct videos met so far that were missing, unreadable or too short (short ones are still used)."""
        flags = np.frombuffer(self._problems, dtype=np.int8)
        counts = {kind: int((flags == flag).sum()) for flag, kind in PROBLEM_KINDS.items()}
        counts["missing"] += self.missing_count
        return counts

    def first_problems(self, n: int = 3) -> list[str]:
        """The first few problem videos, as "path (kind)"."""
        found = [f"{path} (missing)" for path in self.missing_paths[:n]]
        flags = np.frombuffer(self._problems, dtype=np.int8)
        for index in np.flatnonzero(flags)[: n - len(found)]:
            found.append(f"{self.samples[index].path} ({PROBLEM_KINDS[int(flags[index])]})")
        return found

    @property
    def num_views(self) -> int:
        return 1 if self.train else self.recipe.num_views

    # ------------------------------------------------------------------------------------------- items

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self.samples):
            raise IndexError(f"index {index} out of range for {len(self.samples)} samples")
        sample_index = index
        for attempt in range(MAX_REPLACEMENTS + 1):
            item_seed = self._item_seed(index, attempt)
            try:
                video = self._load(sample_index, item_seed)
            except VideoDecodeError as error:
                self._record_failure(sample_index, error)
                sample_index = self._replacement_index(index, item_seed)
                continue
            self._record_success()
            return {"video": video, "label": self.samples[sample_index].label, "index": sample_index}
        raise DataError(
            f"{MAX_REPLACEMENTS + 1} videos in a row failed to decode while loading item {index}; "
            f"{self.failures} of {self.attempts} decode attempts failed so far"
        )

    def _item_seed(self, index: int, attempt: int) -> int:
        entropy = [self.seed, self.epoch, index, attempt]
        return int(np.random.SeedSequence(entropy).generate_state(1)[0])

    def _replacement_index(self, index: int, item_seed: int) -> int:
        if len(self.samples) == 1:
            return index
        other = random.Random(item_seed).randrange(len(self.samples) - 1)
        return other if other < index else other + 1  # any sample but the asked-for one

    def _load(self, sample_index: int, item_seed: int) -> torch.Tensor:
        rng = random.Random(item_seed)
        sample = self.samples[sample_index]

        def indices(num_frames: int) -> list[int]:
            if num_frames < self.min_frames:
                self._problems[sample_index] = _SHORT
            return self._clip_indices(num_frames, rng)

        if self.keep_decoded:
            key = _file_key(sample.path)
            whole = DECODED.get(key)
            if whole is None:
                whole, _ = read_clip(
                    sample.path, lambda num_frames: list(range(num_frames)), self.decoder, self.decode_device
                )
                DECODED[key] = whole
            frames = whole[indices(len(whole))]
        else:
            frames, _ = read_clip(sample.path, indices, self.decoder, self.decode_device)
        clip = torch.from_numpy(frames)
        if self.train:
            # An isolated generator state: reproducible per item, and the caller's torch RNG is untouched. The
            # transforms draw on the CPU generator alone, so only it is seeded: torch.manual_seed would also queue
            # a seed for every accelerator back end, with a formatted stack each time (a third of an item's load).
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(item_seed)
                return self._transform(clip).unsqueeze(0)
        num_frames = self.recipe.num_frames
        clips = clip.split(num_frames)  # test clips were read together, one after another
        return torch.cat([self._transform(one_clip) for one_clip in clips])

    def _clip_indices(self, num_video_frames: int, rng: random.Random) -> list[int]:
        """Frame indices of the training clip, or of all test clips one after another."""
        recipe = self.recipe
        if recipe.sampling == "segment":
            clips = [
                segment_indices(
                    num_video_frames, recipe.num_frames, train=self.train, rng=rng, formula=recipe.frame_indices
                )
            ]
            if not self.train:
                clips = clips * recipe.test_clips  # segments cover the whole video: all test clips agree
        else:
            num_clips = 1 if self.train else recipe.test_clips
            clips = [
                dense_indices(
                    num_video_frames,
                    recipe.num_frames,
                    recipe.stride,
                    train=self.train,
                    rng=rng,
                    clip_index=clip_index,
                    num_clips=num_clips,
                    formula=recipe.frame_indices,
                )
                for clip_index in range(num_clips)
            ]
        return [index for clip in clips for index in clip]

    # ------------------------------------------------------------------------------------------ failures

    @staticmethod
    def _counter_slot() -> int:
        worker = get_worker_info()
        return 0 if worker is None else 1 + worker.id % (_COUNTER_SLOTS - 1)

    def _record_success(self) -> None:
        self._attempt_slots[self._counter_slot()] += 1

    def _record_failure(self, sample_index: int, error: VideoDecodeError) -> None:
        slot = self._counter_slot()
        self._attempt_slots[slot] += 1
        self._failure_slots[slot] += 1
        gone = not Path(error.path).exists()  # vanished since the dataset was built
        self._problems[sample_index] = _MISSING if gone else _UNREADABLE
        attempts, failures = self.attempts, self.failures
        if error.path not in self._warned_paths:  # once per video and process, not once per epoch
            self._warned_paths.add(error.path)
            log.warning("skipping unreadable video %s: %s (replaced by another sample)", error.path, error.cause)
        if attempts >= min(MIN_ATTEMPTS_BEFORE_JUDGING, len(self.samples)) and (
            failures > self.max_failure_fraction * attempts
        ):
            counts = self.problem_counts()
            raise DataError(
                f"{failures} of {attempts} {'training' if self.train else 'validation'} video reads failed "
                f"({failures / attempts:.1%}), more than "
                f"train.max_failure_fraction={self.max_failure_fraction:g} allows: "
                f"{counts['unreadable']} unreadable, {counts['missing']} missing and {counts['short']} too short "
                f"(used with repeated frames) so far; first: {', '.join(self.first_problems())}; last error: "
                f"{error.cause}. `peft-bench data check` lists every one; raise train.max_failure_fraction if "
                "these losses are expected."
            )

    def _check_missing(self, missing: list[VideoSample], total: int) -> None:
        if not self.samples:
            example = f" (e.g. {missing[0].path})" if missing else ""
            raise DataError(f"none of the {total} videos listed in the annotations exist{example}")
        if not missing:
            return
        examples = ", ".join(str(sample.path) for sample in missing[:3])
        fraction = len(missing) / total
        log.warning(
            "%d of %d listed videos are missing (%.1f%%), e.g. %s", len(missing), total, 100 * fraction, examples
        )
        if fraction > self.max_failure_fraction:
            raise DataError(
                f"{len(missing)} of {total} listed videos are missing ({fraction:.1%}), more than the allowed "
                f"{self.max_failure_fraction:.1%}; e.g. {examples}. Is the video root right?"
            )

    def _check_labels(self) -> None:
        bad = [sample for sample in self.samples if not 0 <= sample.label < self.num_classes]
        if bad:
            raise DataError(f"label {bad[0].label} of {bad[0].path} is outside the {self.num_classes} classes")


def _split_present_and_missing(samples: list[VideoSample]) -> tuple[list[VideoSample], list[VideoSample]]:
    listing = DirectoryListing()
    present: list[VideoSample] = []
    missing: list[VideoSample] = []
    for sample in samples:
        (present if listing.exists(sample.path) else missing).append(sample)
    return present, missing
