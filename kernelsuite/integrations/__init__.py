"""Integrations with other libraries, each in a module of its own that imports its library
only when used (``kernelsuite.integrations.transformers``: Hugging Face transformers)."""
