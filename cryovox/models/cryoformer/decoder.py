"""CryoFormer's density decoder: spatial features, query-based deformation transformer, density head.

For a point ``x`` (volume coordinates in pixels from the centre voxel ``D // 2``, mapped to
``u = x / (2 r) + ½ ∈ [0, 1]³`` with ``r`` the support radius) and a particle's deformation
embedding ``z``:

1. spatial features ``f(x) = MLP(hashgrid(u))`` (``C`` channels; :mod:`.hashgrid`, a tiny MLP);
2. deformation tokens ``D(z) = P + W z``: ``n_tokens`` vectors of ``C`` numbers (``P`` learnt);
3. queries: ``Q`` learnable vectors (``n_queries × C``) pass ``blocks`` transformer decoder blocks
   (pre-norm: self-attention among the queries, cross-attention from the queries to ``D(z)``,
   a feed-forward network) → ``Q(z)``, the same for every point of the particle;
4. spatial cross-attention: ``f(x)`` attends to ``Q(z)`` (``heads`` heads), and the deformation
   embedding is also added to every point's features:
   ``h = f + W_o · softmax(W_q f · (W_k Q(z))ᵀ / √d) · W_v Q(z) + W_z z``; the attention weights over
   the queries are what :meth:`QueryDecoder.attention` returns (the "attention maps");
5. density ``σ(x, z) = MLP(LN(h))`` (``head_layers`` hidden layers of ``2C``, ReLU; one number,
   times the model's density scale).

Why the direct term ``W_z z`` and the deeper head (a measured departure from a literal reading of
the paper): fitted to the ten true maps of the hinge benchmark with the true state as ``z`` (clean
3D maps, no images, 1000 Adam steps), the decoder without them never used ``z`` — every map stayed
the consensus (per-state FSC-AUC 0.870 at step 0 and at step 1000; maps of the two end states equal
to 3·10⁻⁸), because the 64 queries leave the blocks nearly identical (the cross-attention output over
four memory tokens is shared by all queries), so the spatial attention is uniform (entropy ln 64)
and ``z`` reaches a point only as a small constant offset that a one-layer head cannot turn into a
local change. With both changes the same fit reaches FSC-AUC 0.944 (``bench_cryoformer.py --sections
decoder``; 0.982 from another initialisation, where the spatial attention also became selective,
entropy 3.6 of 4.16); the MLP ablation reaches 0.986, and faster (0.919 at step 300 against 0.869).

:class:`MLPDecoder` is the ablation "MLP instead of transformer": ``σ = MLP([f(x), z])``.
Both decoders split into ``condition(z)`` (once per particle) and ``density(features, cond)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cryovox.models.cryoformer.hashgrid import HashGridEncoding


class SpatialFeatures(nn.Module):
    """Hash-grid encoding + tiny MLP: ``(N, 3)`` points in ``[0, 1]³`` → ``(N, C)`` features."""

    def __init__(self, channels: int = 64, levels: int = 16, features: int = 2, log2_table: int = 15,
                 base_resolution: int = 16, max_resolution: int = 64, hidden: int = 64):
        super().__init__()
        self.grid = HashGridEncoding(levels, features, log2_table, base_resolution, max(base_resolution,
                                                                                        max_resolution))
        self.mlp = nn.Sequential(nn.Linear(self.grid.out_dim, hidden), nn.ReLU(), nn.Linear(hidden, channels))

    def forward(self, u: Tensor) -> Tensor:
        return self.mlp(self.grid(u))


class FeedForward(nn.Sequential):
    def __init__(self, dim: int, hidden: int, out: int | None = None):
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim if out is None else out))


class DecoderBlock(nn.Module):
    """Pre-norm transformer decoder block on the queries: self-attention, cross-attention to the
    deformation tokens, feed-forward; each with a residual connection."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = FeedForward(dim, ffn)

    def forward(self, q: Tensor, memory: Tensor) -> Tensor:
        """q: ``(B, Q, C)`` queries; memory: ``(B, M, C)`` deformation tokens → ``(B, Q, C)``."""
        h = self.n1(q)
        q = q + self.self_attn(h, h, h, need_weights=False)[0]
        q = q + self.cross_attn(self.n2(q), memory, memory, need_weights=False)[0]
        return q + self.ffn(self.n3(q))


