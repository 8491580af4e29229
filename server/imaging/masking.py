"""The device-mask rule: which rectangles of a device's frames carry burned-in text.

A capture is refused before any work when the consultation's device could not be masked: no device
named, or no profile for it, unless the request declares its video carries no burned-in text. A
device with a profile is masked even when declared clean: the profile is the stronger statement.
"""

from __future__ import annotations

from server.auth import Role
from server.consultations.model import ConsultationRow, Kind
from server.dicom.profiles import Layout, Profiles
from server.errors import Conflict

# What a clinician at capture time is told when the device cannot be masked.
NOT_SET_UP = (
    "This scanner is not set up for captures yet; ask your coordinator (it needs a "
    "de-identification profile)."
)
# What a clinician is told when the safety net under the masks stops a capture.
TEXT_FOUND = (
    "Text that looks like patient data is visible on the scanner's picture outside the masked "
    "areas, so nothing was stored; ask your coordinator to check this scanner's setup."
)


def require_patient_consultation(row: ConsultationRow) -> None:
    """A device setup session stores nothing: its frames are shown on the setup page only."""
    if row.context.kind is Kind.DEVICE_SETUP:
        raise Conflict(
            "this is a device setup session: nothing is captured or stored in it (its frames "
            "are shown on the device setup page only)",
            code="device_setup_session",
        )


class DeviceMasks:
    def __init__(self, profiles: Profiles):
        self.profiles = profiles

    def _profile_exists(self, manufacturer: str | None, model: str | None) -> bool:
        return bool(manufacturer and model) and any(
            p.matches_device(manufacturer or "", model or "") for p in self.profiles.profiles
        )

    def check_device(self, row: ConsultationRow, role: Role | None = None) -> None:
        """Refuse at once when nothing could mask this device's burned-in text: in plain words
        for the clinician capturing (`role` not a coordinator), the technical reason for the
        coordinator who can fix it."""
        require_patient_consultation(row)
        try:
            self._check_device(row)
        except Conflict as exc:
            if role is None or role is Role.COORDINATOR:
                raise
            raise Conflict(NOT_SET_UP, code=exc.code) from None

    def _check_device(self, row: ConsultationRow) -> None:
        device = row.context.device
        if device is not None and device.burned_in_text is False:
            return
        if device is None or not device.manufacturer or not device.model:
            raise Conflict(
                "captures are refused until the consultation names its device (device."
                "manufacturer and device.model) so its burned-in text can be masked, or "
                "declares that its video carries none (device.burned_in_text = false)",
                code="device_unknown",
            )
        if not self._profile_exists(device.manufacturer, device.model):
            raise Conflict(
                "no de-identification profile for this consultation's device: add one to the "
                "file named by PROBELINK_DEVICE_PROFILES (format: server/dicom/"
                "device_profiles.toml), or declare device.burned_in_text = false if its video "
                "carries no burned-in text",
                code="no_device_profile",
            )

    def layout_for(
        self, row: ConsultationRow, width: int, height: int, *, scaled: bool = True
    ) -> Layout | None:
        """The mask (and picture region) for a frame of this size; None only for a declared
        clean source.

        A device with a profile is masked even when declared clean: the profile is the
        stronger statement. `scaled` False: only a profile of exactly this size will do (a
        file recorded elsewhere: nothing says its picture is the device's, scaled).
        """
        device = row.context.device
        if device is not None and self._profile_exists(device.manufacturer, device.model):
            assert device.manufacturer and device.model
            try:
                return self.profiles.mask_for(
                    device.manufacturer, device.model, width, height, scaled=scaled
                )
            except LookupError:
                if device.burned_in_text is False:
                    return None
                raise Conflict(
                    f"the device's profile does not cover {width}x{height} "
                    f"{'captures' if scaled else 'clips'}: add that size to the device profiles "
                    "(PROBELINK_DEVICE_PROFILES)"
                    + (
                        ""
                        if scaled
                        else "; a recorded clip must be the scanner's own output at "
                        "a profile's exact size (a phone's recording of its screen cannot be "
                        "masked: send the scanner's DICOM or its exported clip)"
                    ),
                    code="no_device_profile",
                ) from None
        if device is not None and device.burned_in_text is False:
            return None
        self._check_device(row)
        raise Conflict("no de-identification profile for this device", code="no_device_profile")
