"""Event Grid trigger for the prediction drop folder (``predict-images``)."""

import logging

import azure.functions as func

from visionpipe import names
from visionpipe.blob_names import escape_name
from visionpipe.pipeline.events import EventRefused, from_grid_event
from visionpipe.settings import get_settings

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.function_name(names.PREDICT_FUNCTION)
@bp.event_grid_trigger(arg_name="event")
def predict_image(event: func.EventGridEvent) -> None:
    # Imported on first use: ONNX Runtime and the storage SDK would weigh on every cold start.
    from visionpipe.api.context import app_storage
    from visionpipe.pipeline.drop_predict import DropFolderPredictor

    try:
        blob = from_grid_event(event, names.PREDICT_IMAGES)
    except EventRefused as e:
        # Retrying cannot help: acknowledge, but say so loudly.
        log.error("refused: %s", e)
        return
    result = DropFolderPredictor(app_storage(), get_settings()).handle(blob)
    # The name came from the event: escaped, so a hostile one cannot forge log lines.
    log.info("predict %s -> %s%s", escape_name(result.path), result.outcome,
             f" ({result.code})" if result.code else "")
