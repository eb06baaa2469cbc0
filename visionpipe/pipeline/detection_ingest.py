"""The detection drop folder: images and the files holding their boxes, paired in any order.

Layout (docs/ARCHITECTURE.md, "Storage layout (one storage account)"): in a project whose domain
is an object detection one, ``training-images/{project}/[{folders}/]{file}``. Folders below the
project only group files; tags come from the annotations, never from a folder name. Beside the
images:

* Pascal VOC: ``name.xml`` beside ``name.jpg`` (one file per image);
* YOLO: ``name.txt`` beside ``name.jpg``, with the class names in ``classes.txt`` or
  ``data.yaml`` (``data.yml``) of the same folder;
* COCO: any ``*.json`` file, whose ``images[].file_name`` are paths relative to its folder.

Each blob is its own Event Grid event, in any order, at least once. An image is recorded at once
(untagged until boxes arrive: it is never dropped for lack of them); an annotation file is checked
at once (a hostile or malformed one is quarantined before any image waits for it) and kept in
place as the source of its boxes. Both halves meet in :mod:`visionpipe.stores.annotation_pairs`;
whichever event completes a pair applies the boxes, and applying again changes nothing. A YOLO
label file whose class names have not arrived waits for them: the class-name file's event applies
every waiting label of its folder.

Refusals use the annotation reason codes of :class:`~visionpipe.rejections.Reason`
(``bad_annotation``, ``box_out_of_bounds``, ``unknown_image``, ``too_many_regions``) in the
quarantine's reason-record shape: a per-image file is moved to quarantine; one image refused inside
a COCO file gets a reason record of its own (:func:`~visionpipe.stores.annotation_pairs.
record_image_rejection`) and the file, good for the other images, stays.
"""

from __future__ import annotations

import logging
import posixpath
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import overload

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from visionpipe.annotations import (
    MAX_ANNOTATION_FILE_BYTES,
    MAX_CLASSES,
    MAX_COCO_FILE_BYTES,
    MAX_IMAGE_SIDE,
    MAX_REGIONS_PER_IMAGE,
    AnnotationBlob,
    AnnotationKind,
    CocoAnnotations,
    ImageAnnotation,
    class_name_blobs,
    classify_blob,
    parse_class_names,
    parse_coco,
    parse_image_annotation,
    parse_voc,
    parse_yolo,
)
from visionpipe.blob_names import folder_name_problem
from visionpipe.pipeline import lifecycle_events
from visionpipe.rejections import Reason, Rejected, Rejection
from visionpipe.storage import Storage
from visionpipe.stores.annotation_pairs import (
    AnnotationPairs,
    Pair,
    PairedImage,
    record_image_rejection,
)
from visionpipe.stores.label_store import AddStatus, ImageFacts, LabelStore, Project
from visionpipe.stores.quarantine import quarantine_blob

log = logging.getLogger(__name__)

#: How many pair rows a COCO file's event writes at once.
COCO_PAIR_WRITERS = 8


def max_bytes(kind: AnnotationKind) -> int:
    """The most bytes an annotation file of this kind may hold (read only after this check)."""
    return MAX_COCO_FILE_BYTES if kind is AnnotationKind.COCO else MAX_ANNOTATION_FILE_BYTES


class _AnyClass(Sequence[str]):
    """Class names for checking a YOLO file before its real names are known: every index a
    class-name file could name is accepted (the real names are applied when the pair is)."""

    def __len__(self) -> int:
        return MAX_CLASSES

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return ["class"] * len(range(*index.indices(MAX_CLASSES)))
        if not -MAX_CLASSES <= index < MAX_CLASSES:
            raise IndexError(index)
        return "class"


