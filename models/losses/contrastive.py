"""QUD-style contrastive KD (label-free): the student's embedding must pick its own teacher embedding.

    loss = mean_i -log( exp(<s_i, t_i>/tau) / (exp(<s_i, t_i>/tau) + sum_k exp(<s_i, q_k>/tau)) )
with s_i = unit(g(f_s,i)), t_i = unit(f_t,i) and q_k the filled rows of a FIFO queue of past teacher
embeddings (1024 rows, tau = 0.1). After the loss, in training mode, the batch's teacher embeddings are
pushed (gathered from every rank under torch.distributed, so the queues stay identical). While the queue
is empty the loss is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import LossInputs, LossTerm, Param, l2n, make_projector
from .distributed import all_gather_rows
from .memory import FeatureQueue
from .registry import register_loss


@register_loss("qud")
class QUDLoss(LossTerm):
    """InfoNCE of the student embedding against its teacher embedding and a queue of past teacher embeddings."""

    PARAMS = {"tau": Param(0.1, positive=True), "queue_size": Param(1024, min=1)}
    needs_teacher = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.proj = make_projector(self.embedding_size, self.teacher_embedding_size)
        self.queue = FeatureQueue(self.config["queue_size"], self.teacher_embedding_size)

    def forward(self, inputs: LossInputs) -> torch.Tensor:
        self.check_inputs(inputs)
        s = l2n(self.proj(inputs.student_emb))
        t = l2n(inputs.teacher_emb.detach())
        pos = (s * t).sum(1, keepdim=True)
        neg = s @ self.queue.valid().t()
        logits = torch.cat([pos, neg], 1) / self.config["tau"]
        loss = F.cross_entropy(logits, torch.zeros(len(s), dtype=torch.long, device=s.device))
        if self.training:
            self.queue.push(all_gather_rows(t)[0][0])
        return loss
