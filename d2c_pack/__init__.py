"""d2c-pack: Diffusion Dataset Condensation (D2C) as a tool.

Score a labelled image dataset with a class-conditional diffusion model, select a small
subset per class by interval sampling, attach training-ready columns, publish it on the
Hugging Face Hub, and train SiT models from it. See DESIGN.md in the project docs.
"""

__version__ = "0.1.0"
