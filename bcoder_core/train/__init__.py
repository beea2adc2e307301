"""Training stages (DESIGN §2.4, §2.5, §5): one explicit loop per stage plus the shared pieces.

- ``sft.py``    ``train_sft(SFTConfig)``: supervised fine-tuning of the whole T5 (the stand-in checkpoint)
- ``phi.py``    ``train_phi(PhiConfig)``: V_φ with the conservative TD loss
- ``theta.py``  ``train_theta(ThetaConfig)``: Q_θ with L_Q + β_adv·L_adv + β_ce·L_ce
- ``checkpoint.py``  step_N/ checkpoints, the ``latest`` marker, exact resume, the final export
- ``dist.py``   torch.distributed under torchrun (gloo on CPU, NCCL on GPU), rank-0 gating
- ``optim.py``  AdamW and the constant / linear-decay schedules

The pieces every loop shares, named for what they hold:

- ``setup.py``     config checks, the resume point and initial weights, joining the ranks, precision
- ``samplers.py``  the two batch samplers: sft's epoch sampler and the ρ_real mixing sampler
- ``loading.py``   global batch size, data loading and the background prefetcher
- ``step.py``      one optimiser step: micro-batches, DDP wrapping and all-reduce, clipping, AdamW
- ``progress.py``  resume, the step log, checkpoints when due, the final export (``TrainResult``)
- ``logs.py``      rank-0 logging, the per-step log line and telemetry, the stage's records

Each ``train_*`` returns a ``TrainResult`` (the final model URI and the logged loss curve); the
``bcoder train sft|phi|theta`` commands (``jobs/train.py``) call them.
"""
