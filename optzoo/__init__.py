"""optzoo: optimizers from the LMO / symmetry-compatible / low-rank / second-order literature
as composable optax gradient transformations.

Optimizer factories are exported at top level (``optzoo.muon``, ``optzoo.galore``, ...).
Where a factory shares its name with the module that defines it (``muon``, ``galore``,
``lion``, ``fismo``, ``natural_galore``, ``polargrad``, ``scion``, ``egn``, ``ringmaster``),
the attribute is the factory; import module members with
``from optzoo.muon import scale_by_muon`` (or use the top-level ``scale_by_*`` names below).
Every factory lists the arguments ``optax.inject_hyperparams`` cannot trace as
``factory.static_args``; :func:`optzoo.plan` tells, per leaf, which transform, learning rate
and matrix view an alias will use (``optzoo.plan`` is that function; its types live in
``optzoo.plan`` the module, e.g. ``from optzoo.plan import PlanRow``).
"""

from optzoo import (
    distributed,
    fallback,
    layout,
    linalg,
    ringmaster_sim,
    routing,
    schedules,
    symmetric,
    symmetric_stack,
    testing,
)
from optzoo.distributed import OwnerComputes
from optzoo.egn import EGNLineSearchState, ScaleByEGNState, egn, egn_loss, scale_by_egn
from optzoo.error_feedback import ScaleByEFMuonState, ef_muon, scale_by_ef_muon
from optzoo.fismo import ScaleByFismoState, fismo, scale_by_fismo
from optzoo.galore import GaLoreState, galore, scale_by_galore
from optzoo.guard import SkipNonfiniteState, skip_nonfinite
from optzoo.lion import ScaleByLionKappaState, lion, lion_kappa, scale_by_lion_kappa
from optzoo.muon import ScaleByMuonState, muon, scale_by_muon
from optzoo.natural_galore import NaturalGaLoreState, natural_galore, scale_by_natural_galore
from optzoo.plan import plan
from optzoo.polargrad import ScaleByPolarGradState, polargrad, scale_by_polargrad
from optzoo.ringmaster import (
    DiscardStaleState,
    ScaleByRingmasterLMOState,
    delay_adaptive,
    discard_stale,
    ringmaster,
    ringmaster_agnostic,
    scale_by_ringmaster_lmo,
)
from optzoo.scion import ScaleByScionState, scale_by_scion, scion
from optzoo.subspace_descent import (
    OnlineSubspaceDescentState,
    online_subspace_descent,
    scale_by_online_subspace_descent,
)
from optzoo.symmetric import (
    SymmetricState,
    hybrid,
    left_spectral,
    one_sided_spectral,
    rownorm,
    scale_by_hybrid,
    scale_by_left_spectral,
    scale_by_one_sided_spectral,
    scale_by_rownorm,
)
from optzoo.symmetric_stack import symmetry_compatible

__version__ = "0.1.0.dev0"

__all__ = [
    "__version__",
    # modules
    "distributed",
    "fallback",
    "layout",
    "linalg",
    "ringmaster_sim",
    "routing",
    "schedules",
    "symmetric",
    "symmetric_stack",
    "testing",
    # the per-leaf plan of an alias
    "plan",
    # LMO / orthogonalized family
    "muon",
    "scale_by_muon",
    "ScaleByMuonState",
    "polargrad",
    "scale_by_polargrad",
    "ScaleByPolarGradState",
    "scion",
    "scale_by_scion",
    "ScaleByScionState",
    "ef_muon",
    "scale_by_ef_muon",
    "ScaleByEFMuonState",
    "fismo",
    "scale_by_fismo",
    "ScaleByFismoState",
    # symmetry-compatible maps and the layerwise stack
    "rownorm",
    "one_sided_spectral",
    "left_spectral",
    "hybrid",
    "scale_by_rownorm",
    "scale_by_one_sided_spectral",
    "scale_by_left_spectral",
    "scale_by_hybrid",
    "SymmetricState",
    "symmetry_compatible",
    # Lion family
    "lion",
    "lion_kappa",
    "scale_by_lion_kappa",
    "ScaleByLionKappaState",
    # low-rank family
    "galore",
    "scale_by_galore",
    "GaLoreState",
    "natural_galore",
    "scale_by_natural_galore",
    "NaturalGaLoreState",
    "online_subspace_descent",
    "scale_by_online_subspace_descent",
    "OnlineSubspaceDescentState",
    # second-order and asynchronous
    "egn",
    "scale_by_egn",
    "egn_loss",
    "ScaleByEGNState",
    "EGNLineSearchState",
    "ringmaster",
    "ringmaster_agnostic",
    "scale_by_ringmaster_lmo",
    "ScaleByRingmasterLMOState",
    "discard_stale",
    "delay_adaptive",
    "DiscardStaleState",
    # distribution
    "OwnerComputes",
    # guards
    "skip_nonfinite",
    "SkipNonfiniteState",
]
