"""SiT with the D2C additions: the DC-Embedding of text and the REPA-style projector.

The backbone is :class:`~d2c_pack.models.dit.DiT` unchanged, so an official DiT/SiT state dict
loads into it; the additions live under their own keys (``text_embedder.*``, ``projector.*``).

- **DC-Embedding**: t̃ = Conv1d(D_text→H, kernel L, stride L)(text ⊙ mask), y_text = MLP(t̃) + t̃,
  MLP = LayerNorm(no affine, eps 1e-6) → Linear(H, H) → SiLU → Linear(H, H). The conditioning
  vector is c = t-embedding + y_text + e_c (e_c the class embedding, row C the null class).
  During training text and class are dropped independently with the class-dropout
  probability; the null text is zeros with a zero mask.
- **Projector** φ = Linear(H, 2048) → SiLU → Linear(2048, 2048) → SiLU → Linear(2048, D_vis) on
  the output of block ``encoder_depth``; the alignment loss compares φ(h) with visual tokens.
  The width 2048 is REPA's ``projector_dim`` and can be set (the CPU miniatures use 256: at
  2048 the projector of a 192-wide model costs more than the backbone).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from d2c_pack.models.dit import DiT
from d2c_pack.models.sizes import PROJECTOR_DIM


class DCEmbedding(nn.Module):
    """Text token embeddings (N, L, D_text) → one conditioning vector (N, H)."""

    def __init__(self, text_dim: int, hidden_size: int, text_length: int, dropout_prob: float):
        super().__init__()
        self.proj = nn.Conv1d(text_dim, hidden_size, kernel_size=text_length, stride=text_length)
        self.mlp = nn.Sequential(
            nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6),
            nn.Linear(hidden_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.dropout_prob = dropout_prob

    def token_drop(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Replaces captions by the null text (zeros, zero mask): a random share, or where ``drop`` is True."""
        if drop is None:
            drop = torch.rand(text.shape[0], device=text.device) < self.dropout_prob
        keep = (~drop).to(text.dtype)  # (N,)
        return text * keep[:, None, None], mask * keep[:, None].to(mask.dtype)

    def forward(self, text: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``drop`` (N,) bool forces which captions become the null text; without it, training drops at random."""
        if drop is not None or (self.training and self.dropout_prob > 0):
            text, mask = self.token_drop(text, mask, drop)
        masked = text * mask[..., None].to(text.dtype)  # (N, L, D_text)
        pooled = self.proj(masked.transpose(1, 2).to(self.proj.weight.dtype)).squeeze(-1)  # (N, H)
        return self.mlp(pooled) + pooled  # (N, H)


def build_projector(hidden_size: int, visual_dim: int, width: int = PROJECTOR_DIM) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(hidden_size, width),
        nn.SiLU(),
        nn.Linear(width, width),
        nn.SiLU(),
        nn.Linear(width, visual_dim),
    )


def default_encoder_depth(depth: int) -> int:
    """Block whose output is aligned: 8 (REPA's choice for SiT-XL/2), ⌈depth/3⌉ below 24 blocks."""
    return 8 if depth >= 24 else -(-depth // 3)


class D2CSiT(DiT):
    """DiT/SiT backbone + optional DC-Embedding (``text_dim``) + optional projector (``visual_dim``).

    ``class_cond=False`` leaves the class embedding out of the conditioning (the ablation without
    class labels); its weights stay in the state dict so official checkpoints still load.
    """

    def __init__(
        self,
        *,
        text_dim: int | None = None,
        text_length: int = 16,
        visual_dim: int | None = None,
        encoder_depth: int | None = None,
        projector_dim: int = PROJECTOR_DIM,
        class_cond: bool = True,
        **dit_kwargs,
    ):
        super().__init__(**dit_kwargs)
        hidden_size = self.pos_embed.shape[-1]
        self.class_cond = class_cond
        self.text_embedder = DCEmbedding(text_dim, hidden_size, text_length, self.y_embedder.dropout_prob) if text_dim else None
        self.projector = build_projector(hidden_size, visual_dim, projector_dim) if visual_dim else None
        self.encoder_depth = encoder_depth or default_encoder_depth(len(self.blocks))
        if not 1 <= self.encoder_depth <= len(self.blocks):
            raise ValueError(f"encoder_depth must be in 1..{len(self.blocks)}, got {self.encoder_depth}")
        self.initialize_d2c_weights()

    def initialize_d2c_weights(self) -> None:
        """The additions start neutral: the text MLP's last layer is zero (y_text = t̃ at first), the text
        projection small (std 0.02, like the label table), the projector xavier-uniform like DiT's linears."""
        if self.text_embedder is not None:
            nn.init.normal_(self.text_embedder.proj.weight, std=0.02)
            nn.init.zeros_(self.text_embedder.proj.bias)
            nn.init.xavier_uniform_(self.text_embedder.mlp[1].weight)
            nn.init.zeros_(self.text_embedder.mlp[1].bias)
            nn.init.zeros_(self.text_embedder.mlp[3].weight)
            nn.init.zeros_(self.text_embedder.mlp[3].bias)
        if self.projector is not None:
            for layer in self.projector:
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)

    def embed_condition(
        self,
        t: torch.Tensor,
        y: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        drop_class: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """c = t-embedding (+ class embedding) (+ DC-Embedding of the text); ``drop_*`` force the CFG dropout."""
        c = self.t_embedder(t)  # (N, D)
        if self.class_cond:
            force = None if drop_class is None else drop_class.long()
            c = c + self.y_embedder(y, self.training, force_drop_ids=force)  # (N, D)
        if self.text_embedder is not None:
            c = c + self.text_embedder(text, text_mask, drop_text)  # (N, D)
        return c

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        text: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        return_projection: bool = False,
        drop_class: torch.Tensor | None = None,
        drop_text: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]:
        """
        x: (N, C, H, W), t: (N,), y: (N,) class labels (num_classes = null),
        text: (N, L, D_text) and text_mask: (N, L) when the DC-Embedding is on,
        drop_class / drop_text: (N,) bool, the classifier-free dropout decided by the caller (the trainer
        draws it per sample of the global batch, so that any number of processes trains alike).
        returns (N, C_out, H, W), and with ``return_projection`` also φ(h) (N, T, D_vis) of block ``encoder_depth``.
        """
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D)
        c = self.embed_condition(t, y, text, text_mask, drop_class, drop_text)  # (N, D)
        projection = None
        for depth, block in enumerate(self.blocks, start=1):
            x = block(x, c)  # (N, T, D)
            if return_projection and depth == self.encoder_depth and self.projector is not None:
                projection = self.projector(x)  # (N, T, D_vis)
        x = self.final_layer(x, c)  # (N, T, p^2 * C_out)
        x = self.unpatchify(x)  # (N, C_out, H, W)
        return (x, projection) if return_projection else x
