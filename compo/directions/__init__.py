"""Direction families: what a perturbation z looks like (compo.directions).

gaussian (the paper's): every entry of the [V, d] direction is a counter-based N(0, 1) value
(compo/perturbation.py). low_rank: z = sum_k a_k b_k^T / sqrt(r), the factors drawn from the
same generator under the same key, so E[vec z vec z^T] = I as for the Gaussian.
"""

from compo.directions.config import DirectionsConfig
from compo.directions.low_rank import low_rank_direction, low_rank_factors

__all__ = ["DirectionsConfig", "low_rank_direction", "low_rank_factors"]
