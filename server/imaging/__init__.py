"""Imaging: captures (live and uploaded) made into de-identified DICOM key images, their archive
and outbox to the PACS, and comparison priors."""
