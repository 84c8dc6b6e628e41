"""Report: the `ScanReport` model and its renderers."""

from .model import SCHEMA_VERSION, CleanMetrics, Defense, FindingRecord, ModelInfo, PeerRecord, ProbeInfo, ScanReport
from .render import FORMATS, render, write_reports

__all__ = ["SCHEMA_VERSION", "CleanMetrics", "Defense", "FindingRecord", "ModelInfo", "PeerRecord", "ProbeInfo",
           "ScanReport", "FORMATS", "render", "write_reports"]
