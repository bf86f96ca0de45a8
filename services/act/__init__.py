"""ACT: multimodal LLM data annotation with critical thinking (Lin et al., NeurIPS 2025)."""

__version__ = "0.1.0"
