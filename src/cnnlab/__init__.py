"""cnnlab: build, train fast and look inside small CNNs on the real MNIST."""

__version__ = "0.1.0"

from cnnlab.errors import CnnlabError

__all__ = ["__version__", "CnnlabError"]
