"""Everything up to an array: sources, DICOM, fingerprint, audit, splits, transforms."""

from medlens.data.sample import Dataset, Problem, Record, Sample, Task

__all__ = ["Dataset", "Problem", "Record", "Sample", "Task"]
