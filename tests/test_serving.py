"""The serving core: preprocessing parity, lazy shared sessions, batching, pointer and hot swap.

Real Azurite, real ONNX Runtime, the colour model of ``tests/model_factory.py``. Time is a fake
clock wherever the published pointer's max age matters, so nothing here depends on timing.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from tests.drops import wait_for
from tests.model_factory import (
    SMALL_SPEC,
    build_color_model,
    color_image,
    register_color_iteration,
)
from visionpipe.manifest import MODEL_FILE
from visionpipe.pipeline.publishing import publish
from visionpipe.preprocessing import (
    PreprocessingSpec,
    normalize,
    prepare_image,
    resize_and_crop,
    resize_crop_fast,
    to_input,
)
from visionpipe.serving import core as serving
from visionpipe.serving.core import (
    ModelUnavailable,
    NoPublishedIteration,
    ServingConfig,
    ServingCore,
    _Batcher,
)
from visionpipe.stores.label_store import LabelStore, Project
from visionpipe.stores.registry import Registry


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def core(registry: Registry, clock: FakeClock) -> ServingCore:
    return ServingCore(registry, ServingConfig(intra_op_threads=1, pointer_max_age=2.0), clock)


def _photo(size: tuple[int, int], seed: int = 0, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) * 127 // sum(size)], -1)
    pixels = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
    buf = BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, fmt, quality=92)
    return buf.getvalue()


# --- preprocessing -------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(1024, 768), (768, 1024), (300, 300), (257, 700), (2000, 500)])
def test_fast_resize_crop_matches_the_reference(size: tuple[int, int]) -> None:
    img = Image.open(BytesIO(_photo(size, fmt="PNG"))).convert("RGB")
    spec = PreprocessingSpec()
    reference = np.asarray(resize_and_crop(img, spec), dtype=np.int16)
    fast = np.asarray(resize_crop_fast(img, spec), dtype=np.int16)
    assert fast.shape == reference.shape == (224, 224, 3)
    assert np.abs(fast - reference).max() <= 1
    assert (fast != reference).mean() < 0.01


def test_normalize_is_the_documented_arithmetic() -> None:
    spec = PreprocessingSpec()
    batch = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    scale = np.asarray([1 / (255 * s) for s in spec.std], np.float32)
    offset = np.asarray([m / s for m, s in zip(spec.mean, spec.std, strict=True)], np.float32)
    expected = (batch.astype(np.float32) * scale - offset).transpose(0, 3, 1, 2)
    out = normalize(batch, spec)
    assert out.dtype == np.float32 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_serving_preprocessing_agrees_with_the_reference_on_pngs() -> None:
    """No JPEG draft involved: the serving path is the reference, up to resize rounding."""
    data = _photo((640, 480), fmt="PNG")
    spec = PreprocessingSpec()
    ref = to_input([Image.open(BytesIO(data))], spec)[0]
    fast = normalize(prepare_image(data, spec)[None], spec)[0]
    step = 1 / (255 * min(spec.std))
    assert np.abs(fast - ref).max() <= step + 1e-6


def test_jpeg_is_decoded_at_reduced_scale_that_still_covers_the_input() -> None:
    data = _photo((1024, 768))
    spec = PreprocessingSpec()
    img = Image.open(BytesIO(data))
    img.draft("RGB", spec.min_decode_size)
    assert img.size == (512, 384)  # 1/2 scale: the shorter side 384 still covers 256
    fast = prepare_image(data, spec).astype(np.int16)
    full = np.asarray(resize_and_crop(Image.open(BytesIO(data)).convert("RGB"), spec), np.int16)
    # DCT-domain downscaling differs from a bilinear downscale only slightly.
    assert np.abs(fast - full).mean() < 3.0


def test_exif_orientation_is_applied_before_preprocessing() -> None:
    upright = Image.open(BytesIO(_photo((480, 640), fmt="PNG"))).convert("RGB")
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera writes for tag 6
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = BytesIO()
    stored.save(buf, "PNG", exif=exif)
    spec = PreprocessingSpec()
    expected = np.asarray(resize_crop_fast(upright, spec), np.int16)
    got = prepare_image(buf.getvalue(), spec).astype(np.int16)
    assert np.abs(got - expected).max() <= 1


# --- batching ------------------------------------------------------------------------------------
def test_batcher_runs_alone_at_once_and_batches_what_waits() -> None:
    release = threading.Event()
    started = threading.Event()
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            started.set()
            assert release.wait(10)
        return batch * 2

    batcher = _Batcher(run, max_batch=16)
    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(batcher, np.array([0.0]))
        assert started.wait(10)
        rest = [pool.submit(batcher, np.array([float(i)])) for i in range(1, 6)]
        # Wait until all five are queued behind the running batch, then let it finish.
        for _ in range(1000):
            with batcher._lock:
                if len(batcher._pending) == 5:
                    break
            threading.Event().wait(0.01)
        release.set()
        assert first.result(10).tolist() == [0.0]
        assert [f.result(10).tolist() for f in rest] == [[2.0], [4.0], [6.0], [8.0], [10.0]]
    assert calls == [1, 5]
    assert not batcher._busy and not batcher._pending


def test_batcher_runs_side_by_side_up_to_max_runs() -> None:
    release = threading.Event()
    both = threading.Barrier(3)
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        if len(sizes) <= 2:
            both.wait(10)  # only passes if two runs are in progress at once
            assert release.wait(10)
        return batch

    batcher = _Batcher(run, max_batch=8, max_runs=2)
    with ThreadPoolExecutor(max_workers=6) as pool:
        running = [pool.submit(batcher, np.array([float(i)])) for i in range(2)]
        both.wait(10)
        queued = [pool.submit(batcher, np.array([float(i)])) for i in range(2, 5)]
        for _ in range(1000):
            with batcher._lock:
                if len(batcher._pending) == 3:
                    break
            threading.Event().wait(0.01)
        release.set()
        results = [f.result(10).tolist() for f in running + queued]
    assert results == [[float(i)] for i in range(5)]
    assert sizes[:2] == [1, 1] and sorted(sizes[2:]) in ([3], [1, 2])
    assert batcher._active == 0


def test_batcher_gives_every_waiter_the_error() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(batch: np.ndarray) -> np.ndarray:
        if not started.is_set():
            started.set()
            assert release.wait(10)
            return batch
        raise RuntimeError("boom")

    batcher = _Batcher(run, max_batch=4)
    with ThreadPoolExecutor(max_workers=4) as pool:
        first = pool.submit(batcher, np.array([1.0]))
        assert started.wait(10)
        rest = [pool.submit(batcher, np.array([2.0])) for _ in range(3)]
        for _ in range(1000):
            with batcher._lock:
                if len(batcher._pending) == 3:
                    break
            threading.Event().wait(0.01)
        release.set()
        assert first.result(10).tolist() == [1.0]
        for f in rest:
            with pytest.raises(RuntimeError, match="boom"):
                f.result(10)
    assert not batcher._busy
    # and it still works afterwards
    assert _Batcher(lambda b: b + 1, 4)(np.array([1.0])).tolist() == [2.0]


def test_batcher_never_exceeds_max_batch() -> None:
    sizes: list[int] = []
    gate = threading.Semaphore(0)

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        if len(sizes) == 1:
            gate.acquire(timeout=10)
        return batch

    batcher = _Batcher(run, max_batch=3)
    with ThreadPoolExecutor(max_workers=10) as pool:
        first = pool.submit(batcher, np.array([0.0]))
        for _ in range(1000):
            if sizes:
                break
            threading.Event().wait(0.01)
        rest = [pool.submit(batcher, np.array([float(i)])) for i in range(1, 8)]
        for _ in range(1000):
            with batcher._lock:
                if len(batcher._pending) == 7:
                    break
            threading.Event().wait(0.01)
        gate.release()
        assert [f.result(10).tolist() for f in [first, *rest]] == [[float(i)] for i in range(8)]
    assert sizes == [1, 3, 3, 1]


# --- sessions and classification -----------------------------------------------------------------
def test_classifies_by_colour_with_the_published_iteration(
    core: ServingCore, registry: Registry, label_store: LabelStore, project: Project
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    for colour in ("red", "green", "blue"):
        result = core.classify(project.id, color_image(colour, seed=3))
        assert result.iteration_id == iteration.id
        ranked = result.ranked()
        assert ranked[0][2] == colour
        assert ranked[0][0] > 0.9
        assert abs(sum(p for p, _, _ in ranked) - 1.0) < 1e-5
    by_name = core.classify(project.id, color_image("green"), publish_name="prod")
    assert by_name.ranked()[0][2] == "green"


def test_nothing_published_is_a_clear_error(core: ServingCore, project: Project) -> None:
    with pytest.raises(NoPublishedIteration):
        core.classify(project.id, color_image("red"))
    with pytest.raises(NoPublishedIteration, match="'nope'"):
        core.resolve(project.id, "nope")


def test_one_session_per_iteration_loaded_once_under_concurrency(
    core: ServingCore, registry: Registry, label_store: LabelStore, project: Project,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    loads: list[str] = []
    real = serving.load_model_session

    def counting(*args: object, **kwargs: object) -> serving.ModelSession:
        loads.append(str(args[2]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(serving, "load_model_session", counting)
    images = [color_image(c, seed=i) for i, c in enumerate(["red", "green", "blue"] * 10)]
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda d: core.classify(project.id, d), images))
    assert loads == [iteration.id]
    assert [r.ranked()[0][2] for r in results] == ["red", "green", "blue"] * 10
    assert core.loaded() == [(project.id, iteration.id)]


def test_classify_many_runs_one_batch(
    core: ServingCore, registry: Registry, label_store: LabelStore, project: Project
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    results = core.classify_many(project.id, [color_image(c) for c in ("blue", "red")])
    assert [r.ranked()[0][2] for r in results] == ["blue", "red"]


def test_a_model_that_does_not_match_its_manifest_is_refused(
    core: ServingCore, registry: Registry, label_store: LabelStore, project: Project
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    registry.upload_artifact(project.id, iteration.id, MODEL_FILE,
                             build_color_model(SMALL_SPEC, (2, 1, 0)), "application/octet-stream")
    with pytest.raises(ModelUnavailable, match="does not match its manifest"):
        core.classify(project.id, color_image("red"))


def test_missing_artifacts_are_a_model_error(
    core: ServingCore, registry: Registry, label_store: LabelStore, project: Project
) -> None:
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")
    registry._models.delete_blob(Registry.artifact_path(project.id, iteration.id, MODEL_FILE))
    with pytest.raises(ModelUnavailable, match="model.onnx"):
        core.classify(project.id, color_image("red"))


def test_an_unloadable_graph_is_a_model_error(
    core: ServingCore, registry: Registry, label_store: LabelStore, project: Project
) -> None:
    iteration = register_color_iteration(registry, label_store, project, model=b"not onnx")
    publish(registry, label_store, project.id, iteration.id, "prod")
    with pytest.raises(ModelUnavailable, match="does not load"):
        core.classify(project.id, color_image("red"))


# --- the published pointer and hot swap ----------------------------------------------------------
class CountingRegistry(Registry):
    def __init__(self, registry: Registry) -> None:
        self.__dict__.update(registry.__dict__)
        self.reads: list[str | None] = []

    def publications(self, project_id: str, if_none_match: str | None = None):  # type: ignore[override]
        self.reads.append(if_none_match)
        return super().publications(project_id, if_none_match=if_none_match)


def test_pointer_is_rechecked_at_most_every_max_age_with_its_etag(
    registry: Registry, label_store: LabelStore, project: Project, clock: FakeClock
) -> None:
    counting = CountingRegistry(registry)
    core = ServingCore(counting, ServingConfig(intra_op_threads=1, pointer_max_age=2.0), clock)
    first = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, first.id, "prod")

    assert core.classify(project.id, color_image("red")).iteration_id == first.id
    assert counting.reads == [None]
    clock.now += 1.0
    core.classify(project.id, color_image("red"))
    assert len(counting.reads) == 1  # fresh enough: no storage round trip
    clock.now += 1.5
    core.classify(project.id, color_image("red"))
    assert len(counting.reads) == 2 and counting.reads[1]  # conditional read (If-None-Match)

    second = register_color_iteration(registry, label_store, project, permutation=(1, 2, 0))
    registry.publish(project.id, second.id, "prod")  # another instance publishes
    clock.now += 0.5
    assert core.classify(project.id, color_image("red")).iteration_id == first.id  # not yet due
    clock.now += 2.0
    swapped = core.classify(project.id, color_image("red"))
    assert swapped.iteration_id == second.id
    assert swapped.ranked()[0][2] == "blue"
    assert core.loaded() == [(project.id, second.id)]  # the old session was retired


class SlowRegistry(CountingRegistry):
    """Each pointer read takes a while, so concurrent requests overlap the refresh."""

    def publications(self, project_id: str, if_none_match: str | None = None):  # type: ignore[override]
        time.sleep(0.3)
        return super().publications(project_id, if_none_match=if_none_match)


def test_after_this_process_publishes_no_request_sees_the_old_pointer(
    registry: Registry, label_store: LabelStore, project: Project, clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Publishing in this process, then at once several parallel requests (the demo's CLI
    predicts with four workers): none may be answered from the pointer the publish just made
    wrong. On the old code the thread that won the refresh lock saw the new iteration and the
    others got the stale empty pointer, a 404 ``NotFoundIteration`` right after a publish."""
    slow = SlowRegistry(registry)
    core = ServingCore(slow, ServingConfig(intra_op_threads=1, pointer_max_age=60.0), clock)
    monkeypatch.setattr(serving, "_core", core)
    with pytest.raises(NoPublishedIteration):
        core.resolve(project.id, "prod")  # the process caches "nothing published"
    iteration = register_color_iteration(registry, label_store, project)
    publish(registry, label_store, project.id, iteration.id, "prod")  # invalidates this core

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(
            lambda _: _outcome(lambda: core.resolve(project.id, "prod").iteration_id), range(8)))
    assert outcomes == [iteration.id] * 8
    assert len(slow.reads) == 2  # the first read, then one refresh that the others waited for


