"""CLIP text features without the waste: each string tokenised once, and no padding to the full context.

CLIP's text tower is causal and pools at the end-of-text token, so a sequence only needs computing up to its own
end token: sequences are sorted by length and batched with their neighbours. The result equals
``model.encode_text`` up to float rounding (tests hold it to that).
"""

from typing import Dict, List, Optional, Sequence

import torch

from .progress import ProgressHook, Steps


class TextEncoder:
    def __init__(self, clip, batch_size: int = 512):
        self.clip = clip
        self.model = clip.model
        self.tokenizer = clip.tokenizer
        self.batch_size = batch_size
        self.context_length = int(getattr(self.tokenizer, "context_length", None) or self.model.context_length)
        self.fast = self._supports_fast_path()
        self._ids: Dict[str, List[int]] = {}
        if self.fast:
            self.sot, self.eot = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id

    def _supports_fast_path(self) -> bool:
        from open_clip.tokenizer import SimpleTokenizer

        model = self.model
        return (isinstance(self.tokenizer, SimpleTokenizer) and self.tokenizer.reduction_fn is None
                and getattr(model, "text_pool_type", None) == "argmax"
                and getattr(model, "attn_mask", None) is not None and hasattr(model, "token_embedding"))

    # -- tokens --------------------------------------------------------------------------------------------------
    def ids(self, text: str) -> List[int]:
        """BPE ids of a text, without start/end tokens (memoised: vocab terms are tokenised once)."""
        ids = self._ids.get(text)
        if ids is None:
            ids = self._ids[text] = self.tokenizer.encode(text)
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
        tokens = self.tokenizer([text])[0]
        return self.context_length + 1 if int(tokens[-1]) != 0 else int((tokens != 0).sum())

    def at_max_length(self, text: str) -> bool:
        """The reference's test: the text fills (or overflows) the whole context."""
        return self.token_count(text) >= self.context_length

    def fits(self, text: str) -> bool:
        return self.token_count(text) <= self.context_length

    # -- features ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: Sequence[str], hook: Optional[ProgressHook] = None, desc: str = "") -> torch.Tensor:
        """Unit-length float32 text features, one row per text."""
        if self.fast:
            return self.encode_sequences([self.sequence(self.ids(t)) for t in texts], hook, desc)
        return self._encode_reference_path(texts, hook, desc)

    @torch.no_grad()
    def encode_sequences(self, sequences: Sequence[Sequence[int]], hook: Optional[ProgressHook] = None,
                         desc: str = "") -> torch.Tensor:
        """Features of full token sequences (start ... end), batched by length."""
        device = self.clip.device
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        out = torch.empty(len(sequences), self._output_dim(), dtype=torch.float32, device=device)
        steps = Steps(hook, -(-len(order) // self.batch_size), desc)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            length = len(sequences[rows[-1]])
            tokens = torch.zeros(len(rows), length, dtype=torch.long)
            for r, i in enumerate(rows):
                tokens[r, :len(sequences[i])] = torch.as_tensor(sequences[i])
            ends = torch.tensor([len(sequences[i]) - 1 for i in rows])
            out[rows] = self._forward(tokens.to(device), ends.to(device))
            steps.advance()
        return out

    def _output_dim(self) -> int:
        projection = self.model.text_projection
        return projection.out_features if isinstance(projection, torch.nn.Linear) else projection.shape[-1]

    def _forward(self, tokens: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
        """open_clip's ``CLIP.encode_text`` on sequences shorter than the context, pooled at each end token."""
        model = self.model
        length = tokens.shape[1]
        cast = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:length].to(cast)
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)[torch.arange(len(tokens), device=tokens.device), ends]
        projection = model.text_projection
        x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        x = x.float()
        return x / x.norm(dim=-1, keepdim=True)

    def _encode_reference_path(self, texts, hook, desc) -> torch.Tensor:
        """Any other open_clip text tower: the model's own encode_text on padded tokens."""
        device = self.clip.device
        rows = []
        steps = Steps(hook, -(-len(texts) // self.batch_size), desc)
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size])).to(device)
            x = self.model.encode_text(tokens).float()
            rows.append(x / x.norm(dim=-1, keepdim=True))
            steps.advance()
        if not rows:
            return torch.empty(0, self._output_dim(), device=device)
        return torch.cat(rows)
