"""Parameter roles: ordered regex rules on '/'-joined paths, coverage, reports, partitions.

Every leaf of a parameter tree gets a **role** — what kind of block it is, hence which
symmetry group it has and which update fits it (Lau & Su 2026;
docs/math/symmetry.md#groups, #roles):

==================  =============================================  ===========================
role                block (Flax layout)                            unit axis (permuted units)
==================  =============================================  ===========================
``embedding``       ``Embed`` table ``(V, d)``                     0 (tokens)
``lm_head``         untied head ``Dense`` kernel ``(d, V)``        -1 (vocabulary)
``router``          MoE router kernel ``(d, E)``                   -1 (experts)
``attn_q/k/v``      ``(d, H·d_h)`` (k/v: ``H_kv·d_h``)             — (head axis -1)
``attn_o``          ``(H·d_h, d)``                                 — (head axis -2)
``attn_qkv``        fused ``(d, (H + 2H_kv)·d_h)``                 — (head axis -1)
``mlp_gate/up``     ``(d, f)``                                     -1 (neurons)
``mlp_gate_up``     fused ``(d, 2f)``                              -1 (neuron pairs)
``mlp_down``        ``(f, d)``                                     -2 (neurons)
``expert_gate_up``  ``(E, d, f)`` (fused: ``(E, d, 2f)``)          -1; expert axis = batch
``expert_down``     ``(E, f, d)``                                  -2; expert axis = batch
``vector``          norms, biases (any ndim), every 0-/1-D leaf    —
``other_matrix``    other known matrices (learned positions ...)   —
==================  =============================================  ===========================

**Rules are data.** A :class:`Rule` is ``(pattern, role, ndim, unit_axis, layout, head_axis,
gate_up_pair, shape)``: ``pattern`` is searched (``re.search``) in the leaf's '/'-joined path
(a trailing ``/value``, which ``nnx.State`` flattening appends, is dropped first); ``ndim``
and ``shape`` restrict it further; the **first** matching rule wins. :data:`DEFAULT_RULES`
covers this project's models (``experiments.models``: ``embed/embedding``,
``layers/<i>/attn/{q,k,v,o}_proj/kernel``, ``layers/<i>/mlp/{gate,up,down}_proj/kernel``,
``layers/<i>/moe/router/kernel``, ``layers/<i>/moe/experts/{gate,up,down}_proj``, norms),
the GPT-2-style trees of ``experiments.bench.trees`` (``attn/qkv_proj``, ``mlp/fc``,
``mlp/proj``, ``pos_embed``) and common Flax naming of LLaMA / Qwen / Gemma / Mixtral / OLMoE /
gpt-oss ports (``embed_tokens``, ``wte``, ``lm_head``, ``q_proj``..``o_proj``, ``wq``..``wo``,
``c_attn``/``c_proj``, ``gate_proj``/``up_proj``/``down_proj``, ``w1``/``w2``/``w3``,
``wi_0``/``wi_1``/``wo``, MoE ``router`` or ``gate``, ``experts``, Linen
``MultiHeadDotProductAttention`` ``query``/``key``/``value``/``out``). Matrices it does not
know raise — :func:`classify` never guesses a matrix's role. Prepend your own rules to
override: ``(Rule(r'^my_head/kernel$', 'lm_head', unit_axis=-1),) + DEFAULT_RULES``.

**Layouts.** A matrix rule without ``layout`` reads the last two axes as ``(fan_in,
fan_out)``. That default applies to 2-D leaves, and to higher-dimensional ones only when the
rule declares them in ``ndim`` (leading axes are then batch axes: scanned layers, experts).
Any other match raises naming the path: e.g. a 3-D router kernel is ambiguous (is axis 0 a
layer axis?) until a rule gives its layout.

**Tied embeddings.** A tied table is only ``embed/embedding`` and gets the ``embedding`` role
(uncentered row-norm in the presets): the lookup breaks the head's shift symmetry
``H ↦ H + 1cᵀ``, so centering a tied table would remove a genuine gradient component. The
released reference code instead routes a tied matrix to its LM-head optimizer (untested
there: all its runs are untied); prepend ``Rule(r'(^|/)embed/embedding$', 'lm_head',
unit_axis=0)`` to reproduce that.

Functions: :func:`classify` (tree of role names, coverage enforced), :func:`layouts` (tree
of unit-aware :class:`~optzoo.layout.MatrixLayout`), :func:`report` (the table printed at
start-up), :func:`by_role` (``optax.partition`` from role/group names to transforms).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
import optax

from optzoo._matrix_layout import MatrixLayout
from optzoo._tree import path_str

__all__ = [
    "ROLES",
    "GROUPS",
    "ROLE_GROUPS",
    "Rule",
    "Assignment",
    "ReportRow",
    "Report",
    "DEFAULT_RULES",
    "normalize_path",
    "rule_for",
    "suggest_rule",
    "UNCOVERED",
    "classify",
    "layouts",
    "hidden_layouts",
    "NON_HIDDEN_ROLES",
    "report",
    "by_role",
]

#: Every role a rule may assign.
ROLES = (
    "embedding",
    "lm_head",
    "router",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_o",
    "attn_qkv",
    "mlp_gate",
    "mlp_up",
    "mlp_gate_up",
    "mlp_down",
    "expert_gate_up",
    "expert_down",
    "vector",
    "other_matrix",
)

#: The group of each role: :func:`by_role` accepts a transform per role or per group.
ROLE_GROUPS = {
    "embedding": "embedding",
    "lm_head": "lm_head",
    "router": "router",
    "attn_q": "attention",
    "attn_k": "attention",
    "attn_v": "attention",
    "attn_o": "attention",
    "attn_qkv": "attention",
    "mlp_gate": "mlp",
    "mlp_up": "mlp",
    "mlp_gate_up": "mlp",
    "mlp_down": "mlp",
    "expert_gate_up": "experts",
    "expert_down": "experts",
    "vector": "vectors",
    "other_matrix": "other_matrices",
}

#: Group names (keys of :data:`ROLE_GROUPS`' values), in report order.
GROUPS = (
    "embedding",
    "lm_head",
    "router",
    "attention",
    "mlp",
    "experts",
    "other_matrices",
    "vectors",
)

_GATE_UP_PAIRS = (None, "concat", "interleaved")


def normalize_path(path: str) -> str:
    """Drops one trailing ``/value`` (the ``nnx.Variable`` level of a flattened ``nnx.State``)."""
    return path[: -len("/value")] if path.endswith("/value") else path


def _shape_of(x: Any) -> tuple[int, ...]:
    shape = getattr(x, "shape", None)
    return tuple(int(s) for s in (np.shape(x) if shape is None else shape))


@dataclasses.dataclass(frozen=True)
class Rule:
    """One routing rule: a leaf whose path matches ``pattern`` (and ``ndim``, ``shape``) gets
    ``role``.

    Attributes:
      pattern: regular expression searched (``re.search``) in the normalized '/'-joined path.
      role: one of :data:`ROLES`.
      ndim: an int or tuple of ints: the rule only matches leaves with that many axes. For
        matrix roles without ``layout`` it also *declares* that leading axes beyond the last
        two are batch axes (without it, only 2-D leaves may use the default layout).
      unit_axis: the axis indexed by the permuted units (tokens, vocabulary, experts,
        neurons) for permutation-aware maps; ``None`` for roles without units.
      layout: an explicit :class:`~optzoo.layout.MatrixLayout` (its ``unit_axis``, if unset,
        is filled from ``unit_axis``).
      head_axis: for attention roles, the axis holding ``heads × head_dim`` (q/k/v/qkv
        kernels ``(d, H·d_h)``: ``-1``; o kernels ``(H·d_h, d)``: ``-2``), used for head-wise
        Muon when a head dimension is given.
      gate_up_pair: ``'concat'``/``'interleaved'`` for a fused gate|up unit axis (one unit =
        the pair ``(gate_j, up_j)``), else ``None``.
      shape: an optional predicate ``shape -> bool`` (e.g. "fewer units than features").
      note: free text shown by :func:`report`-adjacent tooling and error messages.
      context: ``(pattern, predicate)``: the rule matches only if *another* leaf of the same
        tree has a (normalized) path matching ``pattern`` — in which ``{parent}`` stands for
        the matched leaf's path without its last two segments (module and parameter name),
        regex-escaped — and, if ``predicate`` is given, a shape it accepts. E.g. an MoE router
        ``mlp/gate/kernel`` is told from a dense gated MLP's ``mlp/gate/kernel`` by its sibling
        experts: ``(r'^{parent}/experts/', None)``. Without the tree (:func:`rule_for` on one
        path) a context rule never matches.
    """

    pattern: str
    role: str
    ndim: int | tuple[int, ...] | None = None
    unit_axis: int | None = None
    layout: MatrixLayout | None = None
    head_axis: int | None = None
    gate_up_pair: str | None = None
    shape: Callable[[tuple[int, ...]], bool] | None = None
    note: str = ""
    context: tuple[str, Callable[[tuple[int, ...]], bool] | None] | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(
                f"Rule({self.pattern!r}): unknown role {self.role!r}; expected one of {list(ROLES)}"
            )
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"Rule({self.pattern!r}, {self.role!r}): invalid regex: {e}") from e
        if self.ndim is not None:
            nd = (self.ndim,) if isinstance(self.ndim, int) else tuple(self.ndim)
            if not nd or any(not isinstance(n, int) or n < 0 for n in nd):
                raise ValueError(
                    f"Rule({self.pattern!r}): ndim must be a non-negative int or "
                    f"a tuple of them, got {self.ndim!r}"
                )
            object.__setattr__(self, "ndim", nd)
        if self.layout is not None and not isinstance(self.layout, MatrixLayout):
            raise TypeError(
                f"Rule({self.pattern!r}): layout must be a MatrixLayout, got "
                f"{type(self.layout).__name__}"
            )
        if self.role == "vector" and (self.unit_axis is not None or self.layout is not None):
            raise ValueError(f"Rule({self.pattern!r}): role 'vector' takes no unit_axis/layout")
        if self.gate_up_pair not in _GATE_UP_PAIRS:
            raise ValueError(
                f"Rule({self.pattern!r}): gate_up_pair must be one of "
                f"{list(_GATE_UP_PAIRS)}, got {self.gate_up_pair!r}"
            )
        if self.gate_up_pair is not None and self.unit_axis is None:
            raise ValueError(
                f"Rule({self.pattern!r}): gate_up_pair needs unit_axis (the fused axis)"
            )
        if self.head_axis is not None and not self.role.startswith("attn_"):
            raise ValueError(
                f"Rule({self.pattern!r}): head_axis is for attention roles, not {self.role!r}"
            )

    def matches(
        self,
        path: str,
        shape: Sequence[int],
        tree: Sequence[tuple[str, tuple[int, ...]]] | None = None,
    ) -> bool:
        """Whether this rule applies to a leaf (``path`` normalized, ``shape``); ``tree`` is
        every leaf's ``(normalized path, shape)``, needed by a ``context`` rule."""
        if self.ndim is not None and len(shape) not in self.ndim:
            return False
        if re.search(self.pattern, path) is None:
            return False
        if self.shape is not None and not self.shape(tuple(shape)):
            return False
        if self.context is None:
            return True
        if tree is None:
            return False
        pattern, predicate = self.context
        parent = re.escape(path.rsplit("/", 2)[0]) if path.count("/") >= 2 else ""
        want = re.compile(pattern.replace("{parent}", parent))
        return any(
            other != path
            and want.search(other)
            and (predicate is None or predicate(tuple(other_shape)))
            for other, other_shape in tree
        )

    def matrix_layout(self, path: str, shape: Sequence[int]) -> MatrixLayout | None:
        """The leaf's matrix layout under this rule (``None`` for vectors), validated.

        Raises:
          ValueError: naming ``path``, if the rule's layout does not fit ``shape`` or the
            default (last-two-axes) layout is used on an undeclared >2-D leaf.
        """
        shape = tuple(shape)
        if self.role == "vector":
            return None
        if self.layout is not None:
            lay = self.layout
            if lay.unit_axis is None and self.unit_axis is not None:
                lay = dataclasses.replace(lay, unit_axis=self.unit_axis)
        else:
            if len(shape) < 2:
                raise ValueError(
                    f"routing: rule {self._describe()} matches '{path}' of shape "
                    f"{shape}, but role {self.role!r} needs a matrix (>= 2 axes)"
                )
            if len(shape) > 2 and self.ndim is None:
                raise ValueError(
                    f"routing: rule {self._describe()} matches '{path}' of shape {shape}, but a "
                    f"{len(shape)}-D {self.role!r} needs an explicit layout: the default "
                    "layout reads 2-D (fan_in, fan_out) kernels, and which leading axes are "
                    "batch axes (scanned layers? experts?) is ambiguous. Give the rule a "
                    f"layout=MatrixLayout(...), or declare ndim={len(shape)} to treat the "
                    "leading axes as batch axes"
                )
            lay = MatrixLayout(unit_axis=self.unit_axis)
        lay.validate(shape, path)
        return lay

    def _describe(self) -> str:
        return f"({self.role!r}, pattern {self.pattern!r})"


