"""The serving core: published iteration -> ONNX Runtime session -> probabilities per tag.

What it keeps per process (a Functions instance serves many requests from one process):

- one :class:`ModelSession` per (project, iteration), created lazily under a per-key lock and
  shared by every thread (``InferenceSession.run`` is thread-safe), never created at import time
  and never per request;
- the project's published pointer, re-read at most every ``pointer_max_age`` seconds with an ETag
  condition (a 304 costs one tiny round trip); when it changed, the newly published iterations are
  loaded *before* the new pointer replaces the old one, so requests never wait for a model load
  during a swap and never see a half-built session. The swap is one reference assignment; a
  retired session stays usable by whoever still holds it.

Images wait for each other only while a run is in progress: the first request runs at once, and
the requests that arrive meanwhile go together as one batch (leader/follower, no timer, no extra
thread), so batching costs nothing at low load and avoids piling concurrent runs onto two cores
at high load.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from visionpipe.detection_decode import (
    MAX_DETECTIONS,
    SCORE_FLOOR,
    BoxPrediction,
    DetectionPreprocessing,
    read_detections,
    stretch_picture,
)
from visionpipe.imaging import decode_slot
from visionpipe.manifest import MANIFEST_FILE, MODEL_FILE, REGULAR_TAG_TYPE, Manifest
from visionpipe.preprocessing import (
    PreprocessingSpec,
    crop_picture,
    normalize_into,
    prepare_image,
)
from visionpipe.rejections import Rejection
from visionpipe.settings import ImageLimits, ServingConfig, get_settings
from visionpipe.stores.registry import NotFound, Publication, Publications, Registry
from visionpipe.validation import ValidImage, decode_valid_image, validate_image

if TYPE_CHECKING:
    import onnxruntime as ort

    from visionpipe.storage import Storage

log = logging.getLogger(__name__)



class NoPublishedIteration(LookupError):
    """The project has nothing published (under that name)."""


class ModelUnavailable(RuntimeError):
    """The published iteration's artifacts are missing or do not load; retrying will not help."""


class WrongDomainType(ModelUnavailable):
    """Classify asked of an object detection iteration, or detect of a classifier: to a caller
    that knows only classification (the drop folder, for now) the model is unavailable."""


class UndecodableImage(ValueError):
    """The image passed validation but its pixels could not be decoded for the model."""


@dataclass(frozen=True)
class PreparedImage:
    """A validated prediction image and, when the model was known, its input from the same decode.

    ``tensor`` is None when no model could be resolved at validation time (nothing published, or
    the model does not load): classifying then raises that error, or decodes ``data`` if a model
    appeared meanwhile. A tensor made for another preprocessing spec (the published iteration
    changed in between) is not used either.
    """

    image: ValidImage
    data: bytes
    spec: PreprocessingSpec | None = None
    tensor: np.ndarray | None = None

    @property
    def sha256(self) -> str:
        return self.image.sha256


def session_options(config: ServingConfig) -> ort.SessionOptions:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about unused initialisers are noise here
    return options


# --- batching -------------------------------------------------------------------------------------
@dataclass
class _Lead:
    """Handed to a waiting request: "run this batch (yours included) and answer the others"."""

    batch: list[tuple[np.ndarray, Future[Any]]]


class _Batcher:
    """Leader/follower batching around one ``run(batch) -> outputs`` function.

    Up to ``max_runs`` requests run their own input immediately, side by side. Requests arriving
    while that many runs are in progress queue up; when a run ends, leadership passes to the
    first of them, which runs up to ``max_batch`` queued inputs as one batch. No thread, no
    timer: nothing waits unless every run slot is busy.
    """

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], max_batch: int,
                 max_runs: int = 1) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_runs = max(1, max_runs)
        self._lock = threading.Lock()
        self._active = 0  # runs in progress (leaders)
        self._pending: list[tuple[np.ndarray, Future[Any]]] = []
        self.batches = 0  # runs made, for tests and benchmarks
        self.items = 0

    @property
    def _busy(self) -> bool:
        return self._active > 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._active >= self._max_runs:
                future: Future[Any] = Future()
                self._pending.append((x, future))
                leader = False
            else:
                self._active += 1
                leader = True
        if leader:
            return self._lead([(x, None)])  # type: ignore[list-item]
        outcome = future.result()
        if isinstance(outcome, _Lead):
            return self._lead(outcome.batch, mine=future)
        return outcome  # type: ignore[no-any-return]

    def _lead(self, batch: list[tuple[np.ndarray, Future[Any] | None]],
              mine: Future[Any] | None = None) -> np.ndarray:
        result: np.ndarray | None = None
        error: BaseException | None = None
        try:
            inputs = batch[0][0][None] if len(batch) == 1 else np.stack([x for x, _ in batch])
            outputs = self._run(inputs)
            self.batches += 1
            self.items += len(batch)
            for (_, future), row in zip(batch, outputs, strict=True):
                if future is None or future is mine:
                    result = row
                else:
                    future.set_result(row)
        except BaseException as e:  # every waiter must hear about it, then the leader raises
            error = e
            for _, future in batch:
                if future is not None and future is not mine and not future.done():
                    future.set_exception(e)
        finally:
            self._hand_over()
        if error is not None:
            raise error
        assert result is not None
        return result

    def _hand_over(self) -> None:
        with self._lock:
            if not self._pending:
                self._active -= 1
                return
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
        # The first waiter of the next batch becomes its leader (the run slot passes on).
        batch[0][1].set_result(_Lead(batch))


