"""Reading a cohort store: the cohort handle, level readers over the engines, validation and summaries."""

from .cohort import Cohort, open_cohort
from .levels import ENGINES, LevelReader, default_engine, limit_codec_threads, open_level

__all__ = ["ENGINES", "Cohort", "LevelReader", "default_engine", "limit_codec_threads", "open_cohort", "open_level"]
