"""DisCo-Diff toolkit: train, export and serve diffusion models with discrete latents.

This package root stays free of torch imports so that `import discodiff.runtime` never loads torch.
"""
__version__ = "0.1.0"