def _outcome(call):  # type: ignore[no-untyped-def]
    try:
        return call()
    except Exception as e:  # noqa: BLE001 - the test lists every failure
        return repr(e)


def test_hot_swap_while_requests_run(
    registry: Registry, label_store: LabelStore, project: Project
) -> None:
    """Requests keep flowing while another iteration is published: no errors, and each client,
    once answered by the new iteration, is never answered by the old one again."""
    clock = FakeClock()
    core = ServingCore(registry, ServingConfig(intra_op_threads=1, pointer_max_age=2.0), clock)
    first = register_color_iteration(registry, label_store, project)
    second = register_color_iteration(registry, label_store, project, permutation=(1, 2, 0))
    publish(registry, label_store, project.id, first.id, "prod")
    image = color_image("red")
    core.classify(project.id, image)

    stop = threading.Event()
    seen: list[list[tuple[str, str]]] = [[] for _ in range(4)]
    errors: list[BaseException] = []

    def client(mine: list[tuple[str, str]]) -> None:
        while not stop.is_set():
            try:
                r = core.classify(project.id, image)
                mine.append((r.iteration_id, r.ranked()[0][2]))
            except BaseException as e:  # noqa: BLE001 - the test counts every failure
                errors.append(e)
                return

    threads = [threading.Thread(target=client, args=(mine,)) for mine in seen]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: errors or all(len(mine) >= 5 for mine in seen), timeout=30)
        registry.publish(project.id, second.id, "prod")  # as another instance would
        clock.now += 5.0
        wait_for(lambda: errors or all(
            sum(1 for s in mine if s[0] == second.id) >= 5 for mine in seen), timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors
    for mine in seen:
        assert mine[0] == (first.id, "red")
        switch = next(i for i, s in enumerate(mine) if s[0] == second.id)
        assert all(s == (first.id, "red") for s in mine[:switch])
        assert all(s == (second.id, "blue") for s in mine[switch:])
    assert (project.id, second.id) in core.loaded()
