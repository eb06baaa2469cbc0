"""Custom Vision's domains (image classification and object detection), with the service's GUIDs.

Clients pass a domain id when they create a project, and some look domains up by name first
(``next(d for d in get_domains() if d.name == "General")``; the detection quickstart looks for
``d.type == "ObjectDetection" and d.name == "General"``), so the ids, names and types are the
service's (the Custom Vision docs' "select a domain" page). Two domains may share a name ("General"
is both a classification and a detection domain): the type tells them apart. visionpipe trains one
model family per project type and every model exports to ONNX, so every domain is exportable.
"""

from __future__ import annotations

from dataclasses import dataclass

from visionpipe.messages import EXPORT_FLAVORS

#: Custom Vision's General classification domain: the default for new projects.
GENERAL_DOMAIN_ID = "ee85a74c-405e-4adc-bb47-ffa8ca0c9f31"
CLASSIFICATION = "Classification"
OBJECT_DETECTION = "ObjectDetection"
DOMAIN_TYPES = (CLASSIFICATION, OBJECT_DETECTION)
#: Every domain exports to every platform the export worker offers (visionpipe trains one model
#: family for all of them), as the iteration's ``exportableTo`` says.
EXPORT_PLATFORMS = tuple(EXPORT_FLAVORS)


@dataclass(frozen=True)
class Domain:
    id: str
    name: str
    compact: bool = False
    type: str = CLASSIFICATION

    @property
    def detection(self) -> bool:
        return self.type == OBJECT_DETECTION

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type,
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

#: Custom Vision's object detection domains (the select-domain page of the Custom Vision docs).
DETECTION_DOMAINS: tuple[Domain, ...] = (
    Domain("da2e3a8a-40a5-4171-82f4-58522f70fbc1", "General", type=OBJECT_DETECTION),
    Domain("9c616dff-2e7d-ea11-af59-1866da359ce6", "General [A1]", type=OBJECT_DETECTION),
    Domain("1d8ffafe-ec40-4fb2-8f90-72b3b6cecea4", "Logo", type=OBJECT_DETECTION),
    Domain("3780a898-81c3-4516-81ae-3a139614e1f3", "Products on Shelves", type=OBJECT_DETECTION),
    Domain("a27d5ca5-bb19-49d8-a70a-fec086c47f5b", "General (compact)", compact=True,
           type=OBJECT_DETECTION),
    Domain("7ec2ac80-887b-48a6-8df9-8b1357765430", "General (compact) [S1]", compact=True,
           type=OBJECT_DETECTION),
)
GENERAL_DETECTION_DOMAIN_ID = DETECTION_DOMAINS[0].id
DETECTION_DOMAIN_IDS = frozenset(d.id for d in DETECTION_DOMAINS)
ALL_DOMAINS: tuple[Domain, ...] = DOMAINS + DETECTION_DOMAINS

_BY_ID = {d.id: d for d in ALL_DOMAINS}


def is_detection_domain(domain_id: str) -> bool:
    """True for one of Custom Vision's object detection domain ids."""
    return domain_id.strip().lower() in DETECTION_DOMAIN_IDS


def domain_type(domain_id: str) -> str:
    """``Classification`` or ``ObjectDetection``: the type of the project's domain (an unknown id,
    e.g. a row written before detection existed, is a classification domain)."""
    return OBJECT_DETECTION if is_detection_domain(domain_id) else CLASSIFICATION


def get_domain(domain_id: str) -> Domain | None:
    """The domain with this id (GUIDs compare case-insensitively), or None."""
    return _BY_ID.get(domain_id.strip().lower())