# --- one model --------------------------------------------------------------------------------
class ModelSession:
    """One iteration's ONNX Runtime session plus what is needed to read its output."""

    is_detection = False

    def __init__(self, manifest: Manifest, model: bytes, config: ServingConfig) -> None:
        import onnxruntime as ort

        self.manifest = manifest
        self.config = config
        self.project_id = manifest.project_id
        self.iteration_id = manifest.iteration_id
        self.spec: PreprocessingSpec = manifest.preprocessing
        self.session = ort.InferenceSession(model, session_options(config),
                                            providers=["CPUExecutionProvider"])
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if self.spec.input_name not in inputs:
            raise ModelUnavailable(f"model input {self.spec.input_name!r} not in graph {inputs}")
        if manifest.output_name not in outputs:
            raise ModelUnavailable(f"model output {manifest.output_name!r} not in graph {outputs}")
        self.tag_ids = tuple(t.id for t in manifest.tags)
        self.tag_names = tuple(t.name for t in manifest.tags)
        self.tag_types = tuple(t.type for t in manifest.tags)
        self._batcher = _Batcher(self.run_batch, config.max_batch, config.concurrent_runs)

    @property
    def key(self) -> tuple[str, str]:
        return (self.project_id, self.iteration_id)

    def run_batch(self, inputs: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 -> (N, tags) probabilities: one ``session.run``."""
        (probs,) = self.session.run([self.manifest.output_name], {self.spec.input_name: inputs})
        if probs.shape[-1] != len(self.tag_ids):
            raise ModelUnavailable(f"model gives {probs.shape[-1]} outputs for "
                                   f"{len(self.tag_ids)} tags")
        return probs  # type: ignore[no-any-return]

    def infer(self, x: np.ndarray) -> np.ndarray:
        """One (3, H, W) input -> its probabilities, batched with whoever else is waiting."""
        return self._batcher(x)

    def tensor(self, data: bytes) -> np.ndarray:
        """Image bytes -> this model's (3, H, W) float32 input."""
        try:
            crop = prepare_image(data, self.spec)
        except Exception as e:  # any decoder complaint: the input's fault, not the server's
            raise UndecodableImage(f"the image could not be decoded: {type(e).__name__}: "
                                   f"{e}") from e
        return self._normalised(crop)

    def prepare(self, data: bytes, limits: ImageLimits) -> PreparedImage | Rejection:
        """Validate ``data`` and make this model's input from the one decode that validates it.

        Validation, the crop and the release of the full-size pixels happen inside one decode
        slot, so at most DECODE_CONCURRENCY pictures are in memory however many requests wait.
        """
        with decode_slot():
            decoded = decode_valid_image(data, limits, self.spec.min_decode_size)
            if isinstance(decoded, Rejection):
                return decoded
            image = decoded.image
            crop = crop_picture(decoded.picture, self.spec)
            del decoded  # the picture goes before the slot does
        return PreparedImage(image, data, self.spec, self._normalised(crop))

    def _normalised(self, crop: np.ndarray) -> np.ndarray:
        out = np.empty((3, self.spec.crop, self.spec.crop), dtype=np.float32)
        normalize_into(out, crop, self.spec)
        return out

    def input_for(self, image: bytes | PreparedImage) -> np.ndarray:
        """The model input of raw bytes or of a :class:`PreparedImage` (decoded only if needed)."""
        if isinstance(image, PreparedImage):
            if image.tensor is not None and image.spec == self.spec:
                return image.tensor
            return self.tensor(image.data)
        return self.tensor(image)

    def detect(self, image: bytes | PreparedImage) -> Detection:
        raise WrongDomainType("the iteration is an image classifier: use classify")

    def classify(self, image: bytes | PreparedImage) -> Classification:
        probs = self.infer(self.input_for(image))
        return Classification(self.project_id, self.iteration_id, self.tag_ids, self.tag_names,
                              probs, self.tag_types)


@dataclass(frozen=True)
class Classification:
    """Probabilities per tag, in the model's output order."""

    project_id: str
    iteration_id: str
    tag_ids: tuple[str, ...]
    tag_names: tuple[str, ...]
    probabilities: np.ndarray
    # Each tag's type (manifest ``TagOutput.type``); empty or short: the rest read as Regular.
    tag_types: tuple[str, ...] = ()

    def ranked(self) -> list[tuple[float, str, str]]:
        """(probability, tag id, tag name), most probable first (ties: model order)."""
        order = np.argsort(-self.probabilities, kind="stable")
        return [(float(self.probabilities[i]), self.tag_ids[i], self.tag_names[i])
                for i in order]

    def tag_type(self, tag_id: str) -> str:
        """The type (Regular / Negative) of one of this model's tags: what ``tagType`` answers."""
        return _tag_type(self.tag_ids, self.tag_types, tag_id)


def _tag_type(tag_ids: tuple[str, ...], tag_types: tuple[str, ...], tag_id: str) -> str:
    """``tag_types`` runs parallel to ``tag_ids``; a tag with no type recorded is Regular
    (sessions built by hand, manifests from before tags had types)."""
    try:
        index = tag_ids.index(tag_id)
    except ValueError:
        return REGULAR_TAG_TYPE
    return tag_types[index] if index < len(tag_types) else REGULAR_TAG_TYPE


# --- one detector -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Detection:
    """The boxes one picture holds, best first (at most the manifest's ``maxDetections``)."""

    project_id: str
    iteration_id: str
    tag_ids: tuple[str, ...]
    tag_names: tuple[str, ...]
    boxes: tuple[BoxPrediction, ...]
    tag_types: tuple[str, ...] = ()  # as Classification.tag_types

    def ranked(self) -> list[tuple[BoxPrediction, str, str]]:
        """(box, tag id, tag name), most probable first."""
        return [(b, self.tag_ids[b.tag_index], self.tag_names[b.tag_index]) for b in self.boxes]

    def tag_type(self, tag_id: str) -> str:
        """The type (Regular / Negative) of one of this detector's tags."""
        return _tag_type(self.tag_ids, self.tag_types, tag_id)


class DetectionSession:
    """One object detection iteration's session (ARCHITECTURE.md, "Iteration manifest").

    The exported graph decodes boxes and suppresses overlaps itself and takes a batch of one, so
    each picture is one ``session.run``: no batching (the batcher stacks inputs, which a
    batch-of-one graph refuses). Same lifecycle as :class:`ModelSession`: loaded once per process
    under the core's per-key lock, shared by every thread, swapped by the published pointer.
    """

    is_detection = True

    def __init__(self, manifest: Manifest, model: bytes, config: ServingConfig) -> None:
        import onnxruntime as ort

        if manifest.detection_preprocessing is None or manifest.detection is None:
            raise ModelUnavailable("a detection manifest needs its preprocessing and detection")
        self.manifest = manifest
        self.config = config
        self.project_id = manifest.project_id
        self.iteration_id = manifest.iteration_id
        self.prep: DetectionPreprocessing = manifest.detection_preprocessing
        self.spec: PreprocessingSpec = manifest.preprocessing  # its normalisation only
        block = manifest.detection
        outputs_block = block.get("outputs") or {}
        self.output_names = tuple(str(outputs_block.get(k, k))
                                  for k in ("boxes", "scores", "labels"))
        self.score_floor = float(block.get("scoreFloor", SCORE_FLOOR))
        self.max_detections = int(block.get("maxDetections", MAX_DETECTIONS))
        self.session = ort.InferenceSession(model, session_options(config),
                                            providers=["CPUExecutionProvider"])
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if self.prep.input_name not in inputs:
            raise ModelUnavailable(f"model input {self.prep.input_name!r} not in graph {inputs}")
        missing = [n for n in self.output_names if n not in outputs]
        if missing:
            raise ModelUnavailable(f"model outputs {missing} not in graph {outputs}")
        self.tag_ids = tuple(t.id for t in manifest.tags)
        self.tag_names = tuple(t.name for t in manifest.tags)
        self.tag_types = tuple(t.type for t in manifest.tags)
        self.runs = 0  # session runs made, for tests and benchmarks

    @property
    def key(self) -> tuple[str, str]:
        return (self.project_id, self.iteration_id)

    def _input(self, picture: Any) -> np.ndarray:
        out = np.empty((3, self.prep.input_size, self.prep.input_size), dtype=np.float32)
        normalize_into(out, stretch_picture(picture, self.prep), self.spec)
        return out

    def prepare(self, data: bytes, limits: ImageLimits) -> PreparedImage | Rejection:
        """Validate ``data`` and make the detector's input from the decode that validates it
        (inside one decode slot, as :meth:`ModelSession.prepare`)."""
        with decode_slot():
            decoded = decode_valid_image(data, limits, self.prep.min_decode_size)
            if isinstance(decoded, Rejection):
                return decoded
            image = decoded.image
            tensor = self._input(decoded.picture)
            del decoded
        return PreparedImage(image, data, self.spec, tensor)

    def input_for(self, image: bytes | PreparedImage) -> np.ndarray:
        if isinstance(image, PreparedImage):
            if image.tensor is not None and image.spec == self.spec:
                return image.tensor
            image = image.data
        from visionpipe.imaging import decode_for_model

        try:
            picture = decode_for_model(image, self.prep.min_decode_size)
        except Exception as e:  # any decoder complaint: the input's fault, not the server's
            raise UndecodableImage(f"the image could not be decoded: {type(e).__name__}: "
                                   f"{e}") from e
        return self._input(picture)

    def classify(self, image: bytes | PreparedImage) -> Classification:
        raise WrongDomainType("the iteration is an object detector: use detect")

    def tensor(self, data: bytes) -> np.ndarray:
        raise WrongDomainType("the iteration is an object detector: use detect")

    def run_batch(self, inputs: np.ndarray) -> np.ndarray:
        raise WrongDomainType("the iteration is an object detector: use detect")

    def detect(self, image: bytes | PreparedImage) -> Detection:
        """One picture -> its boxes, read defensively (visionpipe.detection_decode)."""
        x = self.input_for(image)[None]
        try:
            boxes, scores, labels = self.session.run(list(self.output_names),
                                                     {self.prep.input_name: x})
            self.runs += 1
            found = read_detections(boxes, scores, labels, len(self.tag_ids),
                                    score_floor=self.score_floor,
                                    max_detections=self.max_detections)
        except ValueError as e:  # outputs that disagree: the model file is broken
            raise ModelUnavailable(f"the detector's outputs are unusable: {e}") from e
        return Detection(self.project_id, self.iteration_id, self.tag_ids, self.tag_names,
                         tuple(found), self.tag_types)


Session = ModelSession | DetectionSession


def load_model_session(registry: Registry, project_id: str, iteration_id: str,
                       config: ServingConfig) -> Session:
    """Download and check an iteration's artifacts and open its session."""
    try:
        manifest = registry.read_manifest(project_id, iteration_id)
        model = registry.download_artifact(project_id, iteration_id, MODEL_FILE)
    except NotFound as e:
        raise ModelUnavailable(f"iteration {iteration_id} has no {MODEL_FILE}/{MANIFEST_FILE}: "
                               f"{e}") from e
    except ValueError as e:  # unreadable manifest
        raise ModelUnavailable(f"manifest of iteration {iteration_id} is invalid: {e}") from e
    digest = hashlib.sha256(model).hexdigest()
    if manifest.model_sha256 and manifest.model_sha256 != digest:
        raise ModelUnavailable(f"{MODEL_FILE} of iteration {iteration_id} does not match its "
                               f"manifest (sha256 {digest[:12]}, expected "
                               f"{manifest.model_sha256[:12]})")
    started = time.perf_counter()
    kind = DetectionSession if manifest.is_detection else ModelSession
    try:
        session: Session = kind(manifest, model, config)
    except ModelUnavailable:
        raise
    except Exception as e:  # onnxruntime refuses the graph
        raise ModelUnavailable(f"{MODEL_FILE} of iteration {iteration_id} does not load: "
                               f"{e}") from e
    log.info("loaded model %s/%s (%s, %d tags) in %.0f ms", project_id, iteration_id,
             manifest.backbone or "?", len(manifest.tags),
             (time.perf_counter() - started) * 1000)
    return session


# --- the process-wide core ----------------------------------------------------------------------
@dataclass
class _Pointer:
    publications: Publications
    checked_at: float

    @property
    def invalidated(self) -> bool:
        """Marked by :meth:`ServingCore.invalidate`: no request may be answered from it."""
        return self.checked_at == float("-inf")


class ServingCore:
    """Published pointers and model sessions of one process (see the module docstring)."""

    def __init__(
        self,
        registry: Registry,
        config: ServingConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.config = config or ServingConfig()
        self._clock = clock
        self._lock = threading.Lock()  # guards the dicts and lock creation, never held for I/O
        self._sessions: dict[tuple[str, str], Session] = {}
        # Sessions unpublished a moment ago, still handed to requests that resolved the pointer
        # just before the swap (so they neither fail nor reload); dropped after a grace period.
        self._retired: dict[tuple[str, str], tuple[Session, float]] = {}
        self._session_locks: dict[tuple[str, str], threading.Lock] = {}
        self._pointers: dict[str, _Pointer] = {}
        self._pointer_locks: dict[str, threading.Lock] = {}

    # --- sessions -------------------------------------------------------------------------------
    def session(self, project_id: str, iteration_id: str) -> Session:
        """The iteration's session, loaded on first use (one load however many ask at once)."""
        key = (project_id, iteration_id)
        found = self._sessions.get(key)
        if found is not None:
            return found
        retired = self._retired.get(key)
        if retired is not None:
            return retired[0]
        with self._lock:
            lock = self._session_locks.setdefault(key, threading.Lock())
        with lock:
            found = self._sessions.get(key)
            if found is None:
                found = load_model_session(self.registry, project_id, iteration_id, self.config)
                with self._lock:
                    self._sessions[key] = found
            return found

    def loaded(self) -> list[tuple[str, str]]:
        return list(self._sessions)

    # --- the published pointer ------------------------------------------------------------------
    def publications(self, project_id: str) -> Publications:
        """The project's publications, at most ``pointer_max_age`` seconds old.

        One thread refreshes a stale pointer while the others go on with the one they have; only
        the very first read of a project makes callers wait.
        """
        current = self._pointers.get(project_id)
        now = self._clock()
        if current is not None and now - current.checked_at < self.config.pointer_max_age:
            return current.publications
        with self._lock:
            lock = self._pointer_locks.setdefault(project_id, threading.Lock())
        if current is not None and not current.invalidated:
            if not lock.acquire(blocking=False):
                return current.publications  # someone else is refreshing it
        else:  # the first read, or this process changed the pointer: what it has is known wrong
            lock.acquire()
        try:
            current = self._pointers.get(project_id)
            if current is not None and self._clock() - current.checked_at < \
                    self.config.pointer_max_age:
                return current.publications
            try:
                return self._refresh(project_id, current)
            except Exception as e:
                if current is None:
                    raise
                # Storage blinked: keep serving what was published a moment ago.
                log.warning("project %s: published pointer not refreshed: %s", project_id, e)
                return current.publications
        finally:
            lock.release()

    def _refresh(self, project_id: str, current: _Pointer | None) -> Publications:
        self._purge_retired()
        etag = current.publications.etag if current is not None else None
        fresh = self.registry.publications(project_id, if_none_match=etag)
        if fresh is None:  # 304: unchanged
            assert current is not None
            self._pointers[project_id] = _Pointer(current.publications, self._clock())
            return current.publications
        if current is not None:
            self._preload(project_id, fresh)
        self._pointers[project_id] = _Pointer(fresh, self._clock())  # the atomic swap
        if current is not None and current.publications.by_name != fresh.by_name:
            log.info("project %s: published pointer changed: %s", project_id,
                     {n: p.iteration_id for n, p in fresh.by_name.items()})
            self._retire(project_id, fresh)
        return fresh

    def _purge_retired(self) -> None:
        now = self._clock()
        grace = max(2 * self.config.pointer_max_age, 1.0)
        with self._lock:
            for key in [k for k, (_, at) in self._retired.items() if now - at > grace]:
                del self._retired[key]

    def _preload(self, project_id: str, new: Publications) -> None:
        """Load the sessions that are about to be served, before the swap; only for a project
        this process is serving already (otherwise loading stays lazy)."""
        wanted = {p.iteration_id for p in new.by_name.values()}
        with self._lock:  # published again: take it back from the retired ones
            for key in [k for k in self._retired if k[0] == project_id and k[1] in wanted]:
                self._sessions[key] = self._retired.pop(key)[0]
        serving = {key[1] for key in self._sessions if key[0] == project_id}
        if not serving:
            return
        for iteration_id in wanted - serving:
            try:
                self.session(project_id, iteration_id)
            except Exception as e:  # the swap still happens; requests will get the error
                log.error("project %s: could not preload iteration %s: %s", project_id,
                          iteration_id, e)

    def _retire(self, project_id: str, fresh: Publications) -> None:
        """Move sessions of this project that nothing publishes any more out of the cache.

        They stay reachable for a grace period (requests that resolved the old pointer just
        before the swap still find them); whoever holds one keeps a working object anyway.
        """
        keep = {p.iteration_id for p in fresh.by_name.values()}
        now = self._clock()
        with self._lock:
            for key in [k for k in self._sessions if k[0] == project_id and k[1] not in keep]:
                self._retired[key] = (self._sessions.pop(key), now)
                log.info("project %s: retired iteration %s", project_id, key[1])

    def invalidate(self, project_id: str) -> None:
        """Make the next request re-check the pointer (this process just changed it)."""
        current = self._pointers.get(project_id)
        if current is not None:
            self._pointers[project_id] = _Pointer(current.publications, float("-inf"))

    def resolve(self, project_id: str, publish_name: str | None = None) -> Publication:
        """The publication to predict with: by name, or the most recently published one."""
        pubs = self.publications(project_id)
        publication = pubs.latest if publish_name is None else pubs.by_name.get(publish_name)
        if publication is None:
            what = f"under the name {publish_name!r}" if publish_name else "at all"
            raise NoPublishedIteration(f"project {project_id} has no iteration published {what}")
        return publication

    # --- predicting -----------------------------------------------------------------------------
    def prepare(self, project_id: str, data: bytes, limits: ImageLimits,
                publish_name: str | None = None,
                iteration_id: str | None = None) -> PreparedImage | Rejection:
        """Validate a prediction image with the decode the model needs (one decode per request):
        ``iteration_id``'s, else the published one's. Without a usable model it is only
        validated: a bad image is still refused as such (a 400, not the model's 503), and the
        missing model is reported by whoever classifies it."""
        try:
            if iteration_id is None:
                iteration_id = self.resolve(project_id, publish_name).iteration_id
            model = self.session(project_id, iteration_id)
        except (NoPublishedIteration, ModelUnavailable):
            checked = validate_image(data, limits)
            return checked if isinstance(checked, Rejection) else PreparedImage(checked, data)
        return model.prepare(data, limits)

    def classify(self, project_id: str, image: bytes | PreparedImage,
                 publish_name: str | None = None) -> Classification:
        """Validated image bytes (or a :meth:`prepare`d image) -> probabilities from the
        published iteration."""
        publication = self.resolve(project_id, publish_name)
        return self.session(project_id, publication.iteration_id).classify(image)

    def classify_many(self, project_id: str, images: Sequence[bytes],
                      publish_name: str | None = None) -> list[Classification]:
        """Several images of one project in one run (all on the same iteration)."""
        publication = self.resolve(project_id, publish_name)
        model = self.session(project_id, publication.iteration_id)
        batch = np.stack([model.tensor(data) for data in images])
        probs = model.run_batch(batch)
        return [Classification(project_id, model.iteration_id, model.tag_ids, model.tag_names, p,
                               model.tag_types)
                for p in probs]


_core: ServingCore | None = None
_core_lock = threading.Lock()


def get_serving(storage: Storage | None = None) -> ServingCore:
    """The process's serving core, created on first use."""
    global _core
    if _core is None:
        with _core_lock:
            if _core is None:
                from visionpipe.storage import get_storage

                _core = ServingCore(Registry(storage or get_storage()), get_settings().serving)
    return _core


def invalidate_published(project_id: str) -> None:
    """This process changed ``project_id``'s published pointer: its serving core (if it has one
    yet) re-reads the pointer on the next request instead of within the pointer's max age."""
    core = _core
    if core is not None:
        core.invalidate(project_id)


def reset_serving() -> None:
    """Drop the process's core (tests and the local host change storage between runs)."""
    global _core
    with _core_lock:
        _core = None