class Assignment(NamedTuple):
    """A transform for :func:`by_role` with what :func:`report` prints about it.

    Attributes:
      transform: the optax transform for the role/group (learning rate included).
      name: short description for the report (e.g. ``'rownorm(centered)'``).
      lr_multiplier: factor applied to the base learning rate, for the report.
    """

    transform: optax.GradientTransformation
    name: str = ""
    lr_multiplier: float | None = None


class ReportRow(NamedTuple):
    """One row of :func:`report`."""

    path: str
    shape: tuple[int, ...]
    role: str
    unit_axis: int | None
    transform: str
    lr_multiplier: float | None
    rule: int


#: The role :func:`report` prints for a leaf no rule covers.
UNCOVERED = "UNCOVERED"


class Report(str):
    """The text table of :func:`report` (a ``str``), with the rows as data in ``.rows`` and
    the normalized paths of the leaves no rule covers in ``.uncovered``."""

    rows: tuple[ReportRow, ...]
    uncovered: tuple[str, ...]

    def __new__(cls, text: str, rows: Sequence[ReportRow], uncovered: Sequence[str] = ()):
        obj = super().__new__(cls, text)
        obj.rows = tuple(rows)
        obj.uncovered = tuple(uncovered)
        return obj


# ----------------------------------------------------------------------- default rules
_ATTN = r"(?i)(attn|attention)[^/]*"
_STACK2 = (2, 3)  # a 2-D kernel, optionally with a leading scanned-layer axis
_STACK_E = (2, 3, 4)  # per-expert 2-D, stacked experts, stacked experts in scanned layers


