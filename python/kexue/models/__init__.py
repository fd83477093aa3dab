"""Complete models, by family. Importing a family registers its models for ``kexue train``."""
