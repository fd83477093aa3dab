"""The sections of ``kexue demo`` that belong to one model family each: ``run(out_dir, scale)``."""
