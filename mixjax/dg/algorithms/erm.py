"""ERM: minimise the mean cross-entropy on the concatenation of all env minibatches.

    L(theta) = CE(f_theta(concat_e x_e), concat_e y_e)

Adam(lr, weight_decay) as DomainBed (coupled L2). Vapnik, 1992; DomainBed
(Gulrajani & Lopez-Paz, arXiv 2007.01434) shows it is a strong DG baseline.
"""

from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm


@register
class ERM(Algorithm):
    name = "erm"