def _hf_qkv(shape: tuple[int, ...]) -> bool:
    return shape[-2] == 3 * shape[-1]


_CONV1D = MatrixLayout(reduction_axes=(-1,), output_axes=(-2,))  # HF Conv1D (out, in)
_LINEN_QKV = MatrixLayout(reduction_axes=(-3,), output_axes=(-1,))  # (d, H, d_h): H = batch
_LINEN_OUT = MatrixLayout(reduction_axes=(-2,), output_axes=(-1,))  # (H, d_h, d): H = batch

#: The default rules (first match wins); see the module docstring for what they cover.
DEFAULT_RULES: tuple[Rule, ...] = (
    # -- vectors: biases and norm parameters of any ndim, then every 0-/1-D leaf.
    Rule(r"(^|/)bias$", "vector", note="biases (also stacked, expert, router biases)"),
    Rule(
        r"(?i)(^|/)(\w*norm(_\d+)?|ln(_\w+)?|ln\d*)/(scale|bias|weight)$",
        "vector",
        note="norms: a module name ending in 'norm' (LayerNorm_0, q_norm, input_layernorm)",
    ),
    Rule(r".", "vector", ndim=(0, 1), note="every other 0-/1-D leaf"),
    # -- token embeddings (Flax Embed (V, d): tokens on axis 0).
    Rule(
        r"(^|/)(embed|embed_tokens|tok_embeddings|token_embedding|token_embedder|wte|"
        r"word_embeddings|embedder|shared)/(embedding|input_embedding)$",
        "embedding",
        unit_axis=0,
        note="token table (also a tied head)",
    ),
    Rule(
        r"(^|/)(pos_embed|pos_embedding|position_embedding|position_embeddings|wpe|"
        r"positional_embedding)/embedding$",
        "other_matrix",
        note="learned positions: positions are not permutable",
    ),
    # -- untied LM head / classifier (Dense kernel (d, V): vocabulary or classes on axis -1).
    Rule(
        r"(^|/)(lm_head|output_projection|unembed|logits_dense|head|classifier)/kernel$",
        "lm_head",
        ndim=2,
        unit_axis=-1,
    ),
    # -- MoE routers (Dense kernel (d, E): experts on axis -1).
    Rule(r"(^|/)router/kernel$", "router", unit_axis=-1),
    Rule(
        r"(?i)(^|/)(moe|block_sparse_moe|sparse_moe|moe_block|moeblock_\d+|switch_moe)/gate/"
        r"kernel$",
        "router",
        unit_axis=-1,
        note="Mixtral/MaxText naming",
    ),
    Rule(
        r"(^|/)(mlp|feed_forward|ffn)/gate/kernel$",
        "router",
        unit_axis=-1,
        context=(r"^{parent}/experts(/|$)", None),
        note="OLMoE/Qwen-MoE naming: a router has sibling experts; a dense gated MLP's "
        "gate (no experts beside it) falls through to mlp_gate",
    ),
    # -- MoE experts: expert axis first (batch), (E, d, f) / (E, f, d), or per-expert 2-D.
    Rule(
        r"(^|/)experts/gate_up_proj(/kernel)?$",
        "expert_gate_up",
        ndim=(3, 4),
        unit_axis=-1,
        gate_up_pair="interleaved",
        note="gpt-oss fused (E, d, 2f), interleaved gate/up",
    ),
    Rule(
        r"(?i)(^|/)(experts(/\d+)?|moeblock_\d+)/(gate_proj|up_proj|w1|w3|wi_0|wi_1)"
        r"(/kernel)?$",
        "expert_gate_up",
        ndim=_STACK_E,
        unit_axis=-1,
    ),
    Rule(
        r"(?i)(^|/)(experts(/\d+)?|moeblock_\d+)/(down_proj|w2|wo)(/kernel)?$",
        "expert_down",
        ndim=_STACK_E,
        unit_axis=-2,
    ),
    # -- attention. Linen MultiHeadDotProductAttention: (d, H, d_h) and (H, d_h, d).
    Rule(_ATTN + r"/query/kernel$", "attn_q", ndim=(3, 4), layout=_LINEN_QKV),
    Rule(_ATTN + r"/key/kernel$", "attn_k", ndim=(3, 4), layout=_LINEN_QKV),
    Rule(_ATTN + r"/value/kernel$", "attn_v", ndim=(3, 4), layout=_LINEN_QKV),
    Rule(_ATTN + r"/out/kernel$", "attn_o", ndim=(3, 4), layout=_LINEN_OUT),
    # HuggingFace Flax GPT-2 stores its Conv1D kernels (out, in): c_attn (3d, d), c_fc (4d, d),
    # mlp/c_proj (d, 4d); attn/c_proj (d, d) is told by its sibling c_attn's orientation.
    Rule(
        r"(^|/)c_attn/kernel$",
        "attn_qkv",
        ndim=2,
        layout=_CONV1D,
        head_axis=-2,
        shape=_hf_qkv,
        note="HF Flax GPT-2 Conv1D (3d, d) = (out, in)",
    ),
    Rule(
        r"(^|/)attn/c_proj/kernel$",
        "attn_o",
        ndim=2,
        layout=_CONV1D,
        head_axis=-1,
        context=(r"^{parent}/c_attn/kernel$", _hf_qkv),
        note="HF Flax GPT-2 Conv1D (d, d) = (out, in)",
    ),
    Rule(
        r"(^|/)mlp/c_fc/kernel$",
        "mlp_up",
        ndim=2,
        layout=_CONV1D,
        unit_axis=-2,
        shape=lambda s: s[0] > s[1],
        note="HF Flax GPT-2 Conv1D (4d, d) = (out, in)",
    ),
    Rule(
        r"(^|/)mlp/c_proj/kernel$",
        "mlp_down",
        ndim=2,
        layout=_CONV1D,
        unit_axis=-1,
        shape=lambda s: s[0] < s[1],
        note="HF Flax GPT-2 Conv1D (d, 4d) = (out, in)",
    ),
    Rule(
        r"(?i)(^|/)(qkv_proj|qkv|c_attn|query_key_value|wqkv)/kernel$",
        "attn_qkv",
        ndim=_STACK2,
        head_axis=-1,
        note="fused q|k|v",
    ),
    Rule(r"(^|/)(q_proj|query_proj)/kernel$", "attn_q", ndim=_STACK2, head_axis=-1),
    Rule(r"(^|/)(k_proj|key_proj)/kernel$", "attn_k", ndim=_STACK2, head_axis=-1),
    Rule(r"(^|/)(v_proj|value_proj)/kernel$", "attn_v", ndim=_STACK2, head_axis=-1),
    Rule(r"(^|/)(o_proj|out_proj)/kernel$", "attn_o", ndim=_STACK2, head_axis=-2),
    Rule(_ATTN + r"/(wq|q)/kernel$", "attn_q", ndim=_STACK2, head_axis=-1),
    Rule(_ATTN + r"/(wk|k)/kernel$", "attn_k", ndim=_STACK2, head_axis=-1),
    Rule(_ATTN + r"/(wv|v)/kernel$", "attn_v", ndim=_STACK2, head_axis=-1),
    Rule(_ATTN + r"/(wo|o|c_proj|dense)/kernel$", "attn_o", ndim=_STACK2, head_axis=-2),
    # -- dense MLPs (Dense kernels: gate/up (d, f) neurons on -1, down (f, d) on -2).
    Rule(
        r"(^|/)gate_up_proj/kernel$",
        "mlp_gate_up",
        ndim=_STACK2,
        unit_axis=-1,
        gate_up_pair="concat",
        note="Phi-3 style fused (d, 2f): gate | up",
    ),
    Rule(r"(^|/)(gate_proj|w1|wi_0|gate|fc_gate)/kernel$", "mlp_gate", ndim=_STACK2, unit_axis=-1),
    Rule(
        r"(^|/)(up_proj|w3|wi_1|wi|fc|c_fc|fc1|fc_in|dense_h_to_4h)/kernel$",
        "mlp_up",
        ndim=_STACK2,
        unit_axis=-1,
    ),
    Rule(
        r"(^|/)(down_proj|w2|fc2|fc_out|dense_4h_to_h)/kernel$",
        "mlp_down",
        ndim=_STACK2,
        unit_axis=-2,
    ),
    Rule(
        r"(?i)(^|/)(mlp|feed_forward|ffn|mlpblock_\d+)/(wo|proj|c_proj)/kernel$",
        "mlp_down",
        ndim=_STACK2,
        unit_axis=-2,
    ),
    # -- generic Flax modules: any 3-D query/key/value/out kernel is a MultiHeadAttention one
    # (linen nn.MultiHeadAttention / nnx.MultiHeadAttention under any attribute name), linen's
    # auto-named Dense_<k> / Conv_<k> and NNX Linear/Conv kernels. A classifier's last Dense is
    # a hidden matrix here unless a rule names it (prepend Rule(r'Dense_3/kernel$', 'lm_head',
    # unit_axis=-1)).
    Rule(r"(^|/)query/kernel$", "attn_q", ndim=(3, 4), layout=_LINEN_QKV),
    Rule(r"(^|/)key/kernel$", "attn_k", ndim=(3, 4), layout=_LINEN_QKV),
    Rule(r"(^|/)value/kernel$", "attn_v", ndim=(3, 4), layout=_LINEN_QKV),
    Rule(r"(^|/)out/kernel$", "attn_o", ndim=(3, 4), layout=_LINEN_OUT),
    Rule(
        r"(^|/)(Dense|DenseGeneral|Linear)_\d+/kernel$",
        "other_matrix",
        ndim=2,
        note="linen Dense_<k>: a hidden matrix",
    ),
    *(
        Rule(
            r"(^|/)(Conv|ConvTranspose|ConvLocal)_\d+/kernel$",
            "other_matrix",
            ndim=nd,
            layout=MatrixLayout(reduction_axes=tuple(range(-nd, -1)), output_axes=(-1,)),
            note="conv kernel (*spatial, in, out): spatial axes and in are the fan-in",
        )
        for nd in (3, 4, 5)
    ),
)