class QueryDecoder(nn.Module):
    """Query-based deformation transformer and spatial cross-attention (see the module docstring).

    zdim: size of ``z``; channels: ``C`` (64); n_queries: ``Q`` (64); blocks: decoder blocks (3);
    heads: attention heads (4); n_tokens: deformation tokens made from ``z`` (4); head_layers: hidden
    layers of the density head (3); deformation: False ignores ``z`` (the "no deformation encoder"
    ablation: the queries are constants and there is no direct term).
    """

    def __init__(self, zdim: int, channels: int = 64, n_queries: int = 64, blocks: int = 3, heads: int = 4,
                 n_tokens: int = 4, deformation: bool = True, head_layers: int = 3):
        super().__init__()
        if head_layers < 1:
            raise ValueError("the density head needs at least one hidden layer")
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be a multiple of heads ({heads})")
        self.channels, self.heads, self.n_queries = int(channels), int(heads), int(n_queries)
        self.deformation = bool(deformation)
        self.queries = nn.Parameter(torch.randn(n_queries, channels) * 0.5)
        # deformation tokens D(z) = P + W z: learnt token vectors P, perturbed by z; W starts small (and
        # the tokens are not normalised), so that the decoder starts nearly independent of z and learns how
        # much to use it — a decoder that starts strongly but randomly dependent on z learns to ignore the
        # (still uninformative) latent, and the posterior collapses
        self.tokens = nn.Linear(zdim, n_tokens * channels) if deformation else None
        if self.tokens is not None:
            with torch.no_grad():
                self.tokens.weight.mul_(0.1)
                self.tokens.bias.zero_()
        self.token_pos = nn.Parameter(torch.randn(n_tokens, channels))
        self.n_tokens = int(n_tokens)
        self.blocks = nn.ModuleList([DecoderBlock(channels, heads, 2 * channels) for _ in range(blocks)])
        self.q_norm = nn.LayerNorm(channels)
        self.w_q = nn.Linear(channels, channels)
        self.w_kv = nn.Linear(channels, 2 * channels)
        self.w_o = nn.Linear(channels, channels)
        self.z_in = nn.Linear(zdim, channels) if deformation else None    # the direct term W_z z
        self.f_norm = nn.LayerNorm(channels)
        self.head = _mlp(channels, 2 * channels, head_layers)

    def condition(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per particle: keys and values of the transformed queries, each ``(B, heads, Q, C / heads)``, and the
        direct term ``W_z z`` ``(B, C)`` (zeros without deformation)."""
        B = z.shape[0]
        if self.deformation:
            mem = self.tokens(z).view(B, self.n_tokens, self.channels) + self.token_pos
        else:
            mem = self.token_pos.expand(B, -1, -1)
        q = self.queries.expand(B, -1, -1)
        for blk in self.blocks:
            q = blk(q, mem)
        kv = self.w_kv(self.q_norm(q)).view(B, self.n_queries, 2, self.heads, -1)
        direct = self.z_in(z) if self.z_in is not None else z.new_zeros(B, self.channels)
        return kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2), direct

    def _query(self, feats: Tensor) -> Tensor:
        B, N, C = feats.shape
        return self.w_q(feats).view(B, N, self.heads, C // self.heads).transpose(1, 2)   # (B, H, N, d)

    def density(self, feats: Tensor, cond: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        """feats: ``(B, N, C)`` spatial features of each particle's points, or ``(1, N, C)`` points shared by
        the B particles of ``cond`` → ``(B, N)`` densities."""
        k, v, direct = cond
        B, (_, N, C) = k.shape[0], feats.shape
        q = self._query(feats).expand(B, -1, -1, -1)
        att = F.scaled_dot_product_attention(q, k, v)                                     # (B, H, N, d)
        h = feats + self.w_o(att.transpose(1, 2).reshape(B, N, C)) + direct[:, None, :]
        return self.head(self.f_norm(h))[..., 0]

    def attention(self, feats: Tensor, cond: tuple[Tensor, ...]) -> Tensor:
        """Spatial cross-attention weights ``(B, heads, N, Q)`` of each point over the queries (rows sum to 1);
        feats as in :meth:`density`."""
        k = cond[0]
        q = self._query(feats).expand(k.shape[0], -1, -1, -1)
        return torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), -1)


def _mlp(n_in: int, width: int, layers: int) -> nn.Sequential:
    """``n_in → width`` (ReLU) ``layers`` times, then ``→ 1``."""
    dims = [n_in] + [width] * layers
    mods: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.ReLU()]
    mods.append(nn.Linear(width, 1))
    return nn.Sequential(*mods)


class MLPDecoder(nn.Module):
    """Ablation: ``σ(x, z) = MLP([f(x), z])`` (``layers`` hidden layers of ``width``) instead of the transformer."""

    def __init__(self, zdim: int, channels: int = 64, width: int = 128, layers: int = 3, deformation: bool = True):
        super().__init__()
        self.deformation = bool(deformation)
        self.zdim = int(zdim)
        self.net = _mlp(channels + (zdim if deformation else 0), width, layers)

    def condition(self, z: Tensor) -> Tensor:
        return z

    def density(self, feats: Tensor, cond: Tensor) -> Tensor:
        """feats ``(B, N, C)`` or ``(1, N, C)`` (shared points); cond ``(B, zdim)`` → ``(B, N)``."""
        B, N = cond.shape[0], feats.shape[1]
        if self.deformation:
            feats = torch.cat([feats.expand(B, -1, -1), cond[:, None, :].expand(-1, N, -1).to(feats.dtype)], -1)
        return self.net(feats)[..., 0].expand(B, -1)
