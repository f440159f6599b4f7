"""Data preparation (official layouts -> checked masks + split datalist) and demo data for the bundles."""

from .datalist import DATALIST_NAME, list_images, load_split
from .demo import is_demo_data, make_demo_cxr, montgomery_shenzhen_demo
from .images import read_grayscale, read_mask, to_grayscale, write_mask
from .montgomery_shenzhen import prepare_montgomery_shenzhen
from .split import stratified_group_split

__all__ = [
    "DATALIST_NAME",
    "list_images",
    "load_split",
    "make_demo_cxr",
    "montgomery_shenzhen_demo",
    "is_demo_data",
    "read_grayscale",
    "read_mask",
    "to_grayscale",
    "write_mask",
    "prepare_montgomery_shenzhen",
    "stratified_group_split",
]
