"""scalable_xmr: distributed cross-modal retrieval training (SDML, branch models, re-ranking)."""

__version__ = "0.1.0"
