"""Custom Vision's image classification domains, with the service's own GUIDs.

Clients pass a domain id when they create a project, and some look domains up by name first
(``next(d for d in get_domains() if d.name == "General")``), so the ids and names are the
service's. visionpipe trains the same kind of model for every domain and every model exports to
ONNX, so every domain here is exportable; object detection domains are not offered.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionpipe.label_store import GENERAL_DOMAIN_ID

CLASSIFICATION = "Classification"
EXPORT_PLATFORMS = ("ONNX",)


@dataclass(frozen=True)
class Domain:
    id: str
    name: str
    compact: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "type": CLASSIFICATION,
            "exportable": True,
            "enabled": True,
            "exportablePlatforms": list(EXPORT_PLATFORMS),
            "modelInformation": None,
        }


DOMAINS: tuple[Domain, ...] = (
    Domain(GENERAL_DOMAIN_ID, "General"),
    Domain("a8e3c40f-fb4a-466f-832a-5e457ae4a344", "General [A1]"),
    Domain("2e37d7fb-3a54-486a-b4d6-cfc369af0018", "General [A2]"),
    Domain("c151d5b5-dd07-472a-acc8-15d29dea8518", "Food"),
    Domain("ca455789-012d-4b50-9fec-5bb63841c793", "Landmarks"),
    Domain("b30a91ae-e3c1-4f73-a81e-c270bff27c39", "Retail"),
    Domain("45badf75-3591-4f26-a705-45678d3e9f5f", "Adult"),
    Domain("0732100f-1a38-4e49-a514-c9b44c697ab5", "General (compact)", compact=True),
    Domain("a1db07ca-a19a-4830-bae8-e004a42dc863", "General (compact) [S1]", compact=True),
    Domain("8882951b-82cd-4c32-970b-d5f8cb8bf6d7", "Food (compact)", compact=True),
    Domain("b5cfd229-2ac7-4b2b-8d0a-2b0661344894", "Landmarks (compact)", compact=True),
    Domain("6b4faeda-8396-481b-9f8b-177b9fa3097f", "Retail (compact)", compact=True),
)

_BY_ID = {d.id: d for d in DOMAINS}


def get_domain(domain_id: str) -> Domain | None:
    """The domain with this id (GUIDs compare case-insensitively), or None."""
    return _BY_ID.get(domain_id.strip().lower())
