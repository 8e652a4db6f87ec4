"""WAKD: knowledge distillation into a weight-averaged student (Berezovskiy & Morozov,
"Weight Averaging Improves Knowledge Distillation under Domain Shift", ICCV 2023 OOD-CV
workshop, arXiv 2309.11446). Reference code: vorobeevich/distillation-in-dg
``src/trainer/distill_trainer.py`` (commit b5d3778, ``DistillTrainer.process_batch``: the
T^2-scaled ``KLDivLoss(reduction="batchmean")`` between log_softmax(student / T) and
softmax(teacher / T)) and ``src/trainer/trainer.py`` ``swad_train_one_domain`` (commit d9d521f:
the student trained by that loss is weight-averaged with torch's ``AveragedModel``, a uniform
average, and the average predicts; that version opens and closes the averaging window by SWAD's
validation-loss rule, a later version of the file also has a fixed start, ``our_swad_begin``).

Per update, on the concatenated env batches x, y (N rows), with teacher weights v and
student weights w (same ``NetSpec``, independent initialisations):

    teacher (ERM):  L_t(v) = CE(f_v(x), y)                                  -> Adam step on v
    student:        L_s(w) = CE(f_w(x), y)
                             + lambda_t * T^2 * (1/N) sum_i KL(p_i || q_i)   -> Adam step on w
                    lambda_t = wakd_kd_weight if t >= wakd_kd_start else 0 (t: 0-based update count)
                    p_i = softmax(stopgrad(f_v(x_i)) / T),  q_i = softmax(f_w(x_i) / T),  T = wakd_temperature
    average:        w_avg after update t (0-based) by ``ermpp.sma_update`` with start
                    ``wakd_avg_start``: w_avg = w_t while t + 1 < start, then the running uniform
                    average of the weights from update start - 2 on.

Prediction: f_{w_avg}(x).

Choices (where this differs from the reference): the reference distils from a teacher trained
beforehand (loaded frozen from a checkpoint, often a larger architecture) with the KL term
alone; here the teacher is the same network trained with ERM alongside the student (the
teacher logits are those of v before this update's step), and the student loss adds the CE
term, weighted 1 against ``wakd_kd_weight`` (1 = Hinton et al.'s CE + T^2 KL; 0 = ERM with
weight averaging). The average is SWA-style, uniform from a fixed update ``wakd_avg_start``
on (the reference's ``our_swad_begin`` option; ``ermpp.sma_update`` is that uniform average),
not SWAD's validation-loss window, which needs a validation loss inside the training step.
Because the teacher starts untrained, distillation waits ``wakd_kd_start`` updates (the
student trains by ERM until then): from an untrained teacher the KL term pulls the student
towards random predictions (on the tiny task of tests/test_dg_algorithms.py, 4 steps with the
term on from step 0 raised the training CE, 0.595 -> 0.601, vs. 0.595 -> 0.550 without it).
BatchNorm statistics are not recomputed for the average (mixjax's ResNets keep BatchNorm
frozen, as the reference's SWAD regime does).
Hyperparameters: wakd_temperature 2 (10^U(0, 1)), wakd_kd_weight 1 (10^U(-1, 1)),
wakd_kd_start 500 (fixed, as DomainBed's IRM anneal), wakd_avg_start 1000 (fixed; DomainBed's
small-image runs have 5000 steps). These defaults are choices, not taken from the paper.
"""

import jax
import jax.numpy as jnp

from mixjax.dg import hparams as H
from mixjax.dg.algorithms import register
from mixjax.dg.algorithms.base import Algorithm, apply_updates, cross_entropy
from mixjax.dg.algorithms.ermpp import sma_update


def distill_loss(student_logits, teacher_logits, y, temperature, kd_weight):
    """(CE + kd_weight * T^2 * batchmean KL(softmax(teacher/T) || softmax(student/T)), KL);
    the teacher's logits carry no gradient. Logits f32[N, C], y int32[N]."""
    t = jax.lax.stop_gradient(teacher_logits) / temperature
    log_p, log_q = jax.nn.log_softmax(t, -1), jax.nn.log_softmax(student_logits / temperature, -1)
    kl = (jnp.exp(log_p) * (log_p - log_q)).sum(-1).mean()
    return cross_entropy(student_logits, y) + kd_weight * temperature**2 * kl, kl


@register
class WAKD(Algorithm):
    name = "wakd"

    @classmethod
    def own_hparams(cls, small):
        return {
            "wakd_temperature": H.HParam(2.0, lambda r: 10 ** r.uniform(0, 1)),
            "wakd_kd_weight": H.HParam(1.0, lambda r: 10 ** r.uniform(-1, 1)),
            "wakd_kd_start": H.HParam(500, lambda r: 500),
            "wakd_avg_start": H.HParam(1000, lambda r: 1000),
        }

    def init(self, key, hp):
        k_s, k_t = jax.random.split(key)
        state = super().init(k_s, hp)
        teacher = self.model.init(k_t)
        return {**state, "teacher": teacher, "opt_t": self.tx(hp).init(teacher), "avg": state["params"],
                "avg_count": jnp.zeros((), jnp.float32)}

    def update(self, hp, state, xs, ys, key):
        del key
        k, b = xs.shape[:2]
        x, y = xs.reshape(k * b, *xs.shape[2:]), ys.reshape(-1)
        tx = self.tx(hp)

        def teacher_loss(v):
            logits = self.logits(v, x)
            return cross_entropy(logits, y), logits

        (loss_t, t_logits), g_t = jax.value_and_grad(teacher_loss, has_aux=True)(state["teacher"])
        teacher, opt_t = apply_updates(tx, g_t, state["opt_t"], state["teacher"])

        t = state["step"]
        kd_weight = jnp.where(t >= hp["wakd_kd_start"], hp["wakd_kd_weight"], 0.0)

        def student_loss(w):
            return distill_loss(self.logits(w, x), t_logits, y, hp["wakd_temperature"], kd_weight)

        (loss_s, kl), g_s = jax.value_and_grad(student_loss, has_aux=True)(state["params"])
        params, opt = apply_updates(tx, g_s, state["opt"], state["params"])
        avg, count = sma_update(state["avg"], params, state["avg_count"], hp["wakd_avg_start"], t)
        new = {**state, "params": params, "opt": opt, "teacher": teacher, "opt_t": opt_t, "avg": avg,
               "avg_count": count, "step": t + 1}
        return new, {"loss": loss_s, "loss_teacher": loss_t, "kl": kl}

    def predict(self, state, x):
        return self.logits(state["avg"], x)