# ------------------------------------------------------------------------ matching
def _rules(rules: Sequence[Rule] | None) -> tuple[Rule, ...]:
    rules = DEFAULT_RULES if rules is None else tuple(rules)
    for r in rules:
        if not isinstance(r, Rule):
            raise TypeError(f"routing: rules must be Rule instances, got {type(r).__name__}")
    return rules


def _match(
    path: str,
    shape: tuple[int, ...],
    rules: tuple[Rule, ...],
    tree: Sequence[tuple[str, tuple[int, ...]]] | None = None,
) -> tuple[int, Rule]:
    npath = normalize_path(path)
    for i, rule in enumerate(rules):
        if rule.matches(npath, shape, tree):
            return i, rule
    raise ValueError(
        f"routing: no rule covers parameter '{npath}' of shape {shape}; every leaf needs a role. "
        f"routing.report(params) lists every uncovered leaf with a rule matching exactly those; "
        f"for this one: ({suggest_rule([(npath, shape)])},) + rules, with a role from "
        f"{list(ROLES)}"
    )


def suggest_rule(leaves: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    """Source of a :class:`Rule` that matches exactly the given ``(path, shape)`` leaves.

    The pattern is the anchored alternation of their normalized paths, so it cannot catch any
    other leaf; the role is ``'vector'`` when every leaf has fewer than two axes, else
    ``'other_matrix'`` (a placeholder to replace by the true role, e.g. ``'mlp_up'``).
    """
    paths = sorted({normalize_path(p) for p, _ in leaves})
    pattern = "^(?:" + "|".join(re.escape(p) for p in paths) + ")$"
    role = "vector" if all(len(shape) < 2 for _, shape in leaves) else "other_matrix"
    return f"Rule(r'{pattern}', {role!r})"


def rule_for(
    path: str, shape: Sequence[int], rules: Sequence[Rule] | None = None, params: Any = None
) -> Rule:
    """The first rule matching a leaf; raises ``ValueError`` naming the path if none does.

    ``params`` (the whole tree) lets ``context`` rules see the leaf's siblings; without it
    they do not match (e.g. an ``mlp/gate/kernel`` is then a dense MLP gate, not a router).
    """
    tree = None
    if params is not None:
        tree = [(normalize_path(p), s) for p, s in _leaves(params)[0]]
    return _match(path, tuple(shape), _rules(rules), tree)[1]


def _leaves(params: Any) -> tuple[list[tuple[str, tuple[int, ...]]], Any]:
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    return [(path_str(p), _shape_of(x)) for p, x in paths_leaves], treedef


def _resolved(params: Any, rules: Sequence[Rule] | None):
    """``[(path, shape, rule index, rule, layout)]`` and the treedef; validates every leaf."""
    rules = _rules(rules)
    leaves, treedef = _leaves(params)
    tree = [(normalize_path(p), shape) for p, shape in leaves]
    out = []
    for path, shape in leaves:
        i, rule = _match(path, shape, rules, tree)
        out.append((path, shape, i, rule, rule.matrix_layout(path, shape)))
    return out, treedef


def classify(params: Any, rules: Sequence[Rule] | None = None) -> Any:
    """A tree (structure of ``params``) of role names.

    Works on arrays, ``jax.ShapeDtypeStruct`` trees (``nnx.eval_shape``), ``nnx.State`` and
    trees masked by ``optax.partition``.

    Raises:
      ValueError: naming the path of a leaf no rule covers, or whose matching rule's layout
        does not fit it (out-of-range unit axis, undeclared >2-D matrix, ...).
    """
    resolved, treedef = _resolved(params, rules)
    return treedef.unflatten([rule.role for _, _, _, rule, _ in resolved])


def layouts(params: Any, rules: Sequence[Rule] | None = None) -> Any:
    """A tree of :class:`~optzoo.layout.MatrixLayout` (``None`` for vectors) from the rules,
    with each rule's ``unit_axis``; usable as the ``layout`` of any optzoo matrix method."""
    resolved, treedef = _resolved(params, rules)
    return treedef.unflatten([lay for *_, lay in resolved])


#: Roles that are *not* hidden matrices: Muon-style methods leave them to their fallback.
NON_HIDDEN_ROLES = ("embedding", "lm_head", "router", "vector")


def hidden_layouts(params: Any, rules: Sequence[Rule] | None = None) -> Any:
    """:func:`layouts` for the hidden matrices only: ``None`` for embeddings, LM heads,
    routers and vectors (:data:`NON_HIDDEN_ROLES`).

    The one-line way to give a Muon-style optimizer a role-aware layout, so embeddings and
    heads go to its fallback and multi-axis kernels (linen attention, convs, experts) are read
    the way their rule says: ``optzoo.muon(0.02, layout=optzoo.routing.hidden_layouts)``.
    """
    resolved, treedef = _resolved(params, rules)
    return treedef.unflatten(
        [None if rule.role in NON_HIDDEN_ROLES else lay for _, _, _, rule, lay in resolved]
    )


# -------------------------------------------------------------------------- partition
def _label(role: str, keys: Any, path: str) -> str:
    if role in keys:
        return role
    group = ROLE_GROUPS[role]
    if group in keys:
        return group
    raise ValueError(
        f"routing.by_role: no transform for parameter '{path}' (role {role!r}, "
        f"group {group!r}); transforms are given for {sorted(keys)}"
    )


def _check_keys(transforms: Mapping[str, Any], what: str) -> None:
    for key in transforms:
        if key not in ROLES and key not in GROUPS:
            raise ValueError(
                f"{what}: unknown key {key!r}; expected a role {list(ROLES)} or a "
                f"group {list(GROUPS)}"
            )


def by_role(
    transforms: Mapping[str, optax.GradientTransformation | Assignment],
    rules: Sequence[Rule] | None = None,
) -> optax.GradientTransformation:
    """``optax.partition`` sending every leaf to the transform of its role (or role group).

    Args:
      transforms: maps role names (:data:`ROLES`) and/or group names (:data:`GROUPS`:
        ``'attention'`` = all ``attn_*``, ``'mlp'``, ``'experts'``, ``'vectors'``,
        ``'other_matrices'``, ...) to complete transforms (learning rate included) or
        :class:`Assignment`. A role key takes precedence over its group's.
      rules: routing rules (default :data:`DEFAULT_RULES`).

    Returns:
      An ``optax.partition`` whose labels are computed from the parameters at ``init`` (and
      from the updates' paths and shapes at ``update``). Keys given the *same* transform
      object share one branch (labelled by the first such key): one state and one update for
      all their leaves.

    Raises:
      ValueError: (at construction) for unknown keys; (at ``init``) naming the path of a leaf
        no rule covers or whose role has no transform.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from optzoo import routing
      >>> params = {'embed': {'embedding': jnp.zeros((8, 4))}, 'norm': {'scale': jnp.ones(4)}}
      >>> tx = routing.by_role({'embedding': optax.sgd(0.1), 'vectors': optax.adam(1e-3)})
      >>> state = tx.init(params)
    """
    _check_keys(transforms, "routing.by_role")
    rules = _rules(rules)
    txs = {k: v.transform if isinstance(v, Assignment) else v for k, v in transforms.items()}
    # keys given the same transform object share one branch: one state, one update (Muon
    # then batches same-shape matrices across the groups, as one muon() on the tree would)
    label_of: dict[str, str] = {}
    for k, tx in txs.items():
        label_of[k] = next((j for j in label_of if txs[j] is tx), k)
    branches = {k: tx for k, tx in txs.items() if label_of[k] == k}

    def labels(tree):
        resolved, treedef = _resolved(tree, rules)
        return treedef.unflatten(
            [label_of[_label(rule.role, txs, path)] for path, _, _, rule, _ in resolved]
        )

    return optax.partition(branches, labels)


# -------------------------------------------------------------------------------- report
def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + ")"


def report(
    params: Any, rules: Sequence[Rule] | None = None, transforms: Mapping[str, Any] | None = None
) -> Report:
    """The routing table: path, shape, role, unit axis, transform and lr multiplier per leaf.

    Args:
      params: parameters (arrays, ``jax.ShapeDtypeStruct`` or ``nnx.State``).
      rules: routing rules (default :data:`DEFAULT_RULES`).
      transforms: optional mapping as given to :func:`by_role` (values may also be strings);
        an :class:`Assignment` contributes its name and learning-rate multiplier.

    Returns:
      A :class:`Report`: printable text (one row per leaf, then parameter counts per role)
      whose ``.rows`` holds :class:`ReportRow` tuples. Leaves no rule covers do not stop the
      report: each gets the role :data:`UNCOVERED`, ``.uncovered`` lists their paths, and the
      text ends with a rule matching exactly them (:func:`suggest_rule`) to add.

    Raises:
      ValueError: for a leaf whose matching rule's layout does not fit it and, when
        ``transforms`` is given, for a role without a transform.
    """
    if transforms is not None:
        _check_keys(transforms, "routing.report")
    rules_t = _rules(rules)
    leaves, _ = _leaves(params)
    tree = [(normalize_path(p), shp) for p, shp in leaves]
    resolved, uncovered = [], []
    for path, shape in leaves:
        try:
            i, rule = _match(path, shape, rules_t, tree)
        except ValueError:
            uncovered.append((normalize_path(path), shape))
            resolved.append((path, shape, -1, None, None))
            continue
        resolved.append((path, shape, i, rule, rule.matrix_layout(path, shape)))
    rows = []
    for path, shape, i, rule, lay in resolved:
        if rule is None:
            rows.append(ReportRow(normalize_path(path), shape, UNCOVERED, None, "-", None, -1))
            continue
        name, mult = "-", None
        if transforms is not None:
            value = transforms[_label(rule.role, transforms, path)]
            if isinstance(value, Assignment):
                name, mult = value.name or _label(rule.role, transforms, path), value.lr_multiplier
            elif isinstance(value, str):
                name = value
            else:
                name = _label(rule.role, transforms, path)
        unit = None
        if lay is not None and lay.unit_axis is not None:
            unit = lay.unit_axis % len(shape)
        rows.append(ReportRow(normalize_path(path), shape, rule.role, unit, name, mult, i))
    header = ("path", "shape", "role", "unit axis", "transform", "lr x")
    table = [header] + [
        (
            r.path,
            _fmt_shape(r.shape),
            r.role,
            "-" if r.unit_axis is None else str(r.unit_axis),
            r.transform,
            "-" if r.lr_multiplier is None else f"{r.lr_multiplier:.4g}",
        )
        for r in rows
    ]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    totals: dict[str, list[int]] = {}
    for r in rows:
        t = totals.setdefault(r.role, [0, 0])
        t[0] += 1
        t[1] += math.prod(r.shape)
    lines.append("")
    lines.append("per role:")
    width = max(len(role) for role in totals) if totals else 0
    lines += [
        f"  {role.ljust(width)}  {n:4d} leaves  {size:>14,} params"
        for role, (n, size) in totals.items()
    ]
    if uncovered:
        lines += [
            "",
            f"{len(uncovered)} leaves no rule covers (role {UNCOVERED!r} above); a "
            "rule matching exactly them (set the true role):",
            f"  rules = ({suggest_rule(uncovered)},) + optzoo.routing.DEFAULT_RULES",
        ]
    return Report("\n".join(lines), rows, tuple(p for p, _ in uncovered))
