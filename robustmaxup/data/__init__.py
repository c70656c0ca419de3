"""Datasets (offline only). Filled in by the data module; see ``info`` for the constants."""

from robustmaxup.data.info import DATASET_INFO, DatasetInfo, get_info

__all__ = ["DATASET_INFO", "DatasetInfo", "get_info"]