def check_on_arrival(blob: AnnotationBlob, data: bytes) -> None:
    """Refuse (raise ``Rejected``) what is wrong with a per-image file whatever its image: hostile
    or malformed XML, not-a-number, negative or inverted boxes. Boxes against the true image
    size (and YOLO's class names) are checked when the pair is applied."""
    name = posixpath.basename(blob.path)
    if blob.kind is AnnotationKind.PASCAL_VOC:
        parse_voc(data, name, (MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    elif blob.kind is AnnotationKind.YOLO:
        parse_yolo(data, name, _AnyClass())


@dataclass
class DetectionDrop:
    """One event's view of a detection project's drop folder."""

    storage: Storage
    store: LabelStore
    project: Project
    container: str
    event_id: str

    def __post_init__(self) -> None:
        self.pairs = AnnotationPairs(self.storage)
        # A folder's class names, read once per event (a class-name file's event applies every
        # waiting label of its folder).
        self._names: dict[str, tuple[str, ...] | None] = {}

    # --- the image half ----------------------------------------------------------------------
    def image_arrived(self, path: str, facts: ImageFacts) -> tuple[AddStatus, int]:
        """Record the image (untagged when new) and apply every annotation already waiting for
        it; the record's status and how many annotation files were applied."""
        added = self.store.create_image(self.project, (), facts, path)
        pair = self.pairs.note_image(self.project.id, PairedImage(path, facts.sha256,
                                                                   facts.width, facts.height))
        applied = sum(self.apply(source, pair.image) for source in pair.sources
                      if pair.image is not None)
        return added.status, applied

    # --- the annotation half -----------------------------------------------------------------
    def annotation_arrived(self, blob: AnnotationBlob, data: bytes, etag: str) -> int:
        """Check an annotation file, note it beside the images it names and apply it to those
        already here; how many images it was applied to. Raises ``Rejected`` for a file that is
        refused as a whole (the caller quarantines it)."""
        if blob.kind.per_image:
            check_on_arrival(blob, data)
            pair = self.pairs.note_source(self.project.id, blob.path, blob.path)
            if pair.image is None:
                return 0
            return int(self._apply_file(blob, pair.image, data))
        if blob.kind is AnnotationKind.COCO:
            return self._coco_arrived(blob, data, etag)
        parse_class_names(blob, data)  # refuse a bad class-name file now, with its own reason
        return self._class_names_arrived(blob.folder)

    def _class_names_arrived(self, folder: str) -> int:
        """Apply every YOLO label of ``folder`` whose image is here (they waited for names)."""
        applied = 0
        for pair in self.pairs.in_folder(self.project.id, folder):
            if pair.image is None:
                continue
            for source in pair.sources:
                found = classify_blob(source)
                if found is not None and found.kind is AnnotationKind.YOLO:
                    applied += self.apply(source, pair.image)
        return applied

    def _coco_arrived(self, blob: AnnotationBlob, data: bytes, etag: str) -> int:
        parsed = _parse_coco_cached(blob.path, etag, data)  # refused as a whole: raises
        names = [*parsed.images, *parsed.rejected]

        def note(file_name: str) -> Pair:
            return self.pairs.note_source(self.project.id, _join(blob.folder, file_name),
                                          blob.path)

        with ThreadPoolExecutor(max_workers=COCO_PAIR_WRITERS,
                                thread_name_prefix="visionpipe-coco-pairs") as pool:
            noted = list(pool.map(note, names))
        declared = set(names)
        here = [p.image for p in noted
                if p.image is not None and _relative(blob.folder, p.image.path) in declared]
        # Images not here yet are refused by the sizes the file declares (recorded now, so a
        # bad box is seen even if its image never comes); those here, by their true sizes below.
        here_names = {_relative(blob.folder, i.path) for i in here}
        for file_name, rejection in parsed.rejected.items():
            if file_name not in here_names:
                record_image_rejection(self.storage, self.container, blob.path, file_name,
                                       rejection, etag=etag, context={"eventId": self.event_id})
        if not here:
            return 0
        sizes = {_relative(blob.folder, i.path): (i.width, i.height) for i in here}
        truly = parse_coco(data, image_sizes=sizes)  # the true sizes decide pixel boxes
        applied = 0
        for image in here:
            name = _relative(blob.folder, image.path)
            applied += self._apply_coco_image(blob, truly.images.get(name),
                                              truly.rejected.get(name), image, etag)
        return applied

    # --- applying one annotation file to one image -------------------------------------------
    def apply(self, source: str, image: PairedImage) -> bool:
        """Apply the boxes the file ``source`` holds for ``image``; False when it cannot be yet
        (YOLO class names missing), no longer can (the file is gone) or was refused."""
        blob = classify_blob(source)
        if blob is None:
            return False
        if blob.kind is AnnotationKind.COCO:
            return self._apply_coco(blob, image)
        read = self._read(blob)
        if read is None:
            return False
        data, etag = read
        try:
            return self._apply_file(blob, image, data)
        except Rejected as e:
            self._quarantine(source, e.rejection, data, etag)
            return False

    def _apply_coco(self, blob: AnnotationBlob, image: PairedImage) -> bool:
        """One image's boxes from a COCO file: from the process's cache of the file's version
        when the image's true size is the size the file declares (no download), else read and
        parsed with the true size."""
        name, size = _relative(blob.folder, image.path), (image.width, image.height)
        try:
            etag = str(self.storage.container(self.container).get_blob_client(blob.path)
                       .get_blob_properties().etag)
        except ResourceNotFoundError:
            return False
        parsed = _cached_coco(blob.path, etag)
        if parsed is None or parsed.sizes.get(name, size) != size:
            read = self._read(blob)
            if read is None:
                return False
            data, etag = read
            try:
                parsed = _parse_coco_cached(blob.path, etag, data)
                if parsed.sizes.get(name, size) != size:
                    parsed = parse_coco(data, image_sizes={name: size})
            except Rejected as e:  # overwritten since its own event checked it
                self._quarantine(blob.path, e.rejection, data, etag)
                return False
        return self._apply_coco_image(blob, parsed.images.get(name), parsed.rejected.get(name),
                                      image, etag)

    def _apply_file(self, blob: AnnotationBlob, image: PairedImage, data: bytes) -> bool:
        """A per-image file's boxes onto ``image``; raises ``Rejected`` for a refused file."""
        class_names = None
        if blob.kind is AnnotationKind.YOLO:
            class_names = self._class_names(blob.folder)
            if class_names is None:
                log.info("%s waits for the class names of its folder", blob.path)
                return False
        annotation = parse_image_annotation(blob, data, image_name=image.path,
                                            image_size=(image.width, image.height),
                                            class_names=class_names)
        return self._store_regions(annotation, image)

    def _apply_coco_image(self, blob: AnnotationBlob, annotation: ImageAnnotation | None,
                          rejection: Rejection | None, image: PairedImage,
                          etag: str | None) -> bool:
        name = _relative(blob.folder, image.path)
        if annotation is not None:
            try:
                return self._store_regions(annotation, image)
            except Rejected as e:
                rejection = e.rejection
        if rejection is not None:
            record_image_rejection(self.storage, self.container, blob.path, name, rejection,
                                   etag=etag, context={"eventId": self.event_id,
                                                       "image": image.path})
        return False

    def _store_regions(self, annotation: ImageAnnotation, image: PairedImage) -> bool:
        """The boxes onto the image's record, their tags created on first sight. All-or-nothing
        as far as the checks go: a bad tag name or one box too many refuses the whole file."""
        for n, region in enumerate(annotation.regions):
            problem = folder_name_problem(region.tag)
            if problem is not None:
                raise Rejected(Reason.BAD_ANNOTATION,
                               f"region {n + 1}: the tag name {region.tag[:40]!r} {problem}")
        record = self.store.get_image(self.project.id, image.sha256)
        if record is None:
            return False  # deleted since it arrived: nothing to label
        tag_ids = {name: self.store.get_or_create_tag(self.project.id, name).id
                   for name in dict.fromkeys(r.tag for r in annotation.regions)}
        boxes = [(tag_ids[r.tag], (r.left, r.top, r.width, r.height))
                 for r in annotation.regions]
        known = {(g.tag_id, g.box) for g in record.regions}
        new = {b for b in boxes if b not in known}
        if len(record.regions) + len(new) > MAX_REGIONS_PER_IMAGE:
            raise Rejected(Reason.TOO_MANY_REGIONS,
                           f"{image.path!r} would hold {len(record.regions) + len(new)} regions; "
                           f"at most {MAX_REGIONS_PER_IMAGE} per image")
        if boxes:
            self.store.add_image_regions(self.project, image.sha256, boxes,
                                         MAX_REGIONS_PER_IMAGE)
        log.info("%s: %d box(es) on %s (%d new)", annotation.image_name, len(boxes),
                 image.sha256[:12], len(new))
        return True

    # --- storage -----------------------------------------------------------------------------
    def _read(self, blob: AnnotationBlob) -> tuple[bytes, str] | None:
        """An annotation file's bytes and ETag, bounded; None when it is gone (moved to
        quarantine by an earlier event, or deleted) or was refused for its size."""
        client = self.storage.container(self.container).get_blob_client(blob.path)
        try:
            props = client.get_blob_properties()
            if props.size > max_bytes(blob.kind):
                self._quarantine(blob.path, too_big(blob.kind, props.size), None, props.etag)
                return None
            data = client.download_blob(etag=props.etag,
                                        match_condition=MatchConditions.IfNotModified).readall()
        except (ResourceNotFoundError, ResourceModifiedError):
            return None  # gone, or being replaced: the new version has its own event
        return data, str(props.etag)

    def _class_names(self, folder: str) -> tuple[str, ...] | None:
        if folder not in self._names:
            self._names[folder] = self._read_class_names(folder)
        return self._names[folder]

    def _read_class_names(self, folder: str) -> tuple[str, ...] | None:
        for path in class_name_blobs(folder):
            blob = classify_blob(path)
            if blob is None:
                continue
            read = self._read(blob)
            if read is None:
                continue
            try:
                return parse_class_names(blob, read[0])
            except Rejected:
                continue  # its own event quarantines it
        return None

    def _quarantine(self, path: str, rejection: Rejection, data: bytes | None,
                    etag: str | None) -> None:
        moved = quarantine_blob(self.storage, self.container, path, rejection, etag=etag,
                                data=data, context={"eventId": self.event_id})
        lifecycle_events.quarantined(self.storage, self.container, path, rejection, moved, etag)


#: COCO files parsed with their declared sizes, by (path, ETag): the image events of one big
#: file each need it, and each would otherwise download and parse it again.
_COCO_CACHE: OrderedDict[tuple[str, str], CocoAnnotations] = OrderedDict()
COCO_CACHE_FILES = 4
_coco_lock = threading.Lock()


def _cached_coco(path: str, etag: str) -> CocoAnnotations | None:
    key = (path, etag.strip('"'))
    with _coco_lock:
        parsed = _COCO_CACHE.get(key)
        if parsed is not None:
            _COCO_CACHE.move_to_end(key)
        return parsed


def _parse_coco_cached(path: str, etag: str, data: bytes) -> CocoAnnotations:
    """``data`` (the file at ``path``, version ``etag``) parsed with its declared sizes, kept
    for the next image event of the same file version."""
    parsed = _cached_coco(path, etag)
    if parsed is None:
        parsed = parse_coco(data)
        with _coco_lock:
            _COCO_CACHE[(path, etag.strip('"'))] = parsed
            while len(_COCO_CACHE) > COCO_CACHE_FILES:
                _COCO_CACHE.popitem(last=False)
    return parsed


def too_big(kind: AnnotationKind, size: int) -> Rejection:
    return Rejection(Reason.BAD_ANNOTATION, f"the {kind} file is {size:,} bytes; at most "
                                            f"{max_bytes(kind):,} are read")


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _relative(folder: str, path: str) -> str:
    return path[len(folder) + 1:] if folder and path.startswith(folder + "/") else path

