"""Duration-bucketed dynamic batching with an exact, resumable position."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

Seconds = float


class DurationBucketSampler:
    """Yields batches of dataset indices whose padded duration stays under a budget.

    Clips are split into at most `num_buckets` quantile buckets by duration, shuffled within each bucket and
    packed greedily so that `len(batch) * max(duration)` stays at most `max_batch_seconds`; the
    batches are then shuffled across buckets. The order depends only on `seed` and the epoch, so
    `state_dict()` (epoch and batches already consumed) is enough to resume mid-epoch exactly.

    With `world_size > 1` the budget is per process: every rank builds the same global batches
    of up to `world_size * max_batch_seconds` and takes every `world_size`-th clip of each, in
    duration order, so the ranks' shares are balanced. One DDP step then covers exactly the
    global batch that a single process with the whole budget would see. Global batches with
    fewer clips than processes are dropped, so no rank ever gets an empty batch.
    """

    def __init__(
        self,
        durations: Sequence[Seconds],
        *,
        max_batch_seconds: Seconds,
        num_buckets: int = 20,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if max_batch_seconds <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {max_batch_seconds}")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be at least 1, got {num_buckets}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        if not durations:
            raise ValueError("cannot batch an empty dataset")
        self.durations = [float(d) for d in durations]
        self.max_batch_seconds = max_batch_seconds
        # A bucket must hold enough audio for at least one full batch, or batches come out short
        # and a DDP step may not be splittable; small datasets therefore get fewer buckets.
        fill = int(sum(self.durations) // (max_batch_seconds * world_size))
        self.num_buckets = max(1, min(num_buckets, len(self.durations), fill))
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0  # batches of this rank already consumed in `epoch`

    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        return [self._shard(batch) for batch in self._global_batches(epoch) if len(batch) >= self.world_size]

    def _shard(self, batch: list[int]) -> list[int]:
        if self.world_size == 1:
            return batch
        ordered = sorted(batch, key=lambda i: (self.durations[i], i))
        return ordered[self.rank :: self.world_size]

    def global_batches(self) -> list[list[int]]:
        """Return the current epoch's batches before they are split across processes."""
        return [b for b in self._global_batches(self.epoch) if len(b) >= self.world_size]

    def _global_batches(self, epoch: int) -> list[list[int]]:
        budget = self.max_batch_seconds * self.world_size
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = sorted(range(len(self.durations)), key=lambda i: (self.durations[i], i))
        size = len(order) / self.num_buckets
        buckets = [order[round(b * size) : round((b + 1) * size)] for b in range(self.num_buckets)]
        batches: list[list[int]] = []
        for bucket in buckets:
            if self.shuffle:
                bucket = [bucket[i] for i in torch.randperm(len(bucket), generator=generator).tolist()]
            batch: list[int] = []
            longest = 0.0
            for index in bucket:
                candidate = max(longest, self.durations[index])
                if batch and candidate * (len(batch) + 1) > budget:
                    batches.append(batch)
                    batch, candidate = [], self.durations[index]
                batch.append(index)
                longest = candidate
            if batch:
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
        return batches

    def __len__(self) -> int:
        return len(self._epoch_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        for shard, _ in self.iter_with_global_size():
            yield shard

    def iter_with_global_size(self) -> Iterator[tuple[list[int], int]]:
        """This rank's batches from the saved position on, each with its global batch's clip count."""
        batches = self.global_batches()
        # Iteration starts at the saved position; the trainer advances it as batches are consumed.
        for batch in batches[self.position :]:
            yield self._shard(batch), len(batch)

    def advance(self) -> None:
        """Record that one more batch of the current epoch has been consumed."""
        self.position += 1

    def start_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("world_size", 1) != self.world_size:
            raise ValueError(
                f"checkpoint was written with world size {state.get('world_size', 1)}, this run has "
                f"{self.world_size}; resume with the same number of processes"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
