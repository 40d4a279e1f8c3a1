"""Forward passes that compute a prefix several sequences share only once.

The reward models score k candidates of one content, each behind the same ~270-token note, and a
preference pair's chosen and rejected queries follow the same prompt; the part after the note is ~15
tokens. Running the shared prefix once, copying its key/value cache to each sequence and running only
the suffixes does a fraction of the work, and gives the same hidden states: attention over the cached
prefix is the attention the full sequence would compute (positions are passed explicitly).

Only the requested positions are returned, so a caller applies its head (the LM head over the
vocabulary, a scalar head) where it reads, not at every prompt token.

Gradients flow through the cache, so the same function serves training.

torch is imported inside each function: the core imports (and installs) without the ``train`` extra.
"""
from __future__ import annotations

from typing import Hashable, Sequence


def transformer_and_head(model, head: str):
    """The decoder stack (its output is after the final norm) and the named head of a causal LM or
    sequence classifier, LoRA layers included when ``model`` is a PEFT model."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.model, getattr(inner, head)


def _common_prefix(seqs: list[list[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for j in range(n):
        if any(s[j] != first[j] for s in seqs[1:]):
            return j
    return n


def pad_right(rows: Sequence[list[int]], pad_id: int):
    """Right-padded input_ids and attention_mask (LongTensors [B, longest])."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return ids, mask


def hidden_at(transformer, seqs: Sequence[list[int]], groups: Sequence[Hashable], positions: Sequence[Sequence[int]],
              pad_id: int, max_rows: int = 64):
    """Final hidden states at ``positions[i]`` of ``seqs[i]``, concatenated in order: FloatTensor
    [Σ len(positions[i]), H].

    Sequences with the same group key share their longest common token prefix (up to their first
    requested position); a group of one is run as a plain forward. ``max_rows`` bounds the sequences
    per forward call (a larger group is still one call).
    """
    import torch

    if not (len(seqs) == len(groups) == len(positions)):
        raise ValueError(f"{len(seqs)} sequences, {len(groups)} group keys, {len(positions)} position lists")
    for s, pos in zip(seqs, positions):
        if not s or any(not 0 <= p < len(s) for p in pos):
            raise ValueError("every requested position must lie inside its (non-empty) sequence")
    members: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    shared, single = [], []
    for idx in members.values():
        first = min(min(positions[i], default=len(seqs[i]) - 1) for i in idx)
        p = min(_common_prefix([list(seqs[i]) for i in idx]), first) if len(idx) > 1 else 0
        (shared if p > 0 else single).append((p, idx))
    device = next(transformer.parameters()).device
    found: list = [None] * len(seqs)
    # Similar lengths together keep padding small.
    shared.sort(key=lambda g: -g[0])
    single_rows = sorted((i for _, idx in single for i in idx), key=lambda i: -len(seqs[i]))
    for chunk in _chunks(shared, max_rows):
        _shared_forward(transformer, seqs, positions, chunk, pad_id, device, found)
    for start in range(0, len(single_rows), max_rows):
        rows = single_rows[start:start + max_rows]
        ids, mask = pad_right([list(seqs[i]) for i in rows], pad_id)
        h = transformer(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        for r, i in enumerate(rows):
            found[i] = h[r, list(positions[i])]
    return torch.cat(found) if found else torch.zeros(0)


def _chunks(groups: list[tuple[int, list[int]]], max_rows: int):
    chunk, rows = [], 0
    for g in groups:
        if chunk and rows + len(g[1]) > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(g)
        rows += len(g[1])
    if chunk:
        yield chunk


def _shared_forward(transformer, seqs, positions, chunk, pad_id, device, found) -> None:
    import torch

    prefix_ids, prefix_mask = pad_right([list(seqs[idx[0]][:p]) for p, idx in chunk], pad_id)
    cache = transformer(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                        use_cache=True).past_key_values
    owner = [g for g, (_, idx) in enumerate(chunk) for _ in idx]
    rows = [i for _, idx in chunk for i in idx]
    starts = [chunk[g][0] for g in owner]
    cache.batch_select_indices(torch.tensor(owner, device=device))
    suffix_ids, suffix_mask = pad_right([list(seqs[i][s:]) for i, s in zip(rows, starts)], pad_id)
    mask = torch.cat([prefix_mask[owner], suffix_mask], 1)
    pos = torch.tensor(starts)[:, None] + torch.arange(suffix_ids.shape[1])[None]
    h = transformer(input_ids=suffix_ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                    past_key_values=cache, use_cache=True).last_hidden_state
    for r, (i, s) in enumerate(zip(rows, starts)):
        found[i] = h[r, [p - s for p in positions[i]]]
