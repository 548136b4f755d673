"""Reports of both studies, rebuilt from a workdir's stored tables: one writer (`writer`), two renderers."""
