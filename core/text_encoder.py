"""CLIP text features without the waste: each string tokenised once, and no padding to the full context.

CLIP's text tower is causal and pools at the end-of-text token, so
- a sequence only needs computing up to its own end token: sequences are sorted by length and batched with their
  neighbours;
- sequences that share a prefix (every candidate of a chain step is ``"{prompt}, {term}"``) can run the prefix
  once and reuse its attention keys and values, computing only each candidate's few own tokens.
Both equal ``model.encode_text`` up to float rounding (tests hold them to that).

Long work takes a ``poll`` callable, called between batches and transformer blocks: it is how a cancel reaches
the middle of a chain step (see :meth:`.progress.Steps.tick`).
"""

import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .parallel import each_batch, single_pass, workers
from .progress import ProgressHook, Steps

# Tokeniser input is cut to this many characters (after collapsing whitespace runs, which it ignores anyway): CLIP
# reads 77 tokens, about 350 characters of English, and byte-pair encoding one giant word takes time quadratic
# in its length (minutes for 128 KB).
MAX_TEXT_CHARS = 1000
Poll = Optional[Callable[[], None]]


def bounded(text: str) -> str:
    """``text`` as the tokenizer gets it: at most MAX_TEXT_CHARS characters, with a warning when cut."""
    if len(text) <= MAX_TEXT_CHARS:
        return text
    squeezed = " ".join(text.split())
    if len(squeezed) > MAX_TEXT_CHARS:
        warnings.warn(f"a text of {len(text):,} characters was cut to its first {MAX_TEXT_CHARS} before tokenizing "
                      f"(CLIP reads at most 77 tokens): {squeezed[:40]!r}...")
        squeezed = squeezed[:MAX_TEXT_CHARS]
    return squeezed


# Token ids are remembered for this many texts, twice over (see ``ids``): every label of a large vocabulary stays
# remembered while in use, and the prompts of a long run (a dataset of 10,000 images) do not pile up.
MEMO_SIZE = 1 << 15


