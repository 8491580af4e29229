"""Reports: the expert's structured report, its terminology and signing rules, its versions, and
its archive as DICOM SR."""
