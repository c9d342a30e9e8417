"""The bounds of every sampling option, in one place: `discodiff-run`, the Python callers and the server
check a request against the same numbers, so no front door accepts what another refuses.

The bounds are generous for real use and exist so that a typo cannot become hours of work, an overflow
or a NaN image: classifier-free guidance is used at 1-10 in practice (its extrapolation overflows
float32 long before 1e308), temperatures above ~3 already give uniform codes, and 10 000 levels are far
past where any ODE solver stops improving.
"""
from __future__ import annotations

MAX_SEED = 2**62            # seeds + n stay far inside int64
MAX_STEPS = 10_000          # noise levels of one run
MAX_NFE = 10_000            # denoiser calls per sample asked for with --nfe
MAX_GUIDANCE = 100.0        # classifier-free guidance scale w
MAX_TEMPERATURE = 100.0     # prior sampling temperature
MAX_CHURN = 1000.0          # EDM S_churn (it is clipped per step to sqrt(2) - 1 anyway)