class TextEncoder:
    def __init__(self, clip, batch_size: int = 512, memo_size: int = MEMO_SIZE):
        self.clip = clip
        self.model = clip.model
        self.tokenizer = clip.tokenizer
        self.batch_size = batch_size
        self.memo_size = memo_size
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or self.model.context_length)
        self.fast = self._supports_fast_path()
        self.prefix_reuse = self.fast and self._supports_prefix_reuse()
        self._ids: Dict[str, List[int]] = {}
        self._older_ids: Dict[str, List[int]] = {}
        if self.fast:
            self.sot, self.eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id

    def _supports_fast_path(self) -> bool:
        from open_clip.tokenizer import SimpleTokenizer

        model = self.model
        return (isinstance(self.tokenizer, SimpleTokenizer) and self.tokenizer.reduction_fn is None
                and getattr(model, "text_pool_type", None) == "argmax"
                and getattr(model, "attn_mask", None) is not None and hasattr(model, "token_embedding"))

    def _supports_prefix_reuse(self) -> bool:
        from open_clip.transformer import ResidualAttentionBlock

        blocks = self.model.transformer.resblocks
        return all(type(b) is ResidualAttentionBlock and isinstance(b.attn, torch.nn.MultiheadAttention)
                   and b.attn.in_proj_weight is not None and not hasattr(b, "ln_1_kv") for b in blocks) \
            and getattr(self.model.transformer, "batch_first", True)

    # -- tokens --------------------------------------------------------------------------------------------------
    def ids(self, text: str) -> List[int]:
        """BPE ids of a text, without start/end tokens, memoised: vocab terms are tokenised once.

        The memo has two generations: when the current one is full it becomes the older one (the previous older one
        is dropped), and a text found in the older one moves back to the current one. So texts in use stay, at most
        ``2 * memo_size`` are kept, and each lookup is O(1).
        """
        ids = self._ids.get(text)
        if ids is None:
            ids = self._older_ids.pop(text, None)
            if ids is None:
                ids = self.tokenizer.encode(bounded(text))
            if len(self._ids) >= self.memo_size:
                self._older_ids, self._ids = self._ids, {}
            self._ids[text] = ids
        return ids

    def sequence(self, ids: Sequence[int]) -> List[int]:
        """Start + ids + end, truncated exactly as open_clip's tokenizer truncates."""
        tokens = [self.sot, *ids, self.eot]
        if len(tokens) > self.context_length:
            tokens = tokens[:self.context_length]
            tokens[-1] = self.eot
        return tokens

    def token_count(self, text: str) -> int:
        """Tokens the text needs including start and end (may exceed the context length)."""
        if self.fast:
            return len(self.ids(text)) + 2
        tokens = self.tokenizer([bounded(text)])[0]
        return self.context_length + 1 if int(tokens[-1]) != 0 else int((tokens != 0).sum())

    def at_max_length(self, text: str) -> bool:
        """The reference's test: the text fills (or overflows) the whole context."""
        return self.token_count(text) >= self.context_length

    def fits(self, text: str) -> bool:
        return self.token_count(text) <= self.context_length

    # -- features ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], hook: Optional[ProgressHook] = None, desc: str = "",
               poll: Poll = None) -> torch.Tensor:
        """Unit-length float32 text features, one row per text."""
        if self.fast:
            return self.encode_sequences([self.sequence(self.ids(t)) for t in texts], hook, desc, poll)
        return self._encode_reference_path(texts, hook, desc, poll)

    @torch.no_grad()
    def encode_sequences(self, sequences: Sequence[Sequence[int]], hook: Optional[ProgressHook] = None,
                         desc: str = "", poll: Poll = None) -> torch.Tensor:
        """Features of full token sequences (start ... end), batched by length."""
        device = self.clip.device
        batches = self._batches([len(s) for s in sequences])
        steps = Steps(hook, len(batches), desc)
        return self._run(lambda rows, poll: self._forward(*_padded(sequences, rows, device), poll), batches,
                         len(sequences), poll or steps.tick, steps.advance)

    @torch.no_grad()
    def encode_continuations(self, prefix: Sequence[int], tails: Sequence[Sequence[int]],
                             poll: Poll = None) -> torch.Tensor:
        """Features of ``prefix + tail`` for every tail; ``prefix`` starts with the start token, tails end with
        the end token, and ``len(prefix + tail)`` never exceeds the context (see ``continuation``)."""
        if not self.prefix_reuse:
            return self.encode_sequences([list(prefix) + list(tail) for tail in tails], poll=poll)
        device = self.clip.device
        with single_pass(device):
            past = self._run_blocks(torch.as_tensor([list(prefix)], device=device), None, poll)[1]

        def forward(rows, poll):
            tokens, ends = _padded(tails, rows, device)
            return self._pool(self._run_blocks(tokens, past, poll)[0], ends)

        return self._run(forward, self._batches([len(t) for t in tails]), len(tails), poll)

    def _run(self, forward, batches: List[List[int]], count: int, poll: Poll = None, advance=None) -> torch.Tensor:
        """``forward(rows, poll)`` of every batch, gathered into one matrix of ``count`` rows, checked finite (see
        :func:`.parallel.each_batch` for ``poll``)."""
        out = torch.empty(count, self.output_dim(), dtype=torch.float32, device=self.clip.device)

        def done(rows, features):
            out[rows] = features
            if advance:
                advance()

        each_batch(forward, batches, self.clip.device, done, poll)
        return self.clip.check_finite(out, "text features")

    def _batches(self, lengths: Sequence[int]) -> List[List[int]]:
        """Split sequences into batches that pad little but are not too many.

        Padding a short sequence to its batch's length wastes compute; every extra batch costs a pass over all
        the weights (on a GPU, a round of kernel launches). Over the sorted distinct lengths, a small dynamic
        program picks the grouping with the least ``padded tokens + overhead * batches``. Batches come out
        biggest first: on a CPU they are shared by worker threads, and the last one started decides the finish.
        """
        groups: Dict[int, List[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(n, []).append(i)
        sizes = sorted(groups)
        overhead = 16 if self.clip.device.type == "cpu" else 1024
        # CPU workers each take whole batches: enough of them that every worker gets a share
        size = max(1, min(self.batch_size, -(-len(lengths) // workers(self.clip.device))))
        best = [0.0] + [float("inf")] * len(sizes)
        cut = [0] * (len(sizes) + 1)
        for j in range(1, len(sizes) + 1):
            count = 0
            for i in range(j, 0, -1):
                count += len(groups[sizes[i - 1]])
                cost = best[i - 1] + count * sizes[j - 1] + overhead * -(-count // size)
                if cost < best[j]:
                    best[j], cut[j] = cost, i - 1
        spans, j = [], len(sizes)
        while j > 0:
            spans.append((cut[j], j))
            j = cut[j]
        batches = []
        for a, b in reversed(spans):
            members = [i for n in sizes[a:b] for i in groups[n]]
            batches.extend(members[k:k + size] for k in range(0, len(members), size))
        return sorted(batches, key=lambda rows: -len(rows) * lengths[rows[-1]])

    def continuation(self, prefix: Sequence[int], ids: Sequence[int]) -> List[int]:
        """The tail after ``prefix`` of ``sequence(prefix ids + ids)``, truncated as the tokenizer truncates."""
        tail = [*ids, self.eot][:self.context_length - len(prefix)]
        tail[-1] = self.eot
        return tail

    def _run_blocks(self, tokens: torch.Tensor, past: Optional[List[Tuple[torch.Tensor, torch.Tensor]]],
                    poll: Poll = None):
        """The text transformer on ``tokens`` placed after ``past`` keys/values; returns states and its own k/v."""
        model = self.model
        offset = past[0][0].shape[2] if past else 0
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast)
        x = x + model.positional_embedding[offset:offset + tokens.shape[1]].to(cast)
        present = []
        for i, block in enumerate(model.transformer.resblocks):
            x, kv = _block_forward(block, x, past[i] if past else None)
            present.append(kv)
            if poll:
                poll()
        return x, present

    def _pool(self, x: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = model.ln_final(x)[torch.arange(len(x), device=x.device), ends]
        projection = model.text_projection
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        x = x.float()
        return x / x.norm(dim=-1, keepdim=True)

    def output_dim(self) -> int:
        """The length of one text's features (the model's embedding size)."""
        projection = self.model.text_projection
        return projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[-1]

    def _forward(self, tokens: torch.Tensor, ends: torch.Tensor, poll: Poll = None) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` on sequences shorter than the context, pooled at each end token (its
        ``Transformer.forward`` unrolled, to poll between blocks)."""
        model = self.model
        length = tokens.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        batch_first = getattr(model.transformer, "batch_first", True)
        x = x if batch_first else x.transpose(0, 1).contiguous()
        mask = model.attn_mask[:length, :length]
        for block in model.transformer.resblocks:
            x = block(x, attn_mask=mask)
            if poll:
                poll()
        return self._pool(x if batch_first else x.transpose(0, 1), ends)

    def _encode_reference_path(self, texts, hook, desc, poll: Poll = None) -> torch.Tensor:
        """Any other open_clip text tower: the model's own encode_text on padded tokens."""
        device = self.clip.device
        batches = [list(range(start, min(start + self.batch_size, len(texts))))
                   for start in range(0, len(texts), self.batch_size)]
        # tokenised here, not in the workers: Hugging Face tokenizers fail when two threads share one
        tokens = [self.tokenizer([bounded(texts[i]) for i in rows]) for rows in batches]
        steps = Steps(hook, len(batches), desc)

        def forward(rows, poll):  # one encode_text call: polled between batches only
            x = self.model.encode_text(tokens[rows[0] // self.batch_size].to(device)).float()
            return x / x.norm(dim=-1, keepdim=True)

        return self._run(forward, batches, len(texts), poll or steps.tick, steps.advance)


def _padded(sequences: Sequence[Sequence[int]], rows: Sequence[int], device):
    """Some sequences as one zero-padded batch, with each one's last position (padding after it is never seen)."""
    tokens = torch.zeros(len(rows), max(len(sequences[i]) for i in rows), dtype=torch.long)
    for r, i in enumerate(rows):
        tokens[r, :len(sequences[i])] = torch.as_tensor(sequences[i])
    ends = torch.tensor([len(sequences[i]) - 1 for i in rows])
    return tokens.to(device), ends.to(device)


def _block_forward(block, x: torch.Tensor, past: Optional[Tuple[torch.Tensor, torch.Tensor]]):
    """open_clip's ResidualAttentionBlock, causal, with optional keys/values of earlier positions prepended."""
    attn = block.attn
    batch, length, width = x.shape
    heads = attn.num_heads
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    own = (k, v)
    if past is not None:
        k = torch.cat([past[0].expand(batch, -1, -1, -1), k], dim=2)
        v = torch.cat([past[1].expand(batch, -1, -1, -1), v], dim=2)
    seen = k.shape[2] - length
    mask = torch.ones(length, seen + length, dtype=torch.bool, device=x.device).tril(diagonal=seen)
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    o = attn.out_proj(o.transpose(1, 2).reshape(batch, length, width))
    x = x + block.ls_1(o)
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, own
