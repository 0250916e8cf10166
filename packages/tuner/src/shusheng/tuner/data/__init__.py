"""Data: record formats, loading (files and the hub), rendering with chat templates, packing."""

from .dataset import Prepared, prepare, resolve_template
from .formats import FORMATS, Conversation, DataError, Preference, Text, detect_format, parse_records
from .load import load_records, load_source
from .pack import Batch, PackReport, collate, fit, pack
from .render import Sample, encode, encode_pair

__all__ = [
    "FORMATS",
    "Batch",
    "Conversation",
    "DataError",
    "PackReport",
    "Preference",
    "Prepared",
    "Sample",
    "Text",
    "collate",
    "detect_format",
    "encode",
    "encode_pair",
    "fit",
    "load_records",
    "load_source",
    "pack",
    "parse_records",
    "prepare",
    "resolve_template",
]
