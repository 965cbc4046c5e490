"""Paged KV cache under a fixed byte budget, owned by the engine (issue 5 "Deliver 2").

Memory is one preallocated pool of blocks of ``block_size`` token slots per layer; the
pool never grows, so the engine cannot run out of memory by caching. What one token
slot holds depends on the model:

* DeepSeek-V3 (absorbed MLA, SPEC §2): the latent ``c_kv`` (kv_lora_rank numbers) and
  the shared ``k_rope`` (qk_rope_head_dim), for every main layer and every MTP layer —
  bytes/token = (kv_lora_rank + qk_rope_head_dim) × layers × dtype bytes.
* dense students (GQA, SPEC §6): ``k`` and ``v``, kv_heads × head_dim each.

Sequences own lists of block ids ("block tables", kept here by sequence id). Each
model step gets a ``BatchView`` that implements the model's cache seam
``update(layer_idx, a, b) -> (a_all, b_all, mask)`` for a ragged batch: row i has
``cached[i]`` tokens in its blocks and ``new[i]`` new tokens (right-padded to T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import ModelConfig


class CacheError(RuntimeError):
    """The cache cannot hold what was asked (budget too small, or out of free blocks)."""


@dataclass(frozen=True)
class CacheLayout:
    """Per-token, per-layer shapes of the two cached tensors."""

    layers: int
    a_shape: tuple[int, ...]   # c_kv (r,) for MLA, k (kv_heads, head_dim) for GQA
    b_shape: tuple[int, ...]   # k_rope (dr,) for MLA, v (kv_heads, head_dim) for GQA

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> "CacheLayout":
        if cfg.is_moe_model:
            return cls(cfg.num_hidden_layers + cfg.num_nextn_predict_layers, (cfg.kv_lora_rank,),
                       (cfg.qk_rope_head_dim,))
        hd = (cfg.kv_heads, cfg.dense_head_dim)
        return cls(cfg.num_hidden_layers, hd, hd)

    def numbers_per_token(self) -> int:
        return self.layers * (_prod(self.a_shape) + _prod(self.b_shape))

    def bytes_per_token(self, dtype: torch.dtype) -> int:
        return self.numbers_per_token() * _itemsize(dtype)


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


class PagedKVCache:
    """A pool of ``num_blocks`` blocks, a free list, and one block table per sequence."""

    def __init__(self, layout: CacheLayout, num_blocks: int, block_size: int, dtype: torch.dtype,
                 device: str | torch.device = "cpu"):
        if num_blocks < 1 or block_size < 1:
            raise CacheError(f"need at least one block of at least one token, got {num_blocks} × {block_size}")
        self.layout, self.num_blocks, self.block_size = layout, num_blocks, block_size
        self.dtype, self.device = dtype, torch.device(device)
        slots = num_blocks * block_size
        # flat (slots, ...) per layer; slot = block * block_size + offset
        self.a = torch.zeros(layout.layers, slots, *layout.a_shape, dtype=dtype, device=self.device)
        self.b = torch.zeros(layout.layers, slots, *layout.b_shape, dtype=dtype, device=self.device)
        self._free = list(range(num_blocks - 1, -1, -1))   # pop() hands out low ids first
        self.tables: dict[int, list[int]] = {}

    @classmethod
    def from_budget(cls, cfg: ModelConfig, kv_cache_bytes: int, block_size: int, dtype: torch.dtype,
                    device="cpu") -> "PagedKVCache":
        layout = CacheLayout.from_config(cfg)
        block_bytes = layout.bytes_per_token(dtype) * block_size
        num_blocks = kv_cache_bytes // block_bytes
        if num_blocks < 1:
            raise CacheError(f"kv_cache_bytes={kv_cache_bytes} is less than one block "
                             f"({block_size} tokens × {layout.bytes_per_token(dtype)} bytes = {block_bytes} bytes)")
        return cls(layout, num_blocks, block_size, dtype, device)

    # ---------------------------------------------------------------- accounting
    @property
    def bytes_per_token(self) -> int:
        return self.layout.bytes_per_token(self.dtype)

    @property
    def capacity_bytes(self) -> int:
        return self.num_blocks * self.block_size * self.bytes_per_token

    def free_blocks(self) -> int:
        return len(self._free)

    def free_bytes(self) -> int:
        return self.free_blocks() * self.block_size * self.bytes_per_token

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    # ---------------------------------------------------------------- allocation
    def reserve(self, seq_id: int, tokens: int) -> None:
        """Make the block table of ``seq_id`` hold at least ``tokens`` slots (allocating as needed)."""
        table = self.tables.setdefault(seq_id, [])
        need = self.blocks_for(tokens) - len(table)
        if need > len(self._free):
            raise CacheError(f"out of KV blocks: sequence {seq_id} needs {need} more, {len(self._free)} free")
        for _ in range(max(need, 0)):
            table.append(self._free.pop())

    def free(self, seq_id: int) -> None:
        """Return every block of ``seq_id`` to the pool (idempotent)."""
        self._free.extend(reversed(self.tables.pop(seq_id, [])))

    def copy_prefix(self, src: int, dst: int, tokens: int) -> None:
        """Copy the first ``tokens`` cached slots of ``src`` into ``dst`` (already reserved).
        Used to fork the n samples of a prompt after one shared prefill."""
        s, d = self.slots(src, 0, tokens), self.slots(dst, 0, tokens)
        self.a[:, d] = self.a[:, s]
        self.b[:, d] = self.b[:, s]

    def slots(self, seq_id: int, start: int, stop: int) -> torch.Tensor:
        """Flat slot indices of token positions [start, stop) of a sequence."""
        pos = torch.arange(start, stop)
        table = torch.tensor(self.tables[seq_id], dtype=torch.long)
        return (table[pos // self.block_size] * self.block_size + pos % self.block_size).to(self.device)

    def batch_view(self, seq_ids, cached, new) -> "BatchView":
        return BatchView(self, list(seq_ids), list(cached), list(new))


class BatchView:
    """The cache as one model forward sees it: rows of (cached length, new tokens).

    ``positions`` (B, T) are the absolute positions of the new tokens (padding columns
    repeat the row's last position). ``update`` scatters a layer's new entries into the
    rows' blocks, gathers each row's whole history into a padded (B, S, …) tensor, and
    returns the (B, 1, T, S) causal+padding "may attend" mask.
    """

    def __init__(self, cache: PagedKVCache, seq_ids, cached, new):
        if any(n < 1 for n in new):
            raise ValueError("every row needs at least one new token")
        self.cache = cache
        dev, bs = cache.device, cache.block_size
        B, T, S = len(seq_ids), max(new), max(c + n for c, n in zip(cached, new))
        self.shape = (B, T, S)
        tables = [cache.tables[sid] for sid in seq_ids]
        width = max(len(t) for t in tables)
        table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.long)   # (B, blocks)
        c, n = torch.tensor(cached)[:, None], torch.tensor(new)[:, None]
        j = torch.arange(T)[None, :]
        s = torch.arange(S).expand(B, S)
        read = table.gather(1, s // bs) * bs + s % bs             # (B, S); padding reads a masked slot
        pos = c + j.minimum(n - 1)                                 # (B, T); padding repeats the last query
        real = (j < n).flatten()
        self.write_dst = read.gather(1, pos).flatten()[real].to(dev)
        self.write_src = torch.arange(B * T)[real].to(dev)
        self.read = read.to(dev)
        self.positions = pos.to(dev)
        self.mask = (torch.arange(S, device=dev)[None, None, :] <= self.positions[:, :, None]).unsqueeze(1)

    def update(self, layer_idx: int, a: torch.Tensor, b: torch.Tensor):
        cache = self.cache
        B, T = a.shape[:2]
        if (B, T) != self.shape[:2]:
            raise ValueError(f"cache view is for {self.shape[:2]} new tokens, the layer gave {(B, T)}")
        cache.a[layer_idx, self.write_dst] = a.reshape(B * T, *a.shape[2:])[self.write_src].to(cache.dtype)
        cache.b[layer_idx, self.write_dst] = b.reshape(B * T, *b.shape[2:])[self.write_src].to(cache.dtype)
        a_all = cache.a[layer_idx][self.read].to(a.dtype)
        b_all = cache.b[layer_idx][self.read].to(b.dtype)
        return a_all, b_all, self.mask

    def seq_len(self) -> int:
        raise NotImplementedError("a BatchView is ragged: pass positions=view.positions to the model")
