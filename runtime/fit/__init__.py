"""Noise levels fitted to a bundle's own model, with no retraining (`discodiff-fit`, `discodiff-export
--fit-nfe`):

    schedule   the maths: a Heun teacher on a log-sigma grid, GITS-style dynamic programming, refinement
    model      running it on a bundle's graphs (calibration seeds with their prior tokens) -> manifest fits
    cli        discodiff-fit, and the locked read-modify-write of manifest.json that export shares
"""
