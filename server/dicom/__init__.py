"""DICOM, pure: device profiles, de-identification, the writer, the SR, priors, codestreams (no
store, no network: the archive and the PACS are imaging's).

pydicom reports an invalid value read from a file by logging and warning with the value
itself, which in an uploaded prior may be patient data. Values read are therefore not
validated here (the writer builds every object from its own values, which are), and
pydicom's logger is kept quiet.
"""

import logging

import pydicom.config

pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
