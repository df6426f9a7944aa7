"""Networks of the RQL agent: the velocity field and the vectorised value ensemble.

Both take concat(observation, chunk, flow_time) in that order, like the official networks.
Initialisation and numerics follow flax's defaults: Xavier-uniform weights (fan_avg), zero
biases, tanh-approximated GELU, LayerNorm epsilon 1e-6.

Everything is fp32 unless ``set_hidden_product_dtype`` asks for bf16 products between hidden layers
(``matmul_precision=medium`` on a CPU with bf16 instructions: see ``training.matmul_route``).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from rql_cli.config import RQLConfig

LAYER_NORM_EPS = 1e-6


GELU_SIGMOID_SCALE = 2.0 * math.sqrt(2.0 / math.pi)
"""2 * sqrt(2 / pi): the tanh approximation 0.5 * (1 + tanh(u)) equals sigmoid(2u)."""


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (flax's default): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).

    Inside a compiled update it is written x * sigmoid(2u), the same function: inductor's CPU code
    takes tanh from a 1-ULP library routine and exp from a fast one, so this form ran 2.5x faster
    (262,144 floats, 2 cores) and lifted the 3x256 update 16% on one thread; it is also closer to a
    float64 GELU (1e-6 relative, against up to 3e-2 where the tanh form cancels near 0). Eager runs
    keep ATen's one GELU kernel, which beats the seven-op form there (forward and backward).
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(GELU_SIGMOID_SCALE * (x + 0.044715 * x * x * x))
    return nn.functional.gelu(x, approximate="tanh")


def _affine(layer: nn.Module, x: torch.Tensor, product_dtype: torch.dtype | None) -> torch.Tensor:
    """``layer(x)`` for an ``nn.Linear`` (x (B, in)) or an ``EnsembleLinear`` (x (K, B, in)); with a
    ``product_dtype``, x and the weight are rounded to it for the product (fp32 accumulation inside,
    its result rounded to that dtype and returned as fp32) and the bias is added in fp32."""
    if product_dtype is None:
        return layer(x)
    if isinstance(layer, nn.Linear):
        weight, bias = layer.weight.t(), layer.bias  # (in, out), (out,)
    elif isinstance(layer, EnsembleLinear):
        weight, bias = layer.weight, layer.bias  # (K, in, out), (K, 1, out)
    else:
        raise TypeError(f"not a linear layer: {type(layer).__name__}")
    return torch.matmul(x.to(product_dtype), weight.to(product_dtype)).float() + bias


class MLP(nn.Module):
    """A plain MLP: Linear -> GELU (-> LayerNorm) per hidden layer, then a Linear output.

    ``hidden_product_dtype`` (None: fp32): the dtype of the products from one hidden layer to the next;
    the first layer (the raw inputs) and the output layer always multiply in fp32.
    """

    def __init__(self, in_dim: int, hidden_dims: list[int], out_dim: int, layer_norm: bool = False):
        super().__init__()
        dims = [in_dim, *hidden_dims]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.norms = nn.ModuleList(
            nn.LayerNorm(d, eps=LAYER_NORM_EPS) if layer_norm else nn.Identity() for d in hidden_dims
        )
        self.out = nn.Linear(dims[-1], out_dim)
        for linear in [*self.hidden, self.out]:
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
        self.hidden_product_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, (linear, norm) in enumerate(zip(self.hidden, self.norms, strict=True)):
            x = norm(_gelu(_affine(linear, x, self.hidden_product_dtype if index else None)))
        return self.out(x)


class VelocityField(nn.Module):
    """v(s, x, t): observation (B, obs_dim), chunk (B, h*A), flow time (B, 1) -> velocity (B, h*A)."""

    def __init__(self, obs_dim: int, chunk_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.obs_dim, self.chunk_dim = obs_dim, chunk_dim
        self.mlp = MLP(obs_dim + chunk_dim + 1, hidden_dims, chunk_dim)

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor, flow_time: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([obs, chunk, flow_time], dim=-1))


class EnsembleLinear(nn.Module):
    """K independent linear layers applied as one batched matmul: (K, B, in) -> (K, B, out)."""

    def __init__(self, ensemble_size: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble_size, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, out_dim))
        # Xavier-uniform per member: fan_avg = (in + out) / 2, variance scale 1.
        bound = math.sqrt(6.0 / (in_dim + out_dim))
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the last dim with a scale and bias per member: (K, B, d) -> (K, B, d)."""

    def __init__(self, ensemble_size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ensemble_size, 1, dim))
        self.bias = nn.Parameter(torch.zeros(ensemble_size, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS)
        return torch.addcmul(self.bias, x, self.weight)


class ValueEnsemble(nn.Module):
    """V_k(s, x, t) for k = 1..K, evaluated in one batched computation.

    Input: observation (B, obs_dim), chunk (B, h*A), flow time (B, 1); output (K, B) values.
    The same inputs go to every member; members have independent weights. ``hidden_product_dtype`` as
    ``MLP``'s.
    """

    def __init__(
        self,
        obs_dim: int,
        chunk_dim: int,
        hidden_dims: list[int],
        ensemble_size: int,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.ensemble_size = ensemble_size
        dims = [obs_dim + chunk_dim + 1, *hidden_dims]
        self.hidden = nn.ModuleList(
            EnsembleLinear(ensemble_size, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.norms = nn.ModuleList(
            EnsembleLayerNorm(ensemble_size, d) if layer_norm else nn.Identity() for d in hidden_dims
        )
        self.out = EnsembleLinear(ensemble_size, dims[-1], 1)
        self.hidden_product_dtype: torch.dtype | None = None

    def forward(self, obs: torch.Tensor, chunk: torch.Tensor, flow_time: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, chunk, flow_time], dim=-1)
        x = x.unsqueeze(0).expand(self.ensemble_size, *x.shape)
        for index, (linear, norm) in enumerate(zip(self.hidden, self.norms, strict=True)):
            x = norm(_gelu(_affine(linear, x, self.hidden_product_dtype if index else None)))
        return self.out(x).squeeze(-1)


def set_hidden_product_dtype(network: nn.Module, dtype: torch.dtype | None) -> None:
    """Multiply from one hidden layer to the next in ``dtype`` (None: fp32) in every MLP and value
    ensemble inside ``network``. bf16 products run about twice as fast as fp32 on CPUs with bf16
    instructions, at about 3 significant digits; the layers that read the raw inputs (observation,
    chunk, flow time) and write the outputs (velocities, values) stay fp32."""
    for module in network.modules():
        if isinstance(module, (MLP, ValueEnsemble)):
            module.hidden_product_dtype = dtype


def parameter_count(config: RQLConfig, obs_dim: int, action_dim: int) -> int:
    """Parameters of the online velocity field plus the online value ensemble (no targets), by arithmetic.

    Lets callers refuse a config whose networks cannot fit before allocating any of them.
    """
    chunk_dim = config.horizon * action_dim
    in_dim = obs_dim + chunk_dim + 1

    def mlp(widths: list[int], out_dim: int, layer_norm: bool) -> int:
        dims = [in_dim, *widths]
        linear = sum((a + 1) * b for a, b in itertools.pairwise(dims)) + (dims[-1] + 1) * out_dim
        return linear + (2 * sum(widths) if layer_norm else 0)

    velocity = mlp(config.actor_hidden_dims, chunk_dim, layer_norm=False)
    value = config.ensemble_size * mlp(config.value_hidden_dims, 1, layer_norm=config.value_layer_norm)
    return velocity + value
